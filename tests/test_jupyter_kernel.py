"""Real kernels: one started by a real Jupyter server (discovery, deploys from the
notebook, SIGTERM and restart of the server), one with no server (``%clipper start``)."""

from __future__ import annotations

import os
import re
import subprocess
import textwrap

import pytest
import requests

from _jupyter_fixtures import JUPYTER_TOKEN, JupyterServer, pids_with, wait_gone
from conftest import wait_until, worker_pids

pytestmark = pytest.mark.slow

# A class imported from a module next to the notebook; at predict time it imports a
# second local module, which only works if the worker has the notebook's folder on
# its path (pickling the class by value does not carry `helper` along).
MYMODEL = '''
class Offset:
    """Adds k to the first feature of each row."""

    def __init__(self, k):
        self.k = k

    def __call__(self, batch):
        import helper
        return [helper.shift(float(row[0]), self.k) for row in batch]
'''
HELPER = "def shift(x, k):\n    return x + k\n"

TRAIN = '''
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression
X, y = load_iris(return_X_y=True)
clf = LogisticRegression(max_iter=500).fit(X, y)

class Scaler:
    """Defined in the notebook: pickled by value."""
    def __init__(self, k):
        self.k = k
    def __call__(self, batch):
        return [self.k * float(sum(row)) for row in batch]

scaler = Scaler(3.0)
from mymodel import Offset
offset = Offset(10)
'''


def expected_answers() -> dict:
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    X, y = load_iris(return_X_y=True)
    iris_out = int(LogisticRegression(max_iter=500).fit(X, y).predict(X[:1])[0])
    return {"iris": (X[0].tolist(), iris_out), "scaled": ([1.0, 2.0], 9.0), "offset": ([1.5], 11.5)}


def answers_from_outside(jp: JupyterServer, cases: dict) -> dict:
    """An HTTP client outside the kernel, with the Jupyter token."""
    out = {}
    for app, (x, _) in cases.items():
        r = requests.post(f"{jp.clipper_url}/{app}/predict", json={"input": x}, headers=jp.headers, timeout=30)
        assert r.status_code == 200, (app, r.text)
        assert r.json()["default"] is False, (app, r.json())
        out[app] = r.json()["output"]
    return out


def test_kernel_of_a_jupyter_server_deploys_and_the_apps_survive_a_restart(tmp_path):
    root = tmp_path / "notebooks"
    root.mkdir()
    (root / "mymodel.py").write_text(MYMODEL)
    (root / "helper.py").write_text(HELPER)
    state = str(tmp_path / "state")
    cases = expected_answers()
    jp = JupyterServer(str(root), state).start()
    try:
        kernel = jp.new_kernel()
        kernel.run("%load_ext clipper_nb")
        kernel.run(TRAIN)
        out = kernel.run("%clipper deploy clf --app iris --slo 2s")  # no connect: discovered
        assert f"endpoint: POST {jp.clipper_url}/iris/predict" in out
        (curl,) = [line for line in out.splitlines() if line.startswith("curl ")]
        assert '-H "Authorization: token $CLIPPER_NB_TOKEN"' in curl
        kernel.run("%clipper deploy scaler --app scaled --slo 2s")
        kernel.run("%clipper deploy offset --app offset --slo 2s")
        kernel.run("r = %clipper query offset [1.5]\nassert r['output'] == 11.5, r")

        answers = answers_from_outside(jp, cases)
        assert answers == {app: want for app, (_, want) in cases.items()}
        # The printed curl line works as printed, given the token in the environment.
        shown = subprocess.run(["bash", "-c", curl + " -s"], capture_output=True, text=True, timeout=30,
                               env={**os.environ, "CLIPPER_NB_TOKEN": JUPYTER_TOKEN}).stdout
        assert '"default":false' in shown.replace(" ", ""), shown
        assert JUPYTER_TOKEN not in "".join(kernel.outputs)
        kernel.close()

        workers = worker_pids(state)
        assert len(workers) == 3
        jp.stop()
        wait_gone(workers, timeout=30)  # SIGTERM of Jupyter stops every worker
        wait_until(lambda: not worker_pids(state, include_fork_server=True), timeout=15,
                   message="the fork server to exit")

        jp.start()
        jp.wait_ready()
        assert answers_from_outside(jp, cases) == answers  # same apps, same models, same answers
        assert len(worker_pids(state)) == 3
        kernel = jp.new_kernel()  # a new kernel finds the restarted server by itself
        kernel.run("%load_ext clipper_nb")
        apps = kernel.run("%clipper apps")
        for app in cases:
            assert re.search(rf"\b{app}\b", apps), apps
        kernel.run("r = %clipper query scaled [1.0, 1.0]\nassert r['output'] == 6.0, r")
        kernel.close()
    finally:
        jp.stop()
        wait_until(lambda: not worker_pids(state, include_fork_server=True), timeout=30, message="workers to exit")


NO_SERVER_CELLS = [
    "%load_ext clipper_nb",
    # No server anywhere: the first magic starts one for this kernel and says so in one line.
    "%clipper apps",
    """\
    first = get_ipython().magics_manager.registry["ClipperMagics"].embedded
    print("first serve pid", first.proc.pid)
    """,
    "%clipper stop",
    "%clipper start --state-dir {state}",
    """\
    %%clipper deploy --app totals --slo 2s
    def total(batch):
        return [float(sum(row)) for row in batch]
    """,
    """\
    import clipper_nb
    answer = clipper_nb.connect().predict("totals", [1.0, 2.5])   # connect() finds %clipper start's server
    assert answer["output"] == 3.5, answer
    print("serve pid", get_ipython().magics_manager.registry["ClipperMagics"].embedded.proc.pid)
    """,
    "rows = [[1.0, 2.0], [3.0, 4.0]]\n%clipper load totals --qps 30 --duration 1s --input rows",  # progress updated in place
    "import time; time.sleep(4)",
]


def test_clipper_start_in_a_kernel_without_jupyter(tmp_path, monkeypatch):
    import nbformat
    from nbclient import NotebookClient

    for var in ("CLIPPER_NB_URL", "CLIPPER_NB_TOKEN", "CLIPPER_NB_JUPYTER_INFO"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path / "runtime"))
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))
    state = str(tmp_path / "embedded")
    cells = [nbformat.v4.new_code_cell(textwrap.dedent(src).format(state=state)) for src in NO_SERVER_CELLS]
    nb = nbformat.v4.new_notebook(cells=cells)
    NotebookClient(nb, timeout=180, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()

    text = "".join(o.get("text", "") for c in nb.cells for o in c.outputs)
    started = [ln for c in nb.cells[1:2] for o in c.outputs for ln in o.get("text", "").splitlines()]
    assert started and re.fullmatch(r"clipper-nb: no server found; started one at http://127\.0\.0\.1:\d+ "
                                    r"\(stops with this kernel\)", started[0]), started
    wait_gone([int(re.search(r"first serve pid (\d+)", text).group(1))], timeout=30)  # %clipper stop
    assert "clipper-nb serving at http://127.0.0.1:" in text
    serve_pid = int(re.search(r"serve pid (\d+)", text).group(1))
    (progress,) = [o for o in nb.cells[-2].outputs if o.get("output_type") == "display_data"]
    assert progress["data"]["text/plain"].startswith("load totals: done:"), progress
    assert "errors 0" in progress["data"]["text/plain"]
    # nbclient has shut the kernel down: the server it started and its workers go with it.
    wait_gone([serve_pid], timeout=30)
    wait_until(lambda: not worker_pids(state) and not pids_with(state, "clipper_nb"), timeout=30,
               message="the embedded server's workers to exit")


def test_a_kernel_of_a_token_less_jupyter_deploys_and_queries(tmp_path):
    """``--IdentityProvider.token=`` (common in containers): Jupyter still checks XSRF on
    POSTs without an Authorization header; the kernel's requests must pass it untouched."""
    root = tmp_path / "notebooks"
    root.mkdir()
    state = str(tmp_path / "state")
    jp = JupyterServer(str(root), state, token="").start()
    try:
        kernel = jp.new_kernel()
        kernel.run("%load_ext clipper_nb")
        out = kernel.run("%%clipper deploy --app open --slo 2s\ndef double(batch):\n    return [2.0 * row[0] for row in batch]")
        # The curl lines a newcomer copies (the deploy's and the endpoint card's) pass
        # Jupyter's XSRF check as printed: no token to give, no cookie jar.
        (curl,) = [line for line in out.splitlines() if line.startswith("curl ")]
        card = kernel.run("import clipper_nb\nfrom clipper_nb.kernel.endpoint import Endpoint\nc = clipper_nb.connect()\n"
                          "print(Endpoint(c, c.model('double')).snippets([1.5])['curl'])")
        for line in (curl.replace("<input>", "[1.5]"), card.strip()):
            assert "Authorization" not in line and "X-XSRFToken" in line, line
            shown = subprocess.run(["bash", "-c", line + " -s"], capture_output=True, text=True, timeout=30).stdout
            assert '"default":false' in shown.replace(" ", ""), (line, shown)
        kernel.run("r = %clipper query open [2.5]\nassert r['output'] == 5.0, r")
        kernel.run("%clipper slo open 3s")
        kernel.run("r = %clipper load open --concurrency 2 --duration 1s --input [[1.0]] --wait\n"
                   "assert r.requests > 0 and r.errors == 0, r")
        kernel.run("import clipper_nb\nc = clipper_nb.connect()\nassert c.app('open')['slo_ms'] == 3000\n"
                   "assert c.feedback('open', [1.0], 2.0, context='u1')['updates'] == 1")
        kernel.close()
    finally:
        jp.stop()
        wait_until(lambda: not worker_pids(state, include_fork_server=True), timeout=30, message="workers to exit")

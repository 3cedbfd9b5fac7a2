"""Every teaching notebook in ``notebooks/``, run top to bottom on the live system.

One real ``jupyter server`` with the clipper_nb extension serves the whole module
(``_jupyter_fixtures.JupyterServer``: its own config, data, runtime and state dirs).
Its root holds a copy of ``notebooks/_nbhelpers.py``, which the notebooks import.
Each notebook gets a fresh kernel created through the server's sessions API, so the
kernel is the server's child with the extension's ``CLIPPER_NB_JUPYTER_INFO`` in its
environment, starts in the root (as JupyterLab starts a kernel in the notebook's
folder), and ``clipper_nb.connect()`` / ``%clipper`` find the server with no input. nbclient then drives that kernel over ZeroMQ: it is handed
the kernel's client and a tiny stand-in for the kernel manager it did not start.

Each test checks: no cell raised; the executed notebook (outputs included) is saved
to ``test-artifacts/notebooks/``; the final ``summary`` DataFrame has our measured
column next to the paper's, a value in every measured cell, and the paper's
qualitative finding holds (with wide margins: the machine is shared and noisy); and
the notebook undeployed everything it deployed.

``tests/test_notebook_sources.py`` (fast) checks that each committed ``.ipynb`` matches its
jupytext source ``notebooks/NN-name.py`` and carries no outputs.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import time
from typing import Any, Callable

import pytest
import requests

from _jupyter_fixtures import JUPYTER_TOKEN, REPO, JupyterServer
from conftest import wait_until, worker_pids

NOTEBOOKS_DIR = os.path.join(REPO, "notebooks")
ARTIFACTS_DIR = os.path.join(REPO, "test-artifacts", "notebooks")
#: Every notebook, by the name of its source ``notebooks/NN-name.py``; each needs a check in CHECKS.
NOTEBOOKS = sorted(f[:-3] for f in os.listdir(NOTEBOOKS_DIR) if re.fullmatch(r"\d\d-[a-z0-9-]+\.py", f))
#: Column names every notebook's final ``summary`` table uses.
OURS, PAPER = "clipper-nb (measured)", "paper"
#: Longest a single cell may run; a notebook as a whole should take well under 2 minutes.
CELL_TIMEOUT_S = 150

# Read back the final table from the kernel after the last cell (not saved in the notebook).
_PROBE = """\
import json as _json
print(_json.dumps({"columns": [str(c) for c in summary.columns],
                   "index": [str(i) for i in summary.index],
                   "rows": [[None if v is None else (v if isinstance(v, (int, float, str)) else str(v))
                             for v in row] for row in summary.itertuples(index=False)]}, default=str))
"""


class ServerKernelManager:
    """What nbclient needs of a kernel manager, for a kernel the Jupyter server started.

    nbclient only asks a manager it does not own whether a kernel exists and, on a
    timeout with ``interrupt_on_timeout``, to interrupt it; shutting the kernel down is
    the server's job (deleting the session).
    """

    has_kernel = True

    def __init__(self, jp: JupyterServer, kernel_id: str) -> None:
        self.jp = jp
        self.kernel_id = kernel_id

    async def interrupt_kernel(self) -> None:
        await asyncio.to_thread(requests.post, f"{self.jp.url}api/kernels/{self.kernel_id}/interrupt",
                                headers=self.jp.headers, timeout=30)


def run_notebook(jp: JupyterServer, name: str) -> tuple[Any, dict, float]:
    """Execute ``notebooks/<name>.ipynb`` in a kernel of ``jp``; save it with its outputs.

    Returns the executed notebook, the final table (``{"columns", "index", "rows"}``)
    and the wall time of the cells. Raises nbclient's ``CellExecutionError`` on the
    first cell that fails (after saving what ran).
    """
    import nbformat

    nb = nbformat.read(os.path.join(NOTEBOOKS_DIR, f"{name}.ipynb"), as_version=4)
    session = requests.post(f"{jp.url}api/sessions", headers=jp.headers, timeout=60,
                            json={"path": f"{name}.ipynb", "type": "notebook", "name": f"{name}.ipynb",
                                  "kernel": {"name": "python3"}})
    session.raise_for_status()
    session_id, kernel_id = session.json()["id"], session.json()["kernel"]["id"]
    try:
        return asyncio.run(_execute(jp, nb, name, kernel_id))
    finally:
        requests.delete(f"{jp.url}api/sessions/{session_id}", headers=jp.headers, timeout=60)


async def _execute(jp: JupyterServer, nb: Any, name: str, kernel_id: str) -> tuple[Any, dict, float]:
    import nbformat
    from jupyter_client.asynchronous import AsyncKernelClient
    from nbclient import NotebookClient

    connection_file = os.path.join(jp.env["JUPYTER_RUNTIME_DIR"], f"kernel-{kernel_id}.json")
    await asyncio.to_thread(wait_until, lambda: os.path.exists(connection_file), 60, 0.1,
                            "the kernel's connection file")
    kc = AsyncKernelClient(connection_file=connection_file)
    kc.load_connection_file()
    # No heartbeat channel: a kernel busy importing on a loaded machine misses one-second
    # heartbeats; a dead kernel still fails the test, by the cell timeout.
    kc.start_channels(hb=False)
    await kc.wait_for_ready(timeout=120)
    client = NotebookClient(nb, km=ServerKernelManager(jp, kernel_id), timeout=CELL_TIMEOUT_S,
                            kernel_name="python3", record_timing=True)
    client.kc = kc
    os.makedirs(ARTIFACTS_DIR, exist_ok=True)
    start = time.monotonic()
    try:
        await client.async_execute()
        elapsed = time.monotonic() - start
        # Run as one more cell (nbclient executes only cells of the notebook), then drop it.
        probe = nbformat.v4.new_code_cell(_PROBE)
        nb.cells.append(probe)
        try:
            await client.async_execute_cell(probe, len(nb.cells) - 1)
        finally:
            nb.cells.pop()
    finally:
        nbformat.write(nb, os.path.join(ARTIFACTS_DIR, f"{name}.ipynb"))
        kc.stop_channels()
    text = "".join(o.get("text", "") for o in probe.outputs if o.get("output_type") == "stream")
    return nb, json.loads(text), elapsed


def _cell(table: dict, row: str, column: str = OURS) -> Any:
    return table["rows"][table["index"].index(row)][table["columns"].index(column)]


def _number(value: Any) -> float:
    """The leading number of a table cell such as ``12.3`` or ``"12.3x"``."""
    if isinstance(value, (int, float)):
        return float(value)
    match = re.match(r"\s*([-+]?[0-9]*\.?[0-9]+)", str(value))
    assert match, f"no number in {value!r}"
    return float(match.group(1))


def _numbers(value: Any) -> list[float]:
    """Every number in a cell such as ``"0.973 / 0.767 / 0.973"`` or ``"42 -> 16"``."""
    return [float(v) for v in re.findall(r"[-+]?[0-9]*\.?[0-9]+", str(value))]


# What each notebook must show on its final table (row labels are the table's index).
# Margins are wide on purpose: they check the paper's finding, not this machine's speed.
CHECKS: dict[str, Callable[[dict], None]] = {}


def check(name: str) -> Callable[[Callable[[dict], None]], Callable[[dict], None]]:
    def register(fn: Callable[[dict], None]) -> Callable[[dict], None]:
        CHECKS[name] = fn
        return fn

    return register


@check("01-quickstart")
def _check_quickstart(t: dict) -> None:
    assert _number(_cell(t, "p99 latency at 50 q/s (ms)")) > 0
    v1, v2, back = _numbers(_cell(t, "served accuracy v1 / v2 / after rollback"))
    assert v1 > 0.9 and v2 < v1 and back == v1, (v1, v2, back)  # the rollback serves version 1 again


@check("02-adaptive-batching")
def _check_batching(t: dict) -> None:
    # Batching off serves at most 100 rows/s of the 10 ms model; AIMD carries hundreds more.
    assert _number(_cell(t, "AIMD vs no batching, 10 ms-per-call model (× goodput)")) >= 3
    assert _number(_cell(t, "fixed batch of 8 vs no batching, 10 ms-per-call model (×)")) >= 2
    assert _number(_cell(t, "AIMD vs no batching, linear SVM (× goodput)")) >= 1.5
    assert _number(_cell(t, "delayed batching 2 ms vs none, linear SVM (× goodput)")) > 0
    # How much the delay fills batches depends on the arrival pattern: shown, not judged.
    assert len(_numbers(_cell(t, "mean batch without / with the 2 ms delay"))) == 2
    at_100, at_25 = _numbers(_cell(t, "AIMD batch cap, SLO 100 ms -> 25 ms"))
    assert at_25 < at_100, "tightening the SLO should shrink the batch cap"


@check("03-prediction-cache")
def _check_cache(t: dict) -> None:
    assert _number(_cell(t, "rows computed for 16 identical concurrent queries")) == 1
    cached, recomputed = _numbers(_cell(t, "model evaluations per model for 600 feedbacks, cached / not"))
    assert cached == 0 and recomputed == 600, (cached, recomputed)
    assert _number(_cell(t, "cache hit rate, Zipf(1.2) over 2,000 inputs")) > 0.5
    assert _number(_cell(t, "feedback, predictions in the cache (updates/s)")) > 0


@check("04-model-selection")
def _check_selection(t: dict) -> None:
    exp4 = _number(_cell(t, "Exp4 error or failure, best model crashing for 200 of 700 queries"))
    exp3 = _number(_cell(t, "Exp3 error or failure, same run"))
    broken = _number(_cell(t, "formerly best model alone (m0)"))
    assert exp4 < broken and exp3 < broken, (exp4, exp3, broken)
    # Both move weight off the crashing model within 150 of its 200 failing queries ...
    drop4, drop3 = _numbers(_cell(t, "weight on m0 < 0.1 after, Exp4 / Exp3 (failing queries)"))
    assert drop4 < 150 and drop3 < 150, (drop4, drop3)
    # ... and back once it heals: Exp4 (deterministic) within the run; Exp3, whose
    # recovery hangs on rare draws of m0, at least on its way (0-5 % of seeds need
    # more than the 350 queries left).
    assert _numbers(_cell(t, "weight on m0 > 0.5 again, Exp4 / Exp3 (queries after it heals)"))[0] < 350
    at_heal, at_end = _numbers(_cell(t, "Exp3 weight on m0 when it heals / at the end"))
    assert at_end > max(10 * at_heal, 0.1), (at_heal, at_end)
    all_agree, few_agree, _overall = _numbers(_cell(t, "error when all 5 models agree / 3 or fewer / overall"))
    assert all_agree < few_agree


@check("05-stragglers")
def _check_stragglers(t: dict) -> None:
    mitigated = _number(_cell(t, "ensemble p99 with straggler mitigation (ms)"))
    waiting = _number(_cell(t, "ensemble p99 waiting for every model (ms)"))
    assert mitigated < waiting, (mitigated, waiting)
    # A model that missed the deadline counts as disagreeing: its answers are never fully confident.
    assert _number(_cell(t, "highest confidence of an answer missing a model")) <= 0.75


@check("06-personalization")
def _check_personalization(t: dict) -> None:
    personal = _number(_cell(t, "error with a context per user (second half)"))
    assert personal < _number(_cell(t, "error without contexts (second half)"))
    assert _cell(t, "every user's weights on their own dialect's model") == "yes"


@check("07-torch-gpu")
def _check_torch(t: dict) -> None:
    assert all(d == "cpu" or d.startswith("cuda") for d in _cell(t, "device the replicas run on").split(", "))
    assert _number(_cell(t, "AIMD vs batching off (× goodput)")) >= 1.5
    assert _number(_cell(t, "2 replicas vs 1, AIMD (× goodput)")) > 0


# ----------------------------------------------------------------------------- the tests


@pytest.fixture(scope="module")
def jupyter(tmp_path_factory):
    """One Jupyter server with the extension for every notebook (they clean up after themselves)."""
    home = tmp_path_factory.mktemp("notebooks-jupyter")
    root = home / "root"
    root.mkdir()
    # The kernels start in the root, like a notebook's kernel in the notebook's folder.
    shutil.copy(os.path.join(NOTEBOOKS_DIR, "_nbhelpers.py"), root)
    state = str(home / "state")
    jp = JupyterServer(str(root), state).start()
    try:
        yield jp
    finally:
        jp.stop()
        wait_until(lambda: not worker_pids(state), timeout=30, message="workers to exit")


def _deployed(jp: JupyterServer) -> tuple[list[str], list[str]]:
    get = lambda what: [x["name"] for x in requests.get(f"{jp.clipper_url}/api/{what}", headers=jp.headers,
                                                          timeout=30).json()[what]]
    return get("apps"), get("models")


def _wipe(jp: JupyterServer) -> None:
    """Remove what a failed notebook left, so that the next one starts clean."""
    apps, models = _deployed(jp)
    for app in apps:
        requests.delete(f"{jp.clipper_url}/api/apps/{app}", headers=jp.headers, timeout=60)
    for model in models:
        requests.delete(f"{jp.clipper_url}/api/models/{model}", headers=jp.headers, timeout=60)


@pytest.mark.slow
@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs_and_reproduces_the_paper(jupyter: JupyterServer, name: str) -> None:
    try:
        nb, table, elapsed = run_notebook(jupyter, name)
        left_apps, left_models = _deployed(jupyter)
    finally:
        _wipe(jupyter)
    print(f"\n[{name}] {elapsed:.1f} s; final table:")
    for label, row in zip(table["index"], table["rows"]):
        print(f"  {label}: {dict(zip(table['columns'], row))}")

    assert OURS in table["columns"] and PAPER in table["columns"], table["columns"]
    for label, row in zip(table["index"], table["rows"]):
        ours, paper = row[table["columns"].index(OURS)], row[table["columns"].index(PAPER)]
        assert ours not in (None, "", "nan"), f"{name}: no measured value for {label!r}"
        assert paper not in (None, "", "nan"), f"{name}: no paper value for {label!r}"
    CHECKS[name](table)
    with open(os.path.join(ARTIFACTS_DIR, f"{name}.ipynb")) as f:
        assert JUPYTER_TOKEN not in f.read(), f"{name} shows the Jupyter token in its outputs"
    # Nothing left behind: the notebook cleans up after itself.
    assert (left_apps, left_models) == ([], []), f"{name} left apps {left_apps} and models {left_models}"
    wait_until(lambda: not worker_pids(jupyter.state_dir), timeout=30, message=f"the workers of {name} to exit")


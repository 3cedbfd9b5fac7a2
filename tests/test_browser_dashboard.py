"""The dashboards in a real browser: Debian's Chromium driven by Playwright.

1. The standalone page draws points in all six plots (read from its Bokeh data
   sources) and its numbers change while load runs.
2. JupyterLab, opened on a notebook that shows the dashboard, renders the widget.

Screenshots go to ``test-artifacts/`` (gitignored). Skipped only when
``/usr/bin/chromium`` is missing.
"""

from __future__ import annotations

import math
import os
import re
import secrets
import signal
import subprocess
import sys
import time

import nbformat
import pytest
import requests

from _widgets_fixtures import ARTIFACTS, chromium, launch, ones, zeros  # noqa: F401 - fixture
from clipper_nb.wire.ports import free_port
from clipper_nb.kernel.client import Client
from conftest import TOKEN, wait_until, worker_pids

pytestmark = pytest.mark.browser


def _load(url: str, app: str, qps: int, seconds: int) -> subprocess.Popen:
    """``clipper-nb load`` in its own process: the browser test only watches."""
    return subprocess.Popen([sys.executable, "-m", "clipper_nb.cli", "load", app, "--url", url, "--qps", str(qps),
                             "--duration", f"{seconds}s", "--features", "4", "--distinct", "5000", "--quiet"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _number(text: str) -> float | None:
    m = re.search(r"[-+]?\d+(\.\d+)?", text)
    return float(m.group()) if m else None


# For each source name: its length when a glyph of its plot draws it, -1 when no glyph
# of the plot uses it, null when the page has no such source.
_DRAWN_JS = """(names) => {
  const doc = Bokeh.documents[0];
  const out = {};
  for (const name of names) {
    const src = doc.get_model_by_name(name);
    const [app, key] = name.split("|");
    const plot = doc.get_model_by_name(`${app}|plot:${key.split("/")[0]}`);
    if (!src || !plot) { out[name] = null; continue; }
    out[name] = plot.renderers.some((r) => r.data_source && r.data_source.id === src.id) ? src.data.x.length : -1;
  }
  return out;
}"""


def _replica_names(url: str, model: str) -> list[str]:
    rows = requests.get(f"{url}/api/status", headers={"Authorization": f"token {TOKEN}"}, timeout=30).json()
    return sorted(r["name"] for r in rows["replicas"] if r["model"] == model)


def test_standalone_dashboard_page_renders_and_updates(server, client, chromium):
    from playwright.sync_api import sync_playwright

    client.deploy(zeros, "page-model", app="page-app", slo_ms=50, replicas=2)
    client.deploy(ones, "page-model-b")
    client.link("page-app", "page-model-b")
    client.set_policy("page-app", "exp3")
    client.deploy(zeros, "other-model", app="other-app", slo_ms=200)
    # Every series of all six plots: replicas by the public name api/status shows.
    series = ["latency", "throughput", "cache", "misses", "weights/page-model", "weights/page-model-b",
              *(f"batch/{m}/{r}" for m in ("page-model", "page-model-b") for r in _replica_names(server.url, m))]
    names = [f"page-app|{k}" for k in series]
    assert len(names) == 9
    load = _load(server.url, "page-app", 120, 120)  # distinct inputs: cache misses; stopped when the test is done
    try:
        with sync_playwright() as p:
            browser = launch(p)
            try:
                page = browser.new_page(viewport={"width": 1400, "height": 1100})
                errors: list[str] = []
                page.on("pageerror", lambda e: errors.append(str(e)))
                page.goto(f"{server.url}/dashboard?token={TOKEN}", timeout=120_000)
                page.wait_for_function("window.Bokeh && Bokeh.documents.length > 0"
                                       " && Bokeh.documents[0].get_model_by_name('page-app|latency')"
                                       " && Bokeh.documents[0].get_model_by_name('page-app|latency').data.x.length > 0",
                                       timeout=60_000)
                assert "token" not in page.url  # taken out of the address bar
                assert page.locator("canvas").count() >= 12  # 6 plots per app
                qps = page.locator("[data-app='page-app'] .cnb-qps b")
                seen, lengths, drawn = set(), set(), {}
                end = time.monotonic() + 90  # a loaded 2-core machine renders slowly
                while time.monotonic() < end and (len(seen) < 3 or len(lengths) < 3
                                                  or not all((n or 0) >= 2 for n in drawn.values())):
                    seen.add(qps.inner_text())
                    client.feedback("page-app", [0.5] * 4, 0)  # page-model is right: its weight grows
                    drawn = page.evaluate(_DRAWN_JS, names)
                    lengths.add(drawn["page-app|latency"])
                    page.wait_for_timeout(700)
                assert len(seen) >= 3, seen  # the numbers change while load runs
                assert len(lengths) >= 3, lengths  # and the plots stream new seconds
                assert max(_number(v) or 0 for v in seen) > 20
                # every plot draws points: latency, throughput, batch (each replica), weights, cache, misses
                assert all((n or 0) >= 2 for n in drawn.values()), drawn
                hits = page.evaluate("Bokeh.documents[0].get_model_by_name('page-app|cache').data.hit_rate")
                assert all(h == 0 for h in hits if h is not None and not math.isnan(h)), hits  # every input missed
                weights = page.evaluate("""Bokeh.documents[0].get_model_by_name('page-app|weights/page-model')
                                           .data.p""")
                assert weights and weights[-1] > 0.5, weights
                header = page.locator("[data-app='page-app']").inner_text()
                assert "SLO" in header and "50 ms" in header and "3/3" in header and "exp3" in header
                assert "live" in page.locator(".cnb-status").inner_text()
                page.wait_for_timeout(1500)
                page.screenshot(path=os.path.join(ARTIFACTS, "dashboard-page.png"), full_page=True)
                assert not errors, errors
            finally:
                browser.close()
    finally:
        load.terminate()
        load.wait(30)


NOTEBOOK = [
    """\
import clipper_nb
c = clipper_nb.connect()  # from CLIPPER_NB_URL / CLIPPER_NB_TOKEN
import numpy as np
# distinct inputs, so that queries miss the prediction cache and form batches
dash = c.dashboard("lab-app", interval=0.5, load_inputs=np.random.default_rng(0).random((20000, 4)).tolist())
dash""",
    "dash.load.start(qps=80)",
]


def _jupyter(app: str, root: str, token: str, env: dict, *args: str,
             base_url: str = "/") -> tuple[subprocess.Popen, str]:
    """``jupyter lab`` or ``jupyter server`` on a free port, in its own session; returns
    the process and the URL of ``base_url``."""
    port = free_port()
    log_path = os.path.join(root, f"{app}.log")
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "jupyter", app, "--allow-root", "--no-browser", f"--port={port}",
             "--ip=127.0.0.1", f"--ServerApp.token={token}", f"--ServerApp.root_dir={root}",
             f"--ServerApp.base_url={base_url}", *args],
            stdout=log, stderr=subprocess.STDOUT, env=env, cwd=root, start_new_session=True)
    url = f"http://127.0.0.1:{port}{base_url.rstrip('/')}"

    def up() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"jupyter {app} exited:\n{open(log_path).read()[-3000:]}")
        try:
            return requests.get(f"{url}/api/status?token={token}", timeout=2).status_code == 200
        except requests.ConnectionError:
            return False

    wait_until(up, timeout=120, interval=0.5, message=f"jupyter {app} to start")
    return proc, url


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)  # its own session: the kernels go with it
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_jupyterlab_renders_the_dashboard_widget(server, client, chromium, tmp_path):
    from playwright.sync_api import sync_playwright

    client.deploy(zeros, "lab-model", app="lab-app", slo_ms=50)
    root = str(tmp_path)
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(src) for src in NOTEBOOK])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, os.path.join(root, "dash.ipynb"))
    lab_token = secrets.token_hex(16)
    env = {**os.environ, "CLIPPER_NB_URL": server.url, "CLIPPER_NB_TOKEN": TOKEN,
           "JUPYTER_DATA_DIR": f"{root}/data", "JUPYTER_RUNTIME_DIR": f"{root}/runtime"}
    proc, url = _jupyter("lab", root, lab_token, env, "--LabApp.expose_app_in_browser=True",
                         f"--LabApp.workspaces_dir={root}/workspaces", f"--LabApp.user_settings_dir={root}/settings")
    try:
        with sync_playwright() as p:
            browser = launch(p)
            try:
                page = browser.new_page(viewport={"width": 1400, "height": 1300})
                try:
                    _run_dashboard_notebook(page, url, lab_token)
                except Exception:
                    page.screenshot(path=os.path.join(ARTIFACTS, "jupyterlab-failure.png"))
                    raise
            finally:
                browser.close()
    finally:
        _stop(proc)


def _run_dashboard_notebook(page, url: str, lab_token: str) -> None:
    page.goto(f"{url}/lab/workspaces/cnb/tree/dash.ipynb?reset&token={lab_token}", timeout=120_000)
    page.wait_for_selector(".jp-Notebook", timeout=120_000)
    _accept_kernel_dialog(page)
    page.wait_for_function("window.jupyterapp && window.jupyterapp.shell.currentWidget"
                           " && window.jupyterapp.shell.currentWidget.sessionContext"
                           " && window.jupyterapp.shell.currentWidget.sessionContext.session"
                           " && window.jupyterapp.shell.currentWidget.sessionContext.session.kernel",
                           timeout=120_000)
    page.evaluate("window.jupyterapp.commands.execute('notebook:run-all-cells')")
    output = page.locator(".jp-OutputArea-output")
    canvases = page.locator(".jp-OutputArea canvas")  # Playwright's CSS pierces Bokeh's shadow roots
    wait_until(lambda: canvases.count() >= 6, timeout=120, interval=0.5, message="six Bokeh plots")
    qps = page.locator(".jp-OutputArea .cnb-qps b").first
    wait_until(lambda: (_number(qps.inner_text()) or 0) > 20, timeout=60, interval=0.5,
               message="the widget's header to show the load")
    body = output.all_inner_texts()
    assert not any("Cannot read properties" in t or "Traceback" in t for t in body), body
    _dismiss_news_toast(page)
    canvases.first.scroll_into_view_if_needed()
    page.wait_for_timeout(2500)  # a few more seconds of streamed points
    page.screenshot(path=os.path.join(ARTIFACTS, "jupyterlab-dashboard.png"))
    status = page.locator(".jp-OutputArea").first.inner_text()
    assert "live" in status and "lab-app" in status, status


def _accept_kernel_dialog(page) -> None:
    """Accept JupyterLab's "Select Kernel" dialog if it shows (it does on some starts)."""
    try:
        page.wait_for_selector(".jp-Dialog", timeout=8_000)
    except Exception:  # noqa: BLE001 - no dialog: the kernel started on its own
        return
    if "Kernel" in page.locator(".jp-Dialog").inner_text():
        page.locator(".jp-Dialog .jp-mod-accept").click()


def _dismiss_news_toast(page) -> None:
    """Answer JupyterLab's "get notified about news?" toast, so it hides no plot."""
    no = page.locator(".jp-Notification-Toast-Close, .Toastify__toast button:has-text('No')")
    if no.count():
        no.first.click()


def test_dashboard_page_inside_jupyter_server(chromium, tmp_path):
    """``{base_url}clipper/dashboard?token=...`` under Jupyter's own authentication."""
    from playwright.sync_api import sync_playwright

    root, token = str(tmp_path), secrets.token_hex(16)
    with open(os.path.join(root, "config.py"), "w") as f:
        f.write('c.ServerApp.jpserver_extensions = {"clipper_nb": True}\n')
    env = {**os.environ, "JUPYTER_DATA_DIR": f"{root}/data", "JUPYTER_RUNTIME_DIR": f"{root}/runtime"}
    proc, url = _jupyter("server", root, token, env, f"--config={root}/config.py", base_url="/base/")
    try:
        prefix = f"{url}/clipper"
        jupyter_client = Client(prefix, token=token)
        jupyter_client.wait_ready(120)
        jupyter_client.deploy(zeros, "jp-model", app="jp-app", slo_ms=100)
        assert requests.get(f"{prefix}/dashboard", timeout=30).status_code in (302, 401, 403)  # not logged in
        load = subprocess.Popen([sys.executable, "-m", "clipper_nb.cli", "load", "jp-app", "--url", prefix,
                                 f"--token={token}", "--qps", "60", "--duration", "120s", "--features", "4",
                                 "--distinct", "5000", "--quiet"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            with sync_playwright() as p:
                browser = launch(p)
                try:
                    page = browser.new_page(viewport={"width": 1400, "height": 700})
                    page.goto(f"{prefix}/dashboard?token={token}", timeout=120_000)
                    page.wait_for_function("window.Bokeh && Bokeh.documents.length > 0"
                                           " && Bokeh.documents[0].get_model_by_name('jp-app|latency')"
                                           " && Bokeh.documents[0].get_model_by_name('jp-app|latency').data.x.length > 1",
                                           timeout=90_000)
                    assert "token" not in page.url
                    qps = page.locator("[data-app='jp-app'] .cnb-qps b")
                    wait_until(lambda: (_number(qps.inner_text()) or 0) > 10, timeout=60, interval=0.5,
                               message="the page to show the load")
                    assert "live" in page.locator(".cnb-status").inner_text()
                    page.screenshot(path=os.path.join(ARTIFACTS, "jupyter-dashboard-page.png"))
                finally:
                    browser.close()
        finally:
            load.terminate()
            load.wait(30)
    finally:
        _stop(proc)
        wait_until(lambda: not worker_pids(root), timeout=30, message="the extension's workers to exit")

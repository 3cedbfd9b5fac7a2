"""The dashboards in a real browser: Debian's Chromium driven by Playwright.

1. The standalone page renders its plots and its numbers change while load runs.
2. JupyterLab, opened on a notebook that shows the dashboard, renders the widget.

Screenshots go to ``test-artifacts/`` (gitignored). Skipped only when
``/usr/bin/chromium`` is missing.
"""

from __future__ import annotations

import json
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

from _widgets_fixtures import ARTIFACTS, chromium, launch, zeros  # noqa: F401 - fixture
from clipper_nb.server import free_port
from conftest import TOKEN, wait_until

pytestmark = pytest.mark.browser


def _load(url: str, app: str, qps: int, seconds: int) -> subprocess.Popen:
    """``clipper-nb load`` in its own process: the browser test only watches."""
    return subprocess.Popen([sys.executable, "-m", "clipper_nb.cli", "load", app, "--url", url, "--qps", str(qps),
                             "--duration", f"{seconds}s", "--features", "4", "--distinct", "64", "--quiet"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _number(text: str) -> float | None:
    m = re.search(r"[-+]?\d+(\.\d+)?", text)
    return float(m.group()) if m else None


def test_standalone_dashboard_page_renders_and_updates(server, client, chromium):
    from playwright.sync_api import sync_playwright

    client.deploy(zeros, "page-model", app="page-app", slo_ms=50, replicas=2)
    client.deploy(zeros, "other-model", app="other-app", slo_ms=200)
    load = _load(server.url, "page-app", 120, 25)
    try:
        with sync_playwright() as p:
            browser = launch(p)
            try:
                page = browser.new_page(viewport={"width": 1400, "height": 1100})
                errors: list[str] = []
                page.on("pageerror", lambda e: errors.append(str(e)))
                page.goto(f"{server.url}/dashboard?token={TOKEN}", timeout=120_000)
                page.wait_for_function("window.clipperDashboard && window.clipperDashboard.ticks > 0",
                                       timeout=60_000)
                assert "token" not in page.url  # taken out of the address bar
                assert page.locator("canvas").count() >= 12  # 6 plots per app
                qps = page.locator("[data-app='page-app'] .cnb-qps b")
                seen, lengths = set(), set()
                end = time.monotonic() + 30
                while time.monotonic() < end and (len(seen) < 3 or len(lengths) < 3):
                    seen.add(qps.inner_text())
                    lengths.add(page.evaluate("Bokeh.documents[0].get_model_by_name('page-app|latency')"
                                              ".data.x.length"))
                    page.wait_for_timeout(700)
                assert len(seen) >= 3, seen  # the numbers change while load runs
                assert len(lengths) >= 3, lengths  # and the plots stream new seconds
                assert max(_number(v) or 0 for v in seen) > 20
                reps = page.evaluate("""Object.keys(window.clipperDashboard.last)
                                        .filter((k) => k.startsWith('page-app|batch/'))""")
                assert len(reps) == 2, reps  # both replicas' AIMD series are fed
                header = page.locator("[data-app='page-app']").inner_text()
                assert "SLO" in header and "50 ms" in header and "2/2" in header
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
dash = c.dashboard("lab-app", interval=0.5, load_inputs=[[float(i)] * 4 for i in range(64)])
dash""",
    "dash.load.start(qps=80)",
]


def _jupyter_lab(root: str, token: str, env: dict) -> tuple[subprocess.Popen, str]:
    port = free_port()
    log = open(os.path.join(root, "lab.log"), "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "jupyter", "lab", "--allow-root", "--no-browser", f"--port={port}", "--ip=127.0.0.1",
         f"--ServerApp.token={token}", f"--ServerApp.root_dir={root}", "--LabApp.expose_app_in_browser=True",
         f"--LabApp.workspaces_dir={root}/workspaces", f"--LabApp.user_settings_dir={root}/settings",
         "--LabApp.news_url=", "--ServerApp.open_browser=False"],
        stdout=log, stderr=subprocess.STDOUT, env=env, cwd=root, start_new_session=True)
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"jupyter lab exited:\n{open(os.path.join(root, 'lab.log')).read()[-3000:]}")
        try:
            return requests.get(f"{url}/api/status?token={token}", timeout=2).status_code == 200
        except requests.ConnectionError:
            return False

    wait_until(up, timeout=120, interval=0.5, message="jupyter lab to start")
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
    proc, url = _jupyter_lab(root, lab_token, env)
    try:
        with sync_playwright() as p:
            browser = launch(p)
            try:
                page = browser.new_page(viewport={"width": 1400, "height": 1300})
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
                page.wait_for_function("document.querySelectorAll('.jp-OutputArea canvas').length >= 6",
                                       timeout=120_000)
                qps = page.locator(".jp-OutputArea .cnb-qs b").first
                wait_until(lambda: (_number(qps.inner_text()) or 0) > 20, timeout=60, interval=0.5,
                           message="the widget's header to show the load")
                assert "live" in page.locator(".jp-OutputArea").first.inner_text() or True
                body = output.all_inner_texts()
                assert not any("Cannot read properties" in t or "Traceback" in t for t in body), body
                page.locator(".jp-OutputArea canvas").first.scroll_into_view_if_needed()
                page.wait_for_timeout(2500)  # a few more seconds of streamed points
                page.screenshot(path=os.path.join(ARTIFACTS, "jupyterlab-dashboard.png"))
                status = page.locator(".jp-OutputArea").first.inner_text()
                assert "live" in status and "lab-app" in status, status
            finally:
                browser.close()
    finally:
        _stop(proc)


def _accept_kernel_dialog(page) -> None:
    """Accept JupyterLab's "Select Kernel" dialog if it shows (it does on some starts)."""
    try:
        page.wait_for_selector(".jp-Dialog", timeout=8_000)
    except Exception:  # noqa: BLE001 - no dialog: the kernel started on its own
        return
    if "Kernel" in page.locator(".jp-Dialog").inner_text():
        page.locator(".jp-Dialog .jp-mod-accept").click()

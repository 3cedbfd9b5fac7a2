"""A newcomer's first notebook in a real JupyterLab, in Chromium: with a token and token-less.

JupyterLab starts with the clipper_nb extension (enabled by the install's Jupyter config,
as a user gets it), the browser opens ``01-quickstart.ipynb`` and runs every cell
("Run All", as a person would), and the test reads the notebook model back from the
page: every code cell ran, none produced an error. Token-less JupyterLab
(``--ServerApp.token=``) is the setup of many containers: Jupyter then checks XSRF on the
kernel's POSTs, which the kernel's client must pass by itself.
"""

from __future__ import annotations

import os
import secrets
import shutil
import time

import pytest

from _jupyter_fixtures import REPO
from _widgets_fixtures import ARTIFACTS, chromium, launch  # noqa: F401 - fixture
from conftest import wait_until
from test_browser_dashboard import _accept_kernel_dialog, _dismiss_news_toast, _jupyter, _stop

pytestmark = [pytest.mark.browser, pytest.mark.slow]

# The notebook model as the page holds it: how many code cells ran, which failed, and why.
_PROGRESS_JS = """() => {
  const panel = window.jupyterapp.shell.currentWidget;
  if (!panel || !panel.content || !panel.sessionContext) return null;
  const cells = panel.content.widgets.filter((c) => c.model.type === "code");
  const errors = [];
  for (const c of cells) {
    for (const o of c.model.outputs.toJSON()) {
      if (o.output_type === "error") errors.push(`${o.ename}: ${o.evalue}`);
    }
  }
  return {code: cells.length, ran: cells.filter((c) => c.model.executionCount !== null).length,
          busy: panel.sessionContext.kernelDisplayStatus, errors};
}"""


@pytest.mark.parametrize("with_token", [True, False], ids=["token", "token-less"])
def test_jupyterlab_runs_the_quickstart_end_to_end(chromium, tmp_path, with_token):
    from playwright.sync_api import sync_playwright

    root = str(tmp_path / "work")
    os.makedirs(root)
    for name in ("01-quickstart.ipynb", "_nbhelpers.py"):
        shutil.copy(os.path.join(REPO, "notebooks", name), root)
    token = secrets.token_hex(16) if with_token else ""
    env = {**os.environ, "JUPYTER_DATA_DIR": f"{tmp_path}/data", "JUPYTER_RUNTIME_DIR": f"{tmp_path}/runtime",
           "JUPYTER_CONFIG_PATH": os.path.join(REPO, "jupyter-config"), "IPYTHONDIR": f"{tmp_path}/ipython"}
    for var in ("CLIPPER_NB_URL", "CLIPPER_NB_TOKEN", "CLIPPER_NB_JUPYTER_INFO"):
        env.pop(var, None)
    proc, url = _jupyter("lab", root, token, env, "--LabApp.expose_app_in_browser=True",
                         f"--LabApp.workspaces_dir={tmp_path}/workspaces",
                         f"--LabApp.user_settings_dir={tmp_path}/settings",
                         f"--ClipperNB.state_dir={tmp_path}/state")
    try:
        with sync_playwright() as p:
            browser = launch(p)
            page = browser.new_page(viewport={"width": 1300, "height": 1000})
            try:
                query = f"?reset&token={token}" if token else "?reset"
                page.goto(f"{url}/lab/workspaces/qs/tree/01-quickstart.ipynb{query}", timeout=120_000)
                page.wait_for_selector(".jp-Notebook", timeout=120_000)
                _accept_kernel_dialog(page)
                wait_until(lambda: (page.evaluate(_PROGRESS_JS) or {}).get("busy") == "idle", timeout=120,
                           interval=0.5, message="the kernel to start")
                before = page.evaluate(_PROGRESS_JS)
                assert before["code"] >= 10 and before["ran"] == 0, before  # the notebook, not yet run
                started = time.monotonic()
                # (the command's promise settles once every cell has run: evaluate waits for it)
                page.evaluate("window.jupyterapp.commands.execute('notebook:run-all-cells')")
                _dismiss_news_toast(page)

                def finished() -> bool:
                    state = page.evaluate(_PROGRESS_JS)
                    if state["errors"]:
                        raise AssertionError(f"a cell failed: {state['errors']}")
                    return state["ran"] == state["code"] and state["busy"] == "idle"

                wait_until(finished, timeout=240, interval=1.0, message="every cell of 01-quickstart to run")
                summary = page.locator(".jp-OutputArea-output").all_inner_texts()
                assert any("served accuracy" in t for t in summary), "the final table is not shown"
                print(f"\n[quickstart in JupyterLab, {'token' if token else 'token-less'}] "
                      f"{time.monotonic() - started:.0f} s")
            except Exception:
                page.screenshot(path=os.path.join(ARTIFACTS, f"quickstart-{'token' if token else 'open'}.png"))
                raise
            finally:
                browser.close()
    finally:
        _stop(proc)

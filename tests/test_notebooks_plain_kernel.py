"""Every teaching notebook in a plain kernel with no server anywhere (VS Code, nbconvert, CI).

nbclient starts an ordinary ``python3`` kernel in a copy of the notebooks folder, with no
Jupyter server and no ``CLIPPER_NB_*`` variables: the first ``clipper_nb.connect()``
finds nothing, starts a server owned by the kernel and says so in one line; each
notebook then runs top to bottom and cleans up what it made. When nbclient shuts the
kernel down, that server and its workers go with it. (``tests/test_notebooks.py`` runs
the same notebooks in kernels of a real Jupyter server and checks their tables.)
"""

from __future__ import annotations

import os
import re

import nbformat
import pytest
from nbclient import NotebookClient

from _jupyter_fixtures import REPO, pids_with, plain_kernel_folder
from conftest import wait_until

NOTEBOOKS_DIR = os.path.join(REPO, "notebooks")
NOTEBOOKS = sorted(f[:-3] for f in os.listdir(NOTEBOOKS_DIR) if re.fullmatch(r"\d\d-[a-z0-9-]+\.py", f))
STARTED = re.compile(r"^clipper-nb: no server found; started one at (http://127\.0\.0\.1:\d+) "
                     r"\(stops with this kernel\)$", re.M)


@pytest.mark.slow
@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs_in_a_plain_kernel_with_no_server(tmp_path, monkeypatch, name):
    for var in ("CLIPPER_NB_URL", "CLIPPER_NB_TOKEN", "CLIPPER_NB_JUPYTER_INFO"):
        monkeypatch.delenv(var, raising=False)
    folder = plain_kernel_folder(tmp_path, monkeypatch)
    nb = nbformat.read(os.path.join(NOTEBOOKS_DIR, f"{name}.ipynb"), as_version=4)
    NotebookClient(nb, timeout=150, kernel_name="python3", resources={"metadata": {"path": str(folder)}}).execute()

    text = "\n".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    started = STARTED.findall(text)
    assert len(started) == 1, f"{name}: expected one 'started one at' line, got {started}"
    if name == "01-quickstart":
        assert '"batch_predictions"' in text  # the curl cell reached the server with c.headers
    # The kernel is gone: the server it started (and every worker) stops with it.
    wait_until(lambda: not pids_with(started[0].rsplit(":", 1)[1], "clipper_nb"), timeout=30,
               message=f"the server {name} started to exit")

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
from nbchecks import OURS, PAPER, SETUP, unit

NOTEBOOKS_DIR = os.path.join(REPO, "notebooks")
ARTIFACTS_DIR = os.path.join(REPO, "test-artifacts", "notebooks")
#: Every notebook, by the name of its source ``notebooks/NN-name.py``; each needs a check in tests/nbchecks/nbNN.py.
NOTEBOOKS = sorted(f[:-3] for f in os.listdir(NOTEBOOKS_DIR) if re.fullmatch(r"\d\d-[a-z0-9-]+\.py", f))
#: The notebooks' helper modules (``_nbhelpers.py``, ``_lessonNN.py``): copied beside them.
NOTEBOOK_HELPERS = sorted(f for f in os.listdir(NOTEBOOKS_DIR) if re.fullmatch(r"_[a-z0-9_]+\.py", f))
#: Longest a single cell may run; a notebook as a whole should take well under 2 minutes.
CELL_TIMEOUT_S = 150

# Read back the final table and the exercises' reference answers from the kernel after the
# last cell (not saved in the notebook).
_PROBE = """\
import json as _json
print(_json.dumps({"exercises": exercises.verify_references() if "exercises" in globals() else None,
                   "columns": [str(c) for c in summary.columns],
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


def _checks() -> dict[str, Callable[[dict], None]]:
    """Each notebook's check of its final table: ``tests/nbchecks/nbNN.py``'s ``check``."""
    import importlib

    return {name: importlib.import_module(f"nbchecks.nb{name[:2]}").check for name in NOTEBOOKS}


# ----------------------------------------------------------------------------- the tests


def _static_images(nb: Any) -> int:
    """How many PNG outputs of ``nb`` draw something: more than one colour in the plot area."""
    import base64
    import io

    from PIL import Image

    drawn = 0
    for cell in nb.cells:
        for output in cell.get("outputs", []) if cell.cell_type == "code" else []:
            data = output.get("data", {}).get("image/png")
            if data:
                image = Image.open(io.BytesIO(base64.b64decode(data))).convert("L")
                pixels = getattr(image, "get_flattened_data", image.getdata)()
                drawn += len(set(pixels)) > 8
    return drawn


@pytest.fixture(scope="module")
def jupyter(tmp_path_factory):
    """One Jupyter server with the extension for every notebook (they clean up after themselves)."""
    home = tmp_path_factory.mktemp("notebooks-jupyter")
    root = home / "root"
    root.mkdir()
    # The kernels start in the root, like a notebook's kernel in the notebook's folder.
    for helper in NOTEBOOK_HELPERS:
        shutil.copy(os.path.join(NOTEBOOKS_DIR, helper), root)
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

    assert table["columns"] == [OURS, PAPER, SETUP], table["columns"]
    for label, row in zip(table["index"], table["rows"]):
        ours, paper, setup = row
        assert ours not in (None, "", "nan"), f"{name}: no measured value for {label!r}"
        assert paper not in (None, "", "nan"), f"{name}: no paper value for {label!r}"
        assert setup not in (None, "", "nan"), f"{name}: {label!r} does not say how its setup differs"
        # The two columns measure the same kind of quantity (a paper finding in words is compared in words).
        if unit(paper) is not None:
            assert unit(ours) == unit(paper), f"{name}: {label!r} compares {ours!r} with {paper!r}"
    _checks()[name](table)
    assert table["exercises"], f"{name} has no exercises"
    assert all(table["exercises"].values()), f"{name}: reference answers that fail their check: {table['exercises']}"
    assert _static_images(nb), f"{name} shows no static image (a saved copy of it would show no plot)"
    with open(os.path.join(ARTIFACTS_DIR, f"{name}.ipynb")) as f:
        assert JUPYTER_TOKEN not in f.read(), f"{name} shows the Jupyter token in its outputs"
    # Nothing left behind: the notebook cleans up after itself.
    assert (left_apps, left_models) == ([], []), f"{name} left apps {left_apps} and models {left_models}"
    wait_until(lambda: not worker_pids(jupyter.state_dir), timeout=30, message=f"the workers of {name} to exit")


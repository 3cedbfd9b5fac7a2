"""The teaching notebooks leave a user's own apps and models alone.

A notebook runs against whatever clipper-nb server its kernel finds, and that may be a
user's own, with their objects on it. Here one real ``clipper-nb serve`` holds a user's
application ``quickstart`` (notebook 01's name), model ``m0`` with two versions and app
``fig8-exp4`` (notebook 04's), model ``dialect-0`` and app ``speech-personal-1``
(notebook 06's), and app ``slow`` (notebook 03's, which deploys to it with ``%%clipper deploy``). Each notebook runs top to bottom in a plain kernel pointed at that
server by ``CLIPPER_NB_URL`` / ``CLIPPER_NB_TOKEN``; afterwards the user's objects are
exactly as they were (same versions, links, SLO, policy, answers), nothing the notebook
made is left, and the notebook still passes its own checks (``tests/nbchecks``) and
exercises: it named its objects with ``_nbhelpers.fresh_names`` (suffix ``-2``).
"""

from __future__ import annotations

import importlib
import json
import os

import nbformat
import pytest
from nbclient import NotebookClient

from _jupyter_fixtures import REPO, plain_kernel_folder
from conftest import TOKEN, ServeProcess, wait_until, worker_pids
from test_notebooks import _PROBE

NOTEBOOKS_DIR = os.path.join(REPO, "notebooks")
#: What the user has on the server before any notebook runs: ``{app: (slo_ms, policy, models)}``.
USER_APPS = {"quickstart": (42.0, "single", ["m0"]), "fig8-exp4": (250.0, "exp4", ["m0", "dialect-0"]),
             "speech-personal-1": (300.0, "exp4", ["dialect-0"]), "slow": (5000.0, "single", ["dialect-0"])}
USER_MODELS = {"m0": 2, "dialect-0": 1}   # model -> how many versions the user deployed


@pytest.fixture(scope="module")
def user_server(tmp_path_factory):
    """A ``clipper-nb serve`` (token required) with the user's own apps and models on it."""
    home = tmp_path_factory.mktemp("user-server")
    serve = ServeProcess(state_dir=str(home / "state"), public_predict=False).start()
    try:
        c = serve.client()

        def always_seven(batch):   # nested: cloudpickle sends it by value to the worker
            return [7 for _ in batch]

        for model, versions in USER_MODELS.items():
            for _ in range(versions):
                c.deploy(always_seven, model)
        for app, (slo_ms, policy, models) in USER_APPS.items():
            c.register_app(app, slo_ms=slo_ms, policy=policy, models=models, default_output=-1)
            c.feedback(app, [1.0, 2.0], 7)   # some selection state of the user's
        yield serve
    finally:
        serve.stop()
        wait_until(lambda: not worker_pids(str(home), include_fork_server=True), timeout=30,
                   message="workers to exit")


def _snapshot(serve: ServeProcess) -> dict:
    """Every app and model on the server, as the API describes them, plus the user's apps' answers."""
    c = serve.client()
    apps = {name: c.app(name) for name in c.apps()["name"]}
    models = {name: c.model(name) for name in c.models()["name"]}
    answers = {app: {k: v for k, v in c.predict(app, [1.0, 2.0]).items() if k in ("output", "default", "models_used")}
               for app in USER_APPS if app in apps}
    weights = {app: c.selection(app)["weights"] for app in USER_APPS if app in apps}
    return {"apps": apps, "models": models, "answers": answers, "weights": weights}


def _run(name: str, folder: str) -> tuple[str, dict]:
    """Execute ``notebooks/<name>.ipynb`` in a plain kernel; returns its text output and final table."""
    nb = nbformat.read(os.path.join(NOTEBOOKS_DIR, f"{name}.ipynb"), as_version=4)
    probe = nbformat.v4.new_code_cell(_PROBE)   # one more cell: reads the final table back
    nb.cells.append(probe)
    NotebookClient(nb, timeout=150, kernel_name="python3", resources={"metadata": {"path": folder}}).execute()
    text = "\n".join(o.get("text", "") for c in nb.cells[:-1] if c.cell_type == "code" for o in c.get("outputs", []))
    table = json.loads("".join(o.get("text", "") for o in probe.outputs if o.get("output_type") == "stream"))
    return text, table


@pytest.mark.slow
@pytest.mark.parametrize("name", ["01-quickstart", "03-prediction-cache", "04-model-selection", "06-personalization"])
def test_notebook_leaves_the_users_objects_alone(user_server, tmp_path, monkeypatch, name):
    monkeypatch.delenv("CLIPPER_NB_JUPYTER_INFO", raising=False)
    monkeypatch.setenv("CLIPPER_NB_URL", user_server.url)
    monkeypatch.setenv("CLIPPER_NB_TOKEN", TOKEN)
    folder = plain_kernel_folder(tmp_path, monkeypatch)
    before = _snapshot(user_server)
    assert set(before["apps"]) == set(USER_APPS) and set(before["models"]) == set(USER_MODELS), before
    assert before["models"]["m0"]["versions"] == ["1", "2"], before["models"]["m0"]

    text, table = _run(name, str(folder))

    # It used the server it was pointed at, and saw that the user's names were taken.
    assert "no server found" not in text, f"{name} started a server of its own"
    assert "already on this server" in text and "'-2'" in text, f"{name} did not pick fresh names:\n{text[-3000:]}"
    # The user's objects are exactly as they were, and nothing of the notebook's is left.
    after = _snapshot(user_server)
    assert after == before, f"{name} changed the user's objects or left its own:\n{before}\n{after}"
    # The notebook still passes its own checks and its exercises' reference answers.
    importlib.import_module(f"nbchecks.nb{name[:2]}").check(table)
    assert table["exercises"] and all(table["exercises"].values()), table["exercises"]

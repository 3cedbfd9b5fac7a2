"""A notebook that deploys a model, opens the dashboard, runs load and moves the SLO,
executed headless by nbclient in a real kernel against a real server."""

from __future__ import annotations

import json

import nbformat
import pytest
from nbclient import NotebookClient

from conftest import TOKEN

CELLS = [
    """\
import asyncio
import clipper_nb
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression

c = clipper_nb.connect()  # CLIPPER_NB_URL and CLIPPER_NB_TOKEN come from the environment
X, y = load_digits(return_X_y=True)
clf = LogisticRegression(max_iter=300).fit(X / 16.0, y)
c.deploy(clf, "digits-lr", app="digits", slo_ms=50)["replicas_up"]""",
    """\
dash = c.dashboard("digits", interval=0.5)
dash""",
    """\
dash.load.start(qps=100)  # what the load toggle does
await asyncio.sleep(4)""",
    """\
dash.slo.value = 20  # what letting go of the SLO slider does
await dash.settle()
await asyncio.sleep(3)
print("slo", c.app("digits")["slo_ms"], "ticks", dash.ticks, "sent", dash.load.last_result)""",
    """\
dash.load.stop()
await dash.load.wait()
dash.stop()  # freeze the plots into the widget state that the notebook saves
print("status", dash.status_line.value, "| load", dash.load.last_result.requests)""",
]


def _sources(render_bundle: str) -> dict[str, dict]:
    """ColumnDataSources (by name) in a BokehModel's serialised render bundle."""
    found: dict[str, dict] = {}

    def walk(node):
        if isinstance(node, dict):
            if node.get("name") == "ColumnDataSource" and "attributes" in node:
                attrs = node["attributes"]
                found[attrs.get("name", node["id"])] = dict(attrs["data"]["entries"])
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(json.loads(render_bundle) if isinstance(render_bundle, str) else render_bundle)
    return found


@pytest.mark.slow
def test_dashboard_notebook_runs_headless_and_saves_the_plots(server, monkeypatch, tmp_path):
    monkeypatch.setenv("CLIPPER_NB_URL", server.url)
    monkeypatch.setenv("CLIPPER_NB_TOKEN", TOKEN)
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(src) for src in CELLS])
    NotebookClient(nb, timeout=180, kernel_name="python3", store_widget_state=True,
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    nbformat.write(nb, str(tmp_path / "dashboard.ipynb"))

    text = lambda cell: "".join(o.get("text", "") for o in cell.outputs if o.output_type == "stream")  # noqa: E731
    slo_line = text(nb.cells[3]).split()
    assert slo_line[:2] == ["slo", "20.0"] and int(slo_line[3]) >= 3, text(nb.cells[3])
    assert "stopped" in text(nb.cells[4])
    assert int(text(nb.cells[4]).rsplit("load", 1)[1]) > 100
    # BokehJS went onto the page (inline) before the first plot, then the widget view
    mimes = [m for o in nb.cells[1].outputs for m in o.get("data", {})]
    assert "application/vnd.bokehjs_load.v0+json" in mimes
    assert "application/vnd.jupyter.widget-view+json" in mimes

    state = nb.metadata.widgets["application/vnd.jupyter.widget-state+json"]["state"]
    bokeh = [s["state"] for s in state.values() if s["model_name"] == "BokehModel"]
    assert len(bokeh) == 6
    sources: dict[str, dict] = {}
    for s in bokeh:
        sources.update(_sources(s["render_bundle"]))
    assert len(sources["latency"]["x"]) >= 5  # the saved plots hold the streamed seconds
    assert max(v for v in sources["throughput"]["qps"] if isinstance(v, (int, float))) >= 50
    slo = [v for v in sources["latency"]["slo"] if isinstance(v, (int, float))]
    assert slo[0] == 50.0 and slo[-1] == 20.0  # the SLO line moved with the slider
    assert any(k.startswith("batch/digits-lr/") for k in sources)
    assert TOKEN not in json.dumps(nb)  # neither in outputs nor in widget state

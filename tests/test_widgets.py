"""The live widgets without a browser: a recording comm, a real server, real workers.

Each test drives a widget the way a notebook frontend would (comm ``update`` messages
into the controls) and checks the protocol messages the widget sends back, and what
reached the server.
"""

from __future__ import annotations

import asyncio
import math
import time

import pytest
import requests

from _widgets_fixtures import comms, from_frontend, ones, zeros  # noqa: F401 - fixture
from clipper_nb.errors import NotFound
from clipper_nb.frontend.server import Server
from clipper_nb.widgets import Dashboard, SLOTuner, WeightsView
from conftest import TOKEN, client_of, wait_until, worker_pids


async def _next_second() -> None:
    """Sleep into the next wall-clock second: metrics report complete seconds only."""
    await asyncio.sleep(1.02 - (time.time() % 1.0))


async def _queries(client, app: str, n: int, context: str | None = None) -> None:
    for i in range(n):
        await asyncio.to_thread(client.predict, app, [float(i % 7)], context)


async def _eventually(predicate, timeout: float = 20.0, message: str = "condition") -> None:
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {timeout}s waiting for {message}")
        await asyncio.sleep(0.05)


async def test_dashboard_sends_one_stream_patch_per_tick(client, comms):
    client.deploy(zeros, "zero", app="zapp", slo_ms=200)
    dash = Dashboard("zapp", client=client, autostart=False)
    latency = dash.bokeh_models["latency"]
    opened = [m for m in comms.of(latency) if m.msg_type == "comm_open"]
    assert opened and "Latency" in str(opened[0].data["state"]["render_bundle"])
    xs: list[float] = []
    for _ in range(3):
        await _queries(client, "zapp", 5)
        await _next_second()
        seen = len(comms.of(latency))
        await dash.refresh()
        streamed = [e for e in comms.bokeh_events(latency, seen) if e["kind"] == "ColumnsStreamed"]
        assert len(streamed) == 1, streamed  # one patch per tick, holding the new seconds
        assert streamed[0]["model"]["id"] == dash.plots.sources["latency"].id
        columns = dict(streamed[0]["data"]["entries"])
        assert set(columns) == {"x", "p50", "p99", "slo"} and len(columns["x"]) >= 1
        assert streamed[0]["rollover"] == 300
        xs.extend(dash.plots.sources["latency"].data["x"][len(xs):])
    assert xs == sorted(xs) and len(xs) == len(set(xs)) >= 3
    assert dash.ticks == 3
    src = dash.plots.sources
    assert sum(src["throughput"].data["qps"]) >= 15
    assert all(v == 200.0 for v in src["latency"].data["slo"])
    # a replica's AIMD series appeared, named as api/status names the replica (no secret part)
    status = requests.get(f"{client.url}/api/status", headers={"Authorization": f"token {TOKEN}"}, timeout=30)
    names = [r["name"] for r in status.json()["replicas"] if r["model"] == "zero"]
    assert [k for k in src if k.startswith("batch/zero/")] == [f"batch/zero/{n}" for n in names] and names
    # the header went to the frontend as an ordinary widget update
    header_updates = [m for m in comms.of(dash.header) if m.data.get("method") == "update"]
    assert header_updates and "cnb-p99" in header_updates[-1].data["state"]["value"]
    dash.close()


async def test_slo_slider_change_reaches_the_server_and_the_plot(client, comms):
    client.deploy(zeros, "zero", app="sapp", slo_ms=100)
    dash = Dashboard("sapp", client=client, autostart=False)
    assert dash.slo.value == pytest.approx(100)
    from_frontend(dash.slo, value=25.0)  # the user lets go of the slider
    await dash.settle()
    assert client.app("sapp")["slo_ms"] == 25.0
    assert "25 ms" in dash.header.value  # shown without waiting for a poll
    await _queries(client, "sapp", 3)
    await _next_second()
    await dash.refresh()
    assert dash.plots.sources["latency"].data["slo"][-1] == 25.0
    # a bad value is the server's to refuse: shown in the status line, never raised
    dash.slo.value = 0.5  # below the slider's range: clamped to 1 ms, a valid SLO
    await dash.settle()
    assert client.app("sapp")["slo_ms"] == 1.0
    dash.close()


async def test_policy_and_replicas_controls_act_on_the_server(client, comms):
    client.deploy(zeros, "zero", app="papp", slo_ms=500)
    dash = Dashboard("papp", client=client, autostart=False)
    from_frontend(dash.policy, index=list(dash.policy.options).index("exp3"))
    await dash.settle()
    assert client.app("papp")["policy"] == "exp3"
    from_frontend(dash.replicas["zero"], value=2)
    await dash.settle(120)
    assert client.model("zero")["replicas"] == 2
    await dash.refresh()
    await dash._fetch_info()
    dash._on_tick(dash.last_tick)
    assert "2/2" in dash.header.value and "exp3" in dash.header.value
    dash.close()


async def test_load_generator_runs_bounded_and_stops_with_the_widget(client, comms):
    client.deploy(zeros, "zero", app="lapp", slo_ms=500)
    dash = Dashboard("lapp", client=client, interval=0.2, load_inputs=[[1.0], [2.0]], max_load_qps=200)
    from_frontend(dash.load.qps, value=80)
    from_frontend(dash.load.toggle, value=True)
    assert dash.load.running
    await _eventually(lambda: dash.last_tick is not None and (dash.last_tick.numbers["qps"] or 0) > 20,
                      message="the dashboard to show the generated load")
    assert dash.header.value.count("q/s") == 1
    dash.close()  # closing the widget stops the generator
    await asyncio.wait_for(dash.load.wait(), 15)
    assert not dash.load.running and dash.load.last_result.requests > 20
    assert dash._task is None
    await asyncio.sleep(2.1)  # metrics count complete seconds only
    sent = dash.load.last_result.requests
    assert client.metrics()["apps"]["lapp"]["totals"]["queries"] == sent  # nothing after the stop


async def test_close_stops_polling_and_closes_every_comm(client, comms):
    client.deploy(zeros, "zero", app="capp", slo_ms=500)
    dash = Dashboard("capp", client=client, interval=0.1)
    await _eventually(lambda: "live" in dash.status_line.value, message="the first poll")
    task = dash._task
    dash.close()
    await asyncio.sleep(0.3)
    assert task.done()
    closed = {m.comm_id for m in comms.messages if m.msg_type == "comm_close"}
    opened = {m.comm_id for m in comms.messages if m.msg_type == "comm_open"}
    assert opened <= closed  # every widget the dashboard opened was closed
    n = len(comms.messages)
    await asyncio.sleep(0.5)
    assert len(comms.messages) == n


async def test_frontend_closing_the_comm_stops_polling(client, comms):
    client.deploy(zeros, "zero", app="fapp", slo_ms=500)
    dash = Dashboard("fapp", client=client, interval=0.1)
    task = dash._task
    dash.comm.handle_close({"content": {"data": {}}})  # what the kernel does on comm_close
    await asyncio.sleep(0.3)
    assert task.done() and dash._closed


async def test_a_server_that_goes_away_shows_a_status_line_not_a_traceback(tmp_path, comms):
    srv = Server(state_dir=str(tmp_path / "state"), port=0, token=TOKEN).start_in_thread()
    try:
        c = client_of(srv)
        c.deploy(zeros, "zero", app="gone", slo_ms=500)
        dash = Dashboard("gone", client=c, interval=0.1)
        await _eventually(lambda: "live" in dash.status_line.value, message="the first poll")
    finally:
        srv.stop_thread()
    await _eventually(lambda: "cannot update" in dash.status_line.value, message="the status line")
    assert "Traceback" not in dash.status_line.value and "⚠" in dash.status_line.value
    assert not dash._task.done()  # still trying: the server may come back
    dash.close()
    wait_until(lambda: not worker_pids(str(tmp_path)), timeout=15, message="workers to exit")


async def test_unknown_app_fails_at_once(client, comms):
    with pytest.raises(NotFound):
        Dashboard("no-such-app", client=client)


async def test_no_token_in_any_widget_message(client, comms):
    client.deploy(zeros, "zero", app="tapp", slo_ms=500)
    dash = client.dashboard("tapp", interval=0.1)
    await _eventually(lambda: "live" in dash.status_line.value, message="a poll")
    dash.stop()  # freezes the plots into the widget state
    assert TOKEN not in comms.all_text() and TOKEN not in repr(dash)
    dash.close()


async def test_slo_tuner_and_weights_view(client, comms):
    client.deploy(zeros, "m0", app="wapp", slo_ms=300)
    client.deploy(ones, "m1")
    client.link("wapp", "m1")
    client.set_policy("wapp", "exp3")
    tuner = SLOTuner("wapp", client=client, autostart=False)
    assert set(tuner.plots.figures) == {"latency", "batch"}
    from_frontend(tuner.slo, value=40.0)
    await tuner.settle()
    assert client.app("wapp")["slo_ms"] == 40.0
    view = WeightsView("wapp", client=client, autostart=False)
    assert set(view.plots.figures) == {"weights"}
    for i in range(6):  # m1 is always right for alice: her weights move towards it
        await asyncio.to_thread(client.feedback, "wapp", [float(i)], 1, "alice")
    await _next_second()
    await view.refresh()
    assert ("context alice", "alice") in view.contexts.options
    from_frontend(view.contexts, index=[v for _, v in view.contexts.options].index("alice"))
    assert view.context == "alice"
    await view.refresh()
    p = view.plots.sources["weights/m1"].data["p"]
    assert p and not math.isnan(p[-1]) and p[-1] > 0.5
    assert not view.plots.weights_note.visible  # "no feedback yet" is gone
    tuner.close()
    view.close()

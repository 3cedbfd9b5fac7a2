"""Tests of clipper_nb.kernel.loadgen against a real Tornado server on a free loopback port.

The server runs on its own event loop in a thread, so both the async tests and the
blocking CLI (which calls asyncio.run) can use it. Each "app" name selects a
behaviour: a sleep, every k-th row answered with the default output, or a 400.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Iterator

import pytest
import tornado.httpserver
import tornado.netutil
import tornado.web

from clipper_nb.kernel.loadgen import (LoadResult, cli_main, parse_duration, parse_ms, run_load,
                                run_load_sync)
from clipper_nb.wire.ports import free_port

TOKEN = "s3cret"


@dataclass
class AppBehaviour:
    sleep_s: float = 0.0
    default_every: int = 0  # every k-th query id answers the default output; 0: never
    reject: bool = False  # answer 400 to everything
    slo_ms: float = 7.5  # what GET /api/apps/<app> reports


@dataclass
class ServerState:
    apps: dict[str, AppBehaviour] = field(default_factory=dict)
    next_query_id: int = 0
    batch_sizes: list[int] = field(default_factory=list)
    auth_headers: set[str] = field(default_factory=set)
    contexts: set[Any] = field(default_factory=set)


class PredictHandler(tornado.web.RequestHandler):
    def initialize(self, state: ServerState) -> None:
        self.state = state

    def _answer(self) -> dict[str, Any]:
        qid = self.state.next_query_id
        self.state.next_query_id += 1
        every = self.state.apps[self.path_args[0]].default_every
        if every and qid % every == 0:
            return {"query_id": qid, "output": None, "default": True,
                    "default_explanation": "no model answered in time"}
        return {"query_id": qid, "output": 1.0, "default": False}

    async def post(self, app: str) -> None:
        behaviour = self.state.apps.get(app)
        if behaviour is None or behaviour.reject:
            self.set_status(404 if behaviour is None else 400)
            self.finish({"error": "bad input", "cause": f"app {app} rejects this input"})
            return
        self.state.auth_headers.add(self.request.headers.get("Authorization", ""))
        body = json.loads(self.request.body)
        self.state.contexts.add(body.get("context"))
        if behaviour.sleep_s:
            await asyncio.sleep(behaviour.sleep_s)
        if "input_batch" in body:
            self.state.batch_sizes.append(len(body["input_batch"]))
            self.finish({"batch_predictions": [self._answer() for _ in body["input_batch"]]})
        else:
            self.finish(self._answer())


class AppInfoHandler(tornado.web.RequestHandler):
    def initialize(self, state: ServerState) -> None:
        self.state = state

    def get(self, app: str) -> None:
        if self.request.headers.get("Authorization") != f"token {TOKEN}":
            self.set_status(403)
            self.finish({"error": "forbidden", "cause": "bad token"})
            return
        self.finish({"name": app, "slo_ms": self.state.apps[app].slo_ms})


@dataclass
class RunningServer:
    url: str
    state: ServerState


@pytest.fixture(scope="module")
def server() -> Iterator[RunningServer]:
    state = ServerState(apps={
        "fast": AppBehaviour(),
        "slow10": AppBehaviour(sleep_s=0.010),
        "slow200": AppBehaviour(sleep_s=0.200),
        "quarter-default": AppBehaviour(default_every=4),
        "bad": AppBehaviour(reject=True),
    })
    ready = threading.Event()
    holder: dict[str, Any] = {}

    def serve() -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        app = tornado.web.Application([
            (r"/api/apps/([^/]+)", AppInfoHandler, {"state": state}),
            (r"/([^/]+)/predict", PredictHandler, {"state": state}),
        ])
        sockets = tornado.netutil.bind_sockets(0, "127.0.0.1")
        http = tornado.httpserver.HTTPServer(app)
        http.add_sockets(sockets)
        holder.update(loop=loop, http=http, port=sockets[0].getsockname()[1])
        ready.set()
        loop.run_forever()
        loop.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    assert ready.wait(10)
    yield RunningServer(url=f"http://127.0.0.1:{holder['port']}", state=state)
    holder["loop"].call_soon_threadsafe(holder["http"].stop)
    holder["loop"].call_soon_threadsafe(holder["loop"].stop)
    thread.join(5)


INPUTS = [[float(i), 0.5] for i in range(10)]


@pytest.mark.asyncio
async def test_closed_loop_counts_and_latencies(server: RunningServer) -> None:
    r = await run_load(server.url, "slow10", INPUTS, concurrency=4, duration_s=1.0)
    # 4 in flight x 10 ms each: at most ~400 q/s, far less only if the box is swamped
    assert 100 <= r.qps <= 420, r.summary_line()
    assert r.errors == 0 and r.defaults == 0 and r.first_error is None
    assert r.requests == r.rows == r.status_counts[200]
    assert 10.0 <= r.p50_ms <= r.p95_ms <= r.p99_ms < 200.0
    # Little's law: mean latency ~ in-flight / throughput
    assert r.mean_ms == pytest.approx(4 / r.qps * 1e3, rel=0.35)
    assert r.slo_ms is None and r.slo_attainment is None
    assert r.goodput == pytest.approx(r.rows / r.duration_s)
    assert 1.0 <= r.duration_s < 1.5


@pytest.mark.asyncio
async def test_open_loop_poisson_rate(server: RunningServer) -> None:
    r = await run_load(server.url, "fast", INPUTS, qps=200, duration_s=1.0, seed=3)
    assert 120 <= r.requests <= 280, r.summary_line()
    assert r.errors == 0
    # same seed, same arrival schedule: the request count is reproducible
    again = await run_load(server.url, "fast", INPUTS, qps=200, duration_s=1.0, seed=3)
    assert again.requests == r.requests


@pytest.mark.asyncio
async def test_open_loop_bounds_outstanding_requests(server: RunningServer) -> None:
    r = await run_load(server.url, "slow200", INPUTS, qps=1000, duration_s=0.3,
                       max_outstanding=5)
    assert r.status_counts.get(200, 0) <= 5 + 5  # a slot frees only after 200 ms
    assert r.errors >= 100 and r.status_counts[0] == r.errors
    assert "outstanding" in (r.first_error or "")


@pytest.mark.asyncio
async def test_batch_size_counts_rows_and_sends_context(server: RunningServer) -> None:
    server.state.batch_sizes.clear()
    r = await run_load(server.url, "fast", INPUTS, concurrency=2, max_requests=30,
                       batch_size=4, context="user-7")
    assert r.requests == 30 and r.rows == 120 and r.errors == 0
    assert r.rows_per_s == pytest.approx(4 * r.qps)
    assert server.state.batch_sizes[-30:] == [4] * 30
    assert "user-7" in server.state.contexts


@pytest.mark.asyncio
async def test_defaults_do_not_count_toward_goodput(server: RunningServer) -> None:
    r = await run_load(server.url, "quarter-default", INPUTS, concurrency=4, max_requests=50,
                       batch_size=4, slo_ms=10_000)
    assert r.rows == 200
    assert r.defaults == 50  # every 4th query id of 200 consecutive ones
    assert r.slo_attainment == pytest.approx(150 / 200)
    assert r.goodput == pytest.approx(150 / r.duration_s)
    assert r.rows_per_s == pytest.approx(200 / r.duration_s)


@pytest.mark.asyncio
async def test_slo_misses_do_not_count_toward_goodput(server: RunningServer) -> None:
    r = await run_load(server.url, "slow10", INPUTS, concurrency=2, max_requests=10, slo_ms=2)
    assert r.requests == 10 and r.errors == 0 and r.defaults == 0
    assert r.slo_attainment == 0.0 and r.goodput == 0.0


@pytest.mark.asyncio
async def test_errors_carry_status_and_first_error(server: RunningServer) -> None:
    r = await run_load(server.url, "bad", INPUTS, concurrency=2, max_requests=20, slo_ms=50,
                       batch_size=2)
    assert r.requests == r.errors == 20 and r.status_counts == {400: 20}
    assert r.first_error == "HTTP 400: bad input: app bad rejects this input"
    assert r.goodput == 0.0 and r.slo_attainment == 0.0 and r.rows == 40
    assert json.loads(json.dumps(r.to_dict()))["p99_ms"] is None  # no successes: no NaN


@pytest.mark.asyncio
async def test_connection_refused_is_an_error_without_status() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    r = await run_load(url, "fast", INPUTS, concurrency=2, max_requests=6, timeout_s=2)
    assert r.errors == 6 and r.status_counts == {0: 6}
    assert "ClientConnectorError" in (r.first_error or "")


@pytest.mark.asyncio
async def test_max_requests_bound(server: RunningServer) -> None:
    r = await run_load(server.url, "fast", INPUTS, concurrency=8, max_requests=37, duration_s=30)
    assert r.requests == 37 and r.duration_s < 5
    r = await run_load(server.url, "fast", INPUTS, qps=500, max_requests=25, duration_s=30)
    assert r.requests == 25


@pytest.mark.asyncio
@pytest.mark.parametrize("shape", [{"concurrency": 4}, {"qps": 0.5}])
async def test_stop_event_ends_the_run(server: RunningServer, shape: dict[str, Any]) -> None:
    stop = asyncio.Event()
    asyncio.get_running_loop().call_later(0.3, stop.set)
    t0 = time.perf_counter()
    r = await run_load(server.url, "slow10", INPUTS, duration_s=30, stop=stop, **shape)
    assert time.perf_counter() - t0 < 1.0 and r.duration_s < 1.0


@pytest.mark.asyncio
async def test_progress_and_token(server: RunningServer) -> None:
    seen: list[dict] = []
    r = await run_load(server.url, "fast", INPUTS, concurrency=2, duration_s=1.2,
                       token=TOKEN, progress=seen.append)
    assert 2 <= len(seen) <= 3
    assert set(seen[0]) == {"elapsed_s", "requests", "errors", "qps", "p99_ms"}
    assert seen[0]["qps"] > 0 and seen[-1]["requests"] <= r.requests
    assert f"token {TOKEN}" in server.state.auth_headers


@pytest.mark.asyncio
async def test_argument_validation(server: RunningServer) -> None:
    with pytest.raises(ValueError, match="not both"):
        await run_load(server.url, "fast", INPUTS, concurrency=2, qps=10)
    with pytest.raises(ValueError, match="empty"):
        await run_load(server.url, "fast", [], concurrency=2)
    with pytest.raises(ValueError):
        await run_load(server.url, "fast", INPUTS, batch_size=0)


def test_parse_duration_and_ms() -> None:
    assert parse_duration("30s") == 30.0
    assert parse_duration("500ms") == pytest.approx(0.5)
    assert parse_duration("2m") == 120.0
    assert parse_duration("1.5") == 1.5 and parse_duration(4) == 4.0
    assert parse_ms("20ms") == 20.0
    assert parse_ms("0.5s") == pytest.approx(500.0)
    assert parse_ms("7") == 7.0
    for bad in ("fast", "-3s", "10 parsecs"):
        with pytest.raises(ValueError):
            parse_duration(bad)


def test_sync_wrapper_and_dict(server: RunningServer) -> None:
    r = run_load_sync(server.url, "fast", INPUTS, max_requests=16)
    assert isinstance(r, LoadResult) and r.requests == 16
    d = json.loads(json.dumps(r.to_dict()))
    assert d["status_counts"] == {"200": 16} and d["qps"] > 0


def test_cli_end_to_end(server: RunningServer, capsys: pytest.CaptureFixture[str],
                        tmp_path: Any) -> None:
    # token given, no --slo: the SLO (7.5 ms) comes from GET /api/apps/<app>
    rc = cli_main(["load", "fast", "--url", server.url, "--token", TOKEN, "--concurrency", "4",
                   "--duration", "600ms", "--features", "16", "--json"])
    out, err = capsys.readouterr()
    assert rc == 0
    d = json.loads(out)
    assert d["slo_ms"] == 7.5 and d["errors"] == 0 and d["requests"] > 10
    assert "\r" in err and "q/s" in err  # the live progress line

    inputs = tmp_path / "inputs.json"
    inputs.write_text(json.dumps([[1.0, 2.0], [3.0, 4.0]]))
    rc = cli_main(["quarter-default", "--url", server.url, "--qps", "100", "--duration", "0.5s",
                   "--slo", "1s", "--batch-size", "2", "--input-file", str(inputs), "--quiet"])
    out, err = capsys.readouterr()
    assert rc == 0 and err == ""
    assert "requests" in out and "SLO 1000 ms attained" in out and "goodput" in out

    assert cli_main(["bad", "--url", server.url, "--input", "[1]", "--max-requests", "3",
                     "--quiet"]) == 1
    assert "HTTP 400" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        cli_main(["fast", "--url", server.url])  # nothing to send

"""One bad input fails only itself (issue 14), and late results fill the cache (issue 16).

First the query path's rules over the in-process backend (``backend.batches`` shows
exactly which batches ran): batches of one kind of input, bisection of a failed batch,
solo retries of a lost batch on the replacement of the lost replica, hang detection
in SLO time, late work. Then the same with real worker processes behind a real
``clipper-nb serve``: mixed shapes, a model that raises, one that calls ``os._exit``,
one that hangs, empty and deeply nested inputs, and outputs JSON cannot carry.

Models are module-level functions: cloudpickle ships them by value to the workers.
"""

from __future__ import annotations

import asyncio
import math
import time

import aiohttp
import numpy as np
import pytest
import requests
from conftest import TOKEN, ServeProcess, wait_until, worker_pids

from clipper_nb.abstraction.inprocess import InProcessBackend
from clipper_nb.abstraction.model_version import ModelVersion, ModelVersionConfig
from clipper_nb.errors import DeadlineMissed, ModelError
from clipper_nb.wire import artifact, predict

POISON = 13.0
AUTH = {"Authorization": f"token {TOKEN}"}


# ---- models ------------------------------------------------------------------------


def four_features(batch):
    """A linear model of exactly four features: a batch of other rows makes numpy raise."""
    return (np.asarray(batch, dtype=float) @ np.arange(4.0)).tolist()


def raises_on_poison(batch):
    if any(row[0] == 13.0 for row in batch):
        raise ValueError("poison input")
    return [float(sum(row)) for row in batch]


def row_sums(batch):
    return [float(sum(row)) for row in batch]


def exits_on_poison(batch):
    import os

    if any(row[0] == 13.0 for row in batch):
        os._exit(3)
    return [float(sum(row)) for row in batch]


def hangs_on_poison(batch):
    import time

    if any(row[0] == 13.0 for row in batch):
        time.sleep(60)
    return [float(sum(row)) for row in batch]


def words(batch):
    texts = ["héllo wörld", "", "a\x00b", "x" * 1000, "🙂"]
    return [texts[int(row[0]) % len(texts)] for row in batch]


def one_word_per_batch(batch):
    return "spam"


class Opaque:
    def __str__(self) -> str:
        return "an opaque object"


def not_json(batch):
    values = [float("nan"), float("inf"), float("-inf"), Opaque(), b"\x00\xff", {1: (2, 3)}]
    return [values[int(row[0]) % len(values)] for row in batch]


def nan_array(batch):
    out = np.asarray(batch, dtype=float).sum(axis=1)
    out[out > 100] = np.nan
    return out


# ---- the query path over the in-process backend ----------------------------------------


def soon(seconds: float = 10.0) -> float:
    return time.monotonic() + seconds


async def serve_inprocess(tmp_path, backend, fn, replicas: int = 1, **options) -> ModelVersion:
    payload, meta = artifact.package(fn)
    path = predict.write_dir(str(tmp_path / "models" / "m"), payload, meta)
    version = ModelVersion(backend, ModelVersionConfig(model="m", version="1", artifact_dir=path,
                                                       log_dir=str(tmp_path / "logs"), **options))
    await version.start(replicas)
    return version


def is_poison(x) -> bool:
    return bool(np.asarray(x).reshape(-1)[0] == POISON)


async def outcomes(futures) -> list:
    return await asyncio.gather(*futures, return_exceptions=True)


def shape_logging(log_path: str):
    """``four_features`` that first logs the row lengths each batch held (one line a batch)."""
    def model(batch):
        with open(log_path, "a") as f:
            f.write(" ".join(sorted({str(len(row)) for row in batch})) + "\n")
        return four_features(batch)

    return model


async def test_inputs_of_other_shapes_never_share_a_batch_with_valid_ones(tmp_path):
    backend = InProcessBackend(delays={"m": 0.02})
    log = tmp_path / "shapes.log"
    version = await serve_inprocess(tmp_path, backend, shape_logging(str(log)))
    good = [np.array([float(i), 1.0, 0.0, 0.0]) for i in range(12)]
    odd = [np.array([float(i)]) for i in range(6)]
    mixed = [x for pair in zip(good, odd + odd) for x in pair]
    results = await outcomes([version.submit(x, soon()) for x in mixed])
    assert results[0::2] == [1.0] * 12  # every valid query answered
    assert all(isinstance(r, ModelError) for r in results[1::2])  # the odd rows fail alone
    assert set(log.read_text().split("\n")) == {"1", "4", ""}  # no batch held both shapes
    await version.stop()


async def test_a_failed_batch_is_bisected_so_only_the_poison_fails(tmp_path):
    backend = InProcessBackend(delays={"m": 0.01})
    version = await serve_inprocess(tmp_path, backend, raises_on_poison, batch_size=8)
    xs = [np.array([float(i), 1.0]) for i in range(8)]
    xs[5] = np.array([POISON, 1.0])
    results = await outcomes([version.submit(x, soon()) for x in xs])
    assert [r for i, r in enumerate(results) if i != 5] == [i + 1.0 for i in range(8) if i != 5]
    assert isinstance(results[5], ModelError) and "poison input" in str(results[5])
    # depth first: 8 fails; 4 (rows 0-3) pass; 4 (rows 4-7) fail; 2 (rows 4-5) fail;
    # 1 (row 4) passes, 1 (row 5) fails; 2 (rows 6-7) pass
    assert [n for _, n in backend.batches] == [8, 4, 4, 2, 1, 1, 2]
    assert version.counters()["batch_splits"] == 3
    await version.stop()


async def test_a_poison_that_crashes_its_replica_is_answered_with_an_error_and_never_reaches_another(tmp_path):
    backend = InProcessBackend(delays={"m": 0.02}, fault=lambda model, xs: "crash" if any(map(is_poison, xs)) else None)
    version = await serve_inprocess(tmp_path, backend, row_sums, replicas=2, batch_size=4)
    xs = [np.array([float(i), 1.0]) for i in range(8)]
    xs[2] = np.array([POISON, 1.0])
    results = await outcomes([version.submit(x, soon()) for x in xs])
    assert [r for i, r in enumerate(results) if i != 2] == [i + 1.0 for i in range(8) if i != 2]
    assert isinstance(results[2], ModelError) and "not retried" in str(results[2])
    crashed = [r for r in backend.started if (r.death_cause or "").startswith("crashed")]
    slot = crashed[0].spec.index
    # the other replica never ran the poison: it is the first and only one of its slot
    others = [r for r in backend.started if r.spec.index != slot]
    assert len(others) == 1 and others[0].state == "idle" and (others[0].name, 4) in backend.batches
    # the crashed batch's queries ran one by one on the replica that replaced the crashed
    # one, in its slot; the poison crashed that one too, alone, and got its error
    assert [r.death_cause for r in crashed] == ["crashed on a batch of 4", "crashed on a batch of 1"]
    assert crashed[1].spec.index == slot and {n for name, n in backend.batches if name == crashed[1].name} == {1}
    counters = version.counters()
    assert counters["lost_batches"] == 2 and counters["inputs_refused"] == 1
    await version.stop()


async def test_a_hung_replica_is_replaced_in_slo_time_and_the_others_keep_answering(tmp_path):
    backend = InProcessBackend(delays={"m": 0.01}, fault=lambda model, xs: "hang" if any(map(is_poison, xs)) else None)
    version = await serve_inprocess(tmp_path, backend, row_sums, replicas=2, max_batch_size=1, hang_floor_s=0.3)
    for i in range(6):  # batches to measure: about 10 ms each
        assert await version.submit(np.array([float(i), 0.0]), soon()) == float(i)
    started = time.monotonic()
    poison = version.submit(np.array([POISON, 0.0]), soon())
    answers = [await version.submit(np.array([100.0 + i, 0.0]), soon(2)) for i in range(20)]
    assert answers == [100.0 + i for i in range(20)]  # served by the other replica meanwhile
    with pytest.raises(ModelError, match="ran past 0.3s .* the replica is hung.* not retried"):
        await asyncio.wait_for(poison, 5)
    assert time.monotonic() - started < 1.5  # noticed at the 0.3 s floor, not the 60 s hang timeout
    assert version.counters()["hung_replicas"] == 1
    assert sorted(r["restarts"] for r in version.status()) == [0, 1]
    await version.stop()


async def test_a_crash_loop_from_one_input_does_not_back_the_slot_off(tmp_path):
    backend = InProcessBackend(fault=lambda model, xs: "crash" if any(map(is_poison, xs)) else None)
    version = await serve_inprocess(tmp_path, backend, row_sums)
    for round_ in range(4):
        with pytest.raises(ModelError):
            await version.submit(np.array([POISON, float(round_)]), soon())
        started = time.monotonic()
        assert await version.submit(np.array([1.0, float(round_)]), soon()) == 1.0 + round_
        assert time.monotonic() - started < 0.3  # restarted at once: it had served a batch
    await version.stop()


async def test_the_loop_survives_an_unexpected_error(tmp_path):
    def fault(model, xs):
        if any(map(is_poison, xs)):
            raise RuntimeError("a bug of ours")

    backend = InProcessBackend(fault=fault)
    version = await serve_inprocess(tmp_path, backend, row_sums)
    with pytest.raises(ModelError, match="could not be run: RuntimeError: a bug of ours"):
        await version.submit(np.array([POISON, 0.0]), soon())
    assert await version.submit(np.array([1.0, 2.0]), soon()) == 3.0
    assert version.status()[0]["restarts"] == 0
    await version.stop()


async def test_queries_dropped_at_dispatch_are_computed_later_into_the_cache(tmp_path):
    # 50 ms a batch, 30 ms deadlines: once measured, every query is dropped at dispatch
    backend = InProcessBackend(delays={"m": 0.05})
    version = await serve_inprocess(tmp_path, backend, row_sums)
    for i in range(3):
        await outcomes([version.submit(np.array([float(i), 0.0]), soon())])  # measured, now over 30 ms
    dropped = [version.submit(np.array([10.0 + i, 0.0]), soon(0.03)) for i in range(6)]
    results = await outcomes(dropped)
    assert all(isinstance(r, DeadlineMissed) for r in results), results
    for _ in range(100):
        if version.counters()["late_computed"] >= 6:
            break
        await asyncio.sleep(0.02)
    counters = version.counters()
    assert counters["late_queued"] == 6 and counters["late_computed"] == 6 and counters["deadline_drops"] >= 6
    for i in range(6):  # the late results are cache hits now
        hit = version.submit(np.array([10.0 + i, 0.0]), soon(0.03))
        assert hit.done() and hit.result() == 10.0 + i
    await version.stop()


async def test_late_work_is_skipped_once_its_key_is_cached_or_in_flight(tmp_path):
    backend = InProcessBackend(delays={"m": 0.05})
    version = await serve_inprocess(tmp_path, backend, row_sums, late_queue=1)
    await outcomes([version.submit(np.array([0.0, 0.0]), soon())])
    await outcomes([version.submit(np.array([1.0, 0.0]), soon())])
    assert isinstance((await outcomes([version.submit(np.array([7.0, 0.0]), soon(0.03))]))[0], DeadlineMissed)
    assert version.counters()["late_waiting"] in (0, 1)
    assert await version.submit(np.array([7.0, 0.0]), soon()) == 7.0  # on time: cached now
    await asyncio.sleep(0.2)
    counters = version.counters()
    assert counters["late_computed"] + counters["late_skipped"] == 1
    await version.stop()


# ---- real workers behind a real clipper-nb serve -----------------------------------------


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """One ``clipper-nb serve --public-predict`` for this module's real-worker tests."""
    root = tmp_path_factory.mktemp("faults")
    server = ServeProcess(state_dir=str(root / "state")).start()
    try:
        yield server
    finally:
        server.stop()
        wait_until(lambda: not worker_pids(str(root)), timeout=15, message="workers to exit")


def replicas(url: str, model: str) -> list[dict]:
    rows = requests.get(f"{url}/api/status", headers=AUTH, timeout=10).json()["replicas"]
    return sorted((r for r in rows if r["model"] == model), key=lambda r: r["replica"])


async def traffic(url: str, app: str, streams: list[tuple[str, object, float, float, float]]) -> dict[str, list]:
    """Open-loop streams ``(tag, make(i) -> input, rate per s, start s, stop s)`` at once;
    ``{tag: [(status, body), ...]}`` (as a token holder: errors carry their message)."""
    answers: dict[str, list] = {tag: [] for tag, *_ in streams}

    async def one(session, tag, x):
        async with session.post(f"{url}/{app}/predict", json={"input": x}, headers=AUTH) as resp:
            answers[tag].append((resp.status, await resp.json(content_type=None)))

    async def stream(session, tag, make, rate, begin, end):
        await asyncio.sleep(begin)
        t0, sent, calls = time.monotonic(), 0, []
        while sent / rate < end - begin:
            await asyncio.sleep(max(0.0, t0 + sent / rate - time.monotonic()))
            calls.append(asyncio.ensure_future(one(session, tag, make(sent))))
            sent += 1
        await asyncio.gather(*calls)

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
        await asyncio.gather(*(stream(session, *s) for s in streams))
    return answers


def tally(answers: list) -> dict[str, int]:
    return {"ok": sum(1 for s, b in answers if s == 200 and not b["default"]),
            "default": sum(1 for s, b in answers if s == 200 and b["default"]),
            "error": sum(1 for s, b in answers if s != 200)}


def valid(i: int) -> list[float]:
    return [20.0 + i, 1.0]


def poison(i: int) -> list[float]:
    return [POISON, float(i)]


@pytest.mark.timeout(120)
async def test_rows_of_another_shape_fail_alone_beside_valid_traffic(served):
    served.client().deploy(four_features, "shapes", app="shapes", slo_ms=3000)
    got = await traffic(served.url, "shapes", [("valid", lambda i: [float(i), 1.0, 0.0, 0.0], 60, 0, 3),
                                               ("odd", lambda i: [float(i)], 20, 0, 3)])
    assert tally(got["valid"]) == {"ok": len(got["valid"]), "default": 0, "error": 0}, got["valid"][:3]
    assert all(b["output"] == 1.0 for _, b in got["valid"])
    assert tally(got["odd"])["error"] == len(got["odd"])  # each fails with the model's own error
    assert all("matmul" in b["error"] for _, b in got["odd"])


@pytest.mark.timeout(120)
async def test_a_model_raising_on_poison_fails_only_the_poison(served):
    served.client().deploy(raises_on_poison, "raiser", app="raiser", slo_ms=3000)
    got = await traffic(served.url, "raiser", [("valid", valid, 60, 0, 3), ("poison", poison, 10, 0, 3)])
    assert tally(got["valid"]) == {"ok": len(got["valid"]), "default": 0, "error": 0}
    assert all(b["output"] == 21.0 + i for i, (_, b) in enumerate(sorted(got["valid"], key=lambda a: a[1]["output"])))
    assert tally(got["poison"])["error"] == len(got["poison"])
    assert all("poison input" in b["error"] for _, b in got["poison"])
    assert replicas(served.url, "raiser")[0]["restarts"] == 0


@pytest.mark.fault
@pytest.mark.timeout(120)
async def test_a_model_exiting_on_poison_kills_one_replica_and_answers_the_poison_with_an_error(served):
    served.client().deploy(exits_on_poison, "exiter", app="exiter", slo_ms=3000, replicas=2)
    for i in range(3):  # one poison at a time, among valid traffic
        before = replicas(served.url, "exiter")
        got = await traffic(served.url, "exiter", [("valid", valid, 40, 0, 2), ("poison", poison, 1, 0.5, 1.5)])
        assert tally(got["valid"]) == {"ok": len(got["valid"]), "default": 0, "error": 0}, tally(got["valid"])
        (status, body), = got["poison"]
        assert status == 500 and "not retried" in body["error"], body
        wait_until(lambda: all(r["state"] == "idle" for r in replicas(served.url, "exiter")), timeout=20,
                   message="the replicas to be back")
        after = replicas(served.url, "exiter")
        # the replica that took the poison died (and its replacement, if the poison came in a
        # batch and was retried alone there); the other one never saw it
        changed = [a["replica"] for a, b in zip(after, before) if a["pid"] != b["pid"]]
        assert len(changed) == 1, (before, after)


@pytest.mark.timeout(120)
async def test_empty_and_deeply_nested_inputs_are_refused_with_400_and_stall_no_replica(served):
    served.client().deploy(row_sums, "plain", app="plain", slo_ms=3000)
    deep: object = 1.0
    for _ in range(40):
        deep = [deep]
    for bad in ([], [[], [], []], [[[]]], deep):
        r = requests.post(f"{served.url}/plain/predict", json={"input": bad}, timeout=10)
        assert r.status_code == 400, r.text
    r = requests.post(f"{served.url}/plain/predict", json={"input_batch": [[1.0, 2.0], []]}, timeout=10)
    assert r.status_code == 400 and "input_batch[1]" in r.json()["error"]
    started = time.monotonic()
    for i in range(10):
        answer = requests.post(f"{served.url}/plain/predict", json={"input": [float(i), 1.0]}, timeout=10).json()
        assert answer["default"] is False and answer["output"] == i + 1.0
    assert time.monotonic() - started < 5
    assert replicas(served.url, "plain")[0]["restarts"] == 0


@pytest.mark.fault
@pytest.mark.timeout(120)
async def test_a_model_hanging_on_one_input_is_replaced_in_about_a_second(served):
    served.client().deploy(hangs_on_poison, "hanger", app="hanger", slo_ms=1000, replicas=2)
    for i in range(20):  # measured batches: the hang watch's reference
        requests.post(f"{served.url}/hanger/predict", json={"input": valid(i)}, timeout=10)
    before = replicas(served.url, "hanger")
    sent = time.monotonic()
    hung = asyncio.ensure_future(traffic(served.url, "hanger", [("poison", poison, 1, 0, 0.5)]))
    replaced = await asyncio.to_thread(wait_until, lambda: [
        a for a, b in zip(replicas(served.url, "hanger"), before) if a["pid"] not in (None, b["pid"])], 10)
    elapsed = time.monotonic() - sent
    got = await traffic(served.url, "hanger", [("valid", valid, 40, 0, 2)])
    (status, body), = (await hung)["poison"]
    assert status == 200 and body["default"] is True  # answered at its deadline
    assert elapsed < 4.0, elapsed  # the 1 s floor and a restart, not the 60 s hang timeout
    assert len(replaced) == 1 and tally(got["valid"]) == {"ok": len(got["valid"]), "default": 0, "error": 0}
    hung_pid = next(b["pid"] for a, b in zip(replicas(served.url, "hanger"), before) if a["replica"] == replaced[0]["replica"])
    wait_until(lambda: hung_pid not in worker_pids(served.state_dir), timeout=5, message="the hung worker to go")


def test_string_outputs_arrive_whole(served):
    client = served.client()
    client.deploy(words, "words", app="words", slo_ms=3000)
    client.deploy(one_word_per_batch, "spam", app="spam", slo_ms=3000)
    got = [client.predict("words", [float(i), 0.0])["output"] for i in range(5)]
    assert got == ["héllo wörld", "", "a\x00b", "x" * 1000, "🙂"]
    # one string for a whole batch is the model's mistake, said so; never its characters as outputs
    r = requests.post(f"{served.url}/spam/predict", json={"input_batch": [[float(i)] for i in range(4)]},
                      headers=AUTH, timeout=10)
    assert r.status_code == 500 and "returned one str for the batch" in r.json()["error"]


def test_outputs_json_cannot_carry_arrive_in_the_documented_encoding(served):
    client = served.client()
    client.deploy(not_json, "odd", app="odd", slo_ms=3000)
    client.deploy(nan_array, "nans", app="nans", slo_ms=3000)
    got = [requests.post(f"{served.url}/odd/predict", json={"input": [float(i)]}, timeout=10).json() for i in range(6)]
    assert [g["output"] for g in got] == ["NaN", "Infinity", "-Infinity", "an opaque object", "AP8=", {"1": [2, 3]}]
    assert not any(g["default"] for g in got)
    assert requests.post(f"{served.url}/nans/predict", json={"input": [200.0]}, timeout=10).json()["output"] == "NaN"
    assert requests.post(f"{served.url}/nans/predict", json={"input": [2.0]}, timeout=10).json()["output"] == 2.0
    assert math.isnan(float("NaN"))  # what a client does with the spelling


@pytest.mark.fault
def test_a_worker_that_ignores_sigterm_does_not_outlive_a_killed_frontend(tmp_path):
    """kill -9 of ``clipper-nb serve``: the fork server's workers get SIGTERM, and one
    that ignores it is killed after a grace period instead of living on."""
    import signal as _signal

    from conftest import ServeProcess, wait_until, worker_pids

    serve = ServeProcess(state_dir=str(tmp_path / "state")).start()
    try:
        serve.client().deploy(stubborn, "stubborn", app="stubborn", slo_ms=2000)
        assert serve.client().predict("stubborn", [1.0])["output"] == 1.0
        assert worker_pids(str(tmp_path / "state"))
    finally:
        serve.stop(sig=_signal.SIGKILL)
    # well before the worker's own 10 s frontend-silence timeout would end it
    wait_until(lambda: not worker_pids(str(tmp_path / "state"), include_fork_server=True), timeout=6,
               message="the stubborn worker to be killed")


def stubborn(batch):
    import signal as _signal

    _signal.signal(_signal.SIGTERM, _signal.SIG_IGN)  # a model library that swallows SIGTERM
    return [row[0] for row in batch]


@pytest.mark.fault
async def test_a_stopped_replica_under_load_is_replaced_and_nothing_is_lost(served):
    """SIGSTOP one of two replicas (a frozen process: no crash, no exit, no heartbeat) while
    queries flow: every query gets a prediction or its default, none an error, and the
    frozen replica is replaced (its batch by the hang watch, or by the heartbeat timeout)."""
    import os
    import signal as _signal

    served.client().deploy(row_sums, "frozen", app="frozen", slo_ms=1000, replicas=2)
    for i in range(20):
        requests.post(f"{served.url}/frozen/predict", json={"input": valid(i)}, timeout=10)
    before = replicas(served.url, "frozen")
    victim = before[0]["pid"]
    load = asyncio.ensure_future(traffic(served.url, "frozen", [("valid", valid, 40, 0, 8)]))
    await asyncio.sleep(1.0)
    os.kill(victim, _signal.SIGSTOP)
    try:
        await asyncio.to_thread(wait_until, lambda: replicas(served.url, "frozen")[0]["pid"] not in (None, victim),
                                15, 0.1, "the frozen replica to be replaced")
    finally:
        try:
            os.kill(victim, _signal.SIGKILL)  # if the test failed, do not leave it frozen
        except ProcessLookupError:
            pass
    counts = tally((await load)["valid"])
    print(f"\n[sigstop] {counts}")
    assert counts["error"] == 0 and counts["ok"] > 0.8 * sum(counts.values()), counts

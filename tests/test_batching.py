"""Tests of clipper_nb.abstraction.batching: the AIMD controller (pure) and the BatchQueue.

The controller is fed observations directly. The queue runs on the test's event loop
with a :class:`FakeClock` for deadlines (the queue's waits are real, but short).
"""

from __future__ import annotations

import asyncio

import pytest

from clipper_nb.abstraction.batching import (DEFAULT_BACKOFF, PROBE_AFTER_S, SLO_FRACTION, AIMDController, BatchQueue,
                                 DeadlineMissed, QueuedQuery, objective_for_slo)

# ---- AIMD controller ---------------------------------------------------------------


def test_the_cap_grows_by_the_step_only_after_a_full_batch_within_the_objective():
    c = AIMDController(objective_s=0.010, step=4, cap=4)
    c.observe(4, 0.005)
    assert c.limit() == 8
    c.observe(3, 0.001)  # a partial batch says nothing about a larger one
    assert c.limit() == 8
    c.observe(8, 0.009)
    assert c.limit() == 12


def test_a_batch_over_the_objective_cuts_the_cap_by_a_tenth():
    assert DEFAULT_BACKOFF == 0.9
    c = AIMDController(objective_s=0.010, cap=100)
    c.observe(100, 0.011)
    assert c.cap == pytest.approx(90) and c.limit() == 90
    c.observe(5, 0.050)  # partial or not: over the objective is over
    assert c.cap == pytest.approx(81)


def test_the_cap_never_falls_below_one():
    c = AIMDController(objective_s=0.001, cap=3)
    for _ in range(100):
        c.observe(1, 1.0)
    assert c.cap == 1.0 and c.limit() == 1
    c.observe(1, 0.0005)  # and grows again from there
    assert c.limit() == 5


def test_max_cap_bounds_growth_and_the_initial_cap():
    c = AIMDController(objective_s=1.0, step=10, cap=50, max_cap=32)
    assert c.limit() == 32
    for _ in range(10):
        c.observe(c.limit(), 0.001)
    assert c.limit() == 32 and c.cap <= 32


def test_max_batch_size_one_means_batches_of_one():
    c = AIMDController(objective_s=1.0, max_cap=1, cap=4)
    for _ in range(20):
        assert c.limit() == 1
        c.observe(1, 0.0001)
    assert c.limit() == 1


def test_a_fixed_size_never_adapts():
    c = AIMDController(objective_s=0.001, fixed=16)
    for latency in (0.0001, 10.0, 0.0001):
        c.observe(16, latency)
        assert c.limit() == 16


@pytest.mark.parametrize("kwargs, word", [({"fixed": 0}, "fixed"), ({"max_cap": 0}, "max_batch_size"),
                                          ({"backoff": 1.0}, "backoff"), ({"backoff": 0.0}, "backoff")])
def test_invalid_settings_are_refused(kwargs, word):
    with pytest.raises(ValueError, match=word):
        AIMDController(objective_s=0.01, **kwargs)


def test_a_new_objective_changes_the_next_decision():
    c = AIMDController(objective_s=0.100, cap=40)
    c.observe(40, 0.050)
    assert c.limit() == 44
    c.set_objective(0.020)
    c.observe(44, 0.050)
    assert c.limit() == 39  # int(44 * 0.9)


def test_aimd_settles_at_the_largest_batch_within_the_objective():
    """A batch of n rows costs 5 ms + 0.02 ms per row (the issue's sleep model): with
    a 9 ms objective the largest batch that fits is 200 rows."""
    c = AIMDController(objective_s=0.009)
    limits = []
    for _ in range(600):
        n = c.limit()
        c.observe(n, 0.005 + 0.00002 * n)
        limits.append(n)
    settled = limits[-200:]
    assert 160 <= min(settled) and max(settled) <= 210, (min(settled), max(settled))
    over = sum(1 for n in settled if 0.005 + 0.00002 * n > 0.009)
    assert over <= len(settled) // 5  # it only probes past the objective now and then


def test_objective_for_slo_leaves_room_for_the_queue_wait():
    assert objective_for_slo(0.100) == pytest.approx(0.100 * SLO_FRACTION)
    assert objective_for_slo(0.100, delay_s=0.002) == pytest.approx(0.100 * SLO_FRACTION - 0.002)
    assert objective_for_slo(0.0001, 0.002) == pytest.approx(0.0005)  # never zero or negative
    for slo in (0.005, 0.010, 0.020, 0.050, 0.200, 1.0):
        for delay in (0.0, 0.001, 0.002):
            obj = objective_for_slo(slo, delay)
            # a query waits for the batch in progress, the delay, then its own batch
            assert 2 * obj + delay <= slo, (slo, delay)
    assert objective_for_slo(0.010) < objective_for_slo(0.020) < objective_for_slo(0.200)


def test_expected_latency_is_the_fastest_recent_batch_and_re_measures_when_idle():
    c = AIMDController(objective_s=0.010)
    assert c.expected_latency_s() == 0.0  # nothing measured: drop nothing early
    c.observe(4, 0.900)  # the first batch warms up: it condemns no query
    assert c.expected_latency_s() == 0.0
    c.observe(4, 0.400)  # a slow batch after the warm-up counts
    assert c.expected_latency_s() == pytest.approx(0.400)
    assert c.expected_latency_s(idle_s=PROBE_AFTER_S + 0.01) == 0.0  # stale: let one batch through
    c.observe(4, 0.002)
    assert c.expected_latency_s() == pytest.approx(0.002)  # one slow batch no longer condemns the rest
    for _ in range(10):
        c.observe(1, 0.050)
    assert c.expected_latency_s() == pytest.approx(0.050)  # a model that really is slow


# ---- BatchQueue --------------------------------------------------------------------


class FakeClock:
    """The loop's clock plus an offset the test moves: ``advance`` jumps time forward."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return asyncio.get_running_loop().time() + self.offset

    def advance(self, dt: float) -> None:
        self.offset += dt


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def query(x, deadline: float) -> QueuedQuery:
    return QueuedQuery(x, asyncio.get_running_loop().create_future(), deadline)


def xs(batch: list[QueuedQuery]) -> list:
    return [q.x for q in batch]


async def later(delay: float, fn, *args) -> None:
    await asyncio.sleep(delay)
    fn(*args)


async def timed(coro) -> tuple[list[QueuedQuery], float]:
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    result = await asyncio.wait_for(coro, 5)
    return result, loop.time() - t0


async def test_delayed_batching_waits_up_to_the_delay_for_more_queries(clock):
    q = BatchQueue(clock=clock)
    q.put(query("a", clock() + 10))
    asyncio.ensure_future(later(0.010, q.put, query("b", clock() + 10)))
    batch, elapsed = await timed(q.get_batch(8, delay_s=0.060))
    assert xs(batch) == ["a", "b"]
    assert 0.050 <= elapsed < 0.5  # it waited out the delay, not just until b came


async def test_without_a_delay_a_lone_query_goes_at_once(clock):
    q = BatchQueue(clock=clock)
    q.put(query("a", clock() + 10))
    batch, elapsed = await timed(q.get_batch(8, delay_s=0.0))
    assert xs(batch) == ["a"] and elapsed < 0.02


async def test_a_full_batch_goes_at_once(clock):
    q = BatchQueue(clock=clock)
    for x in "abcd":
        q.put(query(x, clock() + 10))
    q.put(query("e", clock() + 10))
    batch, elapsed = await timed(q.get_batch(4, delay_s=1.0))
    assert xs(batch) == list("abcd") and elapsed < 0.1
    assert len(q) == 1


async def test_the_delay_ends_as_soon_as_the_batch_fills(clock):
    q = BatchQueue(clock=clock)
    q.put(query("a", clock() + 10))
    asyncio.ensure_future(later(0.020, lambda: [q.put(query(x, clock() + 10)) for x in "bcd"]))
    batch, elapsed = await timed(q.get_batch(4, delay_s=1.0))
    assert xs(batch) == list("abcd") and 0.015 <= elapsed < 0.5


async def test_the_delay_never_runs_past_the_earliest_deadline_less_the_expected_latency(clock):
    q = BatchQueue(clock=clock)
    q.put(query("a", clock() + 10))
    q.put(query("urgent", clock() + 0.100))
    batch, elapsed = await timed(q.get_batch(8, delay_s=1.0, expected_latency_s=0.060))
    assert xs(batch) == ["a", "urgent"]
    assert 0.030 <= elapsed < 0.090  # left at ~40 ms, in time for urgent's batch to finish


@pytest.mark.parametrize("delay_s", [0.0, 0.010])
async def test_expired_queries_fail_with_deadline_missed_and_are_reported(clock, delay_s):
    expired: list = []
    q = BatchQueue(on_expired=lambda item: expired.append(item.x), clock=clock)
    late = query("late", clock() + 0.010)
    tight = query("tight", clock() + 0.300)    # still alive, but a 0.5 s batch cannot make it
    ok = query("ok", clock() + 10)
    for item in (late, tight, ok):
        q.put(item)
    clock.advance(0.050)
    batch = await asyncio.wait_for(q.get_batch(8, delay_s=delay_s, expected_latency_s=0.5), 5)
    assert xs(batch) == ["ok"]
    assert expired == ["late", "tight"]
    for item in (late, tight):
        with pytest.raises(DeadlineMissed):
            item.future.result()
    assert not ok.future.done()


async def test_an_estimate_given_as_a_function_is_asked_again_before_each_cut(clock):
    """A replica whose estimate says every query is late must be able to change its
    mind while it waits, or it would drop every query forever."""
    estimate = [1.0]
    q = BatchQueue(clock=clock)
    task = asyncio.ensure_future(q.get_batch(4, expected_latency_s=lambda: estimate[0]))
    q.put(query("doomed", clock() + 0.5))
    await asyncio.sleep(0.02)
    assert not task.done()
    estimate[0] = 0.0
    q.put(query("fine", clock() + 0.5))
    batch = await asyncio.wait_for(task, 5)
    assert xs(batch) == ["fine"]


async def test_answered_queries_are_skipped(clock):
    q = BatchQueue(clock=clock)
    gone, live = query("gone", clock() + 10), query("live", clock() + 10)
    gone.future.cancel()
    q.put(gone)
    q.put(live)
    assert xs(await asyncio.wait_for(q.get_batch(8), 5)) == ["live"]


async def test_put_front_puts_retried_queries_first_in_their_order(clock):
    q = BatchQueue(clock=clock)
    for x in "ab":
        q.put(query(x, clock() + 10))
    q.put_front([query("x", clock() + 10), query("y", clock() + 10)])
    assert xs(await asyncio.wait_for(q.get_batch(3), 5)) == ["x", "y", "a"]
    assert xs(q.drain()) == ["b"] and len(q) == 0


async def test_put_front_wakes_a_waiting_consumer(clock):
    q = BatchQueue(clock=clock)
    task = asyncio.ensure_future(q.get_batch(2))
    await asyncio.sleep(0.01)
    q.put_front([query("retry", clock() + 10)])
    assert xs(await asyncio.wait_for(task, 5)) == ["retry"]


async def test_two_consumers_never_get_the_same_query(clock):
    q = BatchQueue(clock=clock)
    got: list[str] = []

    async def consumer() -> None:
        while True:
            batch = await q.get_batch(3, delay_s=0.002)
            got.extend(xs(batch))
            await asyncio.sleep(0.001)  # "run" the batch

    consumers = [asyncio.ensure_future(consumer()) for _ in range(2)]
    sent = [f"q{i}" for i in range(200)]
    for i, x in enumerate(sent):
        q.put(query(x, clock() + 10))
        if i % 7 == 0:
            await asyncio.sleep(0)
    for _ in range(500):
        if len(got) >= len(sent):
            break
        await asyncio.sleep(0.005)
    for task in consumers:
        task.cancel()
    assert sorted(got) == sorted(sent)  # each once: none lost, none twice


def test_aimd_steers_on_the_models_compute_time_when_the_worker_reports_it():
    c = AIMDController(objective_s=0.010, cap=8, step=4)
    # 14 ms round trip (a busy frontend loop) but 6 ms in the model: the batch fits
    c.observe(8, 0.014, compute_s=0.006)
    assert c.limit() == 12
    c.observe(12, 0.009, compute_s=0.011)  # the model itself went over: back off
    assert c.cap == pytest.approx(12 * 0.9)
    assert c.latency_ewma_s > 0.009  # the round trip still feeds the drop estimate
    c.observe(10, 0.014)  # no compute time reported: the round trip decides
    assert c.cap == pytest.approx(12 * 0.9 * 0.9)

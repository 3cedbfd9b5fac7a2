"""Tests of clipper_nb.abstraction.batching: the AIMD controller (pure) and the BatchQueue.

The controller is fed observations directly. The queue runs on the test's event loop
with a :class:`FakeClock` for deadlines (the queue's waits are real, but short).
"""

from __future__ import annotations

import asyncio

import pytest

from clipper_nb.abstraction.batching import (DEFAULT_BACKOFF, DEFAULT_STEP, DROP_OUTLIER_FACTOR, DROP_QUANTILE, MIN_OBJECTIVE_S,
                                             PROBE_AFTER_S, PROBE_EVERY, RATE_WINDOW, RECENT_BATCHES,
                                             SINGLE_ROW_HEADROOM, SINGLE_ROW_SAMPLES, SLO_FRACTION, STEP_FRACTION,
                                             AIMDController, BatchQueue, DeadlineMissed, QueuedQuery, arrival_rate,
                                             dispatch_time, objective_for_slo, robust_quantile)

# ---- AIMD controller ---------------------------------------------------------------


def test_the_cap_grows_only_after_a_full_batch_within_the_objective():
    c = AIMDController(objective_s=0.010, step=4, cap=40)
    c.observe(40, 0.005)
    assert c.cap == 44
    c.observe(30, 0.001)  # a partial batch says nothing about a larger one
    assert c.cap == 44
    c.observe(44, 0.009)
    assert c.cap == 48


@pytest.mark.parametrize("cap, step, grown", [
    (4, 4, 5),          # max(1, 0.4) = 1: a small cap is not overshot by the full step
    (10, 4, 11),        # 10% of 10 is 1
    (15, 4, 16.5),      # 10% of 15 is 1.5
    (25, 4, 27.5),      # 10% of 25 is 2.5 < 4
    (100, 4, 104),      # 10% of 100 is 10: the step of 4 bounds it
    (100, 2, 102),      # ... whatever the step
    (100, 0.5, 100.5),  # a step under one row is kept
])
def test_the_additive_step_is_at_most_a_tenth_of_the_cap_but_at_least_one_row(cap, step, grown):
    """min(step, max(1, STEP_FRACTION x cap)): the old fixed step of 4 from a cap of 1-5
    swung a kernel-SVM-like model's cap 1 <-> 5 (its best batch is 2)."""
    assert (DEFAULT_STEP, STEP_FRACTION) == (4.0, 0.1)
    c = AIMDController(objective_s=1.0, step=step, cap=cap)
    c.observe(c.limit(), 0.001)
    assert c.cap == pytest.approx(grown)


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
        c.observe(2, 1.0)  # partial or not: over the objective is over
    assert c.cap == 1.0 and c.limit() == 1
    for _ in range(PROBE_EVERY - 1):
        c.observe(1, 0.0005)  # and grows again from there, slowly: 2 rows went over
    assert c.limit() == 1
    c.observe(1, 0.0005)
    assert c.limit() == 2


@pytest.mark.parametrize("cap, after", [(100, 90), (12, 10.8), (10, 9), (9.95, 8), (5.8, 4), (5, 4), (2.5, 1.0),
                                        (2, 1), (1.5, 1), (1, 1)])
def test_a_backoff_takes_a_tenth_off_and_at_least_one_row(cap, after):
    """max(1, min(0.9 x cap, int(cap) - 1)): x 0.9 alone takes 5.8 to 5.2, still 5 rows."""
    c = AIMDController(objective_s=0.010, cap=cap)
    c.observe(c.limit(), 0.011)
    assert c.cap == pytest.approx(after)


def test_every_backoff_lowers_the_integer_cap():
    c = AIMDController(objective_s=0.010)
    for tenths in range(10, 3000):
        cap = tenths / 10
        lowered = int(c.decrease(cap))
        assert lowered < int(cap) or int(cap) == 1, cap
        assert lowered >= int(cap * DEFAULT_BACKOFF) - 1 and lowered >= 1, cap  # by about a tenth, no more


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
    best = max(n for n in range(1, 300) if 0.005 + 0.00002 * n <= 0.009)  # 199 or 200, as floats round
    assert best - 20 <= min(settled) and max(settled) <= best + 1, (min(settled), max(settled), best)
    over = sum(1 for n in settled if 0.005 + 0.00002 * n > 0.009)
    assert 1 <= over <= len(settled) // PROBE_EVERY  # it only probes past the objective now and then
    assert sum(1 for n in settled if n == best) >= len(settled) * 0.6  # and mostly sits at the best size


def test_next_to_a_size_that_went_over_the_cap_creeps_and_probes_once_in_probe_every_batches():
    """A batch of 10 went over: the cap drops to 9, returns to exactly 9 (one row below),
    then gains 1 / PROBE_EVERY row per full batch, so 10 is tried again after 16 batches."""
    assert PROBE_EVERY == 16
    c = AIMDController(objective_s=0.010, cap=10)
    c.observe(10, 0.011)
    assert c.ceiling == 10 and c.limit() == 9
    sizes = []
    for _ in range(40):
        n = c.limit()
        sizes.append(n)
        c.observe(n, 0.011 if n >= 10 else 0.009)
    assert sizes[:16] == [9] * 16 and sizes[16] == 10 and sizes[17:33] == [9] * 16 and sizes[33] == 10


def test_the_cap_goes_straight_to_one_row_below_the_size_that_went_over():
    c = AIMDController(objective_s=0.010, cap=100)
    c.observe(100, 0.011)
    assert c.cap == pytest.approx(90)
    for expected in (94, 98, 99, 99 + 1 / PROBE_EVERY):
        c.observe(c.limit(), 0.009)
        assert c.cap == pytest.approx(expected)


def test_a_size_that_went_over_is_forgotten_once_it_fits_or_the_objective_changes():
    c = AIMDController(objective_s=0.010, cap=10)
    c.observe(10, 0.011)
    assert c.ceiling == 10
    c.observe(9, 0.009)
    assert c.ceiling == 10
    c.observe(10, 0.009)  # a batch that large fits now (noise, a faster model)
    assert c.ceiling is None
    c.observe(10, 0.011)
    c.set_objective(0.020)  # what went over 10 ms may fit 20 ms
    assert c.ceiling is None
    c.observe(c.limit(), 0.011)
    assert c.cap == pytest.approx(10)  # back to the full step


def test_objective_for_slo_is_half_the_slo_and_does_not_subtract_the_delay():
    assert SLO_FRACTION == 0.5 and MIN_OBJECTIVE_S == 0.0005
    assert objective_for_slo(0.100) == pytest.approx(0.050)
    assert objective_for_slo(0.020, delay_s=0.002) == pytest.approx(0.010)  # was 0.45 x 20 - 2 = 7 ms
    assert objective_for_slo(0.020, delay_s=0.005) == pytest.approx(0.010)  # was 4 ms: the cap stuck at 1
    assert objective_for_slo(0.020, delay_s=0.015) == pytest.approx(0.005)  # a delay over half the SLO binds
    assert objective_for_slo(0.100, fraction=0.3) == pytest.approx(0.030)
    assert objective_for_slo(0.0001, 0.002) == pytest.approx(0.0005)  # never zero or negative
    for slo in (0.005, 0.010, 0.020, 0.050, 0.200, 1.0):
        for delay in (0.0, 0.001, 0.002, 0.004, 0.8 * slo):
            obj = objective_for_slo(slo, delay)
            # a query waits for the batch in progress or the delay, then its own batch
            assert max(obj, delay) + obj <= slo + 1e-12, (slo, delay)
    assert objective_for_slo(0.010) < objective_for_slo(0.020) < objective_for_slo(0.200)


def test_the_objective_never_falls_below_the_single_row_latency():
    """A 4 ms objective for a model whose single row takes 5 ms: every batch would go
    over, and the controller learn nothing. One-row batches (not the first, a warm-up)
    set the floor: their median model time x SINGLE_ROW_HEADROOM."""
    assert SINGLE_ROW_HEADROOM == 1.0 and SINGLE_ROW_SAMPLES == 16
    c = AIMDController(objective_s=0.004, cap=1)
    c.observe(1, 0.100, compute_s=0.090)  # warm-up: not a sample
    assert c.objective() == 0.004
    for compute in (0.0050, 0.0053, 0.0051):
        c.observe(1, compute + 0.001, compute_s=compute)
    assert c.objective() == pytest.approx(0.0051)  # the median, of the model's own time
    c.observe(2, 0.0062, compute_s=0.0052)  # larger batches are no samples
    assert c.objective() == pytest.approx(0.0051)
    for _ in range(SINGLE_ROW_SAMPLES):
        c.observe(1, 0.0011, compute_s=0.001)  # the window forgets old samples
    assert c.objective() == pytest.approx(0.004)  # and the floor never lowers the objective


def test_a_batch_of_one_within_the_single_row_floor_grows_the_cap():
    c = AIMDController(objective_s=0.004, cap=1)
    for _ in range(4):
        c.observe(1, 0.0052, compute_s=0.0050)
    assert c.limit() == 2  # the warm-up went "over", the next ones are at the floor


def test_expected_latency_is_a_high_quantile_of_recent_batches_and_re_measures_when_idle():
    assert (RECENT_BATCHES, DROP_QUANTILE) == (32, 0.95)
    c = AIMDController(objective_s=0.010, fixed=64)
    assert c.expected_latency_s() == 0.0  # nothing measured: drop nothing early
    c.observe(64, 0.900)  # the first batch warms up: it condemns no query
    assert c.expected_latency_s() == 0.0
    c.observe(64, 0.400)  # a slow batch after the warm-up counts while it is all we know
    assert c.expected_latency_s() == pytest.approx(0.400)
    assert c.expected_latency_s(idle_s=PROBE_AFTER_S + 0.01) == 0.0  # stale: let one batch through
    assert c.expected_latency_s(idle_s=PROBE_AFTER_S - 0.01) == pytest.approx(0.400)
    c.observe(64, 0.002)
    assert c.expected_latency_s() == pytest.approx(0.002)  # one slow batch alone never sets it
    for ms in range(1, 41):  # 40 batches of 1..40 ms: the window holds 9..40
        c.observe(64, ms / 1000)
    assert c.expected_latency_s() == pytest.approx(0.039)  # the 31st of 32: not the fastest (9 ms)
    c.observe(64, 0.500)  # a GC pause
    assert c.expected_latency_s() == pytest.approx(0.040)  # is passed over
    for ms in [10] * 20 + [1] * 20:
        c.observe(64, ms / 1000)
    assert c.expected_latency_s() == pytest.approx(0.010)  # 12 of the last 32 took 10 ms


def test_rare_stragglers_do_not_set_the_drop_estimate():
    """A model that straggles in 1 batch of 16 (150 ms against 2 ms): the p95 alone would
    be the straggle, and every query with a 20 ms SLO would be dropped at dispatch."""
    assert DROP_OUTLIER_FACTOR == 2.0
    c = AIMDController(objective_s=0.010, fixed=8)
    for i in range(64):
        c.observe(8, 0.150 if i % 16 == 5 else 0.002)
    assert c.expected_latency_s() == pytest.approx(0.004)  # 2 x the upper quartile (2 ms), not 150 ms
    for i in range(32):  # slow in a quarter of the batches and more: then it is the model's latency
        c.observe(8, 0.030 if i % 3 == 0 else 0.002)
    assert c.expected_latency_s() == pytest.approx(0.030)


@pytest.mark.parametrize("values, q, expected", [
    ([5.0], 0.95, 5.0),
    ([7.0, 3.0], 0.95, 3.0),                       # never the largest of two or more
    (list(range(1, 33)), 0.95, 31),                # ceil(30.4) = 31
    (list(range(1, 33)), 0.9, 29),                 # ceil(28.8) = 29
    (list(range(1, 33)), 0.5, 16),
    (list(range(1, 11)), 0.95, 9),
    (list(range(20, 0, -1)), 0.8, 16),             # order does not matter
])
def test_robust_quantile_is_nearest_rank_without_the_maximum(values, q, expected):
    assert robust_quantile(values, q) == expected


def test_a_saturated_replica_whose_cap_grew_expects_the_larger_batch_to_take_longer():
    """At overload every query of a batch sits at the deadline edge: the first batch
    past the recent size must not be judged by the smaller ones, or its queries are late."""
    c = AIMDController(objective_s=0.010, cap=20)
    c.observe(20, 0.002)  # warm-up
    for _ in range(3):
        c.observe(c.limit(), 0.006)  # full batches: 22, 24, 26 rows
    assert c.limit() == 29 and c.last_full == 26
    assert c.expected_latency_s() == pytest.approx(0.006 * 29 / 26)
    c.observe(7, 0.006)  # not saturated: the next batch need not be full
    assert c.expected_latency_s() == pytest.approx(0.006)


def test_the_scaled_estimate_stops_at_the_objective_or_at_what_that_size_took_before():
    c = AIMDController(objective_s=0.010, cap=2)
    c.observe(1, 0.005)  # warm-up
    c.observe(2, 0.008)  # full: cap 3; x 1.5 would say 12 ms
    assert c.limit() == 3
    assert c.expected_latency_s() == pytest.approx(0.010)  # not past the objective
    c.observe(3, 0.0112)  # the probe: over, back to 2
    assert c.limit() == 2
    for _ in range(PROBE_EVERY):
        c.observe(2, 0.008)
    assert c.limit() == 3 and c.last_full == 2
    assert c.expected_latency_s() == pytest.approx(0.0112)  # what 3 rows took last time


# ---- delayed batching's decision (pure) -------------------------------------------------------


def test_the_arrival_rate_counts_intervals_up_to_now():
    assert RATE_WINDOW == 32
    assert arrival_rate([0.0, 0.001, 0.002, 0.003], now=0.003) == pytest.approx(1000)
    assert arrival_rate([0.0, 0.001, 0.002, 0.003], now=0.006) == pytest.approx(500)  # quiet since: lower
    assert arrival_rate([0.5], now=1.0) == 0.0
    assert arrival_rate([], now=1.0) == 0.0
    assert arrival_rate([1.0, 1.0], now=1.0) == 0.0


def steady(now: float, spacing: float, n: int = 32) -> list[float]:
    """``n`` arrivals ``spacing`` apart, the last at ``now``."""
    return [now - spacing * k for k in range(n - 1, -1, -1)]


def decide(now=1.0, queued=3, limit=8, delay_s=0.010, oldest=1.0, deadline=100.0, expected=0.0, arrivals=None,
           **returning):
    return dispatch_time(now, queued=queued, limit=limit, delay_s=delay_s, oldest_arrival=oldest,
                         earliest_deadline=deadline, expected_latency_s=expected,
                         arrivals=steady(1.0, 0.001) if arrivals is None else arrivals, **returning)


def test_the_delay_ends_when_fewer_than_one_more_arrival_is_expected():
    """until = oldest + delay = 1.010; 32 arrivals from 0.969: waiting at t pays while
    31 / (t - 0.969) x (1.010 - t) >= 1, i.e. up to 1.010 - (1.010 - 0.969) / 32."""
    assert decide() == pytest.approx(1.010 - 0.041 / 32)
    assert decide(now=1.005) == pytest.approx(1.010 - 0.041 / 32)  # the same plan, asked later
    assert decide(arrivals=steady(1.0, 0.1)) == 1.0  # 10 q/s: nobody is coming within 10 ms
    assert decide(arrivals=[1.0]) == 1.0  # one arrival: no rate at all
    assert decide(arrivals=[]) == 1.0  # none (only retried queries, which are no arrivals)


def test_the_delay_runs_from_the_oldest_arrival():
    assert decide(oldest=0.996) == pytest.approx(1.006 - 0.037 / 32)
    # the issue's case: 10 queries waited 5 ms for a batch in progress, the delay is 2 ms
    assert decide(queued=10, limit=64, delay_s=0.002, oldest=0.995) == 1.0


def test_the_delay_ends_in_time_for_the_earliest_deadline():
    until = 1.009 - 0.003 - 0.0002  # deadline - expected latency - timer slack
    assert decide(deadline=1.009, expected=0.003) == pytest.approx(until - (until - 0.969) / 32)
    assert decide(deadline=1.003, expected=0.003) == 1.0


def test_no_delay_for_a_full_batch_or_a_zero_delay_or_a_wait_under_the_timer_slack():
    assert decide(queued=8, limit=8) == 1.0
    assert decide(delay_s=0.0) == 1.0
    # waits of 0.1 ms are not worth a timer (0.2 ms slack); 0.3 ms are
    gap = 0.041 / 32
    assert decide(now=1.010 - gap - 0.0001) == 1.010 - gap - 0.0001
    assert decide(now=1.010 - gap - 0.0003) == pytest.approx(1.010 - gap)


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


def busy(q: BatchQueue, clock: FakeClock, rate: float = 10_000.0) -> None:
    """Give ``q`` a history of steady arrivals at ``rate`` (a loaded server), so that
    delayed batching expects more queries; they are served already (drained)."""
    for _ in range(RATE_WINDOW):
        q.put(query("earlier", clock() + 10))
        clock.advance(1 / rate)
    q.drain()


async def test_delayed_batching_waits_up_to_the_delay_for_more_queries(clock):
    q = BatchQueue(clock=clock)
    busy(q, clock)
    q.put(query("a", clock() + 10))
    asyncio.ensure_future(later(0.010, q.put, query("b", clock() + 10)))
    batch, elapsed = await timed(q.get_batch(8, delay_s=0.060))
    assert xs(batch) == ["a", "b"]
    assert 0.050 <= elapsed < 0.5  # it waited out the delay, not just until b came


def test_right_after_a_batch_returns_it_waits_for_its_callers_next_queries():
    """A batch of 8 returned at 0.999; 3 of its callers have not sent again: the rate alone
    would cut at once (10 q/s), the returning callers hold the batch until 0.999 + delay,
    never past the deadline less the expected latency, and not once the delay is over."""
    slow = steady(1.0, 0.1)
    assert decide(arrivals=slow) == 1.0
    assert decide(arrivals=slow, returning=3, returned_at=0.999) == pytest.approx(1.009)
    assert decide(arrivals=slow, returning=3, returned_at=0.999, deadline=1.006,
                  expected=0.004) == pytest.approx(1.002 - 0.0002)
    assert decide(arrivals=slow, returning=3, returned_at=0.980) == 1.0  # the delay is over
    assert decide(arrivals=slow, returning=3, returned_at=0.999, queued=8) == 1.0  # full: at once


def test_once_every_returning_caller_is_back_the_batch_goes_at_once():
    """At a high rate the arrival rule would wait (see the test above it); with every caller
    of the batch that returned within the delay back, nobody else is expected: cut now."""
    assert decide() > 1.0
    assert decide(returned_at=0.995, caught_up=True) == 1.0
    assert decide(returned_at=0.980, caught_up=True) == pytest.approx(1.010 - 0.041 / 32)  # long ago


async def test_the_queue_counts_the_callers_of_an_answered_batch_back(clock):
    q = BatchQueue(clock=clock)
    busy(q, clock)
    q.answered(2)
    assert (q.returning, q.caught_up) == (2, False)
    q.put(query("a", clock() + 10))
    assert (q.returning, q.caught_up) == (1, False)
    asyncio.ensure_future(later(0.004, q.put, query("b", clock() + 10)))
    batch, elapsed = await timed(q.get_batch(8, delay_s=0.060))
    # Not the 60 ms delay: b was the last caller expected back, and the batch went with it.
    assert xs(batch) == ["a", "b"] and 0.003 <= elapsed < 0.040, elapsed
    assert (q.returning, q.caught_up) == (0, False)  # cut: it waits for no one now


async def test_no_delay_for_a_model_that_costs_less_than_the_trip_to_it(clock):
    """The same arrivals that make the queue wait out the delay (the test above) go at once
    once a batch showed the model's time below the round trip's: a delay would save no
    model time, only idle the frontend."""
    q = BatchQueue(clock=clock)
    busy(q, clock)
    q.answered(4, delay_pays=False)
    q.put(query("a", clock() + 10))
    asyncio.ensure_future(later(0.010, q.put, query("b", clock() + 10)))
    batch, elapsed = await timed(q.get_batch(8, delay_s=0.060))
    assert xs(batch) == ["a"] and elapsed < 0.008, elapsed
    q.answered(5, delay_pays=True)  # a costlier batch: the delay applies again (4 callers to come)
    q.put(query("c", clock() + 10))
    now = clock()
    assert q.next_dispatch(now, 8, 0.060, 0.0) > now


async def test_a_lone_caller_is_never_held_by_its_own_answer(clock):
    q = BatchQueue(clock=clock)
    busy(q, clock)
    q.answered(1)
    q.put(query("next", clock() + 10))  # the caller's next query
    batch, elapsed = await timed(q.get_batch(8, delay_s=0.060))
    assert xs(batch) == ["next"] and elapsed < 0.02


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
    busy(q, clock)
    q.put(query("a", clock() + 10))
    asyncio.ensure_future(later(0.020, lambda: [q.put(query(x, clock() + 10)) for x in "bcd"]))
    batch, elapsed = await timed(q.get_batch(4, delay_s=1.0))
    assert xs(batch) == list("abcd") and 0.015 <= elapsed < 0.5


async def test_the_delay_never_runs_past_the_earliest_deadline_less_the_expected_latency(clock):
    q = BatchQueue(clock=clock)
    busy(q, clock)
    q.put(query("a", clock() + 10))
    q.put(query("urgent", clock() + 0.100))
    batch, elapsed = await timed(q.get_batch(8, delay_s=1.0, expected_latency_s=0.060))
    assert xs(batch) == ["a", "urgent"]
    assert 0.030 <= elapsed < 0.090  # left at ~40 ms, in time for urgent's batch to finish


async def test_the_delay_runs_from_the_oldest_arrival_not_from_when_the_replica_looks(clock):
    q = BatchQueue(clock=clock)
    busy(q, clock)
    q.put(query("a", clock() + 10))
    clock.advance(0.030)  # a waited 30 ms (for the batch in progress) before the replica looked
    batch, elapsed = await timed(q.get_batch(8, delay_s=0.050))
    assert xs(batch) == ["a"]
    assert 0.010 <= elapsed < 0.040  # the rest of a's 50 ms, not 50 ms more


async def test_queries_that_waited_longer_than_the_delay_go_at_once(clock):
    """The issue's case: 10 queries that had waited 5 ms waited another 2 ms (here 40)."""
    q = BatchQueue(clock=clock)
    busy(q, clock)
    for i in range(10):
        q.put(query(i, clock() + 10))
    clock.advance(0.050)
    batch, elapsed = await timed(q.get_batch(64, delay_s=0.040))
    assert xs(batch) == list(range(10)) and elapsed < 0.020


@pytest.mark.parametrize("idle_s", [None, 10.0])
async def test_a_lone_query_after_an_idle_period_goes_at_once(clock, idle_s):
    """No arrival history (a fresh queue), or the last 32 arrivals 10 s ago (3 q/s): no
    further query is expected within the delay, so waiting would only add it to this
    one's latency."""
    q = BatchQueue(clock=clock)
    if idle_s is not None:
        busy(q, clock)
        clock.advance(idle_s)
    q.put(query("a", clock() + 10))
    batch, elapsed = await timed(q.get_batch(8, delay_s=0.200))
    assert xs(batch) == ["a"] and elapsed < 0.050


async def test_put_stamps_the_arrival_and_a_retried_query_keeps_its_own(clock):
    q = BatchQueue(clock=clock)
    busy(q, clock)
    first = query("first", clock() + 10)
    assert first.arrival is None
    q.put(first)
    arrived = first.arrival
    assert arrived == pytest.approx(clock(), abs=0.01)
    assert await asyncio.wait_for(q.get_batch(8), 5) == [first]
    clock.advance(0.100)  # its batch failed after 100 ms: retried, it has waited 100 ms
    q.put_front([first])
    assert first.arrival == arrived
    batch, elapsed = await timed(q.get_batch(8, delay_s=0.080))
    assert batch == [first] and elapsed < 0.040
    assert QueuedQuery("x", first.future, 1.0, arrival=2.5).arrival == 2.5


async def test_a_retried_query_is_no_new_arrival(clock):
    """put_front does not feed the arrival rate: a retry is not a sign of more to come."""
    q = BatchQueue(clock=clock)
    q.put(query("x", clock() + 10))
    await asyncio.wait_for(q.get_batch(8), 5)
    q.put_front([query("retried", clock() + 10)])  # no arrival of its own yet: stamped now
    batch, elapsed = await timed(q.get_batch(8, delay_s=0.200))
    assert xs(batch) == ["retried"] and elapsed < 0.050


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
    c = AIMDController(objective_s=0.010, cap=20, step=4)
    # 14 ms round trip (a busy frontend loop) but 6 ms in the model: the batch fits
    c.observe(20, 0.014, compute_s=0.006)
    assert c.limit() == 22
    c.observe(22, 0.009, compute_s=0.011)  # the model itself went over: back off
    assert c.cap == pytest.approx(22 * 0.9)
    assert c.latency_ewma_s > 0.009  # the round trip still feeds the drop estimate
    c.observe(10, 0.014)  # no compute time reported: the round trip decides
    assert c.cap == pytest.approx(22 * 0.9 * 0.9)


# ---- one kind of input per batch, solo queries, late work, hang watch ------------------------


def arr(*shape: int, dtype: str = "float64"):
    import numpy as np

    return np.zeros(shape, dtype=dtype)


async def test_a_batch_holds_inputs_of_one_shape_and_dtype_and_the_others_keep_their_place(clock):
    q = BatchQueue(clock=clock)
    items = [arr(2), arr(1), arr(2), arr(2, dtype="float32"), arr(1), arr(2), "text"]
    for i, x in enumerate(items):
        q.put(QueuedQuery(x, asyncio.get_running_loop().create_future(), clock() + 10, key=i))
    batches = [[b.key for b in await asyncio.wait_for(q.get_batch(8), 5)] for _ in range(4)]
    assert batches == [[0, 2, 5], [1, 4], [3], [6]]
    assert len(q) == 0


async def test_a_batch_of_one_kind_stops_at_the_cap(clock):
    q = BatchQueue(clock=clock)
    for i in range(5):
        q.put(QueuedQuery(arr(1) if i % 2 else arr(2), asyncio.get_running_loop().create_future(), clock() + 10, key=i))
    assert [b.key for b in await asyncio.wait_for(q.get_batch(2), 5)] == [0, 2]
    assert [b.key for b in await asyncio.wait_for(q.get_batch(2), 5)] == [1, 3]
    assert [b.key for b in await asyncio.wait_for(q.get_batch(2), 5)] == [4]


async def test_a_solo_query_runs_alone_and_is_never_joined(clock):
    q = BatchQueue(clock=clock)
    first, solo, last = (query(x, clock() + 10) for x in ("a", "b", "c"))
    solo.solo = True
    for item in (first, solo, last):
        q.put(item)
    assert xs(await asyncio.wait_for(q.get_batch(8), 5)) == ["a", "c"]
    assert xs(await asyncio.wait_for(q.get_batch(8), 5)) == ["b"]
    q.put_front([solo])
    q.put(query("d", clock() + 10))
    assert xs(await asyncio.wait_for(q.get_batch(8), 5)) == ["b"]


def late_query(x, key) -> QueuedQuery:
    import math

    return QueuedQuery(x, asyncio.get_running_loop().create_future(), math.inf, key, late=True)


async def test_late_work_runs_only_when_the_queue_is_empty_and_one_batch_at_a_time(clock):
    q = BatchQueue(clock=clock)
    assert q.put_late(late_query("l1", 1)) and q.put_late(late_query("l2", 2))
    assert not q.put_late(late_query("again", 1))  # that key waits already
    q.put(query("on-time", clock() + 10))
    assert xs(await asyncio.wait_for(q.get_batch(8), 5)) == ["on-time"]
    assert xs(await asyncio.wait_for(q.get_batch(8), 5)) == ["l1", "l2"]
    assert q.put_late(late_query("l3", 3))
    second = asyncio.ensure_future(q.get_batch(8))  # another replica: not while a late batch runs
    await asyncio.sleep(0.02)
    assert not second.done()
    q.late_done()
    assert xs(await asyncio.wait_for(second, 5)) == ["l3"]
    q.late_done()
    assert q.late_running == 0 and q.late_waiting == 0


async def test_on_time_queries_go_before_late_work_that_waits(clock):
    q = BatchQueue(clock=clock)
    q.put_late(late_query("late", 1))
    q.put(query("a", clock() + 10))
    q.put(query("b", clock() + 10))
    assert xs(await asyncio.wait_for(q.get_batch(1), 5)) == ["a"]
    assert xs(await asyncio.wait_for(q.get_batch(1), 5)) == ["b"]
    assert xs(await asyncio.wait_for(q.get_batch(1), 5)) == ["late"]


async def test_a_late_batch_is_a_quarter_of_the_cap(clock):
    q = BatchQueue(clock=clock)
    for i in range(10):
        q.put_late(late_query(f"l{i}", i))
    assert xs(await asyncio.wait_for(q.get_batch(8), 5)) == ["l0", "l1"]
    q.late_done()
    assert xs(await asyncio.wait_for(q.get_batch(2), 5)) == ["l2"]


async def test_a_waiting_replica_wakes_for_late_work(clock):
    q = BatchQueue(clock=clock)
    waiting = asyncio.ensure_future(q.get_batch(4))
    await asyncio.sleep(0.01)
    q.put_late(late_query("late", 1))
    assert xs(await asyncio.wait_for(waiting, 5)) == ["late"]


async def test_the_late_queue_is_bounded_and_drops_the_oldest(clock):
    q = BatchQueue(clock=clock, late_limit=2)
    items = [late_query(f"l{i}", i) for i in range(3)]
    for item in items:
        q.put_late(item)
    assert q.late_waiting == 2 and q.late_overflow == 1 and items[0].future.cancelled()
    assert xs(await asyncio.wait_for(q.get_batch(8), 5)) == ["l1", "l2"]
    assert not BatchQueue(clock=clock, late_limit=0).put_late(late_query("x", 9))


async def test_drain_cancels_late_work(clock):
    q = BatchQueue(clock=clock)
    late = late_query("late", 1)
    q.put_late(late)
    q.put(query("a", clock() + 10))
    assert xs(q.drain()) == ["a"] and late.future.cancelled() and q.late_waiting == 0


def test_hang_watch_needs_a_measurement_then_allows_factor_times_the_longest_recent_batch():
    from clipper_nb.abstraction.batching import HangWatch

    watch = HangWatch(factor=10, floor_s=1.0)
    assert watch.limit_s(4) is None and watch.limit_s(4, first=True) is None  # nothing measured yet
    watch.observe(4, 0.8, first=True)  # a warm-up: judges only other first batches
    assert watch.limit_s(4) is None and watch.limit_s(4, first=True) == pytest.approx(8.0)
    watch.observe(4, 0.01)
    watch.observe(2, 0.02)
    assert watch.limit_s(4) == 1.0  # 10 x 0.04 is under the floor
    watch.observe(4, 0.3)
    assert watch.limit_s(4) == pytest.approx(3.0)
    assert watch.limit_s(8) == pytest.approx(6.0)  # a larger batch than any seen: scaled by rows
    assert watch.limit_s(4, first=True) == pytest.approx(8.0)
    assert HangWatch(factor=0).limit_s(1) is None

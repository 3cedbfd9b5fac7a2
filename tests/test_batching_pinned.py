"""Tests that pin the batching core's arithmetic (see .ci/mutate.py).

Expected values are worked out by hand from the rules in clipper_nb/abstraction/batching.py's
docstrings, and the boundaries (exactly at a threshold) are tested on purpose.

Mutants judged equivalent (they cannot change behaviour):
  batching.py:123 Mult->Div  robust_quantile's n < 2 branch: ceil(q * 1) == ceil(q / 1); n == 0 raises either way
  batching.py:161 LtE->Lt    dispatch_time with delay_s == 0: every later candidate is <= now (oldest arrival,
                             returned_at and arrivals are all in the past), so it returns now all the same
  batching.py:285 0.0->1.0   expected_latency_s's default idle_s: 1.0 is not > PROBE_AFTER_S (1.0), same as 0.0
  batching.py:482 And->Or    put_late's wake: an extra wake only makes a waiting replica re-check and wait again
  batching.py:553 GtE->Gt    next_dispatch with len(items) == max_size: dispatch_time repeats the check (now)
"""

from __future__ import annotations

import asyncio
import math

import pytest

from clipper_nb.abstraction.batching import (_TIMER_SLACK_S, AIMDController, BatchQueue, HangWatch, QueuedQuery,
                                             arrival_rate, dispatch_time)


class Clock:
    """A clock that moves only when the test sets ``t``."""

    def __init__(self, t: float = 0.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def loop():
    """An event loop that does not run: futures for queries in synchronous tests."""
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


def at_once(coro):
    """The result of ``coro`` if it finishes without waiting (no loop is running here, so a
    wait raises RuntimeError)."""
    try:
        coro.send(None)
    except StopIteration as stop:
        return stop.value
    coro.close()
    raise AssertionError("it waited")


def xs(batch) -> list:
    return [q.x for q in batch]


# ---- AIMD controller ---------------------------------------------------------------


def test_a_fresh_controller_starts_at_four_rows_bounded_by_4096():
    c = AIMDController(objective_s=1.0)
    assert c.cap == 4.0 and c.limit() == 4
    assert c.last_full == 0 and c.batches == 0 and c.latency_ewma_s == 0.0 and c.ceiling is None
    assert AIMDController(objective_s=1.0, cap=10_000).limit() == 4096
    assert AIMDController(objective_s=1.0, cap=0.5).cap == 1.0
    assert AIMDController(objective_s=1.0, cap=1).cap == 1.0


def test_a_fixed_size_of_one_is_allowed():
    assert AIMDController(objective_s=1.0, fixed=1).limit() == 1
    with pytest.raises(ValueError):
        AIMDController(objective_s=1.0, fixed=0)


def test_the_latency_ewma_starts_at_the_first_batch_then_weighs_each_new_one_a_fifth():
    c = AIMDController(objective_s=1.0)
    c.observe(1, 0.25)
    assert c.latency_ewma_s == 0.25
    c.observe(1, 0.5)
    assert c.latency_ewma_s == pytest.approx(0.8 * 0.25 + 0.2 * 0.5)  # 0.3
    c.observe(1, 1.0)
    assert c.latency_ewma_s == pytest.approx(0.8 * 0.3 + 0.2 * 1.0)  # 0.44


def test_the_history_keeps_the_last_256_batches():
    c = AIMDController(objective_s=1.0, fixed=1)
    for _ in range(300):
        c.observe(1, 0.01)
    assert len(c.history) == 256


def test_a_replica_idle_longer_than_probe_after_re_measures():
    c = AIMDController(objective_s=1.0)
    assert c.expected_latency_s() == 0.0  # nothing measured
    c.observe(1, 0.5)  # warm-up
    c.observe(1, 0.25)
    assert c.expected_latency_s() == 0.25
    assert c.expected_latency_s(idle_s=1.0) == 0.25  # exactly PROBE_AFTER_S: still judged
    assert c.expected_latency_s(idle_s=1.5) == 0.0


def test_a_saturated_replica_whose_cap_did_not_grow_expects_its_recent_quantile():
    """At max_cap a full batch does not grow the cap: limit == last_full, so no scaled-up
    estimate. 8 one-row batches of 10 ms and one full of 100 ms: the 0.95 quantile of 9 is
    the 8th (never the largest), the 0.75 one the 7th: 10 ms."""
    c = AIMDController(objective_s=1.0, cap=4, max_cap=4)
    c.observe(1, 0.01)  # warm-up
    for _ in range(8):
        c.observe(1, 0.01)
    c.observe(4, 0.1)
    assert c.last_full == 4 and c.limit() == 4
    assert c.expected_latency_s() == 0.01


# ---- delayed batching's decision (pure) ----------------------------------------------


def test_the_arrival_rate_of_two_arrivals():
    assert arrival_rate([0.0, 1.0], now=2.0) == 0.5
    assert arrival_rate([0.0, 1.0], now=1.0) == 1.0  # measured from the first arrival


def test_two_arrivals_are_enough_for_a_rate():
    """until = 0.01 + 0.1 = 0.11, first arrival 0: 0.11 - 0.11 / 2."""
    at = dispatch_time(0.01, queued=1, limit=8, delay_s=0.1, oldest_arrival=0.01, earliest_deadline=100.0,
                       expected_latency_s=0.0, arrivals=[0.0, 0.01])
    assert at == pytest.approx(0.055)


def test_one_returning_caller_holds_the_batch():
    at = dispatch_time(10.0, queued=1, limit=8, delay_s=0.005, oldest_arrival=10.0, earliest_deadline=100.0,
                       expected_latency_s=0.0, arrivals=[10.0], returning=1, returned_at=9.999)
    assert at == pytest.approx(10.004)


def test_returning_callers_without_a_return_time_hold_nothing():
    at = dispatch_time(1.0, queued=1, limit=8, delay_s=0.5, oldest_arrival=1.0, earliest_deadline=100.0,
                       expected_latency_s=0.0, arrivals=[1.0], returning=1)
    assert at == 1.0


def rate_plan(**kw) -> float:
    """until = 1.4 + 0.5 = 1.9, arrivals from 1.0, 3 of them: 1.9 - 0.9 / 3 = 1.6."""
    return dispatch_time(1.5, queued=1, limit=8, delay_s=0.5, oldest_arrival=1.4, earliest_deadline=100.0,
                         expected_latency_s=0.0, arrivals=[1.0, 1.25, 1.5], **kw)


def test_caught_up_cuts_at_once_up_to_exactly_the_delay_after_the_return():
    assert rate_plan() == pytest.approx(1.6)
    assert rate_plan(returned_at=1.0, caught_up=True) == 1.5  # 0.5 after: exactly the delay
    assert rate_plan(returned_at=0.9, caught_up=True) == pytest.approx(1.6)  # past the delay
    assert rate_plan(returned_at=1.2) == pytest.approx(1.6)  # not caught up (the default)


def test_a_wait_of_exactly_the_timer_slack_is_no_wait():
    def plan(delay_s):
        return dispatch_time(0.0, queued=1, limit=8, delay_s=delay_s, oldest_arrival=0.0, earliest_deadline=10.0,
                             expected_latency_s=0.0, arrivals=[], returning=1, returned_at=0.0)

    assert plan(_TIMER_SLACK_S) == 0.0
    assert plan(0.0003) == 0.0003


# ---- HangWatch ----------------------------------------------------------------------


def test_hang_watch_defaults_floor_of_one_second():
    watch = HangWatch()
    watch.observe(1, 0.01)
    assert watch.limit_s(1) == 1.0
    watch.observe(1, 0.5)
    assert watch.limit_s(1) == pytest.approx(5.0)  # 10 x 0.5


def test_hang_watch_factor_zero_is_off_and_one_is_on():
    off = HangWatch(factor=0, floor_s=0.1)
    off.observe(1, 0.5)
    assert off.limit_s(1) is None
    on = HangWatch(factor=1, floor_s=0.1)
    on.observe(1, 0.5)
    assert on.limit_s(1) == 0.5


# ---- BatchQueue: synchronous (no wait) -------------------------------------------------


def test_a_fresh_query_and_queue_state(loop):
    q = QueuedQuery("x", loop.create_future(), 1.0)
    assert q.attempts == 0 and q.late is False and q.solo is False
    queue = BatchQueue(clock=Clock())
    assert queue.returning == 0 and queue.returned_at == -math.inf and queue.caught_up is False
    assert queue.late_running == 0 and queue.late_overflow == 0
    queue.put(q)
    assert queue.returning == 0 and queue.caught_up is False


def test_no_delay_no_wait_and_the_deadline_edge_is_on_time(loop):
    clock = Clock(1.0)
    q = BatchQueue(clock=clock)
    q.put(QueuedQuery("a", loop.create_future(), 1.5))
    assert xs(at_once(q.get_batch(8))) == ["a"]  # default estimate 0, default delay 0
    q.put(QueuedQuery("b", loop.create_future(), 1.5))
    q.put(QueuedQuery("c", loop.create_future(), 10.0))  # two arrivals at once: a rate, but no delay
    assert xs(at_once(q.get_batch(8, expected_latency_s=0.5))) == ["b", "c"]  # 1.0 + 0.5 == 1.5: in time
    clock.t = 2.0
    q.put(QueuedQuery("d", loop.create_future(), 10.0))
    q.put(QueuedQuery("e", loop.create_future(), 10.0))  # arrivals a rate would wait for: no delay by default
    assert xs(at_once(q.get_batch(8))) == ["d", "e"]


def test_next_dispatch_without_a_delay_is_now_even_for_an_empty_queue():
    assert BatchQueue(clock=Clock()).next_dispatch(5.0, 8, 0.0, 0.0) == 5.0


def scan_queue(loop, gap: int) -> BatchQueue:
    """An int, ``gap`` strings, an int: a cut of 2 scans 2 x 4 + 64 = 72 queries."""
    q = BatchQueue(clock=Clock())
    for x in [0, *["s"] * gap, 1]:
        q.put(QueuedQuery(x, loop.create_future(), 10.0))
    return q


def test_a_cut_scans_exactly_four_per_row_plus_64(loop):
    q = scan_queue(loop, 70)  # the second int is the 72nd: scanned
    assert xs(at_once(q.get_batch(2))) == [0, 1]
    assert len(q) == 70
    q = scan_queue(loop, 71)  # the 73rd: not scanned
    assert xs(at_once(q.get_batch(2))) == [0]
    assert len(q) == 72 and xs(q.drain())[-1] == 1


def late_scan_queue(loop, gap: int) -> BatchQueue:
    q = BatchQueue(clock=Clock())
    for key, x in enumerate([0, *["s"] * gap, 1]):
        q.put_late(QueuedQuery(x, loop.create_future(), math.inf, key, late=True))
    return q


def test_a_late_cut_scans_exactly_four_per_row_plus_64(loop):
    q = late_scan_queue(loop, 70)  # a late batch of 8 // 4 = 2 rows: scans 72
    assert xs(at_once(q.get_batch(8))) == [0, 1]
    assert q.late_running == 1 and q.late_waiting == 70
    q = late_scan_queue(loop, 71)
    assert xs(at_once(q.get_batch(8))) == [0]
    assert q.late_waiting == 72


def test_late_done_counts_one_batch_off_and_never_below_zero(loop):
    q = BatchQueue(clock=Clock())
    q.late_done()
    assert q.late_running == 0
    q.put_late(QueuedQuery("l", loop.create_future(), math.inf, 1, late=True))
    assert xs(at_once(q.get_batch(8))) == ["l"]
    assert q.late_running == 1
    q.late_running = 2
    q.late_done()
    assert q.late_running == 1


def test_the_late_queue_holds_1024_by_default_and_a_limit_of_one_holds_one(loop):
    q = BatchQueue(clock=Clock())
    items = [QueuedQuery(i, loop.create_future(), math.inf, i, late=True) for i in range(1025)]
    for item in items:
        assert q.put_late(item)
    assert q.late_waiting == 1024 and q.late_overflow == 1 and items[0].future.cancelled()
    one = BatchQueue(clock=Clock(), late_limit=1)
    assert one.put_late(QueuedQuery("a", loop.create_future(), math.inf, "a", late=True))
    assert one.put_late(QueuedQuery("b", loop.create_future(), math.inf, "b", late=True))
    assert one.late_waiting == 1 and one.late_overflow == 1


# ---- BatchQueue: the delay, on a running loop with a clock the test moves -------------------


def two_arrivals(deadline_a: float = 10.0) -> tuple[BatchQueue, Clock]:
    """a at 0, b at 0.001, delay 10 ms: until = 0.010, 2 arrivals from 0: the delay ends
    at 0.010 - 0.010 / 2 = 0.005 (4 ms of real waiting from 0.001)."""
    clock = Clock(0.0)
    q = BatchQueue(clock=clock)
    loop = asyncio.get_running_loop()
    q.put(QueuedQuery("a", loop.create_future(), deadline_a))
    clock.t = 0.001
    q.put(QueuedQuery("b", loop.create_future(), 10.0))
    return q, clock


async def test_an_arrival_at_exactly_the_timer_slack_before_the_end_cuts_the_batch():
    q, clock = two_arrivals()
    waiting = asyncio.ensure_future(q.get_batch(8, delay_s=0.010))
    await asyncio.sleep(0)
    assert not waiting.done()
    until = 0.010 - (0.010 - 0.0) / 2
    clock.t = until - _TIMER_SLACK_S
    q.put(QueuedQuery("c", asyncio.get_running_loop().create_future(), 10.0))
    assert xs(await asyncio.wait_for(waiting, 1)) == ["a", "b", "c"]


async def test_a_late_timer_judges_lateness_as_of_the_planned_end():
    """a's deadline 0.0103 (latest = 0.0101 does not shorten the 0.010 delay); the timer
    fires at 0.011 on the clock: a is judged at 0.005 and is on time."""
    q, clock = two_arrivals(deadline_a=0.0103)
    waiting = asyncio.ensure_future(q.get_batch(8, delay_s=0.010))
    await asyncio.sleep(0)
    clock.t = 0.011
    assert xs(await asyncio.wait_for(waiting, 1)) == ["a", "b"]


async def test_a_replica_whose_queries_another_took_during_its_delay_waits_again():
    q, clock = two_arrivals()
    loop = asyncio.get_running_loop()
    waiting = asyncio.ensure_future(q.get_batch(8, delay_s=0.010))
    await asyncio.sleep(0)
    clock.t = 0.002
    q.put(QueuedQuery("c", loop.create_future(), 10.0))  # wakes the waiting replica ...
    assert xs(await q.get_batch(8)) == ["a", "b", "c"]  # ... but another takes them all first
    await asyncio.sleep(0.01)
    assert not waiting.done()
    clock.t = 1.0  # d alone, long after the others: no delay
    q.put(QueuedQuery("d", loop.create_future(), 10.0))
    assert xs(await asyncio.wait_for(waiting, 1)) == ["d"]


# ---- BatchQueue: do the callers of a batch come back? ------------------------------------


def answered_then(q: BatchQueue, clock: Clock, loop, n: int, back: list[float]) -> None:
    """A batch of ``n`` is answered at ``clock.t``; queries arrive ``back`` seconds after."""
    start = clock.t
    q.answered(n)
    for dt in back:
        clock.t = start + dt
        q.put(QueuedQuery("r", loop.create_future(), 100.0))
    q.drain()


def ask_with_delay(q: BatchQueue, loop, delay_s: float) -> None:
    """What a replica does before each cut: ask when to dispatch, with its delay."""
    q.put(QueuedQuery("first", loop.create_future(), 100.0))
    q.next_dispatch(q.clock(), 64, delay_s, 0.0)
    q.drain()


def test_callers_that_come_back_within_the_delay_keep_the_wait_for_them(loop):
    clock = Clock(0.0)  # 0.002 - 0.0 is exactly the delay (1.002 - 1.0 is not, in binary)
    q = BatchQueue(clock=clock)
    assert q.callers_return == 1.0
    ask_with_delay(q, loop, 0.002)  # the replicas' delay: 2 ms
    answered_then(q, clock, loop, 4, [0.001, 0.0015, 0.002, 0.002])  # all four, the last exactly at the delay
    clock.t += 1.0
    answered_then(q, clock, loop, 2, [])
    assert q.callers_return == 1.0  # 1 + 0.2 x (4/4 - 1)


def test_an_open_loops_arrivals_wear_the_wait_down_by_a_fifth_per_batch(loop):
    clock = Clock(1.0)
    q = BatchQueue(clock=clock)
    ask_with_delay(q, loop, 0.002)
    answered_then(q, clock, loop, 4, [0.001, 0.0021, 0.003])  # one of four within the delay
    clock.t += 1.0
    answered_then(q, clock, loop, 8, [0.0005] * 10)  # more than the batch: counts as all (capped at 1)
    assert q.callers_return == pytest.approx(1.0 + 0.2 * (0.25 - 1.0))  # 0.85
    clock.t += 1.0
    answered_then(q, clock, loop, 1, [])
    assert q.callers_return == pytest.approx(0.85 + 0.2 * (1.0 - 0.85))  # 0.88


def test_below_one_half_returning_callers_are_not_waited_for(loop):
    clock = Clock(10.0)
    q = BatchQueue(clock=clock)
    q.put(QueuedQuery("a", loop.create_future(), 100.0))
    q.answered(3)  # three callers expected back: a lone "a" would wait for them
    q.callers_return = 0.5
    assert q.next_dispatch(clock.t, 64, 0.002, 0.0) == pytest.approx(10.002)
    q.callers_return = 0.4999
    assert q.next_dispatch(clock.t, 64, 0.002, 0.0) == 10.0  # no rate, no returning callers: at once

"""Adaptive batching: the AIMD controller and delayed batching's decision (pure), and
the queue batches are cut from.

Clipper (NSDI'17 §4.3) grows a replica's maximum batch additively while batches finish
within the latency objective and cuts it by 10% when one does not; and, when the queue
is short, waits a little (delayed batching) for the batch to fill. Rules here:

* **Objective** (``objective_for_slo``): a query that arrives while a batch runs waits
  for it, then rides the next one, so its latency is about two batch times (Clipper
  aimed the *batch* at the SLO and users saw queue time blow through it, clipper#222).
  A batch may therefore take ``SLO_FRACTION`` of the SLO. The batching delay is *not*
  subtracted: it only happens when the queue is short, i.e. instead of waiting for a
  batch in progress, so it replaces that wait and does not add to it (latency <=
  max(batch, delay) + batch). Subtracting it (as before) double-counted it and, with a
  5 ms delay and a 20 ms SLO, aimed below a 5 ms model's single row: the cap stuck at 1.
  The controller never aims below the single-row latency (``AIMDController.objective``).
* **Increase** (``AIMDController.increase``): ``min(step, max(1, STEP_FRACTION x cap))``
  so that a small cap is not overshot by a fixed step; next to a size that went over
  the objective the cap creeps (``1 / PROBE_EVERY`` row per full batch), so a model whose
  best batch is small is not pushed over every other batch.
* **Decrease**: ``x DEFAULT_BACKOFF`` and always at least one row below the integer cap.
* **Drop estimate** (``expected_latency_s``): a high quantile (``DROP_QUANTILE``) of the
  recent batches (not the fastest), so that a query admitted to a batch finishes in time.
* **Delay** (``dispatch_time``): measured from the batch's *oldest arrival*, cut short by
  the earliest deadline less the expected latency, and skipped once fewer than one more
  arrival is expected within it (the arrival rate is estimated from recent arrivals).
* **One kind per batch** (``batch_group``): a batch holds inputs of one shape and dtype
  (or one Python type), so that one odd input cannot make a model fail its neighbours'
  queries; a query marked ``solo`` (it was on a replica that died) runs alone.
* **Late work** (``BatchQueue.put_late``): queries dropped at dispatch are still computed
  to fill the cache (the paper's "late results still fill the cache"), from a bounded
  side queue served only when the main queue is empty, one short batch at a time.
* **Hangs** (``HangWatch``): a batch running ``factor`` x longer than this model's
  recent batches (at least ``floor_s``) marks its replica hung.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from clipper_nb.config import DEFAULT_HANG_FACTOR
from clipper_nb.errors import DeadlineMissed  # re-exported: the queue raises it

#: Share of the SLO a batch may take: the wait for the batch in progress (about one
#: batch) plus the query's own batch must fit in the SLO.
SLO_FRACTION = 0.5
#: No objective below this (a zero objective would back every batch off).
MIN_OBJECTIVE_S = 0.0005
#: The largest additive step, in rows.
DEFAULT_STEP = 4.0
#: The additive step is at most this share of the cap (but at least one row).
STEP_FRACTION = 0.1
#: Next to a batch size that went over the objective, it is tried again only after this
#: many full batches just below it.
PROBE_EVERY = 16
DEFAULT_BACKOFF = 0.9
DEFAULT_MAX_CAP = 4096
#: The objective is at least this many times the single-row latency. 1: the issue's
#: "never below the single-row latency". More (1.1-1.25) serves more at overload when
#: the SLO is under two single rows, but lets a batch run past half the SLO.
SINGLE_ROW_HEADROOM = 1.0
#: Batches of one row the single-row latency is the median of.
SINGLE_ROW_SAMPLES = 16
#: Batches the drop estimate looks back over (see ``AIMDController.expected_latency_s``).
RECENT_BATCHES = 32
#: The drop estimate's quantile of those batches' latencies.
DROP_QUANTILE = 0.95
#: ... but at most this many times the upper quartile: a model that straggles now and then
#: (a GC pause, a 150 ms outlier in 20 calls) must not have every query dropped for its
#: outliers, while a model slow in a quarter of its batches or more is judged by those.
DROP_OUTLIER_FACTOR = 2.0
#: Batches of a fresh replica left out of the drop estimate (warm-up).
WARMUP_BATCHES = 1
#: A replica that has run no batch for this long re-measures instead of dropping.
PROBE_AFTER_S = 1.0
#: Arrivals the arrival rate is estimated over (delayed batching).
RATE_WINDOW = 32
#: Delayed batching ends this much early: timers do not fire to the microsecond.
_TIMER_SLACK_S = 0.0002
#: Weight of the newest batch in ``BatchQueue.callers_return`` (4 batches whose callers
#: did not come back in time stop the wait for them; as many that did start it again).
RETURN_WEIGHT = 0.2
#: Queries a cut looks past for inputs of the batch's kind: this many per row of the cap,
#: plus ``SCAN_EXTRA`` (a queue of mixed kinds must not be scanned whole for each batch).
SCAN_PER_ROW = 4
SCAN_EXTRA = 64
#: Dropped queries kept for late computation, per model version (the oldest go first).
LATE_LIMIT = 1024
#: A batch of late work holds at most this share of the cap (at least one row): an
#: on-time query arriving while it runs waits for a short batch, not a full one.
LATE_BATCH_SHARE = 0.25
#: Hang detection: a batch running this many times longer than batches of its size took
#: marks its replica hung (``HangWatch``) ...
HANG_FACTOR = DEFAULT_HANG_FACTOR
#: ... but never sooner than this: a GC pause or a busy machine is not a hang.
HANG_FLOOR_S = 1.0


def objective_for_slo(slo_s: float, delay_s: float = 0.0, fraction: float = SLO_FRACTION) -> float:
    """The batch-latency objective that keeps end-to-end latency within ``slo_s``.

    A query waits for the batch in progress *or* for the batching delay (the delay runs
    from the oldest arrival and only while no batch runs), then for its own batch:
    ``max(objective, delay) + objective <= slo``. The delay therefore only binds when it
    is over ``slo_s x (1 - fraction)``.
    """
    return max(MIN_OBJECTIVE_S, min(slo_s * fraction, slo_s - delay_s))


def robust_quantile(values: Sequence[float], q: float) -> float:
    """Nearest-rank ``q`` quantile, but never the largest of two or more values: one
    outlier (a GC pause, a second warm-up) must not set a drop estimate alone. Of 32
    values the 0.95 quantile is the 31st (the second largest); of 2, the smaller."""
    ordered = sorted(values)
    n = len(ordered)
    rank = math.ceil(q * n) if n < 2 else min(math.ceil(q * n), n - 1)
    return ordered[max(1, rank) - 1]


def arrival_rate(arrivals: Sequence[float], now: float) -> float:
    """Queries per second seen by ``now``: ``(n - 1) / (now - first)`` over the window.

    Measured up to ``now``, not up to the last arrival, so that a quiet spell lowers it
    at once: a lone query after an idle period sees a rate of about zero.
    """
    if len(arrivals) < 2 or now <= arrivals[0]:
        return 0.0
    return (len(arrivals) - 1) / (now - arrivals[0])


def dispatch_time(now: float, *, queued: int, limit: int, delay_s: float, oldest_arrival: float,
                  earliest_deadline: float, expected_latency_s: float, arrivals: Sequence[float],
                  returning: int = 0, returned_at: float = -math.inf, caught_up: bool = False) -> float:
    """When delayed batching cuts the batch, if no query arrives before then: ``now`` or
    later. Ask again after each arrival (the batch may be full, the rate has changed).

    It waits only while more queries are expected within the delay, and never past the
    earliest deadline less the expected batch latency:

    * from the arrival rate: the delay runs from the oldest queued query's arrival (so
      queries that waited for a batch in progress do not wait again) and ends as soon as
      fewer than one more arrival is expected before it would: waiting at time t pays
      while ``rate(t) x (until - t) >= 1``, with ``rate(t) = (n - 1) / (t - first)``
      (``arrival_rate``), i.e. while ``t <= until - (until - first) / n``;
    * right after a batch returns (``returned_at``), while its ``returning`` callers have
      not sent their next queries yet (each arrival since counts off one): a caller that
      waits for its answer before it asks again (a closed loop, a notebook's loop) sends
      the next query within moments, and without this wait the queries split into two
      half batches that alternate for good. A lone query is never held: its own caller's
      next query is the arrival that counts its batch off. Once they are all back within
      the delay (``caught_up``), the batch is cut at once: the rate, high in a burst of
      returning callers, would expect more, but in a closed loop nobody else is coming.
    """
    if queued >= limit or delay_s <= 0:
        return now  # full, or no delay
    latest = earliest_deadline - expected_latency_s - _TIMER_SLACK_S
    at = now
    if len(arrivals) >= 2:  # else no rate to expect another arrival from
        until = min(oldest_arrival + delay_s, latest)
        at = until - (until - arrivals[0]) / len(arrivals)
    if returning > 0:
        at = max(at, min(returned_at + delay_s, latest))
    elif caught_up and now - returned_at <= delay_s:
        return now
    return at if at - now > _TIMER_SLACK_S else now


@dataclass
class AIMDController:
    """Per-replica batch-size controller. No clocks, no I/O: feed it observations.

    ``fixed`` pins the batch size (no adaptation); ``max_cap`` bounds it (``1`` turns
    batching off). ``observe`` only grows the cap after a *full* batch within the
    objective: a half-empty batch says nothing about whether a larger one would fit.
    """

    objective_s: float
    step: float = DEFAULT_STEP
    backoff: float = DEFAULT_BACKOFF
    cap: float = 4.0
    max_cap: int = DEFAULT_MAX_CAP
    fixed: int | None = None
    #: exponentially weighted batch latency (round trip), for the dashboards
    latency_ewma_s: float = 0.0
    history: collections.deque = field(default_factory=lambda: collections.deque(maxlen=256))
    batches: int = 0
    #: the last batch size that went over the objective, until a batch that large fits
    ceiling: int | None = None
    #: model times of recent one-row batches (the objective's floor)
    single_row: collections.deque = field(default_factory=lambda: collections.deque(maxlen=SINGLE_ROW_SAMPLES))
    #: the size of the last batch if it was full (the replica is saturated), else 0
    last_full: int = 0

    def __post_init__(self) -> None:
        if self.fixed is not None and self.fixed < 1:
            raise ValueError("a fixed batch size must be >= 1")
        if self.max_cap < 1:
            raise ValueError("max_batch_size must be >= 1")
        if not 0 < self.backoff < 1:
            raise ValueError("backoff must be in (0, 1)")
        self.cap = float(min(max(1.0, self.cap), self.max_cap))

    def limit(self) -> int:
        """The largest batch to form now."""
        if self.fixed is not None:
            return self.fixed
        return max(1, min(int(self.cap), self.max_cap))

    def objective(self) -> float:
        """The objective batches are judged against: ``objective_s``, but never below
        ``SINGLE_ROW_HEADROOM`` x the single-row latency (the median of recent one-row
        batches' model time). Below it no batch can succeed: every batch would count as
        a failure, the controller would learn nothing and keep the cap at 1 even when a
        second row costs almost nothing."""
        if not self.single_row:
            return self.objective_s
        return max(self.objective_s, SINGLE_ROW_HEADROOM * statistics.median(self.single_row))

    def observe(self, size: int, latency_s: float, compute_s: float | None = None) -> None:
        """Account for one finished batch of ``size`` rows that took ``latency_s`` round
        trip, of which ``compute_s`` in the model (as the worker measured it).

        The cap follows the model's own time when it is known: that is what the batch
        size changes. The round trip also carries the frontend's event-loop lag and
        the RPC, which a smaller batch does not shorten (it lengthens them: more batches
        for the same rows), so steering on it collapses the cap exactly when the
        frontend is busiest. The round trip still feeds the drop estimate below.
        """
        a = 0.2
        self.latency_ewma_s = latency_s if self.latency_ewma_s == 0 else (1 - a) * self.latency_ewma_s + a * latency_s
        self.batches += 1
        signal = latency_s if compute_s is None else compute_s
        self.last_full = size if size >= self.limit() else 0
        if self.batches > WARMUP_BATCHES:
            # A replica's first batch pays for lazy imports and allocations; judging the
            # queue (or the objective's floor) by it would mislead both.
            self.history.append((size, latency_s))
            if size == 1:
                self.single_row.append(signal)
        if self.fixed is not None:
            return
        if signal > self.objective():
            self.ceiling = size
            self.cap = self.decrease(self.cap)
            return
        if self.ceiling is not None and size >= self.ceiling:
            self.ceiling = None  # a size that went over now fits (noise, or a faster model)
        if size >= self.limit():
            self.cap = min(float(self.max_cap), self.cap + self.increase())

    def decrease(self, cap: float) -> float:
        """The cap after a batch over the objective: ``backoff`` x the cap, and always at
        least one row below its integer part (x 0.9 alone takes a cap of 5.8 to 5.2, still
        5 rows, after a batch of 5 went over), but never below 1."""
        return max(1.0, min(cap * self.backoff, float(int(cap) - 1)))

    def increase(self) -> float:
        """Rows added after a full batch within the objective.

        ``min(step, max(1, STEP_FRACTION x cap))``: a fixed step of 4 from a cap of 2
        overshoots a best batch of 2 or 3 by 100%. Once a size has gone over (the
        ``ceiling``) the cap goes straight to one row below it, then creeps up by ``1 /
        PROBE_EVERY`` row per full batch, so it tries the failing size again once in
        ``PROBE_EVERY`` batches instead of after every backoff: AIMD's probing past
        the objective would otherwise be a third to a half of all batches when the best
        batch is small.
        """
        inc = min(self.step, max(1.0, STEP_FRACTION * self.cap))
        if self.ceiling is not None and self.cap + inc >= self.ceiling:
            below = self.ceiling - 1 - self.cap
            inc = below if below > 0 else 1.0 / PROBE_EVERY
        return inc

    def set_objective(self, objective_s: float) -> None:
        self.objective_s = objective_s
        self.ceiling = None  # what went over the old objective may fit the new one

    def expected_latency_s(self, idle_s: float = 0.0) -> float:
        """What the next batch should take, for dropping queries that cannot make it.

        The ``DROP_QUANTILE`` quantile of the last ``RECENT_BATCHES`` round trips (see
        :func:`robust_quantile`): with the fastest one (as before) about one query in
        16 admitted at overload still finished late, since at overload every query in a
        batch is at the deadline edge. 0 once the replica has run nothing for
        ``PROBE_AFTER_S`` (``idle_s``), so a replica whose queries were all being
        dropped runs one batch and re-measures instead of dropping them forever.
        """
        if idle_s > PROBE_AFTER_S or not self.history:
            return 0.0
        latencies = [lat for _, lat in itertools.islice(reversed(self.history), RECENT_BATCHES)]
        recent = min(robust_quantile(latencies, DROP_QUANTILE),
                     DROP_OUTLIER_FACTOR * robust_quantile(latencies, 0.75))
        if self.last_full and self.limit() > self.last_full:
            # Saturated and the cap just grew: the next batch is full at the new cap and
            # longer than any recent one; at overload every query in it sits at the
            # deadline edge, so it would be late.
            return max(recent, self._latency_of_larger(self.limit(), recent))
        return recent

    def _latency_of_larger(self, size: int, recent: float) -> float:
        """The expected latency of a batch of ``size`` rows, larger than the recent ones:
        from the batches that large in the history (an earlier probe of that size), else
        ``recent`` scaled by the size (an upper bound for a cost of fixed + per row) but
        not past the objective the cap is steered to: from 2 rows to 3 the scaling is x
        1.5, enough to outgrow the SLO and refuse every query."""
        seen = [lat for n, lat in reversed(self.history) if n >= size][:RECENT_BATCHES]
        if seen:
            return robust_quantile(seen, DROP_QUANTILE)
        return min(recent * size / self.last_full, self.objective())


def _release(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


def batch_group(x: Any) -> Any:
    """Which inputs may share a batch: numpy arrays of one shape and dtype (they stack
    into one buffer), other values of one Python type. Inputs of different shapes in one
    batch reach the model as a ragged list, and it fails all of them."""
    if isinstance(x, np.ndarray):
        return (x.shape, x.dtype.str)
    return type(x)


class QueuedQuery:
    """One input waiting for a model: its future, deadline, arrival and retry count.

    ``arrival`` (on the queue's clock) is stamped by ``BatchQueue.put`` when not given:
    delayed batching runs from the oldest arrival, and a retried query keeps its own.
    ``solo``: run it in a batch of its own (it was on a replica that died). ``late``: a
    query already answered with the default output, computed only to fill the cache.
    """

    __slots__ = ("arrival", "attempts", "deadline", "future", "group", "key", "late", "solo", "x")

    def __init__(self, x: Any, future: asyncio.Future, deadline: float, key: Any = None,
                 arrival: float | None = None, *, late: bool = False) -> None:
        self.x = x
        self.future = future
        self.deadline = deadline
        self.key = key
        self.attempts = 0
        self.arrival = arrival
        self.group = batch_group(x)
        self.late = late
        self.solo = False


class HangWatch:
    """When a batch has run so long that its replica must be hung. Pure: feed it batches.

    The limit is ``factor`` x the longest of this version's recent batches (across its
    replicas, scaled up by rows for a larger batch), at least ``floor_s``. A replica's
    first batch (imports, allocations: it can take far longer) is judged by the longest
    first batch seen. Before any batch was measured there is no limit (None): the
    backend's own ``hang_timeout_s`` still applies. ``factor <= 0`` turns it off.
    """

    def __init__(self, factor: float = HANG_FACTOR, floor_s: float = HANG_FLOOR_S) -> None:
        self.factor = factor
        self.floor_s = floor_s
        self.recent: collections.deque[tuple[int, float]] = collections.deque(maxlen=RECENT_BATCHES)
        self.first_s: float | None = None

    def observe(self, size: int, latency_s: float, first: bool = False) -> None:
        """A batch of ``size`` rows finished in ``latency_s`` (``first``: its replica's first)."""
        if first:
            self.first_s = max(latency_s, self.first_s or 0.0)
        else:
            self.recent.append((size, latency_s))

    def limit_s(self, size: int, first: bool = False) -> float | None:
        """How long a batch of ``size`` rows may run before its replica counts as hung."""
        if self.factor <= 0:
            return None
        known = [lat * max(1.0, size / n) for n, lat in self.recent]
        if first and self.first_s is not None:
            known.append(self.first_s)
        if not known:
            return None
        return max(self.floor_s, self.factor * max(known))


class BatchQueue:
    """A model's queue, shared by its replicas' loops; each cuts its own batches.

    ``get_batch`` waits for a first query, then (delayed batching, Nagle-style) as
    :func:`dispatch_time` says: up to ``delay_s`` after the oldest query's arrival, never
    past the earliest deadline less the expected batch latency, and not at all when no
    further query is expected in time. Queries that can no longer meet their deadline
    are failed with :class:`DeadlineMissed` at once instead of delaying those behind them
    (``on_expired`` hears of each first: it may hand a copy to ``put_late``).

    A batch holds queries of one :func:`batch_group` (the first live query's; the others
    keep their place), or one ``solo`` query alone. When the queue is empty, a replica
    gets a batch of late work instead (``put_late``), if no other replica runs one:
    late work never waits in front of on-time queries, and leaves other replicas free.
    """

    def __init__(self, on_expired: Callable[[QueuedQuery], None] | None = None,
                 clock: Callable[[], float] = time.monotonic, late_limit: int = LATE_LIMIT) -> None:
        self._items: collections.deque[QueuedQuery] = collections.deque()
        self._late: collections.deque[QueuedQuery] = collections.deque()
        self._late_keys: set = set()
        self.late_limit = late_limit
        #: late batches handed out and not yet reported done (``late_done``)
        self.late_running = 0
        #: late queries dropped because the late queue was full
        self.late_overflow = 0
        # Futures of the loops waiting for a put. Not an asyncio.Event: a wait with a
        # timeout on an Event needs asyncio.wait_for, a new Task per wait, and during a
        # batch delay every arriving query ends one such wait.
        self._waiters: set[asyncio.Future[None]] = set()
        #: recent arrival times, for the arrival rate delayed batching expects
        self._arrivals: collections.deque[float] = collections.deque(maxlen=RATE_WINDOW)
        self.on_expired = on_expired
        self.clock = clock
        #: callers of the batch answered last who have not sent a query since, and when it was
        self.returning = 0
        self.returned_at = -math.inf
        #: every caller of that batch has sent a query since, and no batch was cut since then
        self.caught_up = False
        #: whether delayed batching pays for this model (see ``answered``)
        self.delay_pays = True
        #: the share of a batch's callers that sent again within the delay (an average
        #: over recent batches, 1 at first): in a closed loop about all, in an open loop
        #: only what the arrival rate brings meanwhile
        self.callers_return = 1.0
        self._answered_n = 0  # the size of the batch answered last
        self._back = 0  # queries that arrived within the delay after it
        self._delay_s = 0.0  # the delay the replicas last asked with

    def __len__(self) -> int:
        return len(self._items)

    def put(self, item: QueuedQuery) -> None:
        now = self.clock()
        if item.arrival is None:
            item.arrival = now
        self._arrivals.append(now)
        self._items.append(item)
        if now - self.returned_at <= self._delay_s:
            self._back += 1
        if self.returning:
            self.returning -= 1
            self.caught_up = self.returning == 0
        self._wake()

    def answered(self, n: int, delay_pays: bool = True) -> None:
        """A replica answered a batch of ``n`` queries: their callers may ask again soon
        (see :func:`dispatch_time`).

        ``delay_pays``: the model's time outweighed the round trip's own. A delay exists to
        save model calls (a fixed cost per batch); when the model costs less than the trip
        to it, a larger batch saves almost nothing, while waiting idles the frontend during
        every round trip that two batches in turn would overlap (a no-op under a closed
        loop of 16: 3,700 vs 4,900 q/s). Then batches are cut at once.

        How many of the previous batch's callers were back within the delay updates
        ``callers_return``; below one half, nobody is waited for: an open loop's queries
        do not come back, and waiting for them held batches the whole delay (simulated
        open-loop p99 +2.7 ms of a 5 ms model at 3,000 q/s)."""
        if self._answered_n:
            back = min(1.0, self._back / self._answered_n)
            self.callers_return += RETURN_WEIGHT * (back - self.callers_return)
        self.returning, self.returned_at, self.caught_up = n, self.clock(), False
        self._answered_n, self._back = n, 0
        self.delay_pays = delay_pays

    def put_front(self, items: list[QueuedQuery]) -> None:
        # Retried queries are not new arrivals: they keep their arrival, add no rate.
        now = self.clock()
        for item in items:
            if item.arrival is None:
                item.arrival = now
        self._items.extendleft(reversed(items))
        if self._items:
            self._wake()

    def put_late(self, item: QueuedQuery) -> bool:
        """Keep ``item`` (``late``, with a cache key) to compute when the queue is empty;
        False when a query with its key waits already. Full: the oldest is dropped."""
        if item.key in self._late_keys or self.late_limit <= 0:
            return False
        if len(self._late) >= self.late_limit:
            dropped = self._late.popleft()
            self._late_keys.discard(dropped.key)
            dropped.future.cancel()
            self.late_overflow += 1
        self._late.append(item)
        self._late_keys.add(item.key)
        if not self._items and not self.late_running:
            self._wake()
        return True

    def late_done(self) -> None:
        """A late batch handed out by ``get_batch`` has finished (or failed)."""
        self.late_running = max(0, self.late_running - 1)
        if self._late:
            self._wake()

    @property
    def late_waiting(self) -> int:
        """Late queries waiting for an idle replica."""
        return len(self._late)

    def _wake(self) -> None:
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)
        self._waiters.clear()

    def drain(self) -> list[QueuedQuery]:
        """Empty the queue and the late queue; the queued queries (not the late ones, whose
        futures are cancelled: nobody waits for them) are returned."""
        items = list(self._items)
        self._items.clear()
        for late in self._late:
            late.future.cancel()
        self._late.clear()
        self._late_keys.clear()
        return items

    async def _wait(self, timeout: float | None) -> None:
        """Until the next put, or ``timeout`` seconds (None: no limit)."""
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        self._waiters.add(waiter)
        timer = None if timeout is None else loop.call_later(timeout, _release, waiter)
        try:
            await waiter
        finally:
            self._waiters.discard(waiter)
            if timer is not None:
                timer.cancel()

    async def get_batch(self, max_size: int, delay_s: float = 0.0,
                        expected_latency_s: float | Callable[[], float] = 0.0) -> list[QueuedQuery]:
        """Wait for and return between 1 and ``max_size`` live queries.

        ``expected_latency_s`` may be a function, asked again before each cut: an
        estimate that only changes when a batch runs would otherwise never change.
        """
        estimate = expected_latency_s if callable(expected_latency_s) else (lambda v=expected_latency_s: v)
        while True:
            while not self._items:
                late = self._cut_late(max(1, int(max_size * LATE_BATCH_SHARE)))
                if late:
                    return late
                await self._wait(None)
            expected = estimate()
            cut_at = await self._delay(max_size, delay_s, expected)
            if cut_at is None:
                continue  # another replica took them while we waited
            batch = self._cut(max_size, expected, cut_at)
            if batch:
                self.caught_up = False  # those callers' queries are on their way
                return batch

    def next_dispatch(self, now: float, max_size: int, delay_s: float, expected_latency_s: float) -> float:
        """:func:`dispatch_time` for the queue as it is now."""
        items = self._items
        self._delay_s = delay_s
        if len(items) >= max_size or delay_s <= 0 or not self.delay_pays:
            return now  # the common case under load: no scan of the queue
        returning = self.returning if self.callers_return >= 0.5 else 0
        return dispatch_time(now, queued=len(items), limit=max_size, delay_s=delay_s,
                             oldest_arrival=min(q.arrival for q in items),
                             earliest_deadline=min(q.deadline for q in items),
                             expected_latency_s=expected_latency_s, arrivals=self._arrivals,
                             returning=returning, returned_at=self.returned_at, caught_up=self.caught_up)

    async def _delay(self, max_size: int, delay_s: float, expected: float) -> float | None:
        """Wait as delayed batching says; the time to judge lateness at, or None if the
        queue emptied meanwhile (another replica took the queries)."""
        now = self.clock()
        until = self.next_dispatch(now, max_size, delay_s, expected)
        while until > now:
            await self._wait(until - now)
            if not self._items:
                return None
            now = self.clock()
            if now >= until - _TIMER_SLACK_S:
                # Judge lateness as of when the delay was meant to end: timers fire a
                # little late, and waiting must not turn an on-time query into a drop.
                return min(now, until)
            until = self.next_dispatch(now, max_size, delay_s, expected)  # a put: ask again
        return now

    def _cut(self, max_size: int, expected_latency_s: float, now: float | None = None) -> list[QueuedQuery]:
        """Up to ``max_size`` live queries of the first live query's group (or it alone, if
        ``solo``); queries of other groups keep their place. Expired ones are failed."""
        now = self.clock() if now is None else now
        batch: list[QueuedQuery] = []
        passed: list[QueuedQuery] = []
        items = self._items
        scan = max_size * SCAN_PER_ROW + SCAN_EXTRA
        while items and len(batch) < max_size and scan > 0:
            q = items.popleft()
            scan -= 1
            if q.future.done():
                continue  # answered already (e.g. its app gave up on it)
            if now + expected_latency_s > q.deadline:
                self._expire(q)
            elif not batch:
                batch.append(q)
                if q.solo:
                    break
            elif q.solo or q.group != batch[0].group:
                passed.append(q)
            else:
                batch.append(q)
        items.extendleft(reversed(passed))
        return batch

    def _expire(self, q: QueuedQuery) -> None:
        if self.on_expired is not None:
            self.on_expired(q)
        if not q.future.done():
            q.future.set_exception(DeadlineMissed("the query could not meet its deadline"))

    def _cut_late(self, max_size: int) -> list[QueuedQuery]:
        """A batch of late work of one group, unless another one is running."""
        late = self._late
        if self.late_running or not late:
            return []
        batch: list[QueuedQuery] = []
        passed: list[QueuedQuery] = []
        scan = max_size * SCAN_PER_ROW + SCAN_EXTRA
        while late and len(batch) < max_size and scan > 0:
            q = late.popleft()
            scan -= 1
            if q.future.done():
                self._late_keys.discard(q.key)
            elif batch and q.group != batch[0].group:
                passed.append(q)
            else:
                self._late_keys.discard(q.key)
                batch.append(q)
        late.extendleft(reversed(passed))
        if batch:
            self.late_running += 1
        return batch

"""Adaptive batching: the AIMD controller (pure) and the queue batches are cut from.

Clipper's AIMD grows a replica's maximum batch by a fixed step while batches finish
within the latency objective and cuts it by 10% when one does not. Clipper aimed the
*batch* time at the SLO and its users saw queue time blow through it (clipper#222):
a query that arrives while a batch runs waits for it, then rides the next one, so its
end-to-end latency is about two batch times. We therefore aim batches at a fraction
of the SLO (``objective_for_slo``) so that queue wait + batch stays within it.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import time
from dataclasses import dataclass, field
from typing import Any, Callable

#: Share of the SLO a batch may take: queue wait (~ one batch) + the batch itself +
#: the frontend's own work must fit in the SLO.
SLO_FRACTION = 0.45
DEFAULT_STEP = 4.0
DEFAULT_BACKOFF = 0.9
DEFAULT_MAX_CAP = 4096
#: Batches the drop estimate looks back over (see ``AIMDController.expected_latency_s``).
RECENT_BATCHES = 8
#: Batches of a fresh replica left out of the drop estimate (warm-up).
WARMUP_BATCHES = 1
#: A replica that has run no batch for this long re-measures instead of dropping.
PROBE_AFTER_S = 1.0
#: Delayed batching ends this much early: timers do not fire to the microsecond.
_TIMER_SLACK_S = 0.0002


def objective_for_slo(slo_s: float, delay_s: float = 0.0, fraction: float = SLO_FRACTION) -> float:
    """The batch-latency objective that keeps end-to-end latency within ``slo_s``."""
    return max(0.0005, slo_s * fraction - delay_s)


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
    #: exponentially weighted batch latency, used to drop queries that cannot make it
    latency_ewma_s: float = 0.0
    history: collections.deque = field(default_factory=lambda: collections.deque(maxlen=256))
    batches: int = 0

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
        if self.batches > WARMUP_BATCHES:
            # A replica's first batch pays for lazy imports and allocations; judging the
            # queue by it would fail queries another, warm replica could serve in time.
            self.history.append((size, latency_s))
        if self.fixed is not None:
            return
        signal = latency_s if compute_s is None else compute_s
        if signal > self.objective_s:
            self.cap = max(1.0, self.cap * self.backoff)
        elif size >= self.limit():
            self.cap = min(float(self.max_cap), self.cap + self.step)

    def set_objective(self, objective_s: float) -> None:
        self.objective_s = objective_s

    def expected_latency_s(self, idle_s: float = 0.0) -> float:
        """What the next batch should take, for dropping queries that cannot make it.

        The fastest of the last few batches, so one slow batch (a warm-up, a GC pause)
        does not condemn every query behind it; and 0 once the replica has run nothing
        for ``PROBE_AFTER_S`` (``idle_s``), so a replica whose queries were all being
        dropped runs one batch and re-measures instead of dropping them forever.
        """
        if idle_s > PROBE_AFTER_S or not self.history:
            return 0.0
        return min(lat for _, lat in itertools.islice(reversed(self.history), RECENT_BATCHES))


def _release(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


class DeadlineMissed(Exception):
    """The query could not meet its deadline when its batch was formed."""


class QueuedQuery:
    """One input waiting for a model: its future, deadline and retry count."""

    __slots__ = ("x", "future", "deadline", "key", "attempts")

    def __init__(self, x: Any, future: asyncio.Future, deadline: float, key: Any = None) -> None:
        self.x = x
        self.future = future
        self.deadline = deadline
        self.key = key
        self.attempts = 0


class BatchQueue:
    """A model's queue, shared by its replicas' loops; each cuts its own batches.

    ``get_batch`` waits for a first query, then (delayed batching, Nagle-style) up to
    ``delay_s`` for the batch to fill, never past the earliest deadline less the
    expected batch latency. Queries that can no longer meet their deadline are failed
    with :class:`DeadlineMissed` at once instead of delaying the queries behind them.
    """

    def __init__(self, on_expired: Callable[[QueuedQuery], None] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._items: collections.deque[QueuedQuery] = collections.deque()
        # Futures of the loops waiting for a put. Not an asyncio.Event: a wait with a
        # timeout on an Event needs asyncio.wait_for, a new Task per wait, and during a
        # batch delay every arriving query ends one such wait.
        self._waiters: set[asyncio.Future[None]] = set()
        self.on_expired = on_expired
        self.clock = clock

    def __len__(self) -> int:
        return len(self._items)

    def put(self, item: QueuedQuery) -> None:
        self._items.append(item)
        self._wake()

    def put_front(self, items: list[QueuedQuery]) -> None:
        self._items.extendleft(reversed(items))
        if self._items:
            self._wake()

    def _wake(self) -> None:
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)
        self._waiters.clear()

    def drain(self) -> list[QueuedQuery]:
        items = list(self._items)
        self._items.clear()
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
                await self._wait(None)
            expected = estimate()
            cut_at = None
            if len(self._items) < max_size and delay_s > 0:
                now = self.clock()
                earliest = min(q.deadline for q in self._items)
                until = min(now + delay_s, earliest - expected - _TIMER_SLACK_S)
                while len(self._items) < max_size and (remaining := until - self.clock()) > _TIMER_SLACK_S:
                    await self._wait(remaining)
                if not self._items:
                    continue  # another replica took them while we waited
                # Judge lateness as of when the delay was meant to end: timers fire a
                # little late, and waiting must not turn an on-time query into a drop.
                cut_at = min(self.clock(), max(now, until))
            batch = self._cut(max_size, expected, cut_at)
            if batch:
                return batch

    def _cut(self, max_size: int, expected_latency_s: float, now: float | None = None) -> list[QueuedQuery]:
        now = self.clock() if now is None else now
        batch: list[QueuedQuery] = []
        items = self._items
        while items and len(batch) < max_size:
            q = items.popleft()
            if q.future.done():
                continue  # answered already (e.g. its app gave up on it)
            if now + expected_latency_s > q.deadline:
                if self.on_expired is not None:
                    self.on_expired(q)
                if not q.future.done():
                    q.future.set_exception(DeadlineMissed("the query could not meet its deadline"))
                continue
            batch.append(q)
        return batch

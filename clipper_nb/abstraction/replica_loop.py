"""The serving side of a model version's replicas: one batch loop per replica, and fault isolation.

Each replica that is up gets a :class:`Lane`: its own AIMD controller and a loop that
cuts batches from the version's :class:`~.batching.BatchQueue` and runs them on the
replica. One bad input must fail only itself, so a batch that goes wrong is taken apart:

* **The model raised** (:class:`ModelError`) on a batch of several queries: the batch is
  split in two and each half run again (bisection), down to the single inputs that
  fail; only those get the error. ``k`` bad inputs among ``n`` cost about
  ``2 k log2 n`` extra batches. Queries already past their deadline are not bisected
  further (their answer went out already): they get the error.
* **The replica died or hung** (:class:`ReplicaLost`) with the batch: a query that ran
  alone on it gets an error and is not retried (it may be what crashes the model). The
  others are marked ``solo`` and wait, each to run alone, for the replica that replaces
  the lost one in its slot (:class:`PinnedRetries`): an input that crashed a replica is
  never sent to another replica inside a batch, and the other replicas are never
  exposed to it. The queries that wait past their deadline fail with
  :class:`DeadlineMissed` (their app answered with the default output already).
* **A batch hangs**: it runs past :class:`~.batching.HangWatch`'s limit (a multiple of
  what this version's batches took, at least about a second), the replica is replaced
  (``replace``) and its batch fails with :class:`ReplicaLost`, as above. The backend's
  own ``hang_timeout_s`` stays as the last resort.
* **Anything else** that goes wrong in the loop fails that batch's queries and the loop
  goes on: a dead loop would leave its replica idle until the hang timeout.

Late work (queries dropped at dispatch, computed only to fill the cache) runs through
the same path; it is never retried and never fails anyone.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable
from typing import Any

from clipper_nb.abstraction.backend import ReplicaHandle, ReplicaLost
from clipper_nb.abstraction.batching import AIMDController, BatchQueue, HangWatch, QueuedQuery
from clipper_nb.abstraction.supervisor import Slot
from clipper_nb.errors import DeadlineMissed, ModelError

__all__ = ["EVENTS", "Lane", "PinnedRetries", "ReplicaLoops"]

log = logging.getLogger("clipper_nb.abstraction.replica_loop")

#: What a model version counts (:meth:`~.model_version.ModelVersion.counters`):
#: ``batch_splits`` (bisections of a failed batch), ``lost_batches`` (batches whose
#: replica died or hung), ``inputs_refused`` (queries failed because their replica was
#: lost while running them alone), ``hung_replicas`` (replicas replaced as hung),
#: ``deadline_drops`` (queries dropped at dispatch), ``late_queued`` / ``late_computed`` /
#: ``late_skipped`` / ``late_overflow`` (dropped queries kept, computed into the cache,
#: found answered meanwhile, pushed out of the full late queue).
EVENTS = ("batch_splits", "lost_batches", "inputs_refused", "hung_replicas", "deadline_drops", "late_queued",
          "late_computed", "late_skipped", "late_overflow")


class PinnedRetries:
    """Queries of a lost batch, each waiting to run alone on the replica that replaces
    the lost one in its slot. A query still waiting at its deadline fails with
    :class:`DeadlineMissed` (a slot whose restart keeps failing must not hold it for
    good: its cache key would stay in flight)."""

    def __init__(self) -> None:
        self._by_slot: dict[Any, list[QueuedQuery]] = {}
        self._timers: dict[int, asyncio.TimerHandle] = {}

    def __len__(self) -> int:
        return sum(len(v) for v in self._by_slot.values())

    def add(self, slot: Any, q: QueuedQuery) -> None:
        self._by_slot.setdefault(slot, []).append(q)
        self._arm(slot, q)

    def _arm(self, slot: Any, q: QueuedQuery) -> None:
        if math.isfinite(q.deadline):  # deadlines are on the loop's clock (time.monotonic)
            self._timers[id(q)] = asyncio.get_running_loop().call_at(q.deadline, self._expire, slot, q)

    def _expire(self, slot: Any, q: QueuedQuery) -> None:
        waiting = self._by_slot.get(slot, [])
        if q not in waiting:
            return
        if q.deadline > asyncio.get_running_loop().time():  # an identical query joined it since
            self._arm(slot, q)
            return
        waiting.remove(q)
        self._timers.pop(id(q), None)
        if not q.future.done():
            q.future.set_exception(DeadlineMissed("the query waited past its deadline for a replica to retry it"))

    def pop(self, slot: Any) -> list[QueuedQuery]:
        """The next query waiting for ``slot``, as a batch of one (or an empty list)."""
        waiting = self._by_slot.get(slot)
        while waiting:
            q = waiting.pop(0)
            self._disarm(q)
            if not q.future.done():
                return [q]
        return []

    def release(self, slot: Any) -> list[QueuedQuery]:
        """Every query still waiting for ``slot`` (it goes away for good)."""
        waiting = self._by_slot.pop(slot, [])
        for q in waiting:
            self._disarm(q)
        return [q for q in waiting if not q.future.done()]

    def drain(self) -> list[QueuedQuery]:
        """Every query still waiting, for any slot."""
        return [q for slot in list(self._by_slot) for q in self.release(slot)]

    def _disarm(self, q: QueuedQuery) -> None:
        timer = self._timers.pop(id(q), None)
        if timer is not None:
            timer.cancel()


class Lane:
    """One replica as the loop serves it: its handle, AIMD controller and batch count."""

    def __init__(self, slot: Slot, controller: AIMDController) -> None:
        self.slot = slot
        self.handle: ReplicaHandle = slot.handle  # type: ignore[assignment]
        self.controller = controller
        self.task: asyncio.Task | None = None
        self.in_batch = False
        #: why the replica was found hung (its batch then fails with ReplicaLost)
        self.hung: str | None = None
        #: batches this replica finished: its first is judged as a warm-up by the hang watch
        self.batches = 0
        self.last_batch_end = time.monotonic()

    def expected_latency(self) -> float:
        """What the next batch should take, for dropping queries that cannot make it."""
        return self.controller.expected_latency_s(time.monotonic() - self.last_batch_end)


class ReplicaLoops:
    """The batch loops of one model version's replicas; see the module docstring.

    ``make_controller()`` gives a new replica its AIMD controller; ``replace(handle,
    cause)`` is the supervisor's; ``wanted(q)`` says whether late work is still worth
    computing (its key is neither cached nor in flight); ``count(event)`` counts.
    """

    def __init__(self, queue: BatchQueue, label: str, *, batch_delay_s: float, hangs: HangWatch,
                 make_controller: Callable[[], AIMDController], wanted: Callable[[QueuedQuery], bool],
                 count: Callable[..., None], metrics: Any = None, model: str = "") -> None:
        self.queue = queue
        self.label = label
        self.batch_delay_s = batch_delay_s
        self.hangs = hangs
        self.make_controller = make_controller
        self.wanted = wanted
        self.count = count
        self.metrics = metrics
        self.model = model
        self.replace: Callable[[ReplicaHandle, str], None] = lambda handle, cause: None
        self.lanes: dict[Slot, Lane] = {}
        self.retries = PinnedRetries()
        self._tasks: set[asyncio.Task] = set()

    # ------------------------------------------------------------------ replicas up and down
    def on_up(self, slot: Slot) -> None:
        """``slot.handle`` is a fresh replica: serve it (its slot's retries first)."""
        lane = self.lanes[slot] = Lane(slot, self.make_controller())
        lane.task = asyncio.ensure_future(self._loop(lane))
        self._tasks.add(lane.task)
        lane.task.add_done_callback(self._tasks.discard)

    def on_down(self, slot: Slot, deliberate: bool) -> None:
        """Stop serving ``slot``'s replica; ``deliberate``: the slot goes away for good."""
        lane = self.lanes.get(slot)
        if deliberate:
            self.lanes.pop(slot, None)
            # Nobody will restart this slot: its retries run alone on the other replicas.
            self.queue.put_front(self.retries.release(slot))
        elif lane is not None:
            self.lanes[slot] = Lane(slot, lane.controller)  # status keeps its last cap
            if lane.in_batch:
                return  # the batch fails with ReplicaLost; the loop isolates it and ends
        if lane is not None and lane.task is not None:
            lane.task.cancel()

    async def stop(self) -> list[QueuedQuery]:
        """End every loop (their batches go back to the queue); the retries still waiting."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        return self.retries.drain()

    # ------------------------------------------------------------------ the loop
    async def _loop(self, lane: Lane) -> None:
        while lane.handle.state in ("idle", "busy"):
            items = self.retries.pop(lane.slot) or await self.queue.get_batch(
                lane.controller.limit(), self.batch_delay_s, lane.expected_latency)
            late = items[0].late
            try:
                if late:
                    items = self._still_wanted(items)
                if not items:
                    continue
                if lane.handle.state != "idle":  # died meanwhile: its slot's next replica takes them
                    self._give_back(items, pin=lane.slot)
                    return
                if not await self._run(lane, items):
                    return
            except asyncio.CancelledError:
                # Scaled down or stopped mid-batch: the queries go back to the queue (the
                # other replicas, or stop()'s drain, answer them); a future left pending
                # here would also pin its cache key in the version's in-flight table.
                self._give_back(items)
                raise
            except Exception as e:  # noqa: BLE001 - our bug: fail the batch, keep the replica serving
                log.exception("the batch loop of %s failed on a batch", lane.handle.name)
                _fail(items, ModelError(f"model {self.label}: the batch could not be run: {type(e).__name__}: {e}"))
            finally:
                if late:
                    self.queue.late_done()

    def _still_wanted(self, items: list[QueuedQuery]) -> list[QueuedQuery]:
        keep = [q for q in items if self.wanted(q)]
        for q in items:
            if q not in keep:
                q.future.cancel()
                self.count("late_skipped")
        return keep

    def _give_back(self, items: list[QueuedQuery], pin: Slot | None = None) -> None:
        """Requeue the queries of a batch that did not run (a solo retry to the slot
        ``pin`` when given: it must not reach another replica); late work is let go."""
        back = []
        for q in items:
            if q.future.done():
                continue
            if q.late:
                q.future.cancel()
            elif q.solo and pin is not None:
                self.retries.add(pin, q)
            else:
                back.append(q)
        self.queue.put_front(back)

    async def _run(self, lane: Lane, items: list[QueuedQuery]) -> bool:
        """Run ``items`` on the lane's replica and answer each one; False when the replica
        was lost (every query is then retried, requeued or failed)."""
        if not items:
            return True
        try:
            outputs, meta, latency = await self._call(lane, items)
        except ReplicaLost as e:
            self._lost(lane, items, e)
            return False
        except ModelError as e:
            return await self._split(lane, items, e)
        self._answer(lane, items, outputs, latency, meta)
        return True

    async def _split(self, lane: Lane, items: list[QueuedQuery], error: ModelError) -> bool:
        """The model failed on ``items``: find the inputs that fail by bisection."""
        live = [q for q in items if not q.future.done()]
        now = time.monotonic()
        if len(live) <= 1 or all(q.deadline < now for q in live):
            _fail(live, _model_error(self.label, error))
            return True
        self.count("batch_splits")
        mid = len(live) // 2
        if not await self._run(lane, live[:mid]):
            self._give_back(live[mid:])
            return False
        return await self._run(lane, [q for q in live[mid:] if not q.future.done()])

    async def _call(self, lane: Lane, items: list[QueuedQuery]) -> tuple[list, dict, float]:
        """``run_batch`` under the hang watch: ``(outputs, meta, latency_s)``."""
        n, first = len(items), lane.batches == 0
        limit = self.hangs.limit_s(n, first)
        timer = None if limit is None else asyncio.get_running_loop().call_later(limit, self._hung, lane, n, limit)
        lane.in_batch = True
        start = time.monotonic()
        try:
            outputs, meta = await lane.handle.run_batch([q.x for q in items])
        finally:
            lane.in_batch = False
            lane.last_batch_end = time.monotonic()
            if timer is not None:
                timer.cancel()
        latency = lane.last_batch_end - start
        if len(outputs) != n:
            raise ModelError(f"the replica returned {len(outputs)} outputs for {n} inputs")
        self.hangs.observe(n, latency, first)
        lane.batches += 1
        lane.slot.served = True
        return outputs, meta, latency

    def _hung(self, lane: Lane, n: int, limit: float) -> None:
        if not lane.in_batch or lane.handle.state == "dead":
            return
        self.count("hung_replicas")
        lane.hung = (f"a batch of {n} ran past {limit:.1f}s ({self.hangs.factor:g}x what this model's batches "
                     "take): the replica is hung")
        self.replace(lane.handle, lane.hung)

    # ------------------------------------------------------------------ outcomes
    def _answer(self, lane: Lane, items: list[QueuedQuery], outputs: list, latency: float, meta: dict) -> None:
        compute = meta.get("compute_ms", latency * 1000) / 1000
        lane.controller.observe(len(items), latency, compute)
        for q, out in zip(items, outputs):
            if not q.future.done():
                q.future.set_result(out)
        if items[0].late:
            self.count("late_computed", len(items))
        else:
            self.queue.answered(len(items), delay_pays=compute > latency - compute)
        if self.metrics is not None:
            self.metrics.record_batch(self.model, lane.handle.name, len(items), latency)
            self.metrics.set_batch_cap(self.model, lane.handle.name, lane.controller.limit())
            self.metrics.set_queue_length(self.model, len(self.queue))

    def _lost(self, lane: Lane, items: list[QueuedQuery], error: ReplicaLost) -> None:
        """The replica died or hung with ``items``: retry each alone on its slot's next
        replica, except a query that was alone on it already (it gets an error)."""
        self.count("lost_batches")
        alone = len(items) == 1
        why = lane.hung or str(error)
        for q in items:
            if q.future.done():
                continue
            if q.late:
                q.future.cancel()
            elif alone or q.solo:
                self.count("inputs_refused")
                q.future.set_exception(ModelError(
                    f"model {self.label}: the replica running this input alone was lost ({why}); "
                    "the input is not retried", "the input may crash or hang the model"))
            else:
                q.attempts += 1
                q.solo = True
                self.retries.add(lane.slot, q)


def _model_error(label: str, error: ModelError) -> ModelError:
    message = error.message.removeprefix("the model failed: ")
    return ModelError(f"model {label} failed: {message}", error.cause)


def _fail(items: list[QueuedQuery], error: ModelError) -> None:
    for q in items:
        if not q.future.done():
            q.future.set_exception(error)

"""A running model version: its query path over replicas that any backend runs.

``submit`` answers from the prediction cache, shares an identical query already in
flight, or queues the query on the version's :class:`BatchQueue`. Each replica that
is up runs a batch loop that cuts batches sized by its own :class:`AIMDController`
and sends them to the replica. A batch whose replica is lost goes back to the front
of the queue once (another replica takes it); a batch the model raised on fails
every query in it with :class:`ModelError`.

Which replicas exist is the :class:`~.supervisor.Supervisor`'s business: it starts,
restarts and stops them on a :class:`~.backend.ReplicaBackend` and tells this module
when one is up or going away. Nothing here knows which backend runs.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from clipper_nb.abstraction import batching
from clipper_nb.abstraction.backend import (
    ReplicaBackend,
    ReplicaHandle,
    ReplicaLost,
    ReplicaSpec,
)
from clipper_nb.abstraction.batching import AIMDController, BatchQueue, QueuedQuery
from clipper_nb.abstraction.cache import PredictionCache
from clipper_nb.abstraction.supervisor import Slot, Supervisor
from clipper_nb.errors import ModelError, Unavailable
from clipper_nb.wire.codec import input_digest

__all__ = ["MAX_ATTEMPTS", "ModelVersion", "ModelVersionConfig"]

log = logging.getLogger("clipper_nb.abstraction.model_version")

MAX_ATTEMPTS = 2  # a batch whose replica dies is retried once on another replica
#: AIMD's starting cap: small, so a slow model's first batches stay within the SLO
START_CAP = 4


@dataclass
class ModelVersionConfig:
    """What a model version needs to run; built by the engine from the stored version."""

    model: str
    version: str
    artifact_dir: str
    log_dir: str
    device: str = "auto"
    python: str = sys.executable
    cwd: str | None = None
    batch_size: int | None = None       # fixed size: no adaptation
    max_batch_size: int = batching.DEFAULT_MAX_CAP
    batch_delay_s: float = 0.002
    objective_s: float = 0.045
    cache_bytes: int = 32 << 20
    start_timeout_s: float = 120.0
    heartbeat_timeout_s: float = 5.0
    hang_timeout_s: float = 60.0
    env: dict[str, str] = field(default_factory=dict)
    #: modules a backend may import before starting this model's replicas (the fork server)
    preload: list[str] = field(default_factory=list)

    def replica_spec(self, index: int = 0, replicas: int = 1) -> ReplicaSpec:
        """The backend's view of replica ``index`` of this version."""
        return ReplicaSpec(
            model=self.model, version=self.version, index=index, artifact_dir=self.artifact_dir,
            log_dir=self.log_dir, device=self.device, python=self.python, cwd=self.cwd, env=dict(self.env),
            preload=tuple(self.preload), replicas=replicas, start_timeout_s=self.start_timeout_s,
            heartbeat_timeout_s=self.heartbeat_timeout_s, hang_timeout_s=self.hang_timeout_s)


class _Lane:
    """The serving side of one replica: its AIMD controller and batch loop."""

    def __init__(self, handle: ReplicaHandle, controller: AIMDController) -> None:
        self.handle = handle
        self.controller = controller
        self.task: asyncio.Task | None = None
        self.in_batch = False


class ModelVersion:
    """Serves one model version: cache -> in-flight dedup -> queue -> replica batch loops."""

    def __init__(self, backend: ReplicaBackend, config: ModelVersionConfig, metrics: Any = None) -> None:
        self.backend = backend
        self.config = config
        self.metrics = metrics
        self.name = config.model
        self.cache = PredictionCache(config.cache_bytes)
        self.queue = BatchQueue(on_expired=self._on_expired)
        self.deadline_drops = 0
        self._inflight: dict[bytes, QueuedQuery] = {}
        self._lanes: dict[Slot, _Lane] = {}
        self._loops: set[asyncio.Task] = set()
        self._stopped = False
        self.supervisor = Supervisor(backend, config.replica_spec(), on_up=self._on_up, on_down=self._on_down)

    # ------------------------------------------------------------------ lifecycle
    async def start(self, replicas: int) -> None:
        """Start ``replicas`` replicas and wait until every one can take a batch."""
        await self.scale(replicas)

    async def scale(self, replicas: int) -> None:
        """Grow or shrink to ``replicas``; new ones must load before this returns."""
        await self.supervisor.scale(replicas)

    async def stop(self) -> None:
        """Stop every replica; queued queries fail with a clear error."""
        self._stopped = True
        await self.supervisor.stop()
        loops = list(self._loops)
        for task in loops:
            task.cancel()
        await asyncio.gather(*loops, return_exceptions=True)  # their batches are back in the queue
        for q in self.queue.drain():
            if not q.future.done():
                q.future.set_exception(ModelError(f"model {self.name}:{self.config.version} was stopped"))

    def _on_up(self, slot: Slot) -> None:
        cfg = self.config
        controller = AIMDController(cfg.objective_s, fixed=cfg.batch_size, max_cap=cfg.max_batch_size,
                                    cap=min(START_CAP, cfg.max_batch_size))
        lane = self._lanes[slot] = _Lane(slot.handle, controller)
        lane.task = asyncio.ensure_future(self._replica_loop(lane))
        self._loops.add(lane.task)
        lane.task.add_done_callback(self._loops.discard)

    def _on_down(self, slot: Slot, deliberate: bool) -> None:
        lane = self._lanes.get(slot)
        if lane is None or lane.task is None:
            return
        if not deliberate:
            self._lanes[slot] = _Lane(lane.handle, lane.controller)  # status keeps its last cap
            if lane.in_batch:
                return  # the batch fails with ReplicaLost; the loop retries it and ends
        else:
            del self._lanes[slot]
        lane.task.cancel()

    # ------------------------------------------------------------------ serving
    def submit(self, x: Any, deadline: float, use_cache: bool = True) -> asyncio.Future:
        """A future for this model's output on ``x``: from the cache, shared with an
        identical query in flight, or queued for a batch."""
        loop = asyncio.get_running_loop()
        key = None
        if use_cache and self.cache.max_bytes:
            key = input_digest(x)
            hit, value = self.cache.get(key)
            if self.metrics is not None:
                self.metrics.record_cache(self.name, hit)
            if hit:
                fut = loop.create_future()
                fut.set_result(value)
                return fut
            pending = self._inflight.get(key)
            if pending is not None:
                pending.deadline = max(pending.deadline, deadline)
                return pending.future
        fut = loop.create_future()
        fut.add_done_callback(_retrieve)
        if self._stopped or not self.replica_count:
            # Nothing would ever take the query off the queue.
            why = "was stopped" if self._stopped else "has no replicas"
            fut.set_exception(Unavailable(f"model {self.name} {why}", None if self._stopped else "scale it up"))
            return fut
        q = QueuedQuery(x, fut, deadline, key)
        if key is not None:
            self._inflight[key] = q
            fut.add_done_callback(lambda f, q=q: self._settled(q, f))
        self.queue.put(q)
        if self.metrics is not None:
            self.metrics.set_queue_length(self.name, len(self.queue))
        return fut

    def _settled(self, q: QueuedQuery, fut: asyncio.Future) -> None:
        if self._inflight.get(q.key) is q:
            del self._inflight[q.key]
        if not fut.cancelled() and fut.exception() is None:
            evicted = self.cache.put(q.key, fut.result())
            if evicted and self.metrics is not None:
                self.metrics.record_cache_eviction(self.name, evicted)

    def _on_expired(self, q: QueuedQuery) -> None:
        self.deadline_drops += 1

    async def _replica_loop(self, lane: _Lane) -> None:
        queue, handle, controller = self.queue, lane.handle, lane.controller
        last_batch_end = time.monotonic()

        def expected_latency() -> float:
            return controller.expected_latency_s(time.monotonic() - last_batch_end)

        while handle.state in ("idle", "busy"):
            items = await queue.get_batch(controller.limit(), self.config.batch_delay_s, expected_latency)
            if handle.state != "idle":
                queue.put_front(items)
                return
            start = time.monotonic()
            lane.in_batch = True
            try:
                outputs, meta = await handle.run_batch([q.x for q in items])
            except ReplicaLost as e:
                self._retry(items, e)
                return
            except asyncio.CancelledError:
                # Scaled down or stopped mid-batch: the queries go back to the queue (the
                # other replicas, or stop()'s drain, answer them); a future left pending
                # here would also pin its cache key in _inflight for good.
                queue.put_front([q for q in items if not q.future.done()])
                raise
            except ModelError as e:
                self._fail(items, e)
                continue
            finally:
                lane.in_batch = False
            last_batch_end = time.monotonic()
            self._answer(lane, items, outputs, last_batch_end - start, meta)

    def _answer(self, lane: _Lane, items: list[QueuedQuery], outputs: list, latency: float, meta: dict) -> None:
        lane.controller.observe(len(items), latency, meta.get("compute_ms", latency * 1000) / 1000)
        for q, out in zip(items, outputs):
            if not q.future.done():
                q.future.set_result(out)
        if self.metrics is not None:
            self.metrics.record_batch(self.name, lane.handle.name, len(items), latency)
            self.metrics.set_batch_cap(self.name, lane.handle.name, lane.controller.limit())
            self.metrics.set_queue_length(self.name, len(self.queue))

    def _fail(self, items: list[QueuedQuery], error: ModelError) -> None:
        """The model raised on this batch: every query in it fails with the model's error."""
        message = error.message.removeprefix("the model failed: ")
        for q in items:
            if not q.future.done():
                q.future.set_exception(ModelError(f"model {self.name}:{self.config.version} failed: {message}",
                                                  error.cause))

    def _retry(self, items: list[QueuedQuery], error: Exception) -> None:
        again = []
        for q in items:
            q.attempts += 1
            if q.attempts >= MAX_ATTEMPTS:
                if not q.future.done():
                    q.future.set_exception(ModelError(f"{error}; the batch failed on {q.attempts} replicas"))
            else:
                again.append(q)
        self.queue.put_front(again)

    # ------------------------------------------------------------------ tuning and status
    def set_objective(self, objective_s: float) -> None:
        self.config.objective_s = objective_s
        for lane in self._lanes.values():
            lane.controller.set_objective(objective_s)

    def status(self) -> list[dict]:
        """One row per wanted replica (``model, version, replica, name, state, pid, device,
        batch_cap, restarts, last_error, backend``)."""
        rows = []
        for slot in self.supervisor.slots:
            h, lane = slot.handle, self._lanes.get(slot)
            state = slot.state
            rows.append({
                "model": self.config.model, "version": self.config.version, "replica": slot.index,
                "name": h.name if h else None, "state": state,
                "pid": h.pid if h and h.state != "dead" else None,
                "device": (h.info.get("device") if h else None) or self.config.device,
                "batch_cap": lane.controller.limit() if lane else None, "restarts": slot.restarts,
                "last_error": slot.last_error if state == "dead" else None,
                "backend": self.backend.name,
            })
        return rows

    @property
    def replica_count(self) -> int:
        return self.supervisor.replica_count

    def pids(self) -> list[int]:
        return self.supervisor.pids()


def _retrieve(fut: asyncio.Future) -> None:
    """Mark a failure as seen: late and shared futures often have no one awaiting them."""
    if not fut.cancelled():
        fut.exception()

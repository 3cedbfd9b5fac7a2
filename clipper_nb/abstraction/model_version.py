"""A running model version: its query path over replicas that any backend runs.

``submit`` answers from the prediction cache, shares an identical query already in
flight, or queues the query on the version's :class:`BatchQueue`. Each replica that
is up runs a batch loop (:mod:`.replica_loop`) that cuts batches of one kind of input,
sized by its own :class:`AIMDController`, and isolates failures: a batch the model
raised on is bisected so that only the failing inputs get the error; the queries of a
replica that died or hung are retried one by one on its replacement, and an input that
was alone on a lost replica gets an error instead of another replica.

**Late results fill the cache** (straggler mitigation, NSDI'17 §5.2.2): a query
dropped at dispatch because it could not meet its deadline is answered with the
default output at once, and a copy of it (with its cache key) waits in the queue's
bounded late queue; replicas compute late work only when the queue is empty, one late
batch at a time, so that the next identical query is a cache hit. Late work whose key
was cached or queued again meanwhile is skipped.

Which replicas exist is the :class:`~.supervisor.Supervisor`'s business: it starts,
restarts and stops them on a :class:`~.backend.ReplicaBackend` and tells the loops
when one is up or going away. Nothing here knows which backend runs.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import math
import sys
from dataclasses import dataclass, field
from typing import Any

from clipper_nb.abstraction import batching
from clipper_nb.abstraction.backend import ReplicaBackend, ReplicaSpec
from clipper_nb.abstraction.batching import AIMDController, BatchQueue, HangWatch, QueuedQuery
from clipper_nb.abstraction.cache import PredictionCache
from clipper_nb.abstraction.replica_loop import EVENTS, ReplicaLoops
from clipper_nb.abstraction.supervisor import Supervisor
from clipper_nb.config import (DEFAULT_BATCH_DELAY_MS, DEFAULT_CACHE_BYTES, DEFAULT_HANG_TIMEOUT_S,
                               DEFAULT_HEARTBEAT_TIMEOUT_S, DEFAULT_START_TIMEOUT_S)
from clipper_nb.errors import ModelError, Unavailable
from clipper_nb.wire.codec import input_digest

__all__ = ["ModelVersion", "ModelVersionConfig"]

log = logging.getLogger("clipper_nb.abstraction.model_version")

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
    batch_delay_s: float = DEFAULT_BATCH_DELAY_MS / 1000.0
    objective_s: float = 0.045
    cache_bytes: int = DEFAULT_CACHE_BYTES
    start_timeout_s: float = DEFAULT_START_TIMEOUT_S
    heartbeat_timeout_s: float = DEFAULT_HEARTBEAT_TIMEOUT_S
    hang_timeout_s: float = DEFAULT_HANG_TIMEOUT_S
    #: a batch this many times longer than this version's batches marks its replica hung
    #: (``HangWatch``; 0: off, only ``hang_timeout_s``) ...
    hang_factor: float = batching.HANG_FACTOR
    #: ... but not before this many seconds
    hang_floor_s: float = batching.HANG_FLOOR_S
    #: dropped queries kept to compute into the cache when the replicas are idle (0: none)
    late_queue: int = batching.LATE_LIMIT
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


class ModelVersion:
    """Serves one model version: cache -> in-flight dedup -> queue -> replica batch loops."""

    def __init__(self, backend: ReplicaBackend, config: ModelVersionConfig, metrics: Any = None) -> None:
        self.backend = backend
        self.config = config
        self.metrics = metrics
        self.name = config.model
        self.label = f"{config.model}:{config.version}"
        self.cache = PredictionCache(config.cache_bytes)
        self.queue = BatchQueue(on_expired=self._on_expired, late_limit=config.late_queue)
        self.counts: collections.Counter = collections.Counter()
        self._inflight: dict[bytes, QueuedQuery] = {}
        self._stopped = False
        self.loops = ReplicaLoops(self.queue, self.label, batch_delay_s=config.batch_delay_s,
                                  hangs=HangWatch(config.hang_factor, config.hang_floor_s),
                                  make_controller=self._controller, wanted=self._late_wanted, count=self._count,
                                  metrics=metrics, model=config.model)
        self.supervisor = Supervisor(backend, config.replica_spec(), on_up=self.loops.on_up,
                                     on_down=self.loops.on_down)
        self.loops.replace = self.supervisor.replace

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
        waiting = await self.loops.stop()  # their batches are back in the queue
        for q in [*waiting, *self.queue.drain()]:
            if not q.future.done():
                q.future.set_exception(ModelError(f"model {self.label} was stopped"))

    def _controller(self) -> AIMDController:
        cfg = self.config
        return AIMDController(cfg.objective_s, fixed=cfg.batch_size, max_cap=cfg.max_batch_size,
                              cap=min(START_CAP, cfg.max_batch_size))

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
            self._cache_put(q.key, fut.result())

    def _cache_put(self, key: bytes, value: Any) -> None:
        evicted = self.cache.put(key, value)
        if evicted and self.metrics is not None:
            self.metrics.record_cache_eviction(self.name, evicted)

    def _on_expired(self, q: QueuedQuery) -> None:
        """``q`` is dropped at dispatch: keep a copy to compute into the cache later."""
        self._count("deadline_drops")
        if q.key is None or q.late or q.solo or self._stopped:
            return  # no key: nobody could use the result; solo: it may crash the model
        late = QueuedQuery(q.x, q.future.get_loop().create_future(), math.inf, q.key, q.arrival, late=True)
        late.future.add_done_callback(lambda f, key=q.key: self._late_settled(key, f))
        if self.queue.put_late(late):
            self._count("late_queued")
        else:
            late.future.cancel()

    def _late_settled(self, key: bytes, fut: asyncio.Future) -> None:
        if not fut.cancelled() and fut.exception() is None and key not in self.cache:
            self._cache_put(key, fut.result())

    def _late_wanted(self, q: QueuedQuery) -> bool:
        """Late work is still worth computing: its key is neither cached nor in flight."""
        pending = self._inflight.get(q.key)  # its own dropped query may still be listed for a moment
        return q.key not in self.cache and (pending is None or pending.future.done())

    def _count(self, event: str, n: int = 1) -> None:
        self.counts[event] += n
        if self.metrics is not None:
            self.metrics.record_model_event(self.name, event, n)

    @property
    def deadline_drops(self) -> int:
        """Queries dropped at dispatch because they could not meet their deadline."""
        return self.counts["deadline_drops"]

    def counters(self) -> dict[str, int]:
        """Every event of :data:`~.replica_loop.EVENTS` this version counted, and
        ``late_waiting`` (late queries waiting now)."""
        counts = {e: self.counts[e] for e in EVENTS}
        counts["late_overflow"] = self.queue.late_overflow
        counts["late_waiting"] = self.queue.late_waiting
        return counts

    # ------------------------------------------------------------------ tuning and status
    def set_objective(self, objective_s: float) -> None:
        self.config.objective_s = objective_s
        for lane in self.loops.lanes.values():
            lane.controller.set_objective(objective_s)

    def status(self) -> list[dict]:
        """One row per wanted replica (``model, version, replica, name, state, pid, device, node,
        batch_cap, restarts, last_error, backend``)."""
        rows = []
        for slot in self.supervisor.slots:
            h, lane = slot.handle, self.loops.lanes.get(slot)
            state = slot.state
            rows.append({
                "model": self.config.model, "version": self.config.version, "replica": slot.index,
                "name": h.name if h else None, "state": state,
                "pid": h.pid if h and h.state != "dead" else None,
                "device": (h.info.get("device") if h else None) or self.config.device,
                "node": h.info.get("node") if h else None,  # where a cluster backend placed it
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

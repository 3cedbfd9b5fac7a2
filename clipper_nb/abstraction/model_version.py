"""A running model version: its replica processes, queue, cache and batch loops.

The supervisor half starts one worker process per replica, waits for its hello,
restarts it when it dies (with backoff for crash loops) and stops them all on
shutdown. The serving half puts queries on the model's :class:`BatchQueue`; each
replica runs a loop that cuts batches sized by its own :class:`AIMDController`.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import secrets
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from clipper_nb.abstraction import batching
from clipper_nb.abstraction.batching import AIMDController, BatchQueue, DeadlineMissed, QueuedQuery
from clipper_nb.abstraction.cache import PredictionCache
from clipper_nb.wire.codec import input_digest
from clipper_nb.errors import DeployError, ModelError, Unavailable
from clipper_nb.containers.zmq_transport import Replica, ReplicaLost, Router
from clipper_nb.containers.forkserver import ForkServer

log = logging.getLogger("clipper_nb.abstraction.model_version")

_replica_serial = itertools.count(1)
MAX_ATTEMPTS = 2  # a batch whose replica dies is retried once on another replica


@dataclass
class DeploymentConfig:
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
    frontend_timeout_s: float = 10.0
    env: dict[str, str] = field(default_factory=dict)
    #: modules the fork server imports before forking this model's workers
    preload: list[str] = field(default_factory=list)


class _Slot:
    """One wanted replica position; its process and connection change on restart."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.generation = 0
        self.replica: Replica | None = None
        self.process: Any = None  # an asyncio Process, or a ForkedProcess from the fork server
        self.controller: AIMDController | None = None
        self.loop_task: asyncio.Task | None = None
        self.started_at = 0.0
        self.restarts = 0
        self.crashes_in_row = 0
        self.wanted = True


class Deployment:
    def __init__(self, router: Router, config: DeploymentConfig, metrics: Any = None,
                 spawner: ForkServer | None = None) -> None:
        self.router = router
        self.spawner = spawner
        self.config = config
        self.metrics = metrics
        self.name = config.model
        self.cache = PredictionCache(config.cache_bytes)
        self.queue = BatchQueue(on_expired=self._on_expired)
        self._inflight: dict[bytes, QueuedQuery] = {}
        self._slots: list[_Slot] = []
        self._stopping = False
        self._tasks: set[asyncio.Task] = set()
        self.deadline_drops = 0

    # ------------------------------------------------------------------ lifecycle
    async def start(self, replicas: int) -> None:
        """Start ``replicas`` workers and wait until every one said hello."""
        await self.scale(replicas)

    async def scale(self, replicas: int) -> None:
        """Grow or shrink to ``replicas`` workers; new ones must load before this returns."""
        live = [s for s in self._slots if s.wanted]
        for slot in live[replicas:]:
            slot.wanted = False
            await self._stop_slot(slot)
        self._slots = [s for s in self._slots if s.wanted]
        new = []
        for _ in range(replicas - len(self._slots)):
            new.append(_Slot(self._next_index()))
            self._slots.append(new[-1])
        results = await asyncio.gather(*(self._start_slot(s) for s in new), return_exceptions=True)
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            for slot in new:
                slot.wanted = False
                await self._stop_slot(slot)
            self._slots = [s for s in self._slots if s.wanted]
            raise errors[0]

    def _next_index(self) -> int:
        used = {s.index for s in self._slots}
        return next(i for i in range(len(used) + 1) if i not in used)

    async def _start_slot(self, slot: _Slot) -> None:
        cfg = self.config
        slot.generation += 1
        # Unique per frontend: a rollback re-runs an old version while its old replicas
        # may still be saying goodbye on the same ROUTER socket.
        # The random part keeps another local user from connecting as a replica that
        # is still starting (the ROUTER listens on loopback without authentication).
        name = f"{cfg.model}:{cfg.version}:{slot.index}:{next(_replica_serial)}-{secrets.token_hex(8)}"
        replica = Replica(self.router, name, heartbeat_timeout_s=cfg.heartbeat_timeout_s,
                          hang_timeout_s=cfg.hang_timeout_s, on_dead=self._on_dead)
        slot.replica = replica
        log_path = os.path.join(cfg.log_dir, f"{cfg.model}-{cfg.version}-{slot.index}.log")
        env = {**os.environ, **cfg.env}
        if cfg.cwd and os.path.isdir(cfg.cwd):
            env["PYTHONPATH"] = os.pathsep.join(p for p in (cfg.cwd, env.get("PYTHONPATH")) if p)
        argv = ["--frontend", self.router.address, "--identity", name, "--artifact", cfg.artifact_dir,
                "--device", cfg.device, "--frontend-timeout", str(cfg.frontend_timeout_s)]
        if "OMP_NUM_THREADS" not in env:  # the user's setting wins
            argv += ["--threads", str(max(1, (os.cpu_count() or 1) // max(1, self.replica_count)))]
        cwd = cfg.cwd if cfg.cwd and os.path.isdir(cfg.cwd) else None
        if self.spawner is not None:
            slot.process = await self.spawner.spawn(argv, env, cwd, log_path, cfg.preload)
        else:
            with open(log_path, "ab") as log_file:
                slot.process = await asyncio.create_subprocess_exec(
                    cfg.python, "-m", "clipper_nb.containers.worker", *argv, stdin=asyncio.subprocess.DEVNULL,
                    stdout=log_file, stderr=log_file, env=env, cwd=cwd)
        slot.started_at = time.monotonic()
        self._spawn(self._watch_process(slot, replica, slot.process))
        try:
            info = await asyncio.wait_for(asyncio.shield(replica.hello), cfg.start_timeout_s)
        except asyncio.TimeoutError:
            replica.mark_dead("did not start in time")
            raise DeployError(f"replica {slot.index} of {cfg.model}:{cfg.version} did not start within "
                              f"{cfg.start_timeout_s:.0f}s", _tail(log_path)) from None
        except (ModelError, ReplicaLost) as e:
            tail = _tail(log_path)
            why = str(e)
            if isinstance(e, ReplicaLost) and tail:  # it exited: its last words say why
                why += f" ({tail.splitlines()[-1].strip()})"
            raise DeployError(f"a worker could not load {cfg.model}:{cfg.version}: {why}",
                              getattr(e, "cause", None) or tail) from None
        log.info("replica %s up (pid %s, %s)", name, info.get("pid"), info.get("device"))
        slot.controller = AIMDController(cfg.objective_s, fixed=cfg.batch_size,
                                         max_cap=cfg.max_batch_size,
                                         cap=min(4, cfg.max_batch_size))
        slot.loop_task = self._spawn(self._replica_loop(slot, replica, slot.controller))

    async def _watch_process(self, slot: _Slot, replica: Replica, process: Any) -> None:
        rc = await process.wait()
        if replica.state == "starting":
            # A worker that cannot load says why over ZeroMQ, then exits; the exit can
            # reach us first. Give its message a moment so the deploy error names the cause.
            for _ in range(20):
                if replica.state != "starting":
                    return
                await asyncio.sleep(0.025)
        replica.mark_dead(f"worker process exited with code {rc}")

    def _on_dead(self, replica: Replica, cause: str) -> None:
        slot = next((s for s in self._slots if s.replica is replica), None)
        if slot is None:
            return
        if slot.process is not None and slot.process.returncode is None:
            slot.process.kill()  # hung, or said it could not load: make sure it is gone
        if self._stopping or not slot.wanted or not replica.info:
            return  # stopped on purpose, or it never started: _start_slot reports that
        log.warning("replica %s died: %s; restarting", replica.name, cause)
        lived = time.monotonic() - slot.started_at
        slot.crashes_in_row = 0 if lived > 30 else slot.crashes_in_row + 1
        delay = 0.0 if slot.crashes_in_row <= 1 else min(10.0, 0.5 * 2 ** (slot.crashes_in_row - 2))
        self._spawn(self._restart(slot, delay))

    async def _restart(self, slot: _Slot, delay: float) -> None:
        await asyncio.sleep(delay)
        if self._stopping or not slot.wanted:
            return
        slot.restarts += 1
        try:
            await self._start_slot(slot)
        except Exception as e:  # noqa: BLE001 - _on_dead schedules the next try
            log.warning("restart of %s:%s replica %d failed: %s", self.config.model, self.config.version,
                        slot.index, e)
            if not (self._stopping or not slot.wanted):
                self._spawn(self._restart(slot, min(10.0, 1.0 + delay * 2)))

    async def _stop_slot(self, slot: _Slot) -> None:
        replica, process = slot.replica, slot.process
        if slot.loop_task is not None:
            slot.loop_task.cancel()
        if replica is not None:
            replica.stop()
        if process is not None and process.returncode is None:
            try:
                await asyncio.wait_for(process.wait(), 2.0)
            except asyncio.TimeoutError:
                process.kill()
                await process.wait()
        if replica is not None:
            replica.mark_dead("stopped")

    async def stop(self) -> None:
        """Stop every replica; queued queries fail with a clear error."""
        self._stopping = True
        await asyncio.gather(*(self._stop_slot(s) for s in self._slots), return_exceptions=True)
        for q in self.queue.drain():
            if not q.future.done():
                q.future.set_exception(ModelError(f"model {self.name} was stopped"))
        for t in list(self._tasks):
            t.cancel()

    def _spawn(self, coro) -> asyncio.Task:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

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
        if not self.replica_count:
            # Scaled to zero: nothing would ever take the query off the queue.
            fut.set_exception(Unavailable(f"model {self.name} has no replicas", "scale it up"))
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

    async def _replica_loop(self, slot: _Slot, replica: Replica, controller: AIMDController) -> None:
        cfg, queue, metrics = self.config, self.queue, self.metrics
        last_batch_end = time.monotonic()

        def expected_latency() -> float:
            return controller.expected_latency_s(time.monotonic() - last_batch_end)

        while replica.state in ("idle", "busy"):
            items = await queue.get_batch(controller.limit(), cfg.batch_delay_s, expected_latency)
            if replica.state != "idle":
                queue.put_front(items)
                return
            start = time.monotonic()
            try:
                outputs, meta = await replica.run_batch([q.x for q in items])
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
                for q in items:
                    if not q.future.done():
                        q.future.set_exception(ModelError(f"model {self.name}:{cfg.version} failed: "
                                                          f"{e.message.removeprefix('the model failed: ')}",
                                                          e.cause))
                continue
            last_batch_end = time.monotonic()
            latency = last_batch_end - start
            controller.observe(len(items), latency, meta.get("compute_ms", latency * 1000) / 1000)
            for q, out in zip(items, outputs):
                if not q.future.done():
                    q.future.set_result(out)
            if metrics is not None:
                metrics.record_batch(self.name, replica.name, len(items), latency)
                metrics.set_batch_cap(self.name, replica.name, controller.limit())
                metrics.set_queue_length(self.name, len(queue))

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
        for slot in self._slots:
            if slot.controller is not None:
                slot.controller.set_objective(objective_s)

    def status(self) -> list[dict]:
        rows = []
        for slot in self._slots:
            r, c = slot.replica, slot.controller
            rows.append({
                "model": self.config.model, "version": self.config.version, "replica": slot.index,
                # never the identity's secret part
                "name": r.name.rsplit("-", 1)[0] if r else None, "state": r.state if r else "starting",
                "pid": slot.process.pid if slot.process else None,
                "device": (r.info.get("device") if r else None) or self.config.device,
                "batch_cap": c.limit() if c else None, "restarts": slot.restarts,
                "last_error": r.death_cause if r and r.state == "dead" else None,
            })
        return rows

    @property
    def replica_count(self) -> int:
        return sum(1 for s in self._slots if s.wanted)

    def pids(self) -> list[int]:
        return [s.process.pid for s in self._slots if s.process is not None and s.process.returncode is None]


def _retrieve(fut: asyncio.Future) -> None:
    """Mark a failure as seen: late and shared futures often have no one awaiting them."""
    if not fut.cancelled():
        fut.exception()


def _tail(path: str, limit: int = 2000) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - limit))
            return f.read().decode(errors="replace").strip()
    except OSError:
        return ""

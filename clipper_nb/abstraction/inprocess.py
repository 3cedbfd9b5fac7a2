"""The in-process backend: replicas that run the model on the event loop, for tests.

Deterministic and fast: no process, no socket, no thread. A replica loads the
artifact folder with the worker's own code (:mod:`clipper_nb.wire.predict`), and each
batch makes the same codec round trip as over ZeroMQ, so outputs have the types the
process backend would give. Latency is scripted, so tests of the query path (cache,
dedup, batching, AIMD, retries, restarts) do not depend on the machine's speed.

Usage (engine-level tests construct the engine's ``backends`` with it)::

    backend = InProcessBackend(delays={"slow": 0.05})       # 50 ms per batch of "slow"
    backend = InProcessBackend(latency=lambda model, n: 0.001 * n)
    backend = InProcessBackend(fault=lambda model, xs: "crash" if 13 in xs else None)
    await backend.start()
    version = ModelVersion(backend, ModelVersionConfig(model="m", version="1",
                                                       artifact_dir=d, log_dir=logs))
    await version.start(2)
    ...
    backend.replicas("m")[0].kill("simulated crash")       # in-flight batch: ReplicaLost
    backend.batches                                       # [(replica name, rows), ...]
    await version.stop(); await backend.close()
"""

from __future__ import annotations

import asyncio
import itertools
import time
import traceback
from collections.abc import Callable

from clipper_nb.abstraction.backend import OnDead, ReplicaLost, ReplicaSpec
from clipper_nb.errors import DeployError, ModelError
from clipper_nb.wire import artifact, codec, predict

__all__ = ["InProcessBackend", "InProcessReplica"]

_serial = itertools.count(1)

#: ``latency(model, n_rows) -> seconds`` a batch takes on top of the model's own time
Latency = Callable[[str, int], float]
#: ``fault(model, inputs) -> "crash" | "hang" | None``: what a batch does to its replica
Fault = Callable[[str, list], "str | None"]


class InProcessReplica:
    """One replica of the in-process backend: a loaded predictor and a state."""

    pid = None  # no process of its own

    def __init__(self, backend: InProcessBackend, spec: ReplicaSpec) -> None:
        self.backend = backend
        self.spec = spec
        self.name = f"{spec.model}:{spec.version}:{spec.index}:{next(_serial)}"
        self.state = "starting"
        self.info: dict = {}
        self.death_cause: str | None = None
        self.predictor: artifact.Predictor | None = None
        self.on_dead: OnDead | None = None
        self._pending: asyncio.Future | None = None

    async def run_batch(self, inputs: list) -> tuple[list, dict]:
        """Run the batch after the scripted latency: ``(outputs, {"n", "compute_ms"})``.

        Raises :class:`ModelError` when the model raises (or returns the wrong number
        of outputs) and :class:`ReplicaLost` when the replica is killed meanwhile, is not
        idle, or the batch runs past ``spec.hang_timeout_s``.
        """
        if self.state != "idle":
            raise ReplicaLost(f"replica {self.name} is {self.state}")
        self.state = "busy"
        loop = asyncio.get_running_loop()
        self._pending = done = loop.create_future()
        work = asyncio.ensure_future(self._work(inputs))
        work.add_done_callback(lambda t: _settle(done, t))
        hang = loop.call_later(self.spec.hang_timeout_s, self.kill,
                               f"a batch ran longer than the hang timeout ({self.spec.hang_timeout_s:.0f}s)")
        try:
            return await done
        finally:
            hang.cancel()
            work.cancel()
            self._pending = None
            if self.state == "busy":
                self.state = "idle"

    async def _work(self, inputs: list) -> tuple[list, dict]:
        assert self.predictor is not None
        delay = self.backend.delay_s(self.spec.model, len(inputs))
        if delay > 0:
            await asyncio.sleep(delay)
        fault = self.backend.fault(self.spec.model, inputs) if self.backend.fault is not None else None
        if fault == "crash":
            self.kill(f"crashed on a batch of {len(inputs)}")
            raise ReplicaLost(f"replica {self.name} died")
        if fault == "hang":
            await asyncio.get_running_loop().create_future()  # until killed or stopped
        self.backend.batches.append((self.name, len(inputs)))
        try:
            header, payload = codec.encode_batch(inputs)
        except Exception as e:  # noqa: BLE001 - as the process backend: the batch's error, not the replica's
            raise ModelError(f"cannot send the batch to the model: {artifact.format_exception(e)}") from None
        try:  # bytes(): read-only, as a frame off the wire; the model never aliases the caller's input
            out_frames, meta = predict.run_frames(self.predictor, header, bytes(payload))
        except Exception as e:  # noqa: BLE001 - a failing model fails its own queries only
            raise ModelError(f"the model failed: {artifact.format_exception(e)}",
                             traceback.format_exc(limit=6)) from None
        meta["compute_ms"] += delay * 1000
        return predict.decode_outputs(out_frames[0], bytes(out_frames[1])), meta

    def kill(self, cause: str = "killed") -> None:
        """Die now, as a crashed worker would: the in-flight batch fails with
        :class:`ReplicaLost`, then ``on_dead(self, cause)`` is called."""
        if self.state == "dead":
            return
        self.state = "dead"
        self.death_cause = cause
        if self._pending is not None and not self._pending.done():
            self._pending.set_exception(ReplicaLost(f"replica {self.name} died: {cause}"))
        on_dead, self.on_dead = self.on_dead, None
        if on_dead is not None:
            on_dead(self, cause)

    async def stop(self) -> None:
        """End the replica; never calls ``on_dead``."""
        self.on_dead = None
        self.kill("stopped")


class InProcessBackend:
    """A :class:`~clipper_nb.abstraction.backend.ReplicaBackend` running models on the event loop.

    ``InProcessBackend(latency=None, delays=None, start_s=0.0)``:

    * ``latency(model, n_rows) -> seconds``: scripted time of each batch (awaited
      with ``asyncio.sleep`` before the model runs and added to ``compute_ms``);
    * ``delays={"model": seconds}``: a fixed time per batch for the models named
      (used when ``latency`` is None; other models take no scripted time);
    * ``start_s``: scripted start-up time of every replica;
    * ``fault(model, inputs) -> "crash" | "hang" | None``: per batch, after its scripted
      time: ``"crash"`` kills the replica (as ``os._exit`` in a worker would), ``"hang"``
      never returns (until the replica is stopped or killed).

    What tests read: ``batches`` (``(replica name, rows)`` per batch run, in order),
    ``started`` (every replica ever started), ``replicas(model)`` (the live ones).
    A replica's ``kill(cause)`` simulates a crash. Loading follows the process
    backend: a model that cannot load makes ``start_replica`` raise ``DeployError``.
    """

    name = "inprocess"

    def __init__(self, latency: Latency | None = None, delays: dict[str, float] | None = None,
                 start_s: float = 0.0, fault: Fault | None = None) -> None:
        self.latency = latency
        self.delays = dict(delays or {})
        self.start_s = start_s
        self.fault = fault
        self.batches: list[tuple[str, int]] = []
        self.started: list[InProcessReplica] = []

    def delay_s(self, model: str, n_rows: int) -> float:
        """The scripted time of a batch of ``n_rows`` rows of ``model``."""
        if self.latency is not None:
            return float(self.latency(model, n_rows))
        return float(self.delays.get(model, 0.0))

    def replicas(self, model: str | None = None) -> list[InProcessReplica]:
        """Live replicas (of ``model``), oldest first."""
        return [r for r in self.started if r.state != "dead" and model in (None, r.spec.model)]

    async def start(self) -> None:
        """Nothing to start."""

    async def close(self) -> None:
        """Stop every replica still live."""
        for replica in self.replicas():
            await replica.stop()

    async def start_replica(self, spec: ReplicaSpec, on_dead: OnDead) -> InProcessReplica:
        """Load the artifact after ``start_s``; ``DeployError`` naming the cause when it cannot load."""
        replica = InProcessReplica(self, spec)
        if self.start_s > 0:
            await asyncio.sleep(self.start_s)
        started = time.perf_counter()
        try:
            replica.predictor = predict.load_dir(spec.artifact_dir, spec.device, spec.threads)
        except Exception as e:  # noqa: BLE001 - any load failure is the deploy's to report
            replica.state, replica.death_cause = "dead", "cannot load the model"
            raise DeployError(f"a replica could not load {spec.model}:{spec.version}: "
                              f"{artifact.format_exception(e)}", type(e).__name__) from None
        replica.info = {"pid": None, "device": replica.predictor.device,
                        "load_ms": (time.perf_counter() - started) * 1000}
        replica.on_dead = on_dead
        replica.state = "idle"
        self.started.append(replica)
        return replica


def _settle(done: asyncio.Future, work: asyncio.Task) -> None:
    """Hand the work's outcome to ``done`` unless ``done`` is settled already (killed)."""
    if done.done():
        if not work.cancelled():
            work.exception()  # retrieved: nobody else will look
        return
    if work.cancelled():
        done.cancel()
    elif work.exception() is not None:
        done.set_exception(work.exception())
    else:
        done.set_result(work.result())

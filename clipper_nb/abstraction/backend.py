"""The replica-backend interface: the seam between the abstraction layer and whatever runs models.

Clipper's model abstraction layer (cache, batching, AIMD, the model-version query
path) never knows *how* a replica runs. It asks a :class:`ReplicaBackend` to start
replicas from a :class:`ReplicaSpec` and gets back :class:`ReplicaHandle` objects that
run batches and report their death. Implementations:

* :class:`clipper_nb.containers.process_backend.ProcessBackend` - worker processes over
  ZeroMQ (the default);
* :class:`clipper_nb.abstraction.inprocess.InProcessBackend` - the model called on the
  event loop with a scripted latency: deterministic, for tests of the query path;
* a Ray backend (replicas as Ray actors) plugs in here too.

Contract, for every implementation:

* ``start()`` before the first ``start_replica``, ``close()`` after the last replica
  stopped; ``close()`` also ends whatever the backend itself started.
* ``start_replica`` returns only once the replica can take a batch (state ``idle``);
  when the model cannot load, or the replica does not come up within
  ``spec.start_timeout_s``, it raises :class:`~clipper_nb.errors.DeployError` naming
  the cause, and leaves nothing running. Cancelling it leaves nothing running either.
* ``run_batch(inputs)`` returns ``(outputs, meta)`` with one output per input and
  ``meta["compute_ms"]``, the replica's own compute time (what AIMD steers on). It
  raises :class:`~clipper_nb.errors.ModelError` when the model raised (the replica is
  still alive) and :class:`ReplicaLost` when the replica died or hung with the batch
  (the batch may be retried on another replica), or was not ``idle`` when called.
  One batch at a time per replica.
* A replica that ``start_replica`` returned and that dies before ``stop()`` was called
  (crash, kill, missed heartbeats, a batch past ``spec.hang_timeout_s``) calls
  ``on_dead(handle, cause)`` exactly once, after failing its in-flight batch with
  :class:`ReplicaLost`; its state is then ``dead`` and ``death_cause`` says why.
  A replica that never started does not call it (``start_replica`` raised instead).
* ``stop()`` ends the replica (state ``dead``, ``death_cause == "stopped"`` unless it
  had died already) and does not call ``on_dead``; a batch in flight fails with
  :class:`ReplicaLost`. Afterwards nothing the replica ran survives. Calling it twice
  is harmless.
* ``name`` never carries a secret: it is shown in status rows, metrics and errors.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from clipper_nb.config import DEFAULT_HANG_TIMEOUT_S, DEFAULT_HEARTBEAT_TIMEOUT_S, DEFAULT_START_TIMEOUT_S
from clipper_nb.errors import ReplicaLost  # re-exported: part of the interface

__all__ = ["REPLICA_STATES", "OnDead", "ReplicaBackend", "ReplicaHandle", "ReplicaLost", "ReplicaSpec"]

#: ``starting`` -> ``idle`` <-> ``busy`` -> ``dead``
REPLICA_STATES = ("starting", "idle", "busy", "dead")


@dataclass(frozen=True)
class ReplicaSpec:
    """What one replica of a model version needs, whatever runs it."""

    model: str
    version: str
    index: int
    artifact_dir: str
    log_dir: str
    device: str
    python: str
    cwd: str | None
    env: dict[str, str] = field(default_factory=dict)
    #: modules a backend may import ahead of time (the fork server's warm interpreter)
    preload: Sequence[str] = ()
    #: compute threads for the model (None: the backend's choice or the user's env)
    threads: int | None = None
    #: how many replicas of this version are wanted: a backend whose replicas share
    #: one machine divides its cores among them when ``threads`` is None
    replicas: int = 1
    start_timeout_s: float = DEFAULT_START_TIMEOUT_S
    heartbeat_timeout_s: float = DEFAULT_HEARTBEAT_TIMEOUT_S
    hang_timeout_s: float = DEFAULT_HANG_TIMEOUT_S

    @property
    def log_path(self) -> str:
        """Where the replica's stdout and stderr go (model prints, tracebacks)."""
        return f"{self.log_dir}/{self.model}-{self.version}-{self.index}.log"


class ReplicaHandle(Protocol):
    """One running replica, as the abstraction layer sees it."""

    #: ``model:version:index:serial``; never carries a secret
    name: str
    #: one of :data:`REPLICA_STATES`
    state: str
    #: what the replica reported when it started (``pid``, ``device``, ...)
    info: dict[str, Any]
    #: why it died, once ``state == "dead"``
    death_cause: str | None
    #: the OS process id where one exists (None for in-process and remote replicas)
    pid: int | None

    async def run_batch(self, inputs: list) -> tuple[list, dict]: ...

    async def stop(self) -> None: ...


#: Called once when a replica dies: ``on_dead(handle, cause)``.
OnDead = Callable[[ReplicaHandle, str], None]


class ReplicaBackend(Protocol):
    """Starts replicas; owns whatever they share (a socket, fork servers, a cluster connection)."""

    #: ``"process"``, ``"inprocess"``, ``"ray"``
    name: str

    async def start(self) -> None: ...

    async def start_replica(self, spec: ReplicaSpec, on_dead: OnDead) -> ReplicaHandle: ...

    async def close(self) -> None: ...

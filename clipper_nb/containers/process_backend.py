"""The process backend: each replica is a worker process talking ZeroMQ (the default backend).

:class:`ProcessBackend` implements :class:`clipper_nb.abstraction.backend.ReplicaBackend`.
It owns the frontend's ROUTER socket (:class:`~.zmq_transport.Router`) and, on Linux,
one :class:`~.forkserver.ForkServer` per Python interpreter, so that a replica starts
as a ``fork()`` of a warm interpreter in milliseconds; elsewhere, or with
``fork_server=False``, each replica is a fresh ``python -m clipper_nb.containers.worker``.

A replica's name (``model:version:index:serial``) is public; the worker's identity on
the socket adds a random suffix, so that another local user cannot connect as a
replica that is still starting (the ROUTER listens on loopback without authentication).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import secrets
import sys
from typing import Any

from clipper_nb.abstraction.backend import OnDead, ReplicaLost, ReplicaSpec
from clipper_nb.containers.forkserver import ForkServer
from clipper_nb.containers.zmq_transport import Replica, Router
from clipper_nb.errors import DeployError, ModelError

__all__ = ["ProcessBackend", "ProcessReplica"]

log = logging.getLogger("clipper_nb.containers.process_backend")

_replica_serial = itertools.count(1)
#: How long ``stop()`` lets a worker exit on its own before it is killed.
STOP_GRACE_S = 2.0
#: How long a worker that exited while starting may take to say why over ZeroMQ.
LAST_WORDS_S = 0.5


class ProcessReplica:
    """One worker process and its connection: the process backend's replica handle."""

    def __init__(self, router: Router, spec: ReplicaSpec) -> None:
        #: public; the socket identity adds a secret
        self.name = f"{spec.model}:{spec.version}:{spec.index}:{next(_replica_serial)}"
        self.conn = Replica(router, self.name, identity=f"{self.name}-{secrets.token_hex(8)}",
                            heartbeat_timeout_s=spec.heartbeat_timeout_s, hang_timeout_s=spec.hang_timeout_s,
                            on_dead=self._conn_died)
        self.log_path = spec.log_path
        self.process: Any = None  # an asyncio Process, or a ForkedProcess from the fork server
        self.on_dead: OnDead | None = None
        self._returned = False  # start_replica handed it out: deaths are reported from now on
        self._stopped = False

    @property
    def state(self) -> str:
        return self.conn.state

    @property
    def info(self) -> dict:
        return self.conn.info

    @property
    def death_cause(self) -> str | None:
        return self.conn.death_cause

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    async def run_batch(self, inputs: list) -> tuple[list, dict]:
        """Send a batch to the worker; ``(outputs, {"n", "compute_ms"})`` back."""
        return await self.conn.run_batch(inputs)

    async def stop(self) -> None:
        """Ask the worker to exit, kill it after ``STOP_GRACE_S``; reap it."""
        self._stopped = True
        self.conn.stop()
        self.conn.mark_dead("stopped")
        process = self.process
        if process is not None and process.returncode is None:
            try:
                await asyncio.wait_for(process.wait(), STOP_GRACE_S)
            except asyncio.TimeoutError:
                process.kill()
                await process.wait()

    def kill(self) -> None:
        """SIGKILL the worker now (its death is then reported as for a crash)."""
        if self.process is not None and self.process.returncode is None:
            self.process.kill()

    def _conn_died(self, conn: Replica, cause: str) -> None:
        if self._stopped:
            return  # stop() ends the process itself, gracefully first
        self.kill()  # hung, silent, or said it cannot load: make sure it is gone
        if self._returned and self.on_dead is not None:
            on_dead, self.on_dead = self.on_dead, None
            on_dead(self, cause)


class ProcessBackend:
    """Replicas as local worker processes over ZeroMQ; see the module docstring.

    ``fork_server``: start workers as forks of a warm interpreter (Linux only; ignored
    elsewhere). ``tag`` (the state directory) goes on the fork servers' command lines,
    so that one can tell whose workers they are. ``frontend_timeout_s``: a worker exits
    when the frontend has been silent this long (the frontend was killed).
    """

    name = "process"

    def __init__(self, fork_server: bool = True, tag: str = "", frontend_timeout_s: float = 10.0) -> None:
        self.fork_server = fork_server and sys.platform.startswith("linux")
        self.tag = tag
        self.frontend_timeout_s = frontend_timeout_s
        self.router: Router | None = None
        self._fork_servers: dict[str, ForkServer] = {}
        self._live: set[ProcessReplica] = set()
        self._watchers: set[asyncio.Task] = set()

    async def start(self) -> None:
        """Bind the ROUTER socket and start its receive and heartbeat loops."""
        if self.router is None:
            self.router = Router()
            self.router.start()

    async def close(self) -> None:
        """Stop any replica still running, then the fork servers and the socket."""
        await asyncio.gather(*(r.stop() for r in list(self._live)), return_exceptions=True)
        await asyncio.gather(*(s.close() for s in self._fork_servers.values()), return_exceptions=True)
        self._fork_servers.clear()
        for task in list(self._watchers):
            task.cancel()
        await asyncio.gather(*self._watchers, return_exceptions=True)
        if self.router is not None:
            await self.router.close()
            self.router = None

    async def start_replica(self, spec: ReplicaSpec, on_dead: OnDead) -> ProcessReplica:
        """Start a worker for ``spec`` and wait for its hello; see the interface's contract."""
        if self.router is None:
            raise RuntimeError("ProcessBackend.start() must run before start_replica()")
        handle = ProcessReplica(self.router, spec)
        try:
            handle.process = await self._spawn(spec, handle.conn.identity.decode())
            self._watch(handle)
            await self._wait_hello(handle, spec)
        except BaseException:  # a failed or cancelled start leaves nothing running
            handle.conn.mark_dead("did not start")
            handle.kill()
            raise
        handle.on_dead = on_dead
        handle._returned = True
        self._live.add(handle)
        return handle

    async def _spawn(self, spec: ReplicaSpec, identity: str) -> Any:
        assert self.router is not None
        os.makedirs(spec.log_dir, exist_ok=True)
        env = {**os.environ, **spec.env}
        cwd = spec.cwd if spec.cwd and os.path.isdir(spec.cwd) else None
        if cwd:  # what the notebook imported from its folder is importable in the worker
            env["PYTHONPATH"] = os.pathsep.join(p for p in (cwd, env.get("PYTHONPATH")) if p)
        argv = ["--frontend", self.router.address, "--identity", identity, "--artifact", spec.artifact_dir,
                "--device", spec.device, "--frontend-timeout", str(self.frontend_timeout_s)]
        threads = spec.threads
        if threads is None and "OMP_NUM_THREADS" not in env:  # the user's setting wins
            # Replicas share this machine's cores: R replicas each using every core thrash.
            threads = max(1, (os.cpu_count() or 1) // max(1, spec.replicas))
        if threads:
            argv += ["--threads", str(threads)]
        if self.fork_server:
            server = self._fork_servers.get(spec.python)
            if server is None:
                server = self._fork_servers[spec.python] = ForkServer(spec.python, tag=self.tag)
            return await server.spawn(argv, env, cwd, spec.log_path, spec.preload)
        log_fd = os.open(spec.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            return await asyncio.create_subprocess_exec(
                spec.python, "-m", "clipper_nb.containers.worker", *argv, stdin=asyncio.subprocess.DEVNULL,
                stdout=log_fd, stderr=log_fd, env=env, cwd=cwd)
        finally:
            os.close(log_fd)

    def _watch(self, handle: ProcessReplica) -> None:
        task = asyncio.ensure_future(self._watch_process(handle))
        self._watchers.add(task)
        task.add_done_callback(self._watchers.discard)

    async def _watch_process(self, handle: ProcessReplica) -> None:
        rc = await handle.process.wait()
        self._live.discard(handle)
        if handle.conn.state == "starting":
            # A worker that cannot load says why over ZeroMQ, then exits; the exit can
            # reach us first. Give its message a moment so the deploy error names the cause.
            loop = asyncio.get_running_loop()
            end = loop.time() + LAST_WORDS_S
            while handle.conn.state == "starting" and loop.time() < end:
                await asyncio.sleep(0.025)
        handle.conn.mark_dead(f"worker process exited with code {rc}")

    async def _wait_hello(self, handle: ProcessReplica, spec: ReplicaSpec) -> None:
        conn, label = handle.conn, f"{spec.model}:{spec.version}"
        try:
            await asyncio.wait_for(asyncio.shield(conn.hello), spec.start_timeout_s)
        except asyncio.TimeoutError:
            conn.mark_dead("did not start in time")
            raise DeployError(f"replica {spec.index} of {label} did not start within {spec.start_timeout_s:.0f}s",
                              _tail(spec.log_path)) from None
        except (ModelError, ReplicaLost) as e:
            tail = _tail(spec.log_path)
            why = str(e)
            if isinstance(e, ReplicaLost) and tail:  # it exited: its last words say why
                why += f" ({tail.splitlines()[-1].strip()})"
            raise DeployError(f"a worker could not load {label}: {why}", getattr(e, "cause", None) or tail) from None
        if conn.state == "dead":  # died between its hello and now
            raise DeployError(f"a worker of {label} died right after it started: {conn.death_cause}",
                              _tail(spec.log_path))
        log.debug("worker %s said hello: %s", handle.name, conn.info)


def _tail(path: str, limit: int = 2000) -> str:
    """The end of a replica's log: what it printed last, usually why it failed."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - limit))
            return f.read().decode(errors="replace").strip()
    except OSError:
        return ""

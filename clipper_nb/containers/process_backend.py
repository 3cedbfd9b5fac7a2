"""The process backend: each replica is a worker process talking ZeroMQ (the default backend).

:class:`ProcessBackend` implements :class:`clipper_nb.abstraction.backend.ReplicaBackend`.
It owns the frontend's ROUTER socket (:class:`~.zmq_transport.Router`) and, on Linux,
one :class:`~.forkserver.ForkServer` per Python interpreter, so that a replica starts
as a ``fork()`` of a warm interpreter in milliseconds; elsewhere, or with
``fork_server=False``, each replica is a fresh ``python -m clipper_nb.containers.worker``.

The worker channel is the owner's alone:

* the ROUTER listens on an ``ipc://`` socket in a directory of its own made with mode
  0700 under ``/tmp`` (short: ipc paths are limited to about 100 bytes), so no other
  local user can connect, receive a batch or send a reply;
* a replica's name (``model:version:index:serial``) is public; its identity on the
  socket adds a random suffix and reaches the worker in its environment (read and
  removed at start), never on a command line, which every local user can read;
* a peer sending a message over ``max_message_bytes`` is disconnected, and what a
  worker sends is decoded as data only (JSON, numpy buffers, a data-only unpickler);
* ``memory_limit_mb`` caps each worker's address space: a batch that needs more fails
  with an error, and the replica keeps serving.
"""

from __future__ import annotations

import asyncio
import glob
import itertools
import logging
import os
import secrets
import shutil
import sys
import tempfile
from typing import Any

from clipper_nb.abstraction.backend import OnDead, ReplicaLost, ReplicaSpec
from clipper_nb.config import ClipperNB
from clipper_nb.containers.forkserver import ForkServer
from clipper_nb.containers.worker import ENV_IDENTITY
from clipper_nb.containers.zmq_transport import Replica, Router
from clipper_nb.errors import DeployError, ModelError

__all__ = ["ProcessBackend", "ProcessReplica"]

log = logging.getLogger("clipper_nb.containers.process_backend")

_replica_serial = itertools.count(1)
#: How long ``stop()`` lets a worker exit on its own before it is killed.
STOP_GRACE_S = 2.0
#: How long a worker that exited while starting may take to say why over ZeroMQ.
LAST_WORDS_S = 0.5
#: Where the private directories of the worker channels go (``<base>/cnb-<pid>-<random>/router``).
CHANNEL_DIR_BASE = "/tmp"
#: ``ipc://`` paths longer than this do not fit a Unix socket address.
MAX_IPC_PATH = 100
_DEFAULT_MESSAGE_MB = ClipperNB.class_traits()["worker_message_mb"].default_value


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
        """Ask the worker to exit, kill it after ``STOP_GRACE_S``; reap it. A worker in the
        middle of a batch (hung, or scaled away mid-batch) is killed at once: it reads no
        message until its model returns, and its batch is given up anyway."""
        self._stopped = True
        busy = self.conn.state == "busy"
        self.conn.stop()
        self.conn.mark_dead("stopped")
        process = self.process
        if busy:
            self.kill()
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
    ``memory_limit_mb`` (0: none) and ``max_message_bytes``: the ``worker_memory_mb`` and
    ``worker_message_mb`` knobs; set them before :meth:`start`.
    """

    name = "process"

    def __init__(self, fork_server: bool = True, tag: str = "", frontend_timeout_s: float = 10.0,
                 memory_limit_mb: float = 0.0, max_message_bytes: int = int(_DEFAULT_MESSAGE_MB * (1 << 20))) -> None:
        self.fork_server = fork_server and sys.platform.startswith("linux")
        self.tag = tag
        self.frontend_timeout_s = frontend_timeout_s
        self.memory_limit_mb = memory_limit_mb
        self.max_message_bytes = max_message_bytes
        self.router: Router | None = None
        self.channel_dir: str | None = None
        self._fork_servers: dict[str, ForkServer] = {}
        self._live: set[ProcessReplica] = set()
        self._watchers: set[asyncio.Task] = set()

    async def start(self) -> None:
        """Bind the ROUTER socket (in a private directory) and start its receive and heartbeat loops."""
        if self.router is None:
            self.channel_dir = _private_channel_dir()
            endpoint = f"ipc://{self.channel_dir}/router" if self.channel_dir else "tcp://127.0.0.1"
            self.router = Router(endpoint, self.max_message_bytes)
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
        if self.channel_dir is not None:
            shutil.rmtree(self.channel_dir, ignore_errors=True)
            self.channel_dir = None

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
        # The identity carries a secret: in the environment (only its owner reads /proc/PID/environ).
        env = {**os.environ, **spec.env, ENV_IDENTITY: identity}
        cwd = spec.cwd if spec.cwd and os.path.isdir(spec.cwd) else None
        if cwd:  # what the notebook imported from its folder is importable in the worker
            env["PYTHONPATH"] = os.pathsep.join(p for p in (cwd, env.get("PYTHONPATH")) if p)
        argv = ["--frontend", self.router.address, "--artifact", spec.artifact_dir,
                "--device", spec.device, "--frontend-timeout", str(self.frontend_timeout_s)]
        if self.memory_limit_mb:
            argv += ["--memory-limit-mb", str(self.memory_limit_mb)]
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
        log_fd = os.open(spec.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
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


def _private_channel_dir() -> str | None:
    """A new directory only this user can enter (``mkdtemp``: mode 0700), short enough for an
    ``ipc://`` path; None where Unix sockets are not available (then: loopback TCP)."""
    if not sys.platform.startswith(("linux", "darwin", "freebsd")):
        return None
    base = CHANNEL_DIR_BASE if os.path.isdir(CHANNEL_DIR_BASE) else tempfile.gettempdir()
    _remove_stale_channel_dirs(base)
    path = tempfile.mkdtemp(prefix=f"cnb-{os.getpid()}-", dir=base)
    if len(f"{path}/router") > MAX_IPC_PATH:
        os.rmdir(path)
        log.warning("temporary directory %s is too deep for an ipc:// socket: workers use loopback TCP", base)
        return None
    return path


def _remove_stale_channel_dirs(base: str) -> None:
    """Directories left by frontends of this user that were killed (their pid is gone)."""
    for path in glob.glob(os.path.join(base, "cnb-*-*")):
        try:
            pid = int(os.path.basename(path).split("-")[1])
            if os.stat(path).st_uid != os.getuid() or pid == os.getpid():
                continue
            os.kill(pid, 0)  # alive: leave it
        except ProcessLookupError:
            shutil.rmtree(path, ignore_errors=True)
        except (ValueError, OSError):
            continue


def _tail(path: str, limit: int = 2000) -> str:
    """The end of a replica's log: what it printed last, usually why it failed."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - limit))
            return f.read().decode(errors="replace").strip()
    except OSError:
        return ""

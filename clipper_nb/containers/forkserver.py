"""A fork server for workers: replicas start in milliseconds, not seconds.

A worker's start-up is mostly imports: numpy, ZeroMQ, and above all the model's own
libraries (scikit-learn pulls scipy and pandas: 2-3 s of CPU on these machines; torch
more). A replica that died must be back within seconds even on a busy machine, so
each interpreter gets one long-lived *fork server* (``python -m clipper_nb.containers.forkserver``)
that has imported all that once; a new worker is a ``fork()`` of it.

Protocol: JSON lines. The frontend writes ``{"id", "argv", "env", "cwd", "log",
"preload"}``; the fork server answers ``{"id", "pid"}`` and later ``{"exited": pid,
"rc": code}`` (``-N`` for signal N) when it reaps that worker. It exits, and its
workers get SIGTERM, when its stdin closes (the frontend is gone). It never starts a
thread, so forking it is safe; CUDA is only ever initialised in the workers.

The channel is the fork server's stdin and stdout pipes, which no other process can
open; what a worker needs to know that is secret (its socket identity) travels in
``env`` there, never on a command line. Workers' logs are created 0600.
"""

from __future__ import annotations

import asyncio
import ctypes
import importlib
import json
import logging
import os
import selectors
import signal
import sys
import time
import traceback

# The point of a fork server: import the worker (zmq, numpy, the codec) once, fork many.
from clipper_nb.containers import worker

log = logging.getLogger("clipper_nb.containers.forkserver")


# ====================================================================== frontend side


class ForkedProcess:
    """What the supervisor needs of a worker process: pid, returncode, wait, kill."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None
        self._exited = asyncio.Event()

    def _set_exit(self, rc: int) -> None:
        self.returncode = rc
        self._exited.set()

    async def wait(self) -> int:
        await self._exited.wait()
        assert self.returncode is not None
        return self.returncode

    def kill(self) -> None:
        self._signal(signal.SIGKILL)

    def terminate(self) -> None:
        self._signal(signal.SIGTERM)

    def _signal(self, sig: int) -> None:
        if self.returncode is None:
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                pass


class ForkServer:
    """One fork server per Python interpreter; see the module docstring."""

    def __init__(self, python: str, tag: str = "") -> None:
        self.python = python
        self.tag = tag  # shown on the command line (the state dir): tells whose workers these are
        self._proc: asyncio.subprocess.Process | None = None
        self._pending: dict[int, asyncio.Future[int]] = {}
        self._children: dict[int, ForkedProcess] = {}
        self._early_exits: dict[int, int] = {}
        self._next_id = 0
        self._reader: asyncio.Task | None = None
        self._lock = asyncio.Lock()

    async def _ensure_started(self) -> None:
        if self._proc is not None and self._proc.returncode is None:
            return
        self._proc = await asyncio.create_subprocess_exec(
            self.python, "-m", "clipper_nb.containers.forkserver", *(["--tag", self.tag] if self.tag else []), stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE, stderr=None, start_new_session=False)
        self._reader = asyncio.ensure_future(self._read(self._proc))

    async def _read(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        while True:
            try:
                line = await proc.stdout.readline()
            except ValueError:  # a line over the reader's limit: something a model printed, not ours
                log.debug("fork server printed an overlong line")
                continue
            if not line:
                break
            try:
                msg = json.loads(line)
            except ValueError:  # something a preloaded module printed: not ours
                log.debug("fork server said: %r", line[:200])
                continue
            if "exited" in msg:
                child = self._children.pop(msg["exited"], None)
                if child is not None:
                    child._set_exit(msg["rc"])
                else:
                    self._early_exits[msg["exited"]] = msg["rc"]
            elif "id" in msg:
                fut = self._pending.pop(msg["id"], None)
                if fut is not None and not fut.done():
                    if "error" in msg:
                        fut.set_exception(RuntimeError(msg["error"]))
                    else:
                        fut.set_result(msg["pid"])
        # The fork server is gone: its workers got SIGTERM; report them dead.
        for child in list(self._children.values()):
            child._set_exit(-signal.SIGTERM)
        self._children.clear()
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(RuntimeError("the fork server exited"))
        self._pending.clear()

    async def spawn(self, argv: list[str], env: dict[str, str], cwd: str | None, log_path: str,
                    preload: list[str] | tuple[str, ...] = ()) -> ForkedProcess:
        async with self._lock:
            await self._ensure_started()
            assert self._proc is not None and self._proc.stdin is not None
            self._next_id += 1
            fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
            self._pending[self._next_id] = fut
            request = {"id": self._next_id, "argv": argv, "env": env, "cwd": cwd, "log": log_path,
                       "preload": list(preload)}
            self._proc.stdin.write(json.dumps(request).encode() + b"\n")
            await self._proc.stdin.drain()
        pid = await asyncio.wait_for(fut, 60)
        child = ForkedProcess(pid)
        if pid in self._early_exits:  # it died before we learned its pid
            child._set_exit(self._early_exits.pop(pid))
        else:
            self._children[pid] = child
        return child

    async def close(self) -> None:
        proc = self._proc
        if proc is None:
            return
        if proc.stdin is not None and not proc.stdin.is_closing():
            proc.stdin.close()
        try:
            await asyncio.wait_for(proc.wait(), 5)
        except asyncio.TimeoutError:
            proc.kill()
            await proc.wait()
        if self._reader is not None:
            await asyncio.gather(self._reader, return_exceptions=True)
        self._proc = None


# ====================================================================== fork server side


def _write(msg: dict) -> None:
    try:
        os.write(1, json.dumps(msg).encode() + b"\n")
    except OSError:  # the frontend is gone (a closed pipe): nobody to tell, keep cleaning up
        pass


def _reap(children: set[int]) -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        children.discard(pid)  # its pid may be reused: never signal it again
        rc = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
        _write({"exited": pid, "rc": rc})


def _set_process_name(name: bytes) -> None:
    """A forked worker shares the fork server's command line; its name (``comm``,
    what ``ps -o comm`` and ``top`` show) says what it is."""
    try:
        ctypes.CDLL("libc.so.6").prctl(15, ctypes.c_char_p(name), 0, 0, 0)  # PR_SET_NAME
    except OSError:
        pass


def _child(req: dict) -> None:
    """In the forked child: become a worker. Never returns."""
    code = 1
    try:
        fd = os.open(req["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.close(null)
        sys.stdout = os.fdopen(1, "w", buffering=1)
        sys.stderr = os.fdopen(2, "w", buffering=1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        _set_process_name(b"clipper-worker")
        os.environ.clear()
        os.environ.update(req["env"])
        extra = [p for p in req["env"].get("PYTHONPATH", "").split(os.pathsep) if p]
        sys.path[:0] = [p for p in extra if p not in sys.path]
        if req.get("cwd"):
            os.chdir(req["cwd"])
        code = worker.main(req["argv"])
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    except BaseException:  # noqa: BLE001 - report, then exit: never return into the fork server
        traceback.print_exc()
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


#: How long workers get to exit on SIGTERM before the fork server kills them.
TERM_GRACE_S = 2.0


def _stop_once(*_: object) -> None:
    # The first SIGTERM (the frontend's death, via PDEATHSIG) ends the loop; a second one
    # must not cut short the cleanup below that kills workers ignoring SIGTERM.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    sys.exit(0)


def main() -> int:
    worker._die_with_parent()
    signal.signal(signal.SIGTERM, _stop_once)

    sel = selectors.DefaultSelector()
    sel.register(0, selectors.EVENT_READ)
    buf = b""
    children: set[int] = set()
    try:
        while True:
            if sel.select(timeout=0.02):
                chunk = os.read(0, 1 << 16)
                if not chunk:
                    break  # the frontend is gone
                buf += chunk
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    req = json.loads(line)
                    for name in req.get("preload", []):
                        try:
                            importlib.import_module(name)
                        except Exception:  # noqa: BLE001, S110 - the worker will report what fails
                            pass
                    try:
                        pid = os.fork()
                    except OSError as e:
                        _write({"id": req["id"], "error": str(e)})
                        continue
                    if pid == 0:
                        _child(req)
                    children.add(pid)
                    _write({"id": req["id"], "pid": pid})
            _reap(children)
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # the stdin path: no SIGTERM may cut this short
        _end_children(children)
    return 0


def _end_children(children: set[int], grace_s: float = TERM_GRACE_S) -> None:
    """SIGTERM every worker, then SIGKILL the ones still there after ``grace_s``: a model
    that ignores SIGTERM (or hangs in C code) must not outlive its frontend."""
    for pid in children:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    end = time.monotonic() + grace_s
    while children and time.monotonic() < end:
        _reap(children)
        time.sleep(0.02)
    for pid in children:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    _reap(children)


if __name__ == "__main__":
    sys.exit(main())

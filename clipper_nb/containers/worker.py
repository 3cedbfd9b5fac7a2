"""A model container: one OS process per replica (``python -m clipper_nb.containers.worker``).

It loads the artifact, says ``HELLO`` over a ZeroMQ DEALER socket, then loops:
receive a batch, predict, reply with the outputs and its compute time, heartbeat.
The message kinds are :mod:`clipper_nb.wire.protocol`'s; loading and predicting are
:mod:`clipper_nb.wire.predict`'s, shared with the in-process test backend.

The worker exits when the frontend's heartbeats stop (even after ``kill -9`` of the
server it must not linger) and, on Linux, when its parent dies (``PR_SET_PDEATHSIG``).

Its identity on the socket carries a secret: it comes in ``$CLIPPER_NB_WORKER_IDENTITY``
(read and removed at start; the model's own subprocesses do not inherit it), never on
the command line, which every local user can read. ``--memory-limit-mb`` caps the
process's address space before the model loads: a batch that needs more fails with
an error saying so, and the worker keeps serving.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import resource
import signal
import sys
import time
import traceback

import zmq

from clipper_nb.wire import artifact, predict
from clipper_nb.wire.protocol import (
    BATCH,
    ERROR,
    HEARTBEAT,
    HEARTBEAT_S,
    HELLO,
    LOAD_ERROR,
    RESULT,
    STOP,
)

#: The environment variable that brings the worker its socket identity (a secret).
ENV_IDENTITY = "CLIPPER_NB_WORKER_IDENTITY"


def _die_with_parent() -> None:
    """Ask Linux to send SIGTERM when the process that started us dies."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG = 1
    except OSError:
        pass


def _send_json(sock: zmq.Socket, kind: bytes, *frames: bytes, body: dict) -> None:
    sock.send_multipart([kind, *frames, json.dumps(body).encode()])


def _public(identity: str) -> str:
    """The identity less its secret suffix: the replica's public name, for the log."""
    return identity.rsplit("-", 1)[0]


def _limit_memory(limit_mb: float) -> None:
    """Cap this process's address space (never above the hard limit it already has)."""
    if limit_mb <= 0:
        return
    want = int(limit_mb * (1 << 20))
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY:
        want = min(want, hard)
    resource.setrlimit(resource.RLIMIT_AS, (want, want))


def serve(frontend: str, identity: str, artifact_dir: str, device: str, frontend_timeout_s: float,
          threads: int | None = None, memory_limit_mb: float = 0.0) -> int:
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.IDENTITY, identity.encode())
    sock.setsockopt(zmq.LINGER, 1000)
    sock.connect(frontend)
    try:
        predictor = predict.load_dir(artifact_dir, device, threads)
    except BaseException as e:  # noqa: BLE001 - report any load failure, then exit
        print(f"clipper-nb worker {_public(identity)}: cannot load the model", file=sys.stderr)
        traceback.print_exc()
        _send_json(sock, LOAD_ERROR, body={"error": artifact.format_exception(e),
                                           "traceback": traceback.format_exc(limit=8)})
        sock.close()
        return 3
    # The model and its libraries live as long as the worker: a full garbage collection
    # need not walk them again (it paused batches for tens of ms with torch loaded).
    gc.freeze()
    _send_json(sock, HELLO, body={"pid": os.getpid(), "device": predictor.device,
                                     "versions": artifact.library_versions()})
    last_heard = last_sent = time.monotonic()
    poller = zmq.Poller()
    poller.register(sock, zmq.POLLIN)
    while True:
        if poller.poll(HEARTBEAT_S * 1000):
            frames = sock.recv_multipart(copy=False)
            last_heard = time.monotonic()
            kind = frames[0].bytes
            if kind == BATCH:
                _run_batch(sock, predictor, frames, memory_limit_mb)
                last_sent = time.monotonic()
            elif kind == STOP:
                break
        # Every HEARTBEAT_S at least, however often the frontend's own pings arrive
        # (a ping landing just before each poll timeout must not silence us).
        if time.monotonic() - last_sent >= HEARTBEAT_S:
            sock.send(HEARTBEAT)
            last_sent = time.monotonic()
        if time.monotonic() - last_heard > frontend_timeout_s:
            print(f"clipper-nb worker {_public(identity)}: frontend silent for {frontend_timeout_s:.0f}s, exiting",
                  file=sys.stderr)
            break
    sock.close()
    return 0


def _run_batch(sock: zmq.Socket, predictor: artifact.Predictor, frames: list, memory_limit_mb: float = 0.0) -> None:
    batch_id = frames[1].bytes
    try:
        out_frames, meta = predict.run_frames(predictor, frames[2].bytes, frames[3].buffer)
    except MemoryError as e:
        limit = f"the replica may map at most {memory_limit_mb:g} MiB (worker_memory_mb)" if memory_limit_mb else ""
        _send_json(sock, ERROR, batch_id, body={"error": f"the model ran out of memory: {limit or repr(e)}",
                                                "traceback": traceback.format_exc(limit=6)})
        return
    except Exception as e:  # noqa: BLE001 - a failing model fails its own queries only
        # The whole traceback goes to this replica's log (client.logs(), %clipper logs);
        # the reply carries the short one that the query's error shows.
        print(f"batch {batch_id.decode(errors='replace')} failed:", file=sys.stderr)
        traceback.print_exc(file=sys.stderr)
        sys.stderr.flush()
        _send_json(sock, ERROR, batch_id, body={"error": artifact.format_exception(e),
                                                "traceback": traceback.format_exc(limit=6)})
        return
    sock.send_multipart([RESULT, batch_id, json.dumps(meta).encode(), *out_frames], copy=False)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m clipper_nb.containers.worker", description=__doc__.splitlines()[0])
    parser.add_argument("--frontend", required=True, help="ZeroMQ address of the frontend's ROUTER socket")
    parser.add_argument("--identity", default=None,
                        help=f"this replica's name on the socket (default: ${ENV_IDENTITY}, which is not "
                             "visible in ps as an argument is)")
    parser.add_argument("--artifact", required=True, help="folder holding model.pkl and meta.json")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--frontend-timeout", type=float, default=10.0,
                        help="exit when the frontend is silent this many seconds")
    parser.add_argument("--threads", type=int, default=None,
                        help="intra-op threads of a CPU torch model (default: the library's own)")
    parser.add_argument("--memory-limit-mb", type=float, default=0.0,
                        help="the most address space this worker may map, in MiB (0: no limit)")
    args = parser.parse_args(argv)
    identity = os.environ.pop(ENV_IDENTITY, None) or args.identity
    if not identity:
        parser.error(f"the identity comes in ${ENV_IDENTITY} (or --identity)")
    _die_with_parent()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    _limit_memory(args.memory_limit_mb)
    return serve(args.frontend, identity, args.artifact, args.device, args.frontend_timeout, args.threads,
                 args.memory_limit_mb)


if __name__ == "__main__":
    sys.exit(main())

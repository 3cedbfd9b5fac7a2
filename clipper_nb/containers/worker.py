"""A model container: one OS process per replica (``python -m clipper_nb.containers.worker``).

It loads the artifact, says ``HELLO`` over a ZeroMQ DEALER socket, then loops:
receive a batch, predict, reply with the outputs and its compute time, heartbeat.
The message kinds are :mod:`clipper_nb.wire.protocol`'s; loading and predicting are
:mod:`clipper_nb.wire.predict`'s, shared with the in-process test backend.

The worker exits when the frontend's heartbeats stop (even after ``kill -9`` of the
server it must not linger) and, on Linux, when its parent dies (``PR_SET_PDEATHSIG``).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
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


def serve(frontend: str, identity: str, artifact_dir: str, device: str, frontend_timeout_s: float,
          threads: int | None = None) -> int:
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.IDENTITY, identity.encode())
    sock.setsockopt(zmq.LINGER, 1000)
    sock.connect(frontend)
    try:
        predictor = predict.load_dir(artifact_dir, device, threads)
    except BaseException as e:  # noqa: BLE001 - report any load failure, then exit
        print(f"clipper-nb worker {identity}: cannot load the model", file=sys.stderr)
        traceback.print_exc()
        _send_json(sock, LOAD_ERROR, body={"error": artifact.format_exception(e),
                                           "traceback": traceback.format_exc(limit=8)})
        sock.close()
        return 3
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
                _run_batch(sock, predictor, frames)
                last_sent = time.monotonic()
            elif kind == STOP:
                break
        # Every HEARTBEAT_S at least, however often the frontend's own pings arrive
        # (a ping landing just before each poll timeout must not silence us).
        if time.monotonic() - last_sent >= HEARTBEAT_S:
            sock.send(HEARTBEAT)
            last_sent = time.monotonic()
        if time.monotonic() - last_heard > frontend_timeout_s:
            print(f"clipper-nb worker {identity}: frontend silent for {frontend_timeout_s:.0f}s, exiting",
                  file=sys.stderr)
            break
    sock.close()
    return 0


def _run_batch(sock: zmq.Socket, predictor: artifact.Predictor, frames: list) -> None:
    batch_id = frames[1].bytes
    try:
        out_frames, meta = predict.run_frames(predictor, frames[2].bytes, frames[3].buffer)
    except Exception as e:  # noqa: BLE001 - a failing model fails its own queries only
        _send_json(sock, ERROR, batch_id, body={"error": artifact.format_exception(e),
                                                "traceback": traceback.format_exc(limit=6)})
        return
    sock.send_multipart([RESULT, batch_id, json.dumps(meta).encode(), *out_frames], copy=False)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m clipper_nb.containers.worker", description=__doc__.splitlines()[0])
    parser.add_argument("--frontend", required=True, help="ZeroMQ address of the frontend's ROUTER socket")
    parser.add_argument("--identity", required=True, help="this replica's name on the socket")
    parser.add_argument("--artifact", required=True, help="folder holding model.pkl and meta.json")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--frontend-timeout", type=float, default=10.0,
                        help="exit when the frontend is silent this many seconds")
    parser.add_argument("--threads", type=int, default=None,
                        help="intra-op threads of a CPU torch model (default: the library's own)")
    args = parser.parse_args(argv)
    _die_with_parent()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    return serve(args.frontend, args.identity, args.artifact, args.device, args.frontend_timeout, args.threads)


if __name__ == "__main__":
    sys.exit(main())

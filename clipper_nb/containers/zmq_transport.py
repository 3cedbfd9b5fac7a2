"""The frontend's side of the worker protocol: one ROUTER socket, many replicas.

:class:`Router` owns the socket and a receive loop that hands each message to the
:class:`Replica` it came from. A replica tracks its connection's state and at most
one batch in flight; :mod:`clipper_nb.containers.process_backend` starts the worker
processes and the abstraction layer's supervisor restarts them.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import time
from collections.abc import Callable
from typing import Any

import zmq
import zmq.asyncio

from clipper_nb.abstraction.backend import ReplicaLost
from clipper_nb.config import DEFAULT_HANG_TIMEOUT_S, DEFAULT_HEARTBEAT_TIMEOUT_S
from clipper_nb.errors import ModelError
from clipper_nb.wire import codec, predict
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

__all__ = ["Replica", "ReplicaLost", "Router"]

log = logging.getLogger("clipper_nb.containers.zmq_transport")


class Router:
    """A ROUTER socket dispatching by replica identity, bound to ``endpoint`` (an
    ``ipc://`` path, or a free port of ``tcp://HOST``); a peer sending a message over
    ``max_msg_bytes`` is disconnected (-1: no limit)."""

    def __init__(self, endpoint: str = "tcp://127.0.0.1", max_msg_bytes: int = -1) -> None:
        self.ctx = zmq.asyncio.Context()
        self.sock = self.ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        # Unknown identities (a replica we already gave up on) are dropped, not an error.
        self.sock.setsockopt(zmq.ROUTER_MANDATORY, 0)
        self.sock.setsockopt(zmq.MAXMSGSIZE, max_msg_bytes)  # before bind: the listener copies it
        if endpoint.startswith("tcp://"):
            self.address = f"{endpoint}:{self.sock.bind_to_random_port(endpoint)}"
        else:
            self.sock.bind(endpoint)
            self.address = endpoint
        self.replicas: dict[bytes, Replica] = {}
        self._tasks: list[asyncio.Task] = []

    def start(self) -> None:
        self._tasks = [asyncio.ensure_future(self._receive_loop()), asyncio.ensure_future(self._heartbeat_loop())]

    async def _receive_loop(self) -> None:
        while True:
            try:
                frames = await self.sock.recv_multipart(copy=False)
            except (zmq.ContextTerminated, asyncio.CancelledError):
                return
            except zmq.ZMQError as e:
                log.warning("router receive failed: %s", e)
                continue
            replica = self.replicas.get(frames[0].bytes)
            if replica is not None:
                try:
                    replica.on_message(frames[1:])
                except Exception:
                    log.exception("bad message from replica %s", replica.name)

    async def _heartbeat_loop(self) -> None:
        while True:
            await asyncio.sleep(HEARTBEAT_S)
            now = time.monotonic()
            for identity, replica in list(self.replicas.items()):
                if replica.state in ("idle", "busy"):
                    self.send(identity, [HEARTBEAT])
                replica.check_liveness(now)

    def send(self, identity: bytes, frames: list) -> None:
        try:
            self.sock.send_multipart([identity, *frames], copy=False, flags=zmq.NOBLOCK)
        except zmq.ZMQError as e:
            log.debug("send to %r failed: %s", identity, e)

    def register(self, replica: Replica) -> None:
        self.replicas[replica.identity] = replica

    def unregister(self, replica: Replica) -> None:
        # Only this replica: after a rollback a new one may already hold the same name.
        if self.replicas.get(replica.identity) is replica:
            del self.replicas[replica.identity]

    async def close(self) -> None:
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self.sock.close(0)
        self.ctx.term()


_batch_ids = itertools.count(1)


class Replica:
    """One worker process's connection: state, heartbeat and the batch in flight.

    States: ``starting`` -> ``idle`` <-> ``busy`` -> ``dead``. A replica is dead when
    its process exits, its heartbeats stop while idle, or a batch outlives
    ``hang_timeout_s``; the batch it held fails with :class:`ReplicaLost`.
    """

    def __init__(self, router: Router, name: str, *, identity: str | None = None,
                 heartbeat_timeout_s: float = DEFAULT_HEARTBEAT_TIMEOUT_S,
                 hang_timeout_s: float = DEFAULT_HANG_TIMEOUT_S,
                 on_dead: Callable[[Replica, str], None] | None = None) -> None:
        self.router = router
        #: shown in logs and errors; ``identity`` (the socket's, default ``name``) may carry a secret
        self.name = name
        self.identity = (identity or name).encode()
        self.state = "starting"
        self.heartbeat_timeout_s = heartbeat_timeout_s
        self.hang_timeout_s = hang_timeout_s
        self.on_dead = on_dead
        self.hello: asyncio.Future[dict] = asyncio.get_running_loop().create_future()
        self.info: dict[str, Any] = {}
        self.last_seen = time.monotonic()
        self.batch_started = 0.0
        self._pending: tuple[bytes, asyncio.Future] | None = None
        self.death_cause: str | None = None
        router.register(self)

    # -- messages from the worker
    def on_message(self, frames: list) -> None:
        self.last_seen = time.monotonic()
        kind = frames[0].bytes
        if kind == HEARTBEAT:
            return
        if kind == RESULT or kind == ERROR:
            self._on_reply(kind, frames)
        elif kind == HELLO:
            self.info = json.loads(frames[1].bytes)
            self.state = "idle"
            if not self.hello.done():
                self.hello.set_result(self.info)
        elif kind == LOAD_ERROR:
            body = json.loads(frames[1].bytes)
            if not self.hello.done():
                self.hello.set_exception(ModelError(body["error"], body.get("traceback")))
            self.mark_dead(f"cannot load the model: {body['error']}")

    def _on_reply(self, kind: bytes, frames: list) -> None:
        if self._pending is None or frames[1].bytes != self._pending[0]:
            return  # a reply to a batch we already gave up on
        _, fut = self._pending
        self._pending = None
        if self.state == "busy":
            self.state = "idle"
        if fut.done():
            return
        if kind == RESULT:
            meta = json.loads(frames[2].bytes)
            try:
                outputs = predict.decode_outputs(frames[3].bytes, frames[4].buffer)
            except Exception as e:  # noqa: BLE001
                fut.set_exception(ModelError(f"cannot decode the model's outputs: {e}"))
                return
            fut.set_result((outputs, meta))
        else:
            body = json.loads(frames[2].bytes)
            fut.set_exception(ModelError(f"the model failed: {body['error']}", body.get("traceback")))

    # -- calls from the batcher
    async def run_batch(self, items: list) -> tuple[list, dict]:
        """Send a batch and wait for ``(outputs, {"n", "compute_ms"})``."""
        if self.state != "idle":
            raise ReplicaLost(f"replica {self.name} is {self.state}")
        try:  # before the replica is marked busy: a batch that cannot be sent must not stall it
            frames = codec.encode_batch(items)
        except Exception as e:  # noqa: BLE001 - the batch's error, not the replica's
            raise ModelError(f"cannot send the batch to the model: {type(e).__name__}: {e}") from None
        batch_id = str(next(_batch_ids)).encode()
        fut = asyncio.get_running_loop().create_future()
        self._pending = (batch_id, fut)
        self.state = "busy"
        self.batch_started = time.monotonic()
        self.router.send(self.identity, [BATCH, batch_id, *frames])
        return await fut

    def check_liveness(self, now: float) -> None:
        if self.state == "idle" and now - self.last_seen > self.heartbeat_timeout_s:
            self.mark_dead(f"no heartbeat for {now - self.last_seen:.1f}s")
        elif self.state == "busy" and now - self.batch_started > self.hang_timeout_s:
            self.mark_dead(f"a batch ran longer than the hang timeout ({self.hang_timeout_s:.0f}s)")

    def mark_dead(self, cause: str) -> None:
        if self.state == "dead":
            return
        self.state = "dead"
        self.death_cause = cause
        self.router.unregister(self)
        if self._pending is not None:
            _, fut = self._pending
            self._pending = None
            if not fut.done():
                fut.set_exception(ReplicaLost(f"replica {self.name} died: {cause}"))
        if not self.hello.done():
            self.hello.set_exception(ReplicaLost(cause))
            self.hello.exception()  # retrieved: nobody may be waiting
        if self.on_dead is not None:
            self.on_dead(self, cause)

    def stop(self) -> None:
        if self.state in ("idle", "busy", "starting"):
            self.router.send(self.identity, [STOP])

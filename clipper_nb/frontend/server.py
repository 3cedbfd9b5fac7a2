"""The Engine behind a standalone Tornado application (what ``clipper-nb serve`` runs).

:class:`Server` runs in the foreground (:mod:`clipper_nb.frontend.serve`) or on a
background thread (``clipper-nb demo``, tests, notebooks without Jupyter) and always
stops every worker it started.

Slow and idle clients cannot starve the rest: a request's headers must arrive within
``IDLE_CONNECTION_TIMEOUT_S`` (a kept-alive connection may idle that long), a query
body within ``api.QUERY_BODY_TIMEOUT_S``, and at most ``max_connections`` connections
are open (never more than the open-file limit leaves room for): when full, the
connection that has waited longest for its request to arrive is closed to admit the
new one, so a crowd of half-sent requests never locks out a real one.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import resource
import secrets
import threading
import time
from typing import Any, Callable

import tornado.httpserver
import tornado.netutil
import tornado.httputil
import tornado.web

from clipper_nb.config import DEFAULT_MAX_CONNECTIONS, ClipperNB, check_knobs
from clipper_nb.errors import UserError
from clipper_nb.engine.facade import Engine
from clipper_nb.frontend import api
from clipper_nb.frontend.fastpath import LeanOrFull, access_rule
from clipper_nb.wire.ports import free_port

log = logging.getLogger("clipper_nb.frontend.server")

#: Deploy bodies carry whole models (token holders only); query bodies get ``max_query_mb``.
MAX_BODY_BYTES = api.MAX_DEPLOY_BYTES
#: How long a connection may wait for (the rest of) a request's headers, kept-alive ones included.
IDLE_CONNECTION_TIMEOUT_S = 60.0
#: File descriptors kept for everything but HTTP connections (workers, the store, logs).
FD_RESERVE = 256


def make_app(engine: Engine, token: str, public_predict: bool = False, prefix: str = "/",
             extra_routes: list | None = None, local_only: bool = False) -> tornado.web.Application:
    """A Tornado application serving the query, management and metrics APIs under ``prefix``.

    ``token`` is required (an empty one would mean no authentication); ``local_only``:
    the server listens on loopback only, so anonymous callers must name it so (``Host``)."""
    if not token or not token.strip():
        raise ValueError("the management token must not be empty")
    handlers = []
    for pattern, mixin in api.routes():
        cls = type(mixin.__name__, (mixin, api.TokenAuthHandler), {"access": mixin.access})
        handlers.append((prefix + pattern, cls))
    handlers.extend(extra_routes or [])
    handlers.append((prefix + ".*", type("NotFound", (api.NotFoundHandler, api.TokenAuthHandler),
                                         {"access": "predict"})))
    config = engine.config
    log_access = access_rule(config.access_log, config.slow_request_ms)
    return tornado.web.Application(handlers, clipper_engine=engine, clipper_token=token,
                                   clipper_public_predict=public_predict, compress_response=False,
                                   clipper_in_flight=api.InFlight(), clipper_log_access=log_access,
                                   log_function=handler_logger(log_access),
                                   clipper_max_query_bytes=int(config.max_query_mb * (1 << 20)),
                                   clipper_max_deploy_bytes=api.MAX_DEPLOY_BYTES, clipper_local_only=local_only)


def loop_factory(kind: str = "auto") -> Callable[[], asyncio.AbstractEventLoop]:
    """What makes the server's event loop (the ``event_loop`` knob): uvloop's when asked,
    or with ``auto`` when it is installed; the standard library's otherwise."""
    if kind != "asyncio":
        try:
            import uvloop
        except ImportError:
            if kind == "uvloop":
                raise UserError("event_loop='uvloop' needs uvloop", "pip install uvloop") from None
        else:
            return uvloop.new_event_loop
    return asyncio.new_event_loop


def handler_logger(log_access: Callable[[int, str, float], None]):
    """Tornado's ``log_function`` for the RequestHandler routes: the access rule of
    :func:`~clipper_nb.frontend.fastpath.access_rule` (a per-request line was 27,116 of
    27,134 lines of one run, and costs time per query)."""

    def log_request(handler: tornado.web.RequestHandler) -> None:
        log_access(handler.get_status(), handler._request_summary(), 1000.0 * handler.request.request_time())

    return log_request


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` listens on this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def connection_cap(wanted: int) -> int:
    """``max_connections``, lowered to what the open-file limit leaves after ``FD_RESERVE``."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return wanted
    return max(16, min(wanted, soft - max(FD_RESERVE, soft // 8)))


class _Arrival(tornado.httputil.HTTPMessageDelegate):
    """Passes a request through; tells the server when its body has fully arrived."""

    def __init__(self, inner: tornado.httputil.HTTPMessageDelegate, done: Any) -> None:
        self.inner, self._done = inner, done

    def headers_received(self, start_line: Any, headers: Any) -> Any:
        return self.inner.headers_received(start_line, headers)

    def data_received(self, chunk: bytes) -> Any:
        return self.inner.data_received(chunk)

    def finish(self) -> None:
        self._done()
        self.inner.finish()

    def on_connection_close(self) -> None:
        self._done()
        self.inner.on_connection_close()


class GuardedHTTPServer(tornado.httpserver.HTTPServer):
    """An ``HTTPServer`` with at most ``max_connections`` open; see the module docstring."""

    def initialize(self, *args: Any, max_connections: int = DEFAULT_MAX_CONNECTIONS, **kwargs: Any) -> None:
        super().initialize(*args, **kwargs)
        self.max_connections = max_connections
        self.evicted = 0  # connections closed to admit newer ones
        self.refused = 0  # connections closed at once: every open one was busy
        self._waiting: dict[Any, float] = {}  # a connection's stream -> since when it waits for a request
        self._closing: set[Any] = set()  # streams closed here, their connections not gone yet

    def handle_stream(self, stream: Any, address: tuple) -> None:
        if len(self._connections) - len(self._closing) >= self.max_connections and not self._evict_one():
            self.refused += 1
            stream.close()
            return
        self._waiting[stream] = time.monotonic()
        super().handle_stream(stream, address)

    def _evict_one(self) -> bool:
        stream = next(iter(self._waiting), None)  # the oldest: dicts keep insertion order
        if stream is None:
            return False
        del self._waiting[stream]
        self._closing.add(stream)
        stream.close()
        self.evicted += 1
        if self.evicted in (1, 10, 100) or self.evicted % 1000 == 0:
            log.warning("%d HTTP connections open (max_connections): %d closed so far that waited longest "
                        "for their request", len(self._connections), self.evicted)
        return True

    def start_request(self, server_conn: Any, request_conn: Any) -> Any:
        stream = server_conn.stream
        if stream not in self._closing:
            self._waiting.pop(stream, None)  # waiting anew: to the back of the line
            self._waiting[stream] = time.monotonic()
        route = LeanOrFull(self.request_callback.settings, request_conn,
                           lambda: super(GuardedHTTPServer, self).start_request(server_conn, request_conn))
        return _Arrival(route, lambda: self._waiting.pop(stream, None))

    def on_close(self, server_conn: Any) -> None:
        super().on_close(server_conn)
        self._waiting.pop(server_conn.stream, None)
        self._closing.discard(server_conn.stream)


class Server:
    """An Engine and its HTTP frontend on one event loop.

    ``knobs`` are :class:`~clipper_nb.config.ClipperNB` traits (``cache_mb=0``,
    ``fork_server=False``, ...); ``port=0`` picks a free port.

    >>> with Server(state_dir="/tmp/s", port=0).start_in_thread() as srv:   # doctest: +SKIP
    ...     client = clipper_nb.connect(srv.url, token=srv.token)
    """

    def __init__(self, state_dir: str, host: str = "127.0.0.1", port: int = 1337, token: str | None = None,
                 public_predict: bool = False, **knobs: Any) -> None:
        check_knobs(knobs)
        if token is not None and not token.strip():
            raise ValueError("an empty token would turn authentication off: pass token=None to generate one")
        self.host = host
        self.port = port or free_port(host)
        self.token = token if token is not None else secrets.token_hex(24)  # hex: safe to paste after --token
        self.config = ClipperNB(state_dir=state_dir, public_predict=public_predict, **knobs)
        self.engine: Engine | None = None
        self._http: tornado.httpserver.HTTPServer | None = None
        self._app: tornado.web.Application | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stopped: asyncio.Event | None = None

    @property
    def public_predict(self) -> bool:
        """Whether anonymous callers may use the query API (the ``public_predict`` knob)."""
        return self.config.public_predict

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        return f"http://{host}:{self.port}"

    async def start(self, wait_ready: bool = True) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopped = asyncio.Event()
        # The port first: a busy one fails here, before any worker starts.
        sockets = tornado.netutil.bind_sockets(self.port, self.host)
        try:
            self.engine = Engine(self.config)
        except BaseException:
            for sock in sockets:
                sock.close()
            raise
        await self.engine.start(wait=wait_ready)
        app = self._app = make_app(self.engine, self.token, self.public_predict, local_only=is_loopback(self.host))
        # Tornado's own body limit is the query limit: a route raises it for a token holder's deploy.
        self._http = GuardedHTTPServer(
            app, max_body_size=int(self.config.max_query_mb * (1 << 20)), xheaders=False,
            idle_connection_timeout=IDLE_CONNECTION_TIMEOUT_S, body_timeout=api.QUERY_BODY_TIMEOUT_S,
            max_connections=connection_cap(self.config.max_connections))
        self._http.add_sockets(sockets)

    async def stop(self) -> None:
        """Graceful: stop accepting connections, answer every request already in flight
        (at most ``shutdown_grace_s``), then close the connections and stop the workers."""
        if self._http is not None:
            self._http.stop()
            if self._app is not None:
                grace = self.config.shutdown_grace_s
                drained = await self._app.settings["clipper_in_flight"].drained(grace)
                if not drained:
                    log.warning("stopping with requests still in flight after %.0f s", grace)
            await self._http.close_all_connections()
            self._http = None
        if self.engine is not None:
            await self.engine.stop()
            self.engine = None
        if self._stopped is not None:
            self._stopped.set()

    async def wait_stopped(self) -> None:
        """Return once :meth:`stop` has run (the server must have started)."""
        assert self._stopped is not None, "start() first"
        await self._stopped.wait()

    async def serve_forever(self) -> None:
        await self.start(wait_ready=False)
        await self.wait_stopped()

    # ------------------------------------------------------------------ background thread
    def start_in_thread(self, timeout: float = 120.0) -> "Server":
        """Run on a daemon thread with its own loop; returns once the server listens."""
        started = threading.Event()
        error: list[BaseException] = []

        def run() -> None:
            loop = loop_factory(self.config.event_loop)()
            asyncio.set_event_loop(loop)

            async def main() -> None:
                try:
                    await self.start()
                except BaseException as e:  # noqa: BLE001 - reported to the starting thread
                    error.append(e)
                    started.set()
                    return
                started.set()
                await self.wait_stopped()

            loop.run_until_complete(main())
            loop.close()

        self._thread = threading.Thread(target=run, name="clipper-nb-server", daemon=True)
        self._thread.start()
        if not started.wait(timeout):
            raise TimeoutError("the clipper-nb server did not start")
        if error:
            raise error[0]
        return self

    def stop_thread(self, timeout: float = 30.0) -> None:
        if self._loop is None or self._thread is None:
            return
        fut = asyncio.run_coroutine_threadsafe(self.stop(), self._loop)
        fut.result(timeout)
        self._thread.join(timeout)

    def __enter__(self) -> "Server":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop_thread()



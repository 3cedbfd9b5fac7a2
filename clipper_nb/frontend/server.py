"""The Engine behind a standalone Tornado application (what ``clipper-nb serve`` runs).

:class:`Server` runs in the foreground (:mod:`clipper_nb.frontend.serve`) or on a
background thread (``clipper-nb demo``, tests, notebooks without Jupyter) and always
stops every worker it started.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import threading
from typing import Any

import tornado.httpserver
import tornado.web

from clipper_nb.config import ClipperNB, check_knobs
from clipper_nb.engine.facade import Engine
from clipper_nb.frontend import api
from clipper_nb.wire.ports import free_port

log = logging.getLogger("clipper_nb.frontend.server")

#: Deploy bodies carry whole models; query bodies are checked against a smaller limit.
MAX_BODY_BYTES = 2 << 30


def make_app(engine: Engine, token: str | None, public_predict: bool = False, prefix: str = "/",
             extra_routes: list | None = None) -> tornado.web.Application:
    """A Tornado application serving the query, management and metrics APIs under ``prefix``."""
    handlers = []
    for pattern, mixin in api.routes():
        cls = type(mixin.__name__, (mixin, api.TokenAuthHandler), {"access": mixin.access})
        handlers.append((prefix + pattern, cls))
    handlers.extend(extra_routes or [])
    handlers.append((prefix + ".*", type("NotFound", (api.NotFoundHandler, api.TokenAuthHandler),
                                         {"access": "predict"})))
    return tornado.web.Application(handlers, clipper_engine=engine, clipper_token=token,
                                   clipper_public_predict=public_predict, compress_response=False)


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
        self.host = host
        self.port = port or free_port(host)
        self.token = token if token is not None else secrets.token_hex(24)  # hex: safe to paste after --token
        self.config = ClipperNB(state_dir=state_dir, public_predict=public_predict, **knobs)
        self.engine: Engine | None = None
        self._http: tornado.httpserver.HTTPServer | None = None
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
        self.engine = Engine(self.config)
        await self.engine.start(wait=wait_ready)
        app = make_app(self.engine, self.token, self.public_predict)
        self._http = tornado.httpserver.HTTPServer(app, max_body_size=MAX_BODY_BYTES, xheaders=False)
        self._http.listen(self.port, self.host)

    async def stop(self) -> None:
        if self._http is not None:
            self._http.stop()
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
            loop = asyncio.new_event_loop()
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

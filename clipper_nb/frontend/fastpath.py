"""The query route's lean path: ``POST /<app>/predict`` answered below ``RequestHandler``.

Tornado's ``RequestHandler`` costs about 50 us of CPU per request (a bare handler that
parses a 784-float body took 160 us per request with it, 110 us without it), and a
cheap model's query is little more than that. :class:`LeanOrFull` answers the common
query straight from the HTTP connection: a script's ``POST /<app>/predict`` with a JSON
body of declared length, no query string, and either the right token or none on a
server whose query API is public. Every other request, a browser's (``Origin``,
``Referer``, ``Cookie``, ``Sec-Fetch-*``), a wrong or missing token, a chunked or
compressed body, another content type, takes the full path (``PredictHandler`` behind
``TokenAuthHandler``), which refuses it or answers it and says why. Both paths parse
with :func:`api.parse_object_body`, answer with :func:`api.answer_query`, describe errors
with :func:`error_body`, count the request for the graceful stop and log it alike.
"""

from __future__ import annotations

import asyncio
import email.utils
import hmac
import logging
import re
import time
from types import SimpleNamespace
from typing import Any, Callable

import tornado.httputil
from tornado.iostream import StreamClosedError
from tornado.log import access_log

from clipper_nb.errors import ClipperError
from clipper_nb.frontend import api
from clipper_nb.frontend.answers import error_body

__all__ = ["LeanOrFull", "access_rule"]

log = logging.getLogger("clipper_nb.frontend.fastpath")

_PREDICT = re.compile(r"/([^/%]+)/predict")


def access_rule(every_request: bool, slow_ms: float) -> Callable[[int, str, float], None]:
    """``log(status, summary, ms)``: one access-log line (``200 POST /digits/predict
    (127.0.0.1) 1.20ms``) for every request when asked, else for errors and slow ones only
    (the server's ``clipper_log_access`` setting, shared by both paths)."""

    def log_line(status: int, summary: str, ms: float) -> None:
        if every_request or status >= 400 or ms >= slow_ms:
            log_method = access_log.info if status < 400 else access_log.warning if status < 500 else access_log.error
            log_method("%d %s %.2fms", status, summary, ms)

    return log_line


def lean_query(start_line: Any, headers: Any, settings: dict) -> tuple[str, bool] | None:
    """``(app, trusted)`` when the full path would let this request through to
    ``PredictHandler`` and it is one the lean path takes; else None (take the full path)."""
    if start_line.method != "POST" or start_line.version != "HTTP/1.1":
        return None
    match = _PREDICT.fullmatch(start_line.path)  # a query string or an escaped name: full path
    if match is None or match.group(1) in api.RESERVED_APP_NAMES:
        return None
    if api._from_browser(headers) or "Transfer-Encoding" in headers or "Content-Encoding" in headers:
        return None
    length, host = headers.get("Content-Length", ""), headers.get("Host")
    if not length.isdigit() or int(length) > settings["clipper_max_query_bytes"] or host is None:
        return None
    if headers.get("Content-Type", "application/json").split(";")[0].strip().lower() != "application/json":
        return None
    given, token = api.token_in_headers(headers), settings["clipper_token"]
    trusted = given is not None and hmac.compare_digest(given.encode(), token.encode())
    if not trusted and (given is not None or not settings["clipper_public_predict"]):
        return None
    if not trusted and settings["clipper_local_only"] and not api._is_loopback_host(host):
        return None
    return match.group(1), trusted


class LeanOrFull(tornado.httputil.HTTPMessageDelegate):
    """One request: on the lean path when :func:`lean_query` allows, else handed to
    ``full()``, the application's own delegate (made only then)."""

    def __init__(self, settings: dict, request_conn: Any,
                 full: Callable[[], tornado.httputil.HTTPMessageDelegate]) -> None:
        self.settings, self.conn, self._full = settings, request_conn, full
        self.inner: tornado.httputil.HTTPMessageDelegate | None = None
        self._chunks: list[bytes] = []
        self._counted = False

    def headers_received(self, start_line: Any, headers: Any) -> Any:
        lean = lean_query(start_line, headers, self.settings)
        if lean is None:
            self.inner = self._full()
            return self.inner.headers_received(start_line, headers)
        self.app, self.trusted = lean
        self.path, self.arrival, self.started = start_line.path, asyncio.get_running_loop().time(), time.time()
        self.settings["clipper_in_flight"].enter()
        self._counted = True
        self.conn.set_max_body_size(self.settings["clipper_max_query_bytes"])
        self.conn.set_body_timeout(api.QUERY_BODY_TIMEOUT_S)
        return None

    def data_received(self, chunk: bytes) -> Any:
        if self.inner is not None:
            return self.inner.data_received(chunk)
        self._chunks.append(chunk)
        return None

    def finish(self) -> None:
        if self.inner is not None:
            self.inner.finish()
            return
        task = asyncio.ensure_future(self._answer())
        task.add_done_callback(_retrieve)

    def on_connection_close(self) -> None:
        if self.inner is not None:
            self.inner.on_connection_close()
        else:
            self._uncount()

    async def _answer(self) -> None:
        try:
            body = api.parse_object_body(b"".join(self._chunks), self.settings["clipper_max_query_bytes"])
            status, out = 200, api.dumps(await api.answer_query(self.settings["clipper_engine"], self.app, body,
                                                                self.arrival))
        except ClipperError as e:
            if e.status >= 500:
                log.warning("POST %s: %s", self.path, e.message)
            caller = SimpleNamespace(clipper_trusted_caller=self.trusted,
                                     request=SimpleNamespace(method="POST", path=self.path))
            status, out = e.status, api.dumps(error_body(caller, e))
        except Exception:  # noqa: BLE001 - our bug: a 500, the details in the log
            log.exception("POST %s failed", self.path)
            status, out = 500, api.dumps({"error": "internal server error", "cause": "see the server's log"})
        try:
            self._write(status, out)
        finally:
            self._uncount()
            remote_ip = getattr(getattr(self.conn, "context", None), "remote_ip", "?")
            self.settings["clipper_log_access"](status, f"POST {self.path} ({remote_ip})",
                                                1000.0 * (time.time() - self.started))

    def _write(self, status: int, body: bytes) -> None:
        headers = tornado.httputil.HTTPHeaders({"Content-Type": "application/json", "Content-Length": str(len(body)),
                                                "Date": _http_date()})
        start = tornado.httputil.ResponseStartLine("", status, tornado.httputil.responses.get(status, "Unknown"))
        try:
            self.conn.write_headers(start, headers, body)
            self.conn.finish()
        except StreamClosedError:
            pass  # the client left; its query was answered all the same

    def _uncount(self) -> None:
        if self._counted:
            self._counted = False
            self.settings["clipper_in_flight"].leave()


_date_cache: list = [0, ""]


def _http_date() -> str:
    """The ``Date`` header (RFC 9110 asks an origin server with a clock for one), once a second."""
    now = int(time.time())
    if _date_cache[0] != now:
        _date_cache[:] = [now, email.utils.formatdate(now, usegmt=True)]
    return _date_cache[1]


def _retrieve(task: asyncio.Task) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("the lean query path failed", exc_info=task.exception())

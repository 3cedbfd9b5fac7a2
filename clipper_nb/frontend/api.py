"""HTTP handlers: thin adapters from Tornado requests to Engine calls.

The handler classes here are mixins over no particular base, so the same code runs
behind two kinds of authentication:

* ``clipper-nb serve`` (``server.py``) combines them with :class:`TokenAuthHandler`;
* the Jupyter extension (``server_ext``) combines them with jupyter_server's
  ``JupyterHandler`` and wraps every method in ``@web.authenticated``/``@authorized``.

Each class says what it exposes with ``access``: ``"predict"`` (the query API, may be
opened to anonymous callers), ``"manage"`` (the management API), ``"metrics"`` or
``"open"`` (the V2 health probes: anyone, they say only live/ready).
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import logging
import math
import re
import time
import urllib.parse
from typing import Any

import numpy as np
import orjson
import tornado.log
import tornado.web

from clipper_nb.charts.series import public_snapshot
from clipper_nb.config import ClipperNB
from clipper_nb.errors import (
    BadInput,
    ClipperError,
    Forbidden,
    NotFound,
    PayloadTooLarge,
    Unauthorized,
    UnsupportedMediaType,
)
from clipper_nb.frontend import dashboard, v2
from clipper_nb.frontend.answers import arrival_of, error_body, handle_errors
from clipper_nb.wire.codec import to_jsonable

log = logging.getLogger("clipper_nb.frontend.api")

#: Largest query body accepted by default (the ``max_query_mb`` knob; deploys may be larger).
MAX_QUERY_BYTES = int(ClipperNB.class_traits()["max_query_mb"].default_value * (1 << 20))
#: Largest deploy body (the pickled model), accepted from token holders only.
MAX_DEPLOY_BYTES = 2 << 30
#: Deepest JSON accepted in a request body (``[[1]]`` is 2 deep).
MAX_JSON_DEPTH = 32
#: Longest selection context (``context`` or ``uid``): a user or session id, not a document.
MAX_CONTEXT_CHARS = 256
#: How long a query body may take to arrive; a deploy (authenticated) may take longer.
QUERY_BODY_TIMEOUT_S = 30.0
DEPLOY_BODY_TIMEOUT_S = 900.0
#: The body of a refused request is read and dropped up to this size; past it, the connection is closed.
DRAIN_BYTES = 64 << 10
#: Methods that change nothing: no cross-site checks.
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")
#: Bodies a browser sends cross-site without asking the server first (CORS "simple requests").
FORM_TYPES = ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data")
JSON_TYPES = ("application/json",)
#: What anonymous callers are told of a server-side failure (the details go to the log).
JSON_OPTS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS
RESERVED_APP_NAMES = {"api", "metrics", "v2", "dashboard", "static", "clipper"}


def dumps(obj: Any) -> bytes:
    try:
        return orjson.dumps(obj, option=JSON_OPTS)
    except TypeError:  # something orjson does not know (e.g. a numpy object array)
        return orjson.dumps(to_jsonable(obj), option=JSON_OPTS, default=str)


def parse_json_body(body: bytes | bytearray, max_bytes: int | None = None) -> Any:
    """A request body as JSON, or ``BadInput``/``PayloadTooLarge`` saying what is wrong."""
    if max_bytes is not None and len(body) > max_bytes:
        raise PayloadTooLarge(f"request body of {len(body)} bytes is over the limit of {max_bytes}")
    if not body:
        raise BadInput("the request body is empty", "send a JSON object")
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError as e:
        raise BadInput("malformed JSON in the request body", str(e)) from None
    if _nests_deeper_than(body, MAX_JSON_DEPTH):
        raise BadInput(f"the JSON body nests deeper than {MAX_JSON_DEPTH} levels")
    return obj


def parse_object_body(body: bytes | bytearray, max_bytes: int | None = None) -> dict:
    """A request body that must be a JSON object."""
    obj = parse_json_body(body, max_bytes)
    if not isinstance(obj, dict):
        raise BadInput(f"the request body must be a JSON object, got {type(obj).__name__}")
    return obj


async def answer_query(engine: Any, app: str, body: dict, arrival: float) -> dict:
    """``POST /<app>/predict``'s answer to ``{"input": x}`` or ``{"input_batch": [...]}``
    (the handler's and the lean path's, :mod:`clipper_nb.frontend.fastpath`)."""
    context = _context_of(body)
    if "input" in body:
        return await engine.predict(app, body["input"], context, arrival=arrival)
    if "input_batch" in body:
        return {"batch_predictions": await engine.predict_batch(app, body["input_batch"], context, arrival=arrival)}
    raise BadInput("the request needs 'input' (one query) or 'input_batch' (a list of queries)",
                   f"got keys: {', '.join(map(str, body)) or 'none'}")


class InFlight:
    """How many requests the server is answering: a graceful stop waits for zero."""

    def __init__(self) -> None:
        self.count = 0
        self._idle = asyncio.Event()
        self._idle.set()

    def enter(self) -> None:
        self.count += 1
        self._idle.clear()

    def leave(self) -> None:
        self.count -= 1
        if self.count <= 0:
            self.count = 0
            self._idle.set()

    async def drained(self, timeout: float) -> bool:
        """Whether every request finished within ``timeout`` seconds."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except asyncio.TimeoutError:
            return False
        return True


class ApiMixin:
    """Shared plumbing: JSON in and out, errors as ``{"error", "cause"}``.

    ``content_types``: what a POST/PUT/PATCH body may be declared as; ``body_limit``:
    ``"query"`` (``max_query_mb``) or ``"deploy"`` (large, token holders only)."""

    access = "manage"
    content_types = JSON_TYPES
    body_limit = "query"

    @property
    def engine(self):
        return self.settings["clipper_engine"]

    @property
    def max_query_bytes(self) -> int:
        """The ``max_query_mb`` knob in bytes."""
        config = getattr(self.engine, "config", None)
        return int(getattr(config, "max_query_mb", MAX_QUERY_BYTES / (1 << 20)) * (1 << 20))

    def write_json(self, obj: Any, status: int = 200) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.finish(dumps(obj))

    def load_json(self, max_bytes: int | None = None) -> Any:
        return parse_json_body(self.request.body, max_bytes)

    def load_object(self, max_bytes: int | None = None) -> dict:
        return parse_object_body(self.request.body, max_bytes)

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(exc, ClipperError):
            body = error_body(self, exc)
        elif status_code == 405:
            allowed = [m.upper() for m in ("get", "post", "put", "patch", "delete")
                       if getattr(type(self), m) is not getattr(tornado.web.RequestHandler, m)]
            body = {"error": f"{self.request.method} is not allowed on {self.request.path}",
                    "cause": f"use {' or '.join(allowed) or 'another route'}", "type": "MethodNotAllowed"}
        elif isinstance(exc, tornado.web.HTTPError):
            body = {"error": exc.log_message or self._reason, "cause": f"HTTP {status_code}"}
        else:
            trusted = getattr(self, "clipper_trusted_caller", not getattr(self, "public", False))
            body = {"error": "internal server error",
                    "cause": (type(exc).__name__ if exc else self._reason) if trusted else "see the server's log"}
        self.set_header("Content-Type", "application/json")
        self.finish(dumps(body))

    def send_error_for(self, exc: ClipperError) -> None:
        self.write_json(error_body(self, exc), exc.status)


_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"')
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")


def _nests_deeper_than(body: bytes | bytearray, limit: int) -> bool:
    """Whether valid JSON nests deeper than ``limit``, at C speed: a body with at most
    ``limit`` opening brackets cannot (the usual query: one object, one list); else strings
    are removed and the brackets counted."""
    if body.count(b"[") + body.count(b"{") <= limit:
        return False
    brackets = _JSON_STRING.sub(b"", body).translate(None, _NOT_BRACKETS)
    opens = np.frombuffer(brackets, dtype=np.uint8)
    return int(np.cumsum(np.where((opens == ord("[")) | (opens == ord("{")), 1, -1)).max()) > limit


def _context_of(body: dict) -> str | None:
    """The selection context (``context``, or Clipper's ``uid``): a short printable id, or None."""
    context = body.get("context", body.get("uid"))
    if context is None:
        return None
    if isinstance(context, bool) or not isinstance(context, (str, int, float)):
        raise BadInput("'context' must be a string or a number", f"got {type(context).__name__}")
    context = str(context)
    if len(context) > MAX_CONTEXT_CHARS:
        raise BadInput(f"'context' has {len(context)} characters; the limit is {MAX_CONTEXT_CHARS}",
                       "send a user or session id")
    if not context.isprintable():
        raise BadInput("'context' may hold printable characters only", "no control characters or line breaks")
    return context


# ====================================================================== query API


class PredictHandler(ApiMixin):
    """``POST /<app>/predict`` with ``{"input": x}`` or ``{"input_batch": [...]}``."""

    access = "predict"

    @handle_errors
    async def post(self, app: str) -> None:
        body = self.load_object(self.max_query_bytes)
        self.write_json(await answer_query(self.engine, app, body, arrival_of(self.request)))


class UpdateHandler(ApiMixin):
    """``POST /<app>/update`` with ``{"input": x, "label": y, "uid"?}`` (feedback)."""

    access = "predict"

    @handle_errors
    async def post(self, app: str) -> None:
        body = self.load_object(self.max_query_bytes)
        missing = [k for k in ("input", "label") if k not in body]
        if missing:
            raise BadInput(f"feedback needs {' and '.join(repr(m) for m in missing)}",
                           'send {"input": x, "label": y}')
        context = _context_of(body)
        self.write_json(await self.engine.feedback(app, body["input"], body["label"], context))


# ====================================================================== management API


class HealthHandler(ApiMixin):
    access = "manage"

    async def get(self) -> None:
        e = self.engine
        replicas = e.status()
        self.write_json({"status": "ok", "ready": e.ready.is_set(), "apps": len(e.apps), "models": len(e.models),
                         "replicas": len(replicas),
                         "replicas_up": sum(1 for r in replicas if r["state"] in ("idle", "busy")),
                         "time": time.time()})


class AppsHandler(ApiMixin):
    @handle_errors
    async def get(self) -> None:
        self.write_json({"apps": self.engine.list_apps()})

    @handle_errors
    async def post(self) -> None:
        body = self.load_object()
        name = body.pop("name", None)
        if not name:
            raise BadInput("an application needs a 'name'")
        if not isinstance(name, str):
            raise BadInput(f"an application's name is a string, got {type(name).__name__}")
        if name in RESERVED_APP_NAMES:
            raise BadInput(f"{name!r} is reserved", f"reserved names: {', '.join(sorted(RESERVED_APP_NAMES))}")
        try:
            self.write_json(await self.engine.register_app(name, **body), 201)
        except TypeError as e:
            raise BadInput(f"invalid application field: {e}") from None


class AppHandler(ApiMixin):
    @handle_errors
    async def get(self, name: str) -> None:
        self.write_json(self.engine.describe_app(name))

    @handle_errors
    async def patch(self, name: str) -> None:
        changes = self.load_object()
        fixed = sorted({"name", "self"} & set(changes))  # not settings (and they would collide with arguments)
        if fixed:
            raise BadInput(f"{', '.join(map(repr, fixed))} cannot be changed",
                           "an application keeps its name: create another one to rename it")
        self.write_json(await self.engine.update_app(name, **changes))

    @handle_errors
    async def delete(self, name: str) -> None:
        await self.engine.delete_app(name)
        self.write_json({"deleted": name})


class LinksHandler(ApiMixin):
    @handle_errors
    async def post(self, app: str) -> None:
        model = self.load_object().get("model")
        if not isinstance(model, str):
            raise BadInput("send {\"model\": NAME} to link a model")
        self.write_json(await self.engine.link(app, model))


class LinkHandler(ApiMixin):
    @handle_errors
    async def delete(self, app: str, model: str) -> None:
        self.write_json(await self.engine.unlink(app, model))


class SelectionHandler(ApiMixin):
    @handle_errors
    async def get(self, app: str) -> None:
        self.write_json(self.engine.selection(app, self.get_query_argument("context", None)))


DEPLOY_OPTIONS = {"version", "replicas", "device", "batch_size", "max_batch_size", "batch_delay_ms", "app",
                  "slo_ms", "input_type", "default_output", "backend", "resources"}


class ModelsHandler(ApiMixin):
    body_limit = "deploy"  # POST carries the pickled model
    content_types = ("application/octet-stream",)

    @handle_errors
    async def get(self) -> None:
        self.write_json({"models": self.engine.list_models()})

    @handle_errors
    async def post(self) -> None:
        """Deploy: the body is the pickled artifact, ``X-Clipper-Deploy`` a JSON header
        ``{"name", "meta": {...}, "replicas", ...}``."""
        header = self.request.headers.get("X-Clipper-Deploy")
        if not header:
            raise BadInput("a deploy needs the X-Clipper-Deploy header",
                           "deploy with clipper_nb.connect(...).deploy(model, name)")
        try:
            spec = orjson.loads(header)
        except orjson.JSONDecodeError as e:
            raise BadInput("malformed JSON in X-Clipper-Deploy", str(e)) from None
        if not isinstance(spec, dict) or "name" not in spec or not isinstance(spec.get("meta"), dict):
            raise BadInput("X-Clipper-Deploy must hold {\"name\": ..., \"meta\": {...}}")
        unknown = set(spec) - DEPLOY_OPTIONS - {"name", "meta"}
        if unknown:
            raise BadInput(f"unknown deploy option(s): {', '.join(sorted(unknown))}",
                           f"valid: {', '.join(sorted(DEPLOY_OPTIONS))}")
        if not self.request.body:
            raise BadInput("the deploy body (the pickled model) is empty")
        if spec.get("app") in RESERVED_APP_NAMES:
            raise BadInput(f"{spec['app']!r} is reserved as an application name")
        options = {k: spec[k] for k in DEPLOY_OPTIONS if k in spec}
        self.write_json(await self.engine.deploy(spec["name"], self.request.body, spec["meta"], **options), 201)


class ModelHandler(ApiMixin):
    @handle_errors
    async def get(self, name: str) -> None:
        self.write_json(self.engine.describe_model(name))

    @handle_errors
    async def patch(self, name: str) -> None:
        body = self.load_object()
        if set(body) != {"replicas"}:
            raise BadInput("PATCH /api/models/<name> takes {\"replicas\": N}",
                           "use /rollback to change the version")
        self.write_json(await self.engine.scale(name, body["replicas"]))

    @handle_errors
    async def delete(self, name: str) -> None:
        await self.engine.undeploy(name)
        self.write_json({"undeployed": name})


class RollbackHandler(ApiMixin):
    @handle_errors
    async def post(self, name: str) -> None:
        version = self.load_object().get("version")
        if version is None:
            raise BadInput("send {\"version\": V} to roll back")
        self.write_json(await self.engine.rollback(name, str(version)))


class LogsHandler(ApiMixin):
    """``GET /api/models/<name>/logs?tail=BYTES``: the end of each replica's log (token holders)."""

    @handle_errors
    async def get(self, name: str) -> None:
        try:
            tail = int(self.get_query_argument("tail", "20000"))
        except ValueError:
            raise BadInput("tail must be a number of bytes") from None
        self.write_json(await self.engine.model_logs(name, max(0, min(tail, 1 << 20))))


class StatusHandler(ApiMixin):
    @handle_errors
    async def get(self) -> None:
        self.write_json({"replicas": self.engine.status(), "ready": self.engine.ready.is_set()})


class MetricsJSONHandler(ApiMixin):
    access = "metrics"

    @handle_errors
    async def get(self) -> None:
        since = self.get_query_argument("since", None)
        try:
            since_f = float(since) if since is not None else None
        except ValueError:
            raise BadInput(f"'since' must be a Unix time in seconds, got {since!r}") from None
        # Replicas by their public name: the metrics key them by socket identity, whose
        # last part is a secret.
        self.write_json(public_snapshot(self.engine.metrics.snapshot(since_f)))


class DashboardPageHandler(ApiMixin):
    """``GET /dashboard``: the page for every application (HTML, BokehJS inline).
    Opened once as ``/dashboard?token=T``, it logs the browser in (the one place a
    token is accepted in a URL)."""

    access = "metrics"
    token_in_query = True

    async def get(self) -> None:
        spec = dashboard.page_spec(self.engine.list_apps(), self.engine.status())
        page = dashboard.cached_page(spec)
        if page is None:
            # Building and serialising the document takes CPU: keep it off the server's loop.
            page = await asyncio.to_thread(dashboard.render_page, spec)
            dashboard.remember_page(spec, page)
        self.set_header("Content-Type", "text/html; charset=utf-8")
        self.set_header("Cache-Control", "no-store")  # the layout changes with the apps
        self.finish(page)


class DashboardTicksHandler(ApiMixin):
    """``GET api/dashboard/ticks?cursor=<json>&tz=<s>``: the page's next points, computed
    here by the same tick the notebook widgets run (see :func:`dashboard.ticks`).

    ``cursor`` maps app names to the cursors the previous answer gave (``{}`` for an app
    not streamed yet; absent: every app from scratch); ``tz`` shifts ``x`` by the
    browser's UTC offset in seconds (Bokeh's datetime axes show UTC)."""

    access = "metrics"

    @handle_errors
    async def get(self) -> None:
        try:
            cursors = dashboard.cursors_from_json(self.get_query_argument("cursor", None))
        except ValueError as e:
            raise BadInput("malformed dashboard cursor", str(e)) from None
        tz = self.get_query_argument("tz", "0")
        try:
            tz_s = float(tz)
        except ValueError:
            tz_s = math.nan
        if not -86_400 <= tz_s <= 86_400:  # also refuses NaN
            raise BadInput(f"'tz' must be a UTC offset in seconds, got {tz!r}")
        engine = self.engine
        snapshot = engine.metrics.snapshot(dashboard.snapshot_since(cursors))
        self.set_header("Cache-Control", "no-store")
        self.write_json(dashboard.ticks(snapshot, engine.list_apps(), engine.status(), cursors, tz_s))


class PrometheusHandler(ApiMixin):
    access = "metrics"

    async def get(self) -> None:
        self.set_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
        self.finish(self.engine.metrics.prometheus_text())


class NotFoundHandler(ApiMixin):
    """Anything else under the prefix: a JSON 404 naming the routes that exist."""

    access = "predict"

    def prepare(self) -> None:  # every method
        super().prepare() if hasattr(super(), "prepare") else None
        raise NotFound(f"no route for {self.request.method} {self.request.path}",
                       "query with POST /<app>/predict; manage under /api/")


def routes() -> list[tuple[str, type]]:
    """``(path regex relative to the prefix, handler mixin)`` for every endpoint."""
    name = r"([^/]+)"
    return [
        (rf"{name}/predict", PredictHandler),
        (rf"{name}/update", UpdateHandler),
        (r"api/health", HealthHandler),
        (r"api/apps", AppsHandler),
        (rf"api/apps/{name}", AppHandler),
        (rf"api/apps/{name}/links", LinksHandler),
        (rf"api/apps/{name}/links/{name}", LinkHandler),
        (rf"api/apps/{name}/selection", SelectionHandler),
        (r"api/models", ModelsHandler),
        (rf"api/models/{name}", ModelHandler),
        (rf"api/models/{name}/rollback", RollbackHandler),
        (rf"api/models/{name}/logs", LogsHandler),
        (r"api/status", StatusHandler),
        (r"api/metrics", MetricsJSONHandler),
        (r"api/dashboard/ticks", DashboardTicksHandler),
        (r"metrics", PrometheusHandler),
        (r"dashboard", DashboardPageHandler),
        *v2.routes(),  # the Open Inference Protocol (KServe V2): frontend/v2.py
    ]


# ====================================================================== standalone auth


def _login_cookie_value(token: str) -> str:
    """A value derived from the token (not the token: a cookie is not a bearer token)."""
    import hashlib

    return hmac.new(token.encode(), b"clipper-nb browser login", hashlib.sha256).hexdigest()


def redact_uri(uri: str, token: str | None = None) -> str:
    """``uri`` fit for a log line: every ``token`` query value, and the token itself, replaced."""
    path, sep, query = uri.partition("?")
    if sep:
        pairs = urllib.parse.parse_qsl(query, keep_blank_values=True)
        if any(k.strip().lower() == "token" for k, _ in pairs):
            query = urllib.parse.urlencode([(k, "REDACTED" if k.strip().lower() == "token" else v)
                                            for k, v in pairs])
    out = path + sep + query
    if token:
        for form in {token, urllib.parse.quote(token, safe=""), urllib.parse.quote_plus(token)}:
            out = out.replace(form, "REDACTED")
    return out


def _same_origin(origin: str, host: str) -> bool:
    """Whether a browser's ``Origin`` names the server it sent the request to (``Host``)."""
    parts = urllib.parse.urlsplit(origin)
    default = {"http": ":80", "https": ":443"}.get(parts.scheme)
    if default is None or not parts.netloc:
        return False  # "null" (sandboxed pages, files) or not a web origin
    return parts.netloc.lower().removesuffix(default) == host.lower().removesuffix(default)


def _is_loopback_host(host: str) -> bool:
    name = urllib.parse.urlsplit(f"//{host}").hostname or ""
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def _from_browser(headers: Any) -> bool:
    """Whether a request bears what browsers add to every cross-origin POST (and scripts rarely do)."""
    return any(name in headers for name in ("Origin", "Referer", "Cookie")) or any(
        name.lower().startswith("sec-fetch-") for name in headers)


def token_in_headers(headers: Any) -> str | None:
    """The token of ``Authorization: token T`` (or ``Bearer T``), else None."""
    scheme, _, value = headers.get("Authorization", "").partition(" ")
    if scheme.lower() in ("token", "bearer") and value.strip():
        return value.strip()
    return None


def _body_length(headers: Any) -> int | None:
    """The declared body size: ``Content-Length``, -1 for a chunked body, None for no body."""
    if "chunked" in headers.get("Transfer-Encoding", "").lower():
        return -1
    length = headers.get("Content-Length")
    if length is None:
        return None
    try:
        return int(length)
    except ValueError:
        raise BadInput(f"malformed Content-Length {length!r}") from None


@tornado.web.stream_request_body
class TokenAuthHandler(tornado.web.RequestHandler):
    """``clipper-nb serve``'s base: authentication and the limits that come before any work.

    * A token in ``Authorization: token T`` (or ``Bearer T``) guards everything but the
      query API when ``public_predict`` is set, and the V2 health probes. A URL carries
      it only to open the dashboard (``GET /dashboard?token=T``, which logs the browser
      in with a cookie good for reads); logs show URLs with the token redacted.
    * Bodies are streamed, not buffered by Tornado: a request is authenticated and its
      ``Content-Length`` checked against its route's limit before one byte of the body
      is read, and the body of a refused request is never kept.
    * State-changing requests from browsers must be same-origin: a foreign ``Origin`` or
      ``Referer``, or ``Sec-Fetch-Site: cross-site``, is refused; a browser's body must
      be declared as the route's type (JSON), never as one a page may send cross-site
      unasked (text/plain, url-encoded, multipart: 415). A script (no ``Origin``,
      ``Referer``, ``Cookie`` or ``Sec-Fetch-*``) may leave the type out or send curl's
      default. On a loopback-only server an anonymous caller must also name it by a
      loopback ``Host`` (DNS rebinding).
    * Anonymous callers' errors tell them their own mistake only (:func:`error_body`).
    """

    access = "manage"
    #: set by prepare(): the caller holds the token (or the browser login); errors tell them everything
    clipper_trusted_caller = False

    def check_xsrf_cookie(self) -> None:  # token-authenticated JSON API: cookies authenticate reads only
        pass

    def prepare(self) -> None:
        in_flight = self.settings.get("clipper_in_flight")
        if in_flight is not None and not getattr(self, "_counted", False):
            self._counted = True
            in_flight.enter()
        try:
            self._authenticate()
            if self.request.method not in SAFE_METHODS:
                self._refuse_cross_site()
            self._limit_body()
        except ClipperError:
            self._drop_body()
            raise

    def on_finish(self) -> None:
        self._uncount()

    def on_connection_close(self) -> None:
        self._uncount()
        super().on_connection_close()

    def _uncount(self) -> None:
        if getattr(self, "_counted", False):
            self._counted = False
            self.settings["clipper_in_flight"].leave()

    def data_received(self, chunk: bytes) -> None:
        self.request.body += chunk  # a bytearray since prepare(); the connection enforces the limit

    def _authenticate(self) -> None:
        token = self.settings.get("clipper_token")
        if not token:  # never "no authentication": make_app refuses this too
            raise Forbidden("this server has no token configured", "start it with a token")
        given = self._given_token()
        if given is not None and hmac.compare_digest(given.encode(), token.encode()):
            self.clipper_trusted_caller = True
            if getattr(self, "token_in_query", False) and self.get_query_argument("token", None) is not None:
                # A browser opened the dashboard with ?token=...: log it in, as Jupyter
                # does, so the page's own requests and reloads need no token.
                self.set_cookie(self._login_cookie_name(), _login_cookie_value(token), httponly=True,
                                samesite="Strict")
            return
        if self.access == "open":  # V2 liveness/readiness probes: they tell nothing else
            return
        if self.access == "predict" and self.settings.get("clipper_public_predict"):
            return
        if given is None and self._login_cookie_ok(token):
            self.clipper_trusted_caller = True
            return
        if given is not None:
            raise Forbidden("the token is wrong", "use the token clipper-nb serve printed or was given")
        if "token" in self.request.query_arguments:
            raise Unauthorized("a token in the URL is accepted only to open the dashboard (GET /dashboard?token=...)",
                               "send the header 'Authorization: token <TOKEN>': URLs end up in logs and histories")
        raise Unauthorized("this endpoint needs a token",
                           "send the header 'Authorization: token <TOKEN>' (printed by clipper-nb serve)")

    def _given_token(self) -> str | None:
        given = token_in_headers(self.request.headers)
        if given is not None:
            return given
        if getattr(self, "token_in_query", False) and self.request.method in ("GET", "HEAD"):
            return self.get_query_argument("token", None)
        return None

    def _login_cookie_name(self) -> str:
        # Cookies ignore ports: one name per port keeps two local servers apart.
        port = "".join(ch for ch in self.request.host.rpartition(":")[2] if ch.isalnum())
        return f"clipper-nb-login-{port or 'default'}"

    def _login_cookie_ok(self, token: str) -> bool:
        """The browser login cookie stands in for the token on reads only (GET/HEAD):
        cookies ride along on cross-site requests, and no read changes anything."""
        if self.request.method not in ("GET", "HEAD"):
            return False
        cookie = self.get_cookie(self._login_cookie_name())
        return cookie is not None and hmac.compare_digest(cookie.encode(), _login_cookie_value(token).encode())

    def _refuse_cross_site(self) -> None:
        headers, host = self.request.headers, self.request.host
        page = headers.get("Origin") or headers.get("Referer")
        if headers.get("Sec-Fetch-Site", "").lower() == "cross-site" or (
                page is not None and not _same_origin(page, host)):
            raise Forbidden("cross-site request refused",
                            f"this request came from a page of {page or 'another site'}, not from {host}")
        if (not self.clipper_trusted_caller and self.settings.get("clipper_local_only")
                and not _is_loopback_host(host)):
            raise Forbidden(f"Host {host!r} is not this server's name",
                            "this server listens on loopback only: call it as 127.0.0.1 or localhost")
        if _body_length(headers):
            self._check_content_type(headers)

    def _check_content_type(self, headers: Any) -> None:
        """A browser (it sends ``Origin``, ``Sec-Fetch-*``, ...) must declare a type the
        route takes (JSON): the types a page may send cross-site without asking are
        refused. A script may leave it undeclared, or send curl's default."""
        declared = headers.get("Content-Type")
        media = declared.split(";")[0].strip().lower() if declared else None
        allowed = getattr(self, "content_types", None)
        if media is not None and allowed is not None:
            ok = media in allowed or ("application/json" in allowed and media.endswith("+json"))
        else:
            ok = media is not None and media not in FORM_TYPES  # a route that does not say
        if not ok and not _from_browser(headers) and (media is None or media in FORM_TYPES):
            ok = True  # e.g. curl -d: no browser sent it, so no page made it
        if not ok:
            want = allowed[0] if allowed else "application/json"
            raise UnsupportedMediaType(f"a body of type {media or '(undeclared)'} is refused here",
                                       f"send it with Content-Type: {want}")

    def _limit_body(self) -> None:
        deploy = getattr(self, "body_limit", "query") == "deploy" and self.clipper_trusted_caller
        limit = (self.settings.get("clipper_max_deploy_bytes", MAX_DEPLOY_BYTES) if deploy
                 else self.settings.get("clipper_max_query_bytes", MAX_QUERY_BYTES))
        length = _body_length(self.request.headers)
        if length is not None and length > limit:
            raise PayloadTooLarge(f"a request body of {length} bytes is over the limit of {limit}",
                                  "deploys may be larger" if not deploy else None)
        conn = self.request.connection
        if hasattr(conn, "set_max_body_size"):
            conn.set_max_body_size(limit)  # chunked bodies too: counted as they come
            conn.set_body_timeout(DEPLOY_BODY_TIMEOUT_S if deploy else QUERY_BODY_TIMEOUT_S)
        self.request.body = bytearray()

    def _drop_body(self) -> None:
        """A refused request's body is not read into memory: a small one is drained, a big
        or chunked one ends the connection after the answer."""
        self.set_header("Connection", "close")
        try:
            length = _body_length(self.request.headers)
        except BadInput:
            length = -1
        conn = self.request.connection
        if length is not None and (length < 0 or length > DRAIN_BYTES) and hasattr(conn, "set_max_body_size"):
            conn.set_max_body_size(0)

    def _request_summary(self) -> str:  # what the access log and error logs show
        uri = redact_uri(self.request.uri or "", self.settings.get("clipper_token"))
        return f"{self.request.method} {uri} ({self.request.remote_ip})"

    def _handle_request_exception(self, e: BaseException) -> None:
        if isinstance(e, ClipperError):  # raised in prepare(): answer it, don't log a traceback
            if not self._finished:
                self.send_error_for(e)  # type: ignore[attr-defined]
            return
        super()._handle_request_exception(e)

    def log_exception(self, typ, value, tb) -> None:
        if isinstance(value, ClipperError):
            return
        if isinstance(value, tornado.web.HTTPError):
            super().log_exception(typ, value, tb)  # the summary line only
            return
        # Tornado's own adds the request's repr, whose URI may hold a token.
        tornado.log.app_log.error("Uncaught exception %s", self._request_summary(), exc_info=(typ, value, tb))

"""HTTP handlers: thin adapters from Tornado requests to Engine calls.

The handler classes here are mixins over no particular base, so the same code runs
behind two kinds of authentication:

* ``clipper-nb serve`` (``server.py``) combines them with :class:`TokenAuthHandler`;
* the Jupyter extension (``server_ext``) combines them with jupyter_server's
  ``JupyterHandler`` and wraps every method in ``@web.authenticated``/``@authorized``.

Each class says what it exposes with ``access``: ``"predict"`` (the query API, may be
opened to anonymous callers), ``"manage"`` (the management API) or ``"metrics"``.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import math
import time
from typing import Any

import orjson
import tornado.web

from clipper_nb.charts.series import public_snapshot
from clipper_nb.errors import BadInput, ClipperError, Forbidden, NotFound, PayloadTooLarge, Unauthorized
from clipper_nb.frontend import dashboard
from clipper_nb.wire.codec import to_jsonable

log = logging.getLogger("clipper_nb.frontend.api")

#: Largest query body accepted (deploys may be larger: they carry the artifact).
MAX_QUERY_BYTES = 16 << 20
JSON_OPTS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS
RESERVED_APP_NAMES = {"api", "metrics", "v2", "dashboard", "static", "clipper"}


def dumps(obj: Any) -> bytes:
    try:
        return orjson.dumps(obj, option=JSON_OPTS)
    except TypeError:  # something orjson does not know (e.g. a numpy object array)
        return orjson.dumps(to_jsonable(obj), option=JSON_OPTS, default=str)


class ApiMixin:
    """Shared plumbing: JSON in and out, errors as ``{"error", "cause"}``."""

    access = "manage"

    @property
    def engine(self):
        return self.settings["clipper_engine"]

    def write_json(self, obj: Any, status: int = 200) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.finish(dumps(obj))

    def load_json(self, max_bytes: int | None = None) -> Any:
        body = self.request.body
        if max_bytes is not None and len(body) > max_bytes:
            raise PayloadTooLarge(f"request body of {len(body)} bytes is over the limit of {max_bytes}")
        if not body:
            raise BadInput("the request body is empty", "send a JSON object")
        try:
            return orjson.loads(body)
        except orjson.JSONDecodeError as e:
            raise BadInput("malformed JSON in the request body", str(e)) from None

    def load_object(self, max_bytes: int | None = None) -> dict:
        obj = self.load_json(max_bytes)
        if not isinstance(obj, dict):
            raise BadInput(f"the request body must be a JSON object, got {type(obj).__name__}")
        return obj

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(exc, ClipperError):
            body = exc.to_json()
        elif isinstance(exc, tornado.web.HTTPError):
            body = {"error": exc.log_message or self._reason, "cause": f"HTTP {status_code}"}
        else:
            body = {"error": "internal server error", "cause": type(exc).__name__ if exc else self._reason}
        self.set_header("Content-Type", "application/json")
        self.finish(dumps(body))

    def send_error_for(self, exc: ClipperError) -> None:
        self.write_json(exc.to_json(), exc.status)


def _handle_errors(method):
    """Turn ``ClipperError`` into its JSON answer; anything else is our bug (a 500)."""
    import functools

    @functools.wraps(method)
    async def wrapper(self, *args, **kwargs):
        try:
            return await method(self, *args, **kwargs)
        except ClipperError as e:
            if e.status >= 500:
                log.warning("%s %s: %s", self.request.method, self.request.path, e.message)
            self.send_error_for(e)

    return wrapper


# ====================================================================== query API


class PredictHandler(ApiMixin):
    """``POST /<app>/predict`` with ``{"input": x}`` or ``{"input_batch": [...]}``."""

    access = "predict"

    @_handle_errors
    async def post(self, app: str) -> None:
        body = self.load_object(MAX_QUERY_BYTES)
        context = body.get("context", body.get("uid"))
        if context is not None:
            context = str(context)
        if "input" in body:
            self.write_json(await self.engine.predict(app, body["input"], context))
        elif "input_batch" in body:
            rows = await self.engine.predict_batch(app, body["input_batch"], context)
            self.write_json({"batch_predictions": rows})
        else:
            raise BadInput("the request needs 'input' (one query) or 'input_batch' (a list of queries)",
                           f"got keys: {', '.join(map(str, body)) or 'none'}")


class UpdateHandler(ApiMixin):
    """``POST /<app>/update`` with ``{"input": x, "label": y, "uid"?}`` (feedback)."""

    access = "predict"

    @_handle_errors
    async def post(self, app: str) -> None:
        body = self.load_object(MAX_QUERY_BYTES)
        missing = [k for k in ("input", "label") if k not in body]
        if missing:
            raise BadInput(f"feedback needs {' and '.join(repr(m) for m in missing)}",
                           'send {"input": x, "label": y}')
        context = body.get("context", body.get("uid"))
        self.write_json(await self.engine.feedback(app, body["input"], body["label"],
                                                   None if context is None else str(context)))


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
    @_handle_errors
    async def get(self) -> None:
        self.write_json({"apps": self.engine.list_apps()})

    @_handle_errors
    async def post(self) -> None:
        body = self.load_object()
        name = body.pop("name", None)
        if not name:
            raise BadInput("an application needs a 'name'")
        if name in RESERVED_APP_NAMES:
            raise BadInput(f"{name!r} is reserved", f"reserved names: {', '.join(sorted(RESERVED_APP_NAMES))}")
        try:
            self.write_json(await self.engine.register_app(name, **body), 201)
        except TypeError as e:
            raise BadInput(f"invalid application field: {e}") from None


class AppHandler(ApiMixin):
    @_handle_errors
    async def get(self, name: str) -> None:
        self.write_json(self.engine.describe_app(name))

    @_handle_errors
    async def patch(self, name: str) -> None:
        self.write_json(await self.engine.update_app(name, **self.load_object()))

    @_handle_errors
    async def delete(self, name: str) -> None:
        await self.engine.delete_app(name)
        self.write_json({"deleted": name})


class LinksHandler(ApiMixin):
    @_handle_errors
    async def post(self, app: str) -> None:
        model = self.load_object().get("model")
        if not isinstance(model, str):
            raise BadInput("send {\"model\": NAME} to link a model")
        self.write_json(await self.engine.link(app, model))


class LinkHandler(ApiMixin):
    @_handle_errors
    async def delete(self, app: str, model: str) -> None:
        self.write_json(await self.engine.unlink(app, model))


class SelectionHandler(ApiMixin):
    @_handle_errors
    async def get(self, app: str) -> None:
        self.write_json(self.engine.selection(app, self.get_query_argument("context", None)))


DEPLOY_OPTIONS = {"version", "replicas", "device", "batch_size", "max_batch_size", "batch_delay_ms", "app",
                  "slo_ms", "input_type", "default_output", "backend"}


class ModelsHandler(ApiMixin):
    @_handle_errors
    async def get(self) -> None:
        self.write_json({"models": self.engine.list_models()})

    @_handle_errors
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
    @_handle_errors
    async def get(self, name: str) -> None:
        self.write_json(self.engine.describe_model(name))

    @_handle_errors
    async def patch(self, name: str) -> None:
        body = self.load_object()
        if set(body) != {"replicas"}:
            raise BadInput("PATCH /api/models/<name> takes {\"replicas\": N}",
                           "use /rollback to change the version")
        self.write_json(await self.engine.scale(name, body["replicas"]))

    @_handle_errors
    async def delete(self, name: str) -> None:
        await self.engine.undeploy(name)
        self.write_json({"undeployed": name})


class RollbackHandler(ApiMixin):
    @_handle_errors
    async def post(self, name: str) -> None:
        version = self.load_object().get("version")
        if version is None:
            raise BadInput("send {\"version\": V} to roll back")
        self.write_json(await self.engine.rollback(name, str(version)))


class StatusHandler(ApiMixin):
    @_handle_errors
    async def get(self) -> None:
        self.write_json({"replicas": self.engine.status(), "ready": self.engine.ready.is_set()})


class MetricsJSONHandler(ApiMixin):
    access = "metrics"

    @_handle_errors
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
    """``GET /dashboard``: the page for every application (HTML, BokehJS inline)."""

    access = "metrics"

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

    @_handle_errors
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
        (r"api/status", StatusHandler),
        (r"api/metrics", MetricsJSONHandler),
        (r"api/dashboard/ticks", DashboardTicksHandler),
        (r"metrics", PrometheusHandler),
        (r"dashboard", DashboardPageHandler),
    ]


# ====================================================================== standalone auth


def _login_cookie_value(token: str) -> str:
    """A value derived from the token (not the token: a cookie is not a bearer token)."""
    import hashlib

    return hmac.new(token.encode(), b"clipper-nb browser login", hashlib.sha256).hexdigest()


class TokenAuthHandler(tornado.web.RequestHandler):
    """``clipper-nb serve``'s base: a token (``Authorization: token T``, ``Bearer T`` or
    ``?token=T``) guards everything but the query API when ``public_predict`` is set."""

    access = "manage"

    def check_xsrf_cookie(self) -> None:  # token-authenticated JSON API: no cookies involved
        pass

    def prepare(self) -> None:
        token = self.settings.get("clipper_token")
        if not token:
            return
        if self.access == "predict" and self.settings.get("clipper_public_predict"):
            return
        given = self._given_token()
        if given is None and self._login_cookie_ok(token):
            return
        if given is None:
            raise Unauthorized("this endpoint needs a token",
                               "send the header 'Authorization: token <TOKEN>' (printed by clipper-nb serve)")
        if not hmac.compare_digest(given.encode(), token.encode()):
            raise Forbidden("the token is wrong", "use the token clipper-nb serve printed or was given")
        if self.request.method == "GET" and self.get_query_argument("token", None) is not None:
            # A browser opened a page (the dashboard) with ?token=...: log it in, as
            # Jupyter does, so the page's own requests and reloads need no token.
            self.set_cookie(self._login_cookie_name(), _login_cookie_value(token), httponly=True,
                            samesite="Strict")

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

    def _given_token(self) -> str | None:
        auth = self.request.headers.get("Authorization", "")
        scheme, _, value = auth.partition(" ")
        if scheme.lower() in ("token", "bearer") and value.strip():
            return value.strip()
        return self.get_query_argument("token", None)

    def _handle_request_exception(self, e: BaseException) -> None:
        if isinstance(e, ClipperError):  # raised in prepare(): answer it, don't log a traceback
            if not self._finished:
                self.send_error_for(e)  # type: ignore[attr-defined]
            return
        super()._handle_request_exception(e)

    def log_exception(self, typ, value, tb) -> None:
        if isinstance(value, ClipperError):
            return
        super().log_exception(typ, value, tb)

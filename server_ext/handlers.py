"""The clipper-nb HTTP API behind Jupyter's authentication and authorization.

:mod:`clipper_nb.frontend.api` holds the handlers as mixins over no base class; here each one
is combined with jupyter_server's ``APIHandler`` and every HTTP method it defines is
wrapped in ``@web.authenticated`` and ``@authorized`` (resource ``"clipper"``, action
``read`` for GET, ``write`` for POST/PATCH/DELETE), so the Jupyter identity provider
and authorizer (tokens, passwords, JupyterHub scopes, custom authorizers) decide who
may query, deploy or read metrics. With ``public_predict`` only the query API
(``access == "predict"``) is opened, by ``@allow_unauthenticated``; the V2 health probes
(``access == "open"``, ``v2/health/live|ready``) are open always and say only live/ready.
"""

from __future__ import annotations

from typing import Any, Callable

from jupyter_server.auth.decorator import allow_unauthenticated, authorized
from jupyter_server.base.handlers import APIHandler, JupyterHandler
from jupyter_server.extension.handler import ExtensionHandlerMixin
from tornado import web

from clipper_nb.frontend import api
from clipper_nb.errors import ClipperError, NotFound

#: The resource name Jupyter authorizers see for every clipper-nb endpoint.
AUTH_RESOURCE = "clipper"
#: Mounted at ``{base_url}clipper/``.
URL_PREFIX = "clipper/"
HTTP_METHODS = ("get", "head", "post", "put", "patch", "delete")


class ClipperJupyterHandler(ExtensionHandlerMixin, APIHandler):
    """Base of every composed handler: the Engine, JSON errors and the XSRF rule."""

    auth_resource = AUTH_RESOURCE
    access = "manage"
    public = False  # True on the query API when public_predict is set

    async def prepare(self) -> None:  # type: ignore[override]
        await super().prepare()  # identify the user (token, cookie, ...), origin checks
        await self.extensionapp.ensure_engine()  # type: ignore[attr-defined]

    @property
    def engine(self) -> Any:
        return self.extensionapp.engine  # type: ignore[attr-defined]

    # JSON errors {"error", "cause"} everywhere, Jupyter's own 403s included.
    write_error = api.ApiMixin.write_error

    def check_xsrf_cookie(self) -> None:
        # An anonymous caller of a public query API (curl, a Clipper client) has no
        # cookie to forge; everything else keeps Jupyter's XSRF protection.
        if self.public:
            return None
        return super().check_xsrf_cookie()

    def set_header(self, name: str, value: Any) -> None:
        if name.lower() == "content-type":
            self._clipper_content_type = True  # chosen by the handler, keep it in finish()
        super().set_header(name, value)

    def finish(self, chunk: Any = None, **kwargs: Any) -> Any:
        # APIHandler.finish stamps application/json on everything and its CSP forbids
        # every script: keep a type the handler chose itself (Prometheus text, the
        # dashboard page) and give HTML pages Jupyter's ordinary page policy.
        if getattr(self, "_clipper_content_type", False):
            chosen = self._headers.get("Content-Type", "application/json")
            kwargs.setdefault("set_content_type", chosen)
            if chosen.startswith("text/html"):
                self._headers["Content-Security-Policy"] = JupyterHandler.content_security_policy.fget(self)
        return super().finish(chunk, **kwargs)

    def _handle_request_exception(self, e: BaseException) -> None:
        # A ClipperError raised outside the API's own error wrapper (in prepare, or
        # in an unwrapped method) is the caller's answer, not a 500 with a traceback.
        if isinstance(e, ClipperError):
            if not self._finished:
                self.set_status(e.status)
                self.set_header("Content-Type", "application/json")
                self.finish(api.dumps(e.to_json()))
            return
        super()._handle_request_exception(e)

    def log_exception(self, typ: Any, value: Any, tb: Any) -> None:
        if isinstance(value, ClipperError):
            return
        super().log_exception(typ, value, tb)


def _guard(method: Callable, public: bool) -> Callable:
    """Jupyter authentication + authorization around one handler method."""
    if public:
        return allow_unauthenticated(method)
    return web.authenticated(authorized(method))


def compose(mixin: type, public_predict: bool) -> type:
    """``mixin`` (from :func:`clipper_nb.frontend.api.routes`) as a Jupyter handler class."""
    public = mixin.access == "open" or (public_predict and mixin.access == "predict")
    attrs: dict[str, Any] = {"access": mixin.access, "public": public, "__module__": __name__,
                             "engine": ClipperJupyterHandler.engine}  # over ApiMixin.engine
    for name in defined_methods(mixin):
        attrs[name] = _guard(getattr(mixin, name), public)
    return type(f"Jupyter{mixin.__name__}", (mixin, ClipperJupyterHandler), attrs)


def defined_methods(mixin: type) -> list[str]:
    """The HTTP methods (lower case) a handler mixin implements."""
    return [m for m in HTTP_METHODS if callable(getattr(mixin, m, None))]


class NotFoundHandler(ClipperJupyterHandler):
    """Anything else under ``{base_url}clipper/``: a JSON 404 (to authenticated callers)."""

    async def _missing(self, *args: Any) -> None:
        raise NotFound(f"no route for {self.request.method} {self.request.path}",
                       "query with POST <prefix>/<app>/predict; manage under <prefix>/api/")

    get = post = put = patch = delete = _guard(_missing, public=False)  # type: ignore[assignment]


def make_handlers(public_predict: bool = False) -> list[tuple[str, type]]:
    """Handler specs relative to the server's base_url (ExtensionApp prepends it)."""
    handlers: list[tuple[str, type]] = [(URL_PREFIX + pattern, compose(mixin, public_predict))
                                        for pattern, mixin in api.routes()]
    handlers.append((URL_PREFIX + ".*", NotFoundHandler))
    handlers.append((URL_PREFIX.rstrip("/"), NotFoundHandler))
    return handlers

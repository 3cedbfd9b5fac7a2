"""The exceptions clipper-nb raises, in one place.

::

    ClipperError                         every error a caller can see
    ├── UserError          (4xx)         the caller's mistake: the message says what to fix
    │   ├── BadInput       (400)         malformed JSON, wrong feature count, bad option
    │   ├── DeployError    (400)         the artifact cannot be pickled or loaded by a worker
    │   ├── Unauthorized   (401)         missing credentials
    │   ├── Forbidden      (403)         wrong credentials, or a route they do not open
    │   ├── NotFound       (404)         unknown application, model or version
    │   ├── Conflict       (409)         the name exists already, the link is missing, ...
    │   ├── PayloadTooLarge (413)        a body over the limit
    │   └── UnsupportedMediaType (415)   a body of a type the route does not take
    ├── ModelError         (500)         a model failed its own queries (never the server)
    └── Unavailable        (503)         nothing can answer right now; try again later

    ReplicaLost                          internal: a replica died holding a batch (retried)
    DeadlineMissed                       internal: a query cannot meet its deadline (default output)

HTTP handlers turn a ``ClipperError`` into ``{"error": ..., "cause": ...}`` with ``status``;
the two internal signals never leave the engine.
"""

from __future__ import annotations

__all__ = ["BadInput", "ClipperError", "Conflict", "DeadlineMissed", "DeployError", "Forbidden", "ModelError",
           "NotFound", "PayloadTooLarge", "ReplicaLost", "Unauthorized", "Unavailable", "UnsupportedMediaType",
           "UserError"]


class ClipperError(Exception):
    """Base class of every clipper-nb error; ``status`` is the HTTP code it maps to."""

    status: int = 500

    def __init__(self, message: str, cause: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.cause = cause

    def __str__(self) -> str:
        # The cause is what tells the user what to do next ("known applications: ...;
        # register one with ..."): keep it in the text a traceback shows. A multi-line
        # cause (a model's traceback) contributes its last line.
        lines = [ln.strip() for ln in str(self.cause or "").splitlines() if ln.strip()]
        if not lines or lines[-1] in self.message:
            return self.message
        return f"{self.message} ({lines[-1]})"

    def to_json(self) -> dict:
        return {"error": self.message, "cause": self.cause or type(self).__name__, "type": type(self).__name__}


class UserError(ClipperError):
    """The caller's mistake (a 4xx): nothing on the server is wrong."""

    status = 400


class BadInput(UserError):
    """Malformed or mistyped input, or an invalid setting."""

    status = 400


class Unauthorized(UserError):
    """No credentials were given."""

    status = 401


class Forbidden(UserError):
    """The credentials are wrong, or do not open this route."""

    status = 403


class NotFound(UserError):
    """No application, model or version of that name."""

    status = 404


class UnsupportedMediaType(UserError):
    """A body of a type the route does not take (what a browser form or a cross-site page sends)."""

    status = 415


class Conflict(UserError):
    """The request contradicts the current state (the name exists, the link is missing, ...)."""

    status = 409


class PayloadTooLarge(UserError):
    """The request body is over the configured limit."""

    status = 413


class DeployError(UserError):
    """A model could not be deployed: it does not pickle, or a worker cannot load it."""

    status = 400


class ModelError(ClipperError):
    """A model raised or returned something unusable for a batch of queries."""

    status = 500


class Unavailable(ClipperError):
    """Nothing can answer right now (no replica up, every model failed); try again later."""

    status = 503


class ReplicaLost(Exception):
    """Internal: the replica died or hung while it held a batch; the batch may be retried elsewhere."""


class DeadlineMissed(Exception):
    """Internal: the query cannot finish before its deadline; it gets the default output."""

"""The exceptions clipper-nb raises, in one place.

::

    ClipperError                      every error of ours
    ├── UserError          (4xx)      the caller's mistake: the message says what to fix
    │   ├── BadInput       (400)      malformed JSON, wrong feature count, bad option
    │   ├── Unauthorized   (401/403)  missing or wrong token
    │   ├── NotFound       (404)      unknown application, model or version
    │   └── Conflict       (409)      the name exists already, the link is missing, ...
    ├── DeployError        (400)      the artifact cannot be pickled or loaded by a worker
    └── ModelError         (500)      a model failed its own queries (never the server)

HTTP handlers turn these into ``{"error": ..., "cause": ...}`` with ``status``.
"""

from __future__ import annotations


class ClipperError(Exception):
    """Base class of every clipper-nb error; ``status`` is the HTTP code it maps to."""

    status: int = 500

    def __init__(self, message: str, cause: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.cause = cause

    def to_json(self) -> dict:
        return {"error": self.message, "cause": self.cause or type(self).__name__, "type": type(self).__name__}


class UserError(ClipperError):
    """The caller's mistake (a 4xx): nothing on the server is wrong."""

    status = 400


class BadInput(UserError):
    status = 400


class Unauthorized(UserError):
    status = 401


class Forbidden(UserError):
    status = 403


class NotFound(UserError):
    status = 404


class Conflict(UserError):
    status = 409


class PayloadTooLarge(UserError):
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

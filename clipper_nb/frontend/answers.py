"""What a caller learns from an error: everything for a token holder, their own mistake for anyone else.

Shared by every handler of the frontend (the Clipper API, the V2 protocol, the dashboard).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import secrets
from typing import Any

from clipper_nb.errors import (BadInput, ClipperError, Forbidden, PayloadTooLarge, Unauthorized,
                               UnsupportedMediaType)

__all__ = ["PUBLIC_SERVER_ERRORS", "arrival_of", "error_body", "handle_errors"]

log = logging.getLogger("clipper_nb.frontend")

#: What an anonymous caller reads for a server-side error (the details go to the log).
PUBLIC_SERVER_ERRORS = {"ModelError": "the model could not answer this query",
                        "Unavailable": "no model can answer right now; try again later"}


def error_body(handler: Any, exc: ClipperError) -> dict:
    """``exc`` as an answer: whole for a token holder; for an anonymous caller, only
    their own mistake: no traceback, no list of what exists, no internal name (the
    details go to the log, under a reference the answer gives)."""
    if getattr(handler, "clipper_trusted_caller", not getattr(handler, "public", False)):
        return exc.to_json()
    name = type(exc).__name__
    if exc.status >= 500:
        ref = secrets.token_hex(4)
        log.warning("error %s to an anonymous %s %s: %s\n%s", ref, handler.request.method, handler.request.path,
                    exc.message, exc.cause or "")
        return {"error": PUBLIC_SERVER_ERRORS.get(name, "the server could not answer this request"),
                "cause": f"error {ref} (the server's log has the details)", "type": name}
    body = exc.to_json()
    if not isinstance(exc, (BadInput, PayloadTooLarge, Unauthorized, Forbidden, UnsupportedMediaType)):
        body["cause"] = name  # e.g. NotFound's cause lists the applications that exist
    return body


def handle_errors(method):
    """A handler method whose ``ClipperError`` becomes its answer (the handler's
    ``send_error_for``: Clipper's or V2's body); anything else is our bug (a 500)."""

    @functools.wraps(method)
    async def wrapper(self, *args, **kwargs):
        try:
            return await method(self, *args, **kwargs)
        except ClipperError as e:
            if e.status >= 500:
                log.warning("%s %s: %s", self.request.method, self.request.path, e.message)
            self.send_error_for(e)

    return wrapper


def arrival_of(request: Any) -> float:
    """When ``request`` reached the server, on the event loop's clock: Tornado starts a
    request's clock when it has read the headers (``request_time()``), before the body
    and before the handler runs; an SLO counts from there, as the client's clock does."""
    return asyncio.get_running_loop().time() - max(0.0, request.request_time())

"""The Python client: the contract the magics, the widgets, the tests and users share.

>>> import clipper_nb
>>> c = clipper_nb.connect("http://127.0.0.1:1337", token="...")      # doctest: +SKIP
>>> c.deploy(clf, "digits-lr", app="digits", slo_ms=20, replicas=2)    # doctest: +SKIP
>>> c.predict("digits", X[0])                                         # doctest: +SKIP
{'query_id': 0, 'output': 3, 'default': False}
"""

from __future__ import annotations

import itertools
import json
import os
import secrets
import time
from typing import Any
from urllib.parse import quote

import numpy as np
import requests
import urllib3

from clipper_nb.errors import (BadInput, ClipperError, Conflict, DeployError, Forbidden, ModelError, NotFound,
                               PayloadTooLarge, Unauthorized, Unavailable, UserError)
from clipper_nb.kernel.discovery import discover, start_embedded
from clipper_nb.kernel.endpoint import Endpoint, with_progress
from clipper_nb.wire import artifact
from clipper_nb.wire.codec import to_jsonable

_BY_STATUS = {400: BadInput, 401: Unauthorized, 403: Forbidden, 404: NotFound, 409: Conflict, 413: PayloadTooLarge,
              500: ModelError, 503: Unavailable}
_BY_NAME = {cls.__name__: cls for cls in (*_BY_STATUS.values(), DeployError, UserError, ClipperError)}


class Client:
    """A connection to one clipper-nb frontend (``clipper-nb serve`` or the Jupyter extension).

    ``url`` is the prefix the APIs live under (``http://host:port`` for serve,
    ``http://host:port/{base_url}clipper`` in Jupyter). Errors raise the types in
    :mod:`clipper_nb.errors` with the server's message.
    """

    def __init__(self, url: str, token: str | None = None, timeout: float = 30.0, retry_s: float = 5.0) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout
        #: how long a request keeps retrying while the server cannot be reached (a restart)
        self.retry_s = retry_s
        self._session = requests.Session()
        self._token = token
        if token:
            self._session.headers["Authorization"] = f"token {token}"
        else:
            # A token-less Jupyter (--IdentityProvider.token=) still checks XSRF on POST,
            # PATCH and DELETE without an Authorization header; a cookie and a header that
            # match pass it (what a browser does). Other servers ignore both.
            xsrf = secrets.token_hex(16)
            self._session.headers.update({"X-XSRFToken": xsrf, "Cookie": f"_xsrf={xsrf}"})

    @property
    def headers(self) -> dict[str, str]:
        """The headers that authenticate a raw HTTP call (``requests``, ``curl``) to this server.

        >>> requests.post(f"{c.url}/digits/predict", json={"input": x}, headers=c.headers)  # doctest: +SKIP
        """
        keys = ("Authorization", "X-XSRFToken", "Cookie")
        return {k: v for k, v in self._session.headers.items() if k in keys}

    def __repr__(self) -> str:  # never show the token
        return f"<clipper_nb.Client {self.url}>"

    # ------------------------------------------------------------------ plumbing
    def _send(self, method: str, path: str, body: bytes | None, headers: dict, timeout: float,
              params: dict | None, idempotent: bool) -> requests.Response:
        """One HTTP request, retried for up to ``retry_s`` while the server cannot be reached
        (a restart): always when the connection was refused (nothing was sent), and for an
        idempotent request (a query) also when the connection broke mid-way."""
        give_up = time.monotonic() + self.retry_s
        for attempt in itertools.count():
            try:
                return self._session.request(method, f"{self.url}/{path}", data=body, headers=headers,
                                             timeout=timeout, params=params)
            except requests.ConnectionError as e:
                refused = isinstance(getattr(e.args[0] if e.args else None, "reason", None),
                                     urllib3.exceptions.NewConnectionError)
                if not (refused or idempotent) or time.monotonic() >= give_up:
                    raise ClipperError(f"cannot reach clipper-nb at {self.url}",
                                       "is the server running? start one with `clipper-nb serve` or %clipper start"
                                       ) from e
                time.sleep(min(0.05 * 2 ** attempt, 1.0, max(0.0, give_up - time.monotonic())))
        raise AssertionError("unreachable")

    def _request(self, method: str, path: str, *, json_body: Any = None, data: bytes | None = None,
                 headers: dict | None = None, timeout: float | None = None, params: dict | None = None,
                 idempotent: bool = False) -> Any:
        body = data
        hdrs = dict(headers or {})
        if json_body is not None:
            body = json.dumps(to_jsonable(json_body)).encode()
            hdrs["Content-Type"] = "application/json"
        r = self._send(method, path, body, hdrs, timeout or self.timeout, params, idempotent)
        try:
            payload = r.json()
        except ValueError:
            payload = {"error": r.text[:500] or r.reason, "cause": f"HTTP {r.status_code}"}
        if r.status_code >= 400:
            exc = _BY_NAME.get(payload.get("type")) or _BY_STATUS.get(
                r.status_code, UserError if r.status_code < 500 else ClipperError)
            err = exc(payload.get("error", r.reason), payload.get("cause"))
            err.status = r.status_code
            raise err
        return payload

    # ------------------------------------------------------------------ applications
    def register_app(self, name: str, input_type: str = "floats", default_output: Any = None, slo_ms: float | None = None,
                     policy: str = "single", **policy_options: Any) -> dict:
        """Create an application. App settings (``cache``, ``confidence_threshold``,
        ``low_confidence``, ``loss``, ``loss_scale``, ``straggler_mitigation``, ``models``)
        may be passed too; every other keyword is an option of the policy."""
        app_keys = {"cache", "confidence_threshold", "low_confidence", "loss", "loss_scale",
                    "straggler_mitigation", "models"}
        body = {"name": name, "input_type": input_type, "default_output": default_output, "slo_ms": slo_ms,
                "policy": policy, "policy_options": {k: v for k, v in policy_options.items() if k not in app_keys}}
        body.update({k: v for k, v in policy_options.items() if k in app_keys})
        return self._request("POST", "api/apps", json_body=body)

    def app(self, name: str) -> dict:
        return self._request("GET", f"api/apps/{quote(name)}")

    def update_app(self, name: str, **changes: Any) -> dict:
        return self._request("PATCH", f"api/apps/{quote(name)}", json_body=changes)

    def set_slo(self, app: str, slo_ms: float) -> dict:
        return self.update_app(app, slo_ms=slo_ms)

    def set_policy(self, app: str, policy: str, **policy_options: Any) -> dict:
        return self.update_app(app, policy=policy, policy_options=policy_options)

    def delete_app(self, name: str) -> dict:
        return self._request("DELETE", f"api/apps/{quote(name)}")

    def link(self, app: str, model: str) -> dict:
        return self._request("POST", f"api/apps/{quote(app)}/links", json_body={"model": model})

    def unlink(self, app: str, model: str) -> dict:
        return self._request("DELETE", f"api/apps/{quote(app)}/links/{quote(model)}")

    def selection(self, app: str, context: str | None = None) -> dict:
        return self._request("GET", f"api/apps/{quote(app)}/selection",
                             params={"context": context} if context else None)

    # ------------------------------------------------------------------ models
    def deploy(self, obj: Any, name: str, version: str | None = None, app: str | None = None,
               replicas: int | None = None,
               device: str = "auto", method: str | None = None, batch_size: int | None = None,
               max_batch_size: int | None = None, slo_ms: float | None = None, *,
               input_type: str | None = None, batch_delay_ms: float | None = None, default_output: Any = None,
               backend: str | None = None, resources: dict[str, float] | None = None,
               timeout: float = 300.0) -> dict:
        """Deploy a live object (scikit-learn estimator, ``torch.nn.Module`` or a function
        ``batch -> list of outputs``) as a new version of model ``name``; returns once every
        replica has loaded it. ``app=...`` registers the app when missing and links it.
        ``replicas=None`` keeps the current version's replica count (1 for a new model).
        ``backend="ray"`` runs the replicas as Ray actors on the server's Ray cluster
        (default: the model's current backend, else the server's ``default_backend``);
        ``resources={"gpu_node": 1}`` adds custom Ray resources each replica asks for.

        Returns an :class:`~clipper_nb.kernel.endpoint.Endpoint`: the model's description
        (a dict) that a notebook shows as an endpoint card, with ``.logs()``,
        ``.dashboard()``, ``.rollback(v)`` and ``.undeploy()``; ``["app_created"]`` says
        when ``app`` did not exist and was created."""
        payload, meta = artifact.package(obj, method)
        spec: dict[str, Any] = {"name": name, "meta": meta, "device": device}
        for key, value in (("version", version), ("replicas", replicas), ("app", app), ("batch_size", batch_size),
                           ("max_batch_size", max_batch_size), ("slo_ms", slo_ms), ("input_type", input_type),
                           ("batch_delay_ms", batch_delay_ms), ("default_output", default_output),
                           ("backend", backend), ("resources", resources)):
            if value is not None:
                spec[key] = str(value) if key == "version" else value
        described = with_progress(f"deploying {name}", lambda: self._request(
            "POST", "api/models", data=payload, timeout=timeout,
            headers={"Content-Type": "application/octet-stream", "X-Clipper-Deploy": json.dumps(to_jsonable(spec))}))
        return Endpoint(self, described)

    def logs(self, model: str, tail: int = 20_000) -> str:
        """What ``model``'s replicas printed (the last ``tail`` bytes of each log), tracebacks included."""
        found = self._request("GET", f"api/models/{quote(model)}/logs", params={"tail": tail})
        parts = [f"--- {model} v{found['version']} replica {r['replica']} ---\n{r['log'].rstrip()}"
                 for r in found["replicas"]]
        return "\n".join(parts) if parts else f"(no replica logs of {model} v{found['version']} on this server)"

    def model(self, name: str) -> dict:
        return self._request("GET", f"api/models/{quote(name)}")

    def scale(self, model: str, replicas: int) -> dict:
        return self._request("PATCH", f"api/models/{quote(model)}", json_body={"replicas": replicas}, timeout=300)

    def rollback(self, model: str, version: str | int) -> dict:
        return self._request("POST", f"api/models/{quote(model)}/rollback", json_body={"version": str(version)},
                             timeout=300)

    def undeploy(self, model: str) -> dict:
        return self._request("DELETE", f"api/models/{quote(model)}")

    # ------------------------------------------------------------------ queries
    def predict(self, app: str, x: Any, context: str | None = None) -> dict:
        """One query: ``{"query_id", "output", "default", ...}``. For a ``records`` app, ``x``
        is a dict of named fields (or a pandas Series: one row of a DataFrame)."""
        if callable(getattr(x, "to_dict", None)) and not hasattr(x, "columns"):  # a pandas Series
            x = x.to_dict()
        body: dict[str, Any] = {"input": x}
        if context is not None:
            body["context"] = context
        return self._request("POST", f"{quote(app)}/predict", json_body=body, idempotent=True)

    def predict_batch(self, app: str, xs: Any, context: str | None = None) -> list[dict]:
        """Many queries in one request: one result dict per row (``xs`` may be a pandas
        DataFrame for a ``records`` app: each row is one query, its columns the fields)."""
        if callable(getattr(xs, "to_dict", None)) and hasattr(xs, "columns"):  # a pandas DataFrame: its rows
            xs = xs.to_dict("records")
        body: dict[str, Any] = {"input_batch": list(xs) if not isinstance(xs, np.ndarray) else xs}
        if context is not None:
            body["context"] = context
        return self._request("POST", f"{quote(app)}/predict", json_body=body, idempotent=True)["batch_predictions"]

    def feedback(self, app: str, x: Any, label: Any, context: str | None = None) -> dict:
        """Clipper's update: the true ``label`` for ``x``; returns losses and new weights."""
        body: dict[str, Any] = {"input": x, "label": label}
        if context is not None:
            body["context"] = context
        return self._request("POST", f"{quote(app)}/update", json_body=body)

    # ------------------------------------------------------------------ status
    def health(self) -> dict:
        return self._request("GET", "api/health")

    def apps(self):
        import pandas as pd

        rows = self._request("GET", "api/apps")["apps"]
        cols = ["name", "input_type", "slo_ms", "policy", "models", "default_output", "cache"]
        return _with_times(pd.DataFrame(rows, columns=cols + [c for c in (rows[0] if rows else {}) if c not in cols]))

    def models(self):
        import pandas as pd

        rows = self._request("GET", "api/models")["models"]
        cols = ["name", "version", "versions", "kind", "replicas", "replicas_up", "device", "backend", "apps"]
        return _with_times(pd.DataFrame(rows, columns=cols + [c for c in (rows[0] if rows else {}) if c not in cols]))

    def status(self):
        import pandas as pd

        rows = self._request("GET", "api/status")["replicas"]
        return pd.DataFrame(rows, columns=["model", "version", "replica", "state", "backend", "node", "pid", "device",
                                           "batch_cap", "restarts", "last_error"])

    def metrics(self, since: float | None = None) -> dict:
        return self._request("GET", "api/metrics", params={"since": since} if since is not None else None)

    def dashboard(self, app: str, **options: Any):
        """The live dashboard widget of ``app`` (:class:`clipper_nb.widgets.Dashboard`)."""
        # The widgets are an optional layer above this client (ipywidgets, bokeh): bound
        # late, so a plain client never imports them and the client never depends on them.
        from clipper_nb.widgets import Dashboard

        return Dashboard(app, client=self, **options)

    def wait_ready(self, timeout: float = 120.0) -> dict:
        """Block until the server has restored every model (after a restart)."""
        end = time.monotonic() + timeout
        while True:
            try:
                h = self.health()
                if h.get("ready"):
                    return h
            except ClipperError:
                if time.monotonic() > end:
                    raise
            if time.monotonic() > end:
                raise TimeoutError(f"clipper-nb at {self.url} not ready after {timeout:.0f}s")
            time.sleep(0.2)


def _with_times(frame: Any) -> Any:
    """``created`` (seconds since the epoch on the wire) as UTC timestamps a person can read."""
    if "created" in frame.columns:
        import pandas as pd

        frame["created"] = pd.to_datetime(frame["created"], unit="s", utc=True).dt.tz_convert(None).dt.floor("s")
    return frame


def connect(url: str | None = None, token: str | None = None, *, start: bool = True) -> Client:
    """Connect to a clipper-nb frontend.

    With no ``url``: ``$CLIPPER_NB_URL``/``$CLIPPER_NB_TOKEN``, then the server this
    process started (``%clipper start``), then the Jupyter server that started this
    kernel (its clipper extension). When there is none (a plain kernel, VS Code,
    nbconvert) and ``start`` is true, a server owned by this process is started on a
    free loopback port (it stops when the process exits) and one line says so.

    >>> c = clipper_nb.connect()                                   # doctest: +SKIP
    clipper-nb: no server found; started one at http://127.0.0.1:40123 (stops with this kernel)
    """
    if url is None:
        url = os.environ.get("CLIPPER_NB_URL")
        if url is not None:  # $CLIPPER_NB_TOKEN goes with $CLIPPER_NB_URL, not with a discovered server
            token = token or os.environ.get("CLIPPER_NB_TOKEN")
    if url is None:
        found = discover()
        if found is not None:
            url, token = found["url"], token or found.get("token")
    if url is None and start:
        server = start_embedded()
        print(f"clipper-nb: no server found; started one at {server.url} (stops with this kernel)", flush=True)
        url, token = server.url, server.token
    if url is None:
        raise ClipperError("no clipper-nb server found",
                           "pass connect(url, token=...), set CLIPPER_NB_URL, or run %clipper start")
    return Client(url, token=token)

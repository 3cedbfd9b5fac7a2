"""The Open Inference Protocol (KServe V2) over the engine, so Triton and KServe clients work unchanged.

Routes, under the same prefix as the Clipper API (``/`` for ``clipper-nb serve``,
``{base_url}clipper/`` in Jupyter)::

    GET  v2                                        server metadata (name, version, extensions)
    GET  v2/health/live | v2/health/ready          open to anyone; say only live / ready
    GET  v2/models/<app>[/versions/<v>]            model metadata
    GET  v2/models/<app>[/versions/<v>]/ready      model readiness
    POST v2/models/<app>[/versions/<v>]/infer      inference, JSON or binary tensors

Everything but the two health routes follows the query API's auth (``access =
"predict"``: a token, or nothing with ``--public-predict``). The wire format (datatypes,
shapes, binary framing, type conversions) is :mod:`clipper_nb.wire.v2`'s.

**What is addressed.** ``v2/models/<name>`` is the *application* ``<name>``: each row
of the input (its first dimension) is one Clipper query through ``predict_batch``, so
selection, the cache, batching, the SLO and the default output apply as for
``POST /<app>/predict`` with ``input_batch``. The request parameter ``context`` (a
string) is Clipper's selection context. ``v2/models/<name>/versions/<v>`` is version
``<v>`` of the *model* ``<name>``, queried directly: rows go straight to its running
version (its cache and batcher, no selection, no default output) with the model's SLO
(the tightest SLO among the apps it is linked to, the server's default SLO when none)
as their deadline; a row that misses it fails the request with a 503. Only the
current version serves: another version of the model is a 404 saying which one runs.

**Tensors.** One input tensor (its name is free; metadata calls it ``input``), datatype
and shape from the first linked model (an app) or the version: ``[-1, *input_shape]``.
A ``records`` app or version takes one input tensor per field instead, named after the
field, ``[N]`` or ``[N, 1]`` each (MLServer's pandas codec; see
:func:`clipper_nb.wire.v2.to_records`); its metadata lists one BYTES ``[-1]`` input per
field the model was fitted on (names are recorded at deploy, dtypes are not), or the one
``input`` when the model's fields are unknown.
Outputs: ``output``, one row per input row, stacked from the model's outputs (numbers
-> numeric tensor of their dtype, strings/bytes -> BYTES, anything else -> BYTES of
JSON text); for an application also ``default``, BOOL ``[N]``.

**Default outputs.** A row that got the application's default output (no model
answered within the SLO, none linked, low confidence, ...) is ``true`` in the
``default`` output, and its row of ``output`` holds the app's default output
converted to the tensor's datatype and row shape (a scalar fills the row; when it does
not convert, e.g. ``None`` in a float tensor: NaN, 0 or false). When every row is a
default, the datatype and shape are those of this app's last real answer, else the
default output's own (``None``: BYTES ``"null"``). The response's ``parameters`` say
``default_rows`` (how many) and, when there are any, ``default_explanation`` (the
first one's).

**Metadata.** Platform: ``sklearn``, ``pytorch`` or ``python`` (a function).
``versions``: the current version of the model named ``<name>`` (the one
``versions/<v>`` can address), none when no model has that name. The output's datatype
and shape are those of the last answer this server gave for it; before any, a guess
from the model's kind and method (torch FP32 ``[-1, -1]``, scikit-learn
``predict_proba``-like FP64 ``[-1, -1]``, else FP64 ``[-1]``).

**Errors** are ``{"error": ..., "cause": ...}`` (the protocol's body, plus Clipper's
cause): 400 for a malformed body or binary header, a wrong shape, a datatype mismatch,
data that does not fill the shape, an unknown output; 404 for an unknown app, model or
version; not ready: 400 (the protocol's "4xx means false").
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import logging
import zlib
from typing import Any

import numpy as np
import orjson
import tornado.web

from clipper_nb.errors import (
    BadInput,
    ClipperError,
    NotFound,
    PayloadTooLarge,
    Unavailable,
    UserError,
)
from clipper_nb.frontend.answers import arrival_of, error_body, handle_errors
from clipper_nb.wire import v2 as wire

__all__ = ["MAX_INFER_BYTES", "routes"]

log = logging.getLogger("clipper_nb.frontend.v2")

try:  # not clipper_nb.__version__: the package's root reaches up to the kernel side
    VERSION = importlib.metadata.version("clipper-nb")
except importlib.metadata.PackageNotFoundError:  # a source tree that is not installed
    VERSION = "unknown"

#: Largest inference body accepted, after decompression, when the server sets no query limit.
MAX_INFER_BYTES = 16 << 20
INPUT, OUTPUT, DEFAULT = "input", "output", "default"
PLATFORMS = {"sklearn": "sklearn", "torch": "pytorch", "callable": "python"}
_PROBA_METHODS = ("predict_proba", "predict_log_proba", "decision_function", "transform")
#: settings key: (("app", name) | ("model", name, version)) -> (datatype, shape) of the last answer
_SEEN = "clipper_v2_outputs"


class V2Mixin:
    """Plumbing of every V2 handler: the engine, JSON answers, errors as ``{"error", ...}``.

    ``content_types`` and ``body_limit`` are what the standalone server's request checks
    read (see :class:`clipper_nb.frontend.api.TokenAuthHandler`): a V2 body is JSON, or
    JSON then binary tensors, and is a query."""

    access = "predict"
    content_types = ("application/json", "application/octet-stream")
    body_limit = "query"

    @property
    def engine(self) -> Any:
        return self.settings["clipper_engine"]  # type: ignore[attr-defined]

    def write_v2(self, obj: Any, status: int = 200) -> None:
        self.set_status(status)  # type: ignore[attr-defined]
        self.set_header("Content-Type", "application/json")  # type: ignore[attr-defined]
        self.finish(orjson.dumps(obj, option=orjson.OPT_SERIALIZE_NUMPY))  # type: ignore[attr-defined]

    def send_error_for(self, exc: ClipperError) -> None:
        self.write_v2(error_body(self, exc), exc.status)

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(exc, ClipperError):
            body = error_body(self, exc)
        elif isinstance(exc, tornado.web.HTTPError):
            body = {"error": exc.log_message or self._reason, "cause": f"HTTP {status_code}"}  # type: ignore
        else:
            body = {"error": "internal server error", "cause": type(exc).__name__ if exc else "HTTP 500"}
        self.set_header("Content-Type", "application/json")  # type: ignore[attr-defined]
        self.finish(orjson.dumps(body))  # type: ignore[attr-defined]

    def seen(self) -> dict:
        return self.settings.setdefault(_SEEN, {})  # type: ignore[attr-defined]


# ====================================================================== health and metadata


class LiveHandler(V2Mixin):
    """``GET v2/health/live``: open; answering at all is the answer."""

    access = "open"

    async def get(self) -> None:
        self.write_v2({"live": True})


class ReadyHandler(V2Mixin):
    """``GET v2/health/ready``: open; ready once every stored model was brought back."""

    access = "open"

    async def get(self) -> None:
        ready = self.engine.ready.is_set()
        self.write_v2({"ready": ready}, 200 if ready else 400)


class ServerMetadataHandler(V2Mixin):
    """``GET v2``."""

    async def get(self) -> None:
        self.write_v2({"name": "clipper-nb", "version": VERSION, "extensions": ["binary_tensor_data"]})


class ModelMetadataHandler(V2Mixin):
    """``GET v2/models/<app>`` or ``v2/models/<model>/versions/<v>``."""

    @handle_errors
    async def get(self, name: str, version: str | None = None) -> None:
        engine, seen = self.engine, self.seen()
        if version is None:
            app = _app(engine, name)
            vspec = _first_model_version(engine, app)
            inputs = _input_metadata(app.input_type, engine.registry.expected_shape(app))
            outputs = [_output_metadata(seen.get(("app", name)), vspec),
                       {"name": DEFAULT, "datatype": "BOOL", "shape": [-1]}]
            current = engine.models.get(name, {}).get("current_version")
            versions = [current] if current is not None else []
        else:
            vspec, _ = _serving_version(engine, name, version)
            input_type = vspec.get("input_type") or "floats"
            inputs = _input_metadata(input_type, _shape_of(vspec, input_type))
            outputs = [_output_metadata(seen.get(("model", name, version)), vspec)]
            versions = [version]
        self.write_v2({"name": name, "versions": versions, "platform": PLATFORMS.get(vspec.get("kind"), ""),
                       "inputs": inputs, "outputs": outputs})


class ModelReadyHandler(V2Mixin):
    """``GET v2/models/<app>[/versions/<v>]/ready``: 200 when a replica can answer, else 400."""

    @handle_errors
    async def get(self, name: str, version: str | None = None) -> None:
        engine = self.engine
        if version is None:
            app = _app(engine, name)
            if not any(_replicas_up(engine.deployments.get(m)) for m in app.models):
                raise UserError(f"application {name!r} is not ready: no linked model has a replica up")
        else:
            try:
                _, running = _serving_version(engine, name, version)
            except Unavailable as e:
                raise UserError(f"model {name!r} version {version!r} is not ready: {e.message}") from None
            if not _replicas_up(running):
                raise UserError(f"model {name!r} version {version!r} is not ready: no replica is up")
        self.write_v2({"name": name, "ready": True})


# ====================================================================== inference


class InferHandler(V2Mixin):
    """``POST v2/models/<app>[/versions/<v>]/infer``."""

    @handle_errors
    async def post(self, name: str, version: str | None = None) -> None:
        req = wire.parse_request(self._body(), self.request.headers.get(wire.HEADER_LENGTH))
        if version is None:
            head, available = await self._infer_app(name, req)
        else:
            head, available = await self._infer_version(name, version, req)
        if req.id is not None:
            head["id"] = req.id
        if req.outputs is None:
            chosen = [(n, arr, req.binary_output) for n, arr in available.items()]
        else:
            chosen = [(r.name, available[r.name], r.binary) for r in req.outputs]
        body, json_length = wire.encode_response(head, chosen)
        if json_length is None:
            self.set_header("Content-Type", "application/json")
        else:
            self.set_header("Content-Type", "application/octet-stream")
            self.set_header(wire.HEADER_LENGTH, str(json_length))
        self.finish(body)

    def _body(self) -> bytes:
        """The request body, decompressed when the client sent gzip or deflate; at most the
        query limit (the server's ``clipper_max_query_bytes`` setting, else MAX_INFER_BYTES)."""
        body = self.request.body
        limit = self.settings.get("clipper_max_query_bytes") or MAX_INFER_BYTES
        if len(body) > limit:
            raise PayloadTooLarge(f"request body of {len(body)} bytes is over the limit of {limit}")
        encoding = self.request.headers.get("Content-Encoding", "identity").strip().lower()
        if encoding == "identity":
            return body
        if encoding not in ("gzip", "deflate"):
            raise BadInput(f"unsupported Content-Encoding {encoding!r}", "send gzip, deflate or an uncompressed body")
        inflater = zlib.decompressobj(wbits=31 if encoding == "gzip" else 15)
        try:
            out = inflater.decompress(body, limit + 1)
        except zlib.error as e:
            raise BadInput(f"the body is not valid {encoding} data", str(e)) from None
        if len(out) > limit:
            raise PayloadTooLarge(f"the decompressed body is over the limit of {limit} bytes")
        return out

    async def _infer_app(self, name: str, req: wire.InferRequest) -> tuple[dict, dict[str, np.ndarray]]:
        """Every row one query of application ``name`` (``predict_batch``)."""
        engine, what = self.engine, f"application {name!r}"
        app = _app(engine, name)
        _check_outputs(req, (OUTPUT, DEFAULT), what)
        rows = _rows(engine, req, app.input_type, engine.registry.expected_shape(app), what)
        if app.input_type == "bytes":
            rows = wire.base64_rows(rows)  # what predict_batch decodes
        context = req.parameters.get("context")
        answers = await engine.predict_batch(name, rows, None if context is None else str(context),
                                             arrival=arrival_of(self.request))
        is_default = np.fromiter((a["default"] for a in answers), dtype=bool, count=len(answers))
        seen = self.seen()
        out = wire.stack_outputs([a["output"] for a in answers], is_default, app.default_output,
                                 seen.get(("app", name)))
        if not is_default.all():
            seen[("app", name)] = (wire.datatype_of(out), [-1, *out.shape[1:]])
        params: dict[str, Any] = {"default_rows": int(is_default.sum())}
        if is_default.any():
            params["default_explanation"] = next(a.get("default_explanation", "") for a in answers if a["default"])
        return {"model_name": name, "parameters": params}, {OUTPUT: out, DEFAULT: is_default}

    async def _infer_version(self, name: str, version: str,
                             req: wire.InferRequest) -> tuple[dict, dict[str, np.ndarray]]:
        """Every row straight to the running version ``version`` of model ``name``, with the model's SLO."""
        engine, what = self.engine, f"model {name!r} version {version!r}"
        vspec, running = _serving_version(engine, name, version)
        _check_outputs(req, (OUTPUT,), what)
        input_type = vspec.get("input_type") or "floats"
        rows = _rows(engine, req, input_type, _shape_of(vspec, input_type), what)
        slo_ms = _model_slo_ms(engine, name)
        deadline = arrival_of(self.request) + slo_ms / 1000
        futures = [running.submit(x, deadline) for x in rows]
        outputs = await _outputs_within(futures, slo_ms, what)
        out = wire.stack_outputs(outputs, np.zeros(len(outputs), dtype=bool), None)
        self.seen()[("model", name, version)] = (wire.datatype_of(out), [-1, *out.shape[1:]])
        return {"model_name": name, "model_version": version}, {OUTPUT: out}


# ====================================================================== lookups


def _app(engine: Any, name: str) -> Any:
    app = engine.apps.get(name)
    if app is not None:
        return app
    hint = "register it, or deploy(..., app=NAME)"
    spec = engine.models.get(name)
    if spec is not None and spec.get("current_version") is not None:
        hint = (f"v2/models/{name} addresses an application; query the model {name!r} itself at "
                f"v2/models/{name}/versions/{spec['current_version']}")
    raise NotFound(f"no application named {name!r}", hint)


def _serving_version(engine: Any, name: str, version: str) -> tuple[dict, Any]:
    """The spec and the running ModelVersion of the current version ``version`` of model ``name``."""
    spec = engine.models.get(name)
    if spec is None:
        hint = (f"versions/<v> addresses a model; query the application at v2/models/{name}/infer"
                if name in engine.apps else "deploy a model of that name")
        raise NotFound(f"no model named {name!r}", hint)
    current = spec.get("current_version")
    if version != current:
        stored = version in engine.versions.get(name, {})
        raise NotFound(f"model {name!r} runs version {current!r}; version {version!r} "
                       + ("is stored but not serving" if stored else "does not exist"),
                       f"query v2/models/{name}/versions/{current}" + (", or roll back to it" if stored else ""))
    running = engine.deployments.get(name)
    if running is None:
        raise Unavailable(f"model {name!r} version {version!r} is not running", "roll back or redeploy it")
    return engine.versions[name][version], running


def _first_model_version(engine: Any, app: Any) -> dict:
    for m in app.models:
        vspec = engine.registry.current_version(m)
        if vspec:
            return vspec
    return {}


def _replicas_up(running: Any) -> int:
    if running is None:
        return 0
    return sum(1 for r in running.status() if r["state"] in ("idle", "busy"))


def _model_slo_ms(engine: Any, name: str) -> float:
    slos = [a.slo_ms for a in engine.apps.values() if name in a.models]
    return min(slos) if slos else engine.config.default_slo_ms


def _shape_of(vspec: dict, input_type: str) -> list | None:
    """What one input of a version must look like: its fields for ``records``, else its shape."""
    return vspec.get("feature_names" if input_type == "records" else "input_shape")


def _input_metadata(input_type: str, shape: list | None) -> list[dict]:
    """The inputs metadata lists: one per field of a ``records`` model whose fields are known."""
    if input_type == "records" and shape:
        return [{"name": field, "datatype": "BYTES", "shape": [-1]} for field in shape]
    datatype, dims = wire.input_signature(input_type, shape)
    return [{"name": INPUT, "datatype": datatype, "shape": dims}]


def _output_metadata(seen: tuple[str, list[int]] | None, vspec: dict) -> dict:
    if seen is None:
        if vspec.get("kind") == "torch":
            seen = ("FP32", [-1, -1])
        elif vspec.get("kind") == "sklearn" and vspec.get("method") in _PROBA_METHODS:
            seen = ("FP64", [-1, -1])
        else:
            seen = ("FP64", [-1])
    return {"name": OUTPUT, "datatype": seen[0], "shape": seen[1]}


# ====================================================================== checks


def _rows(engine: Any, req: wire.InferRequest, input_type: str, shape: list | None, what: str) -> list:
    """One model input per row: a ``records`` request's tensors are its fields, any other's
    one tensor is the rows. ``shape``: the model's input shape, or its fields for ``records``."""
    if input_type == "records":
        rows = wire.to_records(req.inputs, shape, what)
    else:
        rows = wire.to_rows(_one_input(req, what), input_type, shape, what)
    _check_rows(engine, req.inputs[0], len(rows))
    return rows


def _one_input(req: wire.InferRequest, what: str) -> wire.Tensor:
    if len(req.inputs) != 1:
        names = ", ".join(repr(t.name) for t in req.inputs)
        raise BadInput(f"{what} takes one input tensor (one row per query), got {len(req.inputs)}: {names}")
    return req.inputs[0]


def _check_outputs(req: wire.InferRequest, names: tuple[str, ...], what: str) -> None:
    for r in req.outputs or []:
        if r.name not in names:
            raise BadInput(f"unknown output {r.name!r}", f"{what} has the outputs {', '.join(names)}")


def _check_rows(engine: Any, tensor: wire.Tensor, rows: int) -> None:
    limit = engine.config.max_batch_rows
    if rows > limit:
        raise BadInput(f"input {tensor.name!r} has {rows} rows; the limit is {limit}", "split it into smaller requests")


async def _outputs_within(futures: list[asyncio.Future], slo_ms: float, what: str) -> list:
    """The futures' results once all are done, or an error once ``slo_ms`` has passed."""
    pending = [f for f in futures if not f.done()]
    if pending:
        await asyncio.wait(pending, timeout=slo_ms / 1000)
    outputs = []
    for f in futures:
        exc = None if not f.done() else f.exception()
        if not f.done() or (exc is not None and not isinstance(exc, ClipperError)):
            raise Unavailable(f"{what} could not answer every row within the model's SLO of {slo_ms:g} ms",
                              "query the application (default outputs), send fewer rows, or raise the SLO")
        if exc is not None:
            raise type(exc)(exc.message, exc.cause) from None
        outputs.append(f.result())
    return outputs


def routes() -> list[tuple[str, type]]:
    """``(path regex relative to the prefix, handler mixin)`` of every V2 endpoint."""
    name = r"([^/]+)"
    model = rf"v2/models/{name}"
    version = rf"{model}/versions/{name}"
    return [
        (r"v2", ServerMetadataHandler),
        (r"v2/health/live", LiveHandler),
        (r"v2/health/ready", ReadyHandler),
        (model, ModelMetadataHandler),
        (version, ModelMetadataHandler),
        (rf"{model}/ready", ModelReadyHandler),
        (rf"{version}/ready", ModelReadyHandler),
        (rf"{model}/infer", InferHandler),
        (rf"{version}/infer", InferHandler),
    ]

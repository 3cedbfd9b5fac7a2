"""The Open Inference Protocol (KServe V2) on the wire: typed tensors <-> numpy. Pure, no I/O.

A V2 inference request is a JSON object (``id``, ``parameters``, ``inputs``,
``outputs``); each input tensor has a ``name``, a ``datatype``, a ``shape`` and its
elements either in ``data`` (JSON, row-major, flat or nested) or, with the binary
tensor extension, as raw bytes after the JSON: the header
``Inference-Header-Content-Length`` says where the JSON ends and each binary input
says its size in ``parameters.binary_data_size``, in the order of ``inputs``.
Binary numeric tensors are little-endian and become numpy arrays with
``np.frombuffer`` (no per-element Python work); a ``BYTES`` element is a 4-byte
little-endian length followed by its bytes. Answers are built the same way: each
output is JSON ``data`` or binary (``binary_data_output`` for the request,
``binary_data`` per requested output), binary chunks in the order of ``outputs``.

Clipper's input types map to V2 datatypes (``floats``/``doubles`` FP64, ``float32``
FP32, ``ints``/``integers`` INT64, ``strings``/``bytes`` BYTES, ``json`` BYTES holding
JSON text). A numeric input converts to the application's dtype when numpy calls the
cast ``same_kind`` (FP32 -> FP64, INT8 -> FP64, BOOL -> INT64, FP64 -> FP32, UINT64 ->
INT64 when every value fits); a cast across kinds (FP32 -> INT64, BYTES -> FP64,
numbers -> ``strings``) is a datatype mismatch. ``json`` applications take any
datatype: numbers and booleans as JSON values, ``BYTES`` elements parsed as JSON text.
The first dimension of an input is always the batch: one row per query.

A ``records`` application takes one input tensor per field, named after the field
(MLServer's pandas codec): each of shape ``[N]`` or ``[N, 1]``, the same ``N`` for all,
numeric (each value a Python number or bool) or ``BYTES`` (UTF-8 text, each value a
``str``); row ``i`` is the record ``{name: value i of that tensor}``, and its fields are
checked against the model's as a Clipper ``records`` input is
(:func:`~clipper_nb.wire.codec.decode_record`).

Every mistake raises :class:`~clipper_nb.errors.BadInput` naming the input and the problem.
"""

from __future__ import annotations

import base64
import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from clipper_nb.errors import BadInput
from clipper_nb.wire.codec import NUMERIC_TYPES, decode_record, to_jsonable

__all__ = ["DATATYPES", "HEADER_LENGTH", "InferRequest", "Requested", "Tensor", "base64_rows", "datatype_of",
           "encode_response", "input_signature", "parse_request", "stack_outputs", "to_records", "to_rows"]

#: The request and response header of the binary tensor extension.
HEADER_LENGTH = "Inference-Header-Content-Length"

#: V2 datatype -> numpy dtype (little-endian, as on the wire); BYTES: object arrays of ``bytes``.
DATATYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype("?"), "INT8": np.dtype("<i1"), "INT16": np.dtype("<i2"), "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"), "UINT8": np.dtype("<u1"), "UINT16": np.dtype("<u2"), "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"), "FP16": np.dtype("<f2"), "FP32": np.dtype("<f4"), "FP64": np.dtype("<f8"),
    "BYTES": np.dtype(object),
}
_NAME_OF = {(dt.kind, dt.itemsize): name for name, dt in DATATYPES.items() if name != "BYTES"}
_JSON_OPTS = orjson.OPT_SERIALIZE_NUMPY
_LENGTH = struct.Struct("<I")
#: How a non-finite float travels in JSON (the codec's spelling, and Python's json module's).
_NON_FINITE_TEXT = {"NaN", "Infinity", "-Infinity"}


@dataclass(slots=True)
class Tensor:
    """One decoded input: ``data`` has ``shape`` (numeric dtype, or object array of ``bytes``)."""

    name: str
    datatype: str
    data: np.ndarray
    parameters: dict = field(default_factory=dict)


@dataclass(slots=True)
class Requested:
    """An output the request asks for, and whether it comes back as binary data."""

    name: str
    binary: bool


@dataclass(slots=True)
class InferRequest:
    """A parsed inference request; ``outputs`` None asks for every output."""

    id: str | None
    parameters: dict
    inputs: list[Tensor]
    outputs: list[Requested] | None
    binary_output: bool  # the request's binary_data_output: the default for every output


# ====================================================================== requests


def parse_request(body: bytes | memoryview, header_length: str | None) -> InferRequest:
    """Parse an inference request body; ``header_length`` is the binary extension's header (or None)."""
    view = memoryview(body)
    n = len(view) if header_length is None else _header_length(header_length, len(view))
    obj = _json_object(view[:n], header_length is None)
    rest = view[n:]
    specs = obj.get("inputs")
    if not isinstance(specs, list) or not specs:
        raise BadInput("an inference request needs 'inputs': a non-empty list of tensors",
                       'send {"inputs": [{"name": ..., "datatype": ..., "shape": [...], "data": [...]}]}')
    offset, inputs = 0, []
    for i, spec in enumerate(specs):
        tensor, used = _input_tensor(spec, i, rest, offset, header_length is not None)
        inputs.append(tensor)
        offset += used
    if offset != len(rest):
        raise BadInput(f"malformed binary data: {len(rest)} bytes follow the JSON header, but the inputs' "
                       f"binary_data_size add up to {offset}",
                       f"{HEADER_LENGTH} must be the length of the JSON part of the body")
    parameters = _parameters(obj.get("parameters"), "the request")
    binary = parameters.get("binary_data_output", False)
    if not isinstance(binary, bool):
        raise BadInput(f"parameter binary_data_output must be true or false, got {binary!r}")
    request_id = obj.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise BadInput(f"'id' must be a string, got {type(request_id).__name__}")
    return InferRequest(request_id, parameters, inputs, _requested(obj.get("outputs"), binary), binary)


def _header_length(value: str, body_len: int) -> int:
    try:
        n = int(value.strip())
    except ValueError:
        n = -1
    if not 0 < n <= body_len:
        raise BadInput(f"malformed binary header: {HEADER_LENGTH} is {value!r}, which is not the length of a "
                       f"JSON part within the {body_len}-byte body",
                       "it must be the byte length of the JSON object that starts the body")
    return n


def _json_object(raw: memoryview, no_header: bool) -> dict:
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        why = ("; binary tensor data after the JSON needs the Inference-Header-Content-Length header"
               if no_header and "after document" in str(e) else "")
        raise BadInput(f"malformed JSON in the inference request{why}", str(e)) from None
    if not isinstance(obj, dict):
        raise BadInput(f"the inference request must be a JSON object, got {type(obj).__name__}")
    return obj


def _parameters(value: Any, where: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise BadInput(f"'parameters' of {where} must be an object, got {type(value).__name__}")
    return value


def _requested(specs: Any, binary: bool) -> list[Requested] | None:
    if specs is None:
        return None
    if not isinstance(specs, list) or not all(isinstance(s, dict) and isinstance(s.get("name"), str) for s in specs):
        raise BadInput("'outputs' must be a list of objects with a 'name'")
    out = []
    for spec in specs:
        params = _parameters(spec.get("parameters"), f"output {spec['name']!r}")
        if "classification" in params:
            raise BadInput(f"output {spec['name']!r}: the classification extension is not supported",
                           "request the output itself and take the top classes on the client")
        flag = params.get("binary_data", binary)
        if not isinstance(flag, bool):
            raise BadInput(f"output {spec['name']!r}: binary_data must be true or false, got {flag!r}")
        out.append(Requested(spec["name"], flag))
    return out


def _input_tensor(spec: Any, i: int, rest: memoryview, offset: int, has_header: bool) -> tuple[Tensor, int]:
    """Input ``i`` as a Tensor, and how many bytes of the binary part it used."""
    if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
        raise BadInput(f"inputs[{i}] must be an object with a 'name', 'datatype' and 'shape'")
    name = spec["name"]
    datatype = spec.get("datatype")
    if not isinstance(datatype, str) or datatype not in DATATYPES:
        raise BadInput(f"input {name!r}: unsupported datatype {datatype!r}",
                       f"datatypes: {', '.join(DATATYPES)}")
    shape = spec.get("shape")
    if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
        raise BadInput(f"input {name!r}: 'shape' must be a list of non-negative integers, got {shape!r}")
    params = _parameters(spec.get("parameters"), f"input {name!r}")
    if any(k.startswith("shared_memory") for k in params):
        raise BadInput(f"input {name!r}: the shared-memory extension is not supported", "send the data in the body")
    size = params.get("binary_data_size")
    if size is None:
        if "data" not in spec:
            raise BadInput(f"input {name!r} has neither 'data' nor parameters.binary_data_size")
        return Tensor(name, datatype, _from_json(name, datatype, shape, spec["data"]), params), 0
    if "data" in spec:
        raise BadInput(f"input {name!r} has both 'data' and parameters.binary_data_size", "send one of them")
    if type(size) is not int or size < 0:
        raise BadInput(f"input {name!r}: binary_data_size must be a non-negative integer, got {size!r}")
    if not has_header:
        raise BadInput(f"malformed binary request: input {name!r} has binary_data_size but the request has no "
                       f"{HEADER_LENGTH} header", "send the header with the byte length of the JSON part")
    raw = rest[offset:offset + size]
    if len(raw) < size:
        raise BadInput(f"malformed binary data: input {name!r} needs {size} bytes, but only {len(raw)} are left "
                       "in the body")
    return Tensor(name, datatype, _from_binary(name, datatype, shape, raw), params), size


def _from_binary(name: str, datatype: str, shape: list[int], raw: memoryview) -> np.ndarray:
    count = math.prod(shape)
    if datatype == "BYTES":
        return _split_bytes(name, raw, count).reshape(shape)
    dtype = DATATYPES[datatype]
    if len(raw) != count * dtype.itemsize:
        raise BadInput(f"input {name!r}: binary_data_size is {len(raw)} bytes, but shape {shape} of {datatype} "
                       f"needs {count * dtype.itemsize} ({count} elements of {dtype.itemsize} bytes)")
    return np.frombuffer(raw, dtype=dtype).reshape(shape)


def _split_bytes(name: str, raw: memoryview, count: int) -> np.ndarray:
    """A binary BYTES tensor: each element a 4-byte little-endian length, then its bytes."""
    pos, end = 0, len(raw)
    if count * 4 > end:
        raise BadInput(f"input {name!r}: {end} bytes of BYTES data cannot hold the {count} elements of its shape",
                       "each element is a 4-byte length followed by its bytes")
    out = np.empty(count, dtype=object)
    for k in range(count):
        if pos + 4 > end:
            raise BadInput(f"input {name!r}: the BYTES data ends after {k} of {count} elements")
        (length,) = _LENGTH.unpack_from(raw, pos)
        pos += 4
        if pos + length > end:
            raise BadInput(f"input {name!r}: BYTES element {k} says {length} bytes, but only {end - pos} are left")
        out[k] = bytes(raw[pos:pos + length])
        pos += length
    if pos != end:
        raise BadInput(f"input {name!r}: {end - pos} bytes are left after the {count} BYTES elements of its shape")
    return out


def _from_json(name: str, datatype: str, shape: list[int], data: Any) -> np.ndarray:
    count = math.prod(shape)
    if not isinstance(data, list):
        data = [data]
    if datatype == "BYTES":
        flat = _flatten_strings(name, data)
        arr = np.empty(len(flat), dtype=object)
        arr[:] = flat
    else:
        arr = _json_numbers(name, datatype, data)
    if arr.size != count:
        raise BadInput(f"input {name!r}: shape {shape} holds {count} elements, but 'data' has {arr.size}",
                       "send the elements in row-major order, as many as the shape holds")
    return arr.reshape(shape)


def _json_numbers(name: str, datatype: str, data: list) -> np.ndarray:
    try:
        arr = np.asarray(data)
    except (ValueError, TypeError, OverflowError) as e:
        raise BadInput(f"input {name!r}: 'data' is not a regular array", str(e)) from None
    target = DATATYPES[datatype]
    arr = arr.reshape(-1)
    if arr.size == 0:
        return arr.astype(target)
    kind = arr.dtype.kind
    flat = _flatten(data) if target.kind in "iu" and kind in "fO" else None
    if flat is not None and all(type(v) is int for v in flat):
        # integers numpy would not keep exact (beyond int64: UINT64's top half)
        try:
            return np.asarray(flat, dtype=target)
        except OverflowError:
            raise BadInput(f"input {name!r}: a value of 'data' is out of range for {datatype}") from None
    ok = {"b": "b", "i": "bi", "u": "bi", "f": "biuf"}[target.kind]
    if kind not in ok:
        got = {"U": "strings", "f": "non-integer numbers", "b": "booleans", "O": "mixed or too large values"}
        raise BadInput(f"datatype mismatch: input {name!r} is {datatype}, but 'data' holds "
                       f"{got.get(kind, arr.dtype.name)}")
    if target.kind in "iu" and kind in "iu":
        info = np.iinfo(target)
        if arr.min() < info.min or arr.max() > info.max:
            raise BadInput(f"input {name!r}: a value of 'data' is out of range for {datatype}",
                           f"{datatype} holds {info.min} to {info.max}")
    return arr.astype(target)


def _flatten_strings(name: str, data: list) -> list[bytes]:
    flat = _flatten(data)
    for item in flat:
        if not isinstance(item, str):
            raise BadInput(f"datatype mismatch: input {name!r} is BYTES, but 'data' holds "
                           f"{type(item).__name__} values", "BYTES elements are strings in JSON")
    return [item.encode() for item in flat]


def _flatten(data: list) -> list:
    """Nested JSON lists, row-major, as one list."""
    out: list = []
    stack = [iter(data)]
    while stack:
        for item in stack[-1]:
            if isinstance(item, list):
                stack.append(iter(item))
                break
            out.append(item)
        else:
            stack.pop()
    return out


# ====================================================================== tensors -> model inputs


def input_signature(input_type: str, input_shape: Sequence[int] | None) -> tuple[str, list[int]]:
    """The V2 datatype and shape (-1: any) of the input of an app or model of ``input_type``."""
    dtype = NUMERIC_TYPES.get(input_type)
    if dtype is None:
        return "BYTES", [-1]
    return _NAME_OF[(dtype.kind, dtype.itemsize)], [-1, *(input_shape or [-1])]


def to_rows(tensor: Tensor, input_type: str, shape: Sequence[int] | None, what: str) -> list:
    """One model input per row of ``tensor`` (its first dimension), as the codec decodes
    ``input_type``: numpy rows of the type's dtype, ``str``, ``bytes`` or JSON values.

    ``shape`` is the model's input shape when known; ``what`` names the app or model in errors.
    """
    arr = tensor.data
    if arr.ndim == 0:
        raise BadInput(f"input {tensor.name!r} has shape []; the first dimension is the batch",
                       "send shape [N, ...] for N rows")
    if arr.shape[0] == 0:
        raise BadInput(f"input {tensor.name!r} has no rows (its first dimension is 0)")
    dtype = NUMERIC_TYPES.get(input_type)
    if dtype is not None:
        return list(_numeric(tensor, dtype, input_type, shape, what))
    if input_type == "json":
        if tensor.datatype != "BYTES":
            return arr.tolist()
        return [_json_row(tensor.name, row) for row in _elements(tensor, input_type, what)]
    elements = _elements(tensor, input_type, what)
    if input_type == "bytes":
        return list(elements)
    return [_text(tensor.name, e) for e in elements]


def _numeric(tensor: Tensor, dtype: np.dtype, input_type: str, shape: Sequence[int] | None,
             what: str) -> np.ndarray:
    arr = tensor.data
    want = _NAME_OF[(dtype.kind, dtype.itemsize)]
    if tensor.datatype == "BYTES" or not np.can_cast(arr.dtype, dtype, "same_kind"):
        raise BadInput(f"datatype mismatch: input {tensor.name!r} is {tensor.datatype}, but {what} takes {want} "
                       f"(input_type {input_type!r})",
                       f"send {want}, or a datatype of the same kind that converts to it")
    if arr.dtype.kind == "u" and dtype.kind == "i" and arr.size and arr.max() > np.iinfo(dtype).max:
        raise BadInput(f"input {tensor.name!r}: a {tensor.datatype} value is too large for {want}")
    if shape and tuple(arr.shape[1:]) != tuple(shape):
        raise BadInput(f"wrong shape: input {tensor.name!r} has shape {list(arr.shape)}, but {what} takes "
                       f"[-1, {', '.join(map(str, shape))}] (a batch of rows of shape {list(shape)})",
                       "the first dimension is the batch; the others must be the model's input shape")
    return arr.astype(dtype, copy=False)


def _elements(tensor: Tensor, input_type: str, what: str) -> np.ndarray:
    """The one element per row of a BYTES tensor of shape [N] or [N, 1]."""
    arr = tensor.data
    if tensor.datatype != "BYTES":
        raise BadInput(f"datatype mismatch: input {tensor.name!r} is {tensor.datatype}, but {what} takes BYTES "
                       f"(input_type {input_type!r})")
    if arr.ndim > 2 or (arr.ndim == 2 and arr.shape[1] != 1):
        raise BadInput(f"wrong shape: input {tensor.name!r} has shape {list(arr.shape)}, but {what} takes one "
                       "BYTES element per row: shape [-1] or [-1, 1]")
    return arr.reshape(-1)


def _text(name: str, element: bytes) -> str:
    try:
        return element.decode()
    except UnicodeDecodeError:
        raise BadInput(f"input {name!r} holds an element that is not UTF-8 text") from None


def _json_row(name: str, element: bytes) -> Any:
    try:
        return orjson.loads(element)
    except orjson.JSONDecodeError as e:
        raise BadInput(f"input {name!r}: a BYTES element is not JSON text", str(e)) from None


def to_records(tensors: Sequence[Tensor], fields: Sequence[str] | None, what: str) -> list[dict]:
    """One record (``{field: value}``) per row of a ``records`` request: one tensor per
    field, named after it. ``fields`` are the model's (``feature_names_in_``) when known;
    ``what`` names the app or model in errors."""
    names = [t.name for t in tensors]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise BadInput(f"input(s) {', '.join(map(repr, twice))} sent more than once; {what} takes records: "
                       "one input tensor per field, each named after its field")
    columns = [_column(t, what) for t in tensors]
    counts = {len(c) for c in columns}
    if len(counts) > 1:
        sizes = ", ".join(f"{t.name!r} has {len(c)}" for t, c in zip(tensors, columns))
        raise BadInput(f"the inputs of a records request must have the same number of rows: {sizes}",
                       "row i is the record made of value i of every input")
    if not columns[0]:
        raise BadInput(f"input {names[0]!r} has no rows (its first dimension is 0)")
    rows = [dict(zip(names, values)) for values in zip(*columns)]
    decode_record(rows[0], fields)  # every row has these fields, each a plain value: one check is all
    return rows


def _column(tensor: Tensor, what: str) -> list:
    """The values of one field, a Python scalar (or ``str``) per row."""
    arr = tensor.data
    if arr.ndim not in (1, 2) or (arr.ndim == 2 and arr.shape[1] != 1):
        raise BadInput(f"wrong shape: input {tensor.name!r} has shape {list(arr.shape)}, but {what} takes "
                       "records: one value per row in each field's input, shape [-1] or [-1, 1]",
                       "send one input tensor per field, named after it, with one value per row")
    flat = arr.reshape(-1)
    if tensor.datatype == "BYTES":
        return [_text(tensor.name, e) for e in flat]
    return flat.tolist()


def base64_rows(rows: list[bytes]) -> list[str]:
    """``bytes`` rows as the Clipper JSON API sends them (base64), for ``predict_batch``."""
    return [base64.b64encode(r).decode() for r in rows]


# ====================================================================== model outputs -> tensors


def stack_outputs(values: list, is_default: np.ndarray, default: Any,
                  hint: tuple[str, list[int]] | None = None) -> np.ndarray:
    """One output tensor from one output per row.

    The rows that are real predictions decide the datatype and shape: same-shaped
    numbers stack into a numeric tensor, strings and bytes into BYTES, anything else
    (dicts, ragged lists) into BYTES holding each row's JSON text. Rows marked in
    ``is_default`` hold ``default`` converted to that datatype and row shape (a scalar
    fills the row); when it does not convert (``None`` in a numeric tensor, a string
    in a float one) they hold NaN, 0 or false. With no real row, ``hint`` (datatype,
    shape) from an earlier answer decides, else the default output itself.
    """
    real = [v for v, d in zip(values, is_default) if not d]
    n = len(values)
    if real:
        template = _stack(real)
        arr = np.empty((n, *template.shape[1:]), dtype=template.dtype)
        arr[~is_default] = template
    elif hint is not None and hint[0] in DATATYPES:
        arr = np.empty((n, *(max(d, 0) for d in hint[1][1:])), dtype=DATATYPES[hint[0]])
    else:
        return _stack([default] * n)
    if is_default.any():
        arr[is_default] = _fill_value(arr, default)
    return arr


def _stack(values: list) -> np.ndarray:
    if all(isinstance(v, (str, bytes)) for v in values):
        arr = np.empty(len(values), dtype=object)
        arr[:] = [v.encode() if isinstance(v, str) else v for v in values]
        return arr
    try:
        arr = np.asarray(values)
    except (ValueError, TypeError):
        arr = None
    if arr is not None and (arr.dtype.kind, arr.dtype.itemsize) in _NAME_OF and arr.ndim >= 1:
        return arr.astype(arr.dtype.newbyteorder("<"), copy=False)
    floats = _with_non_finite(values)
    if floats is not None:
        return floats
    texts = np.empty(len(values), dtype=object)
    texts[:] = [_json_text(v) for v in values]
    return texts


def _with_non_finite(values: list) -> np.ndarray | None:
    """Float rows whose NaN or infinities came back in their JSON spelling ("NaN",
    "Infinity", "-Infinity", as the codec sends such rows), as FP64; else None."""
    texts = {v for v in _flatten(values) if isinstance(v, str)}
    if not texts or not texts <= _NON_FINITE_TEXT:
        return None
    try:
        return np.asarray(values, dtype=np.float64)
    except (ValueError, TypeError):
        return None


def _fill_value(arr: np.ndarray, default: Any) -> Any:
    if arr.dtype == object:
        if isinstance(default, (str, bytes)):
            return default.encode() if isinstance(default, str) else default
        return _json_text(default)
    src = np.asarray(default)
    if src.dtype.kind in "biuf" and np.can_cast(src.dtype, arr.dtype, "same_kind"):
        try:
            return np.broadcast_to(src.astype(arr.dtype), arr.shape[1:])
        except ValueError:
            pass
    return {"f": np.nan, "b": False}.get(arr.dtype.kind, 0)


def _json_text(value: Any) -> bytes:
    return orjson.dumps(to_jsonable(value), default=str)


def datatype_of(arr: np.ndarray) -> str:
    """The V2 datatype of a numeric or object (BYTES) array."""
    if arr.dtype == object:
        return "BYTES"
    return _NAME_OF[(arr.dtype.kind, arr.dtype.itemsize)]


def encode_response(head: dict, outputs: list[tuple[str, np.ndarray, bool]]) -> tuple[bytes, int | None]:
    """The response body for ``head`` (model_name, id, parameters, ...) and ``(name, array,
    binary)`` outputs, and the JSON part's length when any output is binary (else None)."""
    entries, chunks = [], []
    for name, arr, binary in outputs:
        datatype = datatype_of(arr)
        entry: dict[str, Any] = {"name": name, "datatype": datatype, "shape": list(arr.shape)}
        if binary:
            raw = _to_binary(arr)
            entry["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            entry["data"] = _to_json_data(name, arr)
        entries.append(entry)
    header = orjson.dumps({**head, "outputs": entries}, option=_JSON_OPTS)
    if not chunks:
        return header, None
    return b"".join([header, *chunks]), len(header)


def _to_binary(arr: np.ndarray) -> bytes:
    if arr.dtype != object:
        return np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<")).tobytes()
    parts = []
    for element in arr.reshape(-1):
        parts.append(_LENGTH.pack(len(element)))
        parts.append(element)
    return b"".join(parts)


def _to_json_data(name: str, arr: np.ndarray) -> Any:
    flat = arr.reshape(-1)
    if arr.dtype == object:
        try:
            return [e.decode() for e in flat]
        except UnicodeDecodeError:
            raise BadInput(f"output {name!r} holds bytes that are not UTF-8 text and cannot travel in JSON",
                           "request it as binary data (parameters.binary_data: true)") from None
    if arr.dtype.kind == "f" and arr.dtype.itemsize == 2:  # orjson has no float16
        flat = flat.astype(np.float32)
    return np.ascontiguousarray(flat, dtype=flat.dtype.newbyteorder("="))

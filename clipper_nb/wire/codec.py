"""How inputs and outputs travel: JSON at the edge, numpy buffers between processes.

Pure functions, no I/O. A batch of same-shaped numeric inputs is stacked into one
contiguous array and sent as a single ZeroMQ frame (no JSON, no pickle between the
frontend and a worker); anything else (strings, bytes, ragged lists, dicts) travels
pickled. Outputs come back the same way.

Inputs that could not travel are refused at the edge (``BadInput``, a 400) before they
reach a queue: empty arrays (``[]``, ``[[], []]``), arrays of more than
``MAX_INPUT_DIMS`` dimensions, and ``json`` inputs nested deeper than ``MAX_JSON_DEPTH``.

**Model outputs in JSON** (:func:`to_jsonable`, the one encoding): numbers, strings,
booleans, ``None``, lists and dicts as themselves; numpy arrays, tuples and sets as
lists; numpy scalars as numbers; ``NaN``, ``inf`` and ``-inf`` as the strings
``"NaN"``, ``"Infinity"`` and ``"-Infinity"`` (JSON has no such numbers; Python's
``float()`` and JavaScript's ``Number()`` read these spellings back); bytes as base64
text; dict keys as strings; any other object as its ``str()``. A worker applies it to
outputs that are not one numeric array before they travel (bytes stay bytes until the
JSON edge), so the frontend only ever receives data; :func:`rows` applies it to the
rows of a numeric array that hold non-finite numbers.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import math
import pickle
from typing import Any, Sequence

import numpy as np

from clipper_nb.errors import BadInput

#: Clipper's input type names, and the numpy dtype each decodes to. JSON numbers are
#: doubles, so "floats" keeps float64 on the wire (nothing is lost before the model
#: sees it); a torch model casts to its own parameter dtype in the worker.
NUMERIC_TYPES: dict[str, np.dtype] = {
    "floats": np.dtype(np.float64),
    "doubles": np.dtype(np.float64),
    "float32": np.dtype(np.float32),
    "ints": np.dtype(np.int64),
    "integers": np.dtype(np.int64),
}
OTHER_TYPES = ("strings", "bytes", "json", "records")
#: Most named fields of one ``records`` input (a row of a table).
MAX_RECORD_FIELDS = 1024
INPUT_TYPES = tuple(NUMERIC_TYPES) + OTHER_TYPES
#: Most dimensions of one numeric input: a batch stacks inputs along one more axis, and
#: numpy arrays have at most 64 (32 before numpy 2).
MAX_INPUT_DIMS = 31
#: Deepest nesting of a ``json`` input (lists and dicts): pickling a batch and hashing
#: its cache key recurse once per level.
MAX_JSON_DEPTH = 100
#: The JSON spellings of the floats JSON has no numbers for.
NON_FINITE = {"nan": "NaN", "inf": "Infinity", "-inf": "-Infinity"}


def check_input_type(input_type: str) -> str:
    if input_type not in INPUT_TYPES:
        raise BadInput(
            f"unknown input_type {input_type!r}",
            f"use one of: {', '.join(INPUT_TYPES)}",
        )
    return input_type


def decode_input(input_type: str, x: Any, shape: Sequence[int] | None = None) -> Any:
    """Turn one JSON input into what the model receives, or raise ``BadInput``.

    ``shape`` is the model's expected shape of one input (e.g. ``(784,)``) when known;
    a mismatch is the caller's mistake and says so.
    """
    dtype = NUMERIC_TYPES.get(input_type)
    if dtype is not None:
        if not isinstance(x, (list, tuple, np.ndarray)):
            # Clipper's numeric inputs are vectors (or arrays): a bare number is a mistake
            # that would otherwise reach the model as a 0-d array and fail it.
            raise BadInput(
                f"input must be a list of numbers for input_type {input_type!r}",
                f"got {type(x).__name__}",
            )
        arr = _flat_floats(x, dtype)
        if arr is None:
            try:
                arr = np.asarray(x, dtype=dtype)
            except (ValueError, TypeError, OverflowError) as e:
                raise BadInput(
                    f"input is not a regular array of numbers for input_type {input_type!r}",
                    str(e),
                ) from None
        if arr.dtype == object:
            raise BadInput("input is a ragged list", "every row must have the same length")
        _check_array(arr)
        if shape is not None and tuple(arr.shape) != tuple(shape):
            if len(shape) == 1 and arr.ndim == 1:
                raise BadInput(
                    f"wrong feature count: the model expects {shape[0]} features, got {arr.shape[0]}",
                    "send one row of the model's features in 'input' (or a list of rows in 'input_batch')",
                )
            raise BadInput(
                f"wrong input shape: the model expects {list(shape)}, got {list(arr.shape)}",
                "reshape the input to the model's input shape",
            )
        return arr
    if input_type == "strings":
        if not isinstance(x, str):
            raise BadInput("input must be a string for input_type 'strings'", f"got {type(x).__name__}")
        return x
    if input_type == "bytes":
        if not isinstance(x, str):
            raise BadInput("input must be a base64 string for input_type 'bytes'", f"got {type(x).__name__}")
        try:
            return base64.b64decode(x, validate=True)
        except ValueError as e:
            raise BadInput("input is not valid base64", str(e)) from None
    if input_type == "records":
        return decode_record(x, shape)
    _check_depth(x)
    return x  # "json": any JSON value, passed as is


def decode_record(x: Any, fields: Sequence[str] | None = None) -> dict:
    """One row of a table: ``{"age": 41, "city": "Lyon"}``, its values plain scalars. With the
    model's ``fields`` (scikit-learn's ``feature_names_in_``) known, it must name exactly those,
    so a pipeline selecting columns by name never meets a column it does not know."""
    if not isinstance(x, dict):
        raise BadInput("input must be an object of named fields for input_type 'records'",
                       f'got {type(x).__name__}; send e.g. {{"input": {{"age": 41, "city": "Lyon"}}}}')
    if not x or len(x) > MAX_RECORD_FIELDS:
        raise BadInput(f"a record has 1 to {MAX_RECORD_FIELDS} fields, got {len(x)}")
    bad = [k for k, v in x.items() if not isinstance(v, (str, int, float, bool)) and v is not None]
    if bad:
        raise BadInput(f"record field(s) {', '.join(map(repr, bad[:5]))} are not numbers, strings, booleans or null",
                       "a record is one row: one plain value per field")
    if fields:
        missing = [f for f in fields if f not in x]
        unknown = [k for k in x if k not in set(fields)]
        if missing or unknown:
            raise BadInput("the record's fields do not match the model's "
                           + "; ".join(part for part in (f"missing: {', '.join(missing[:10])}" if missing else "",
                                                         f"unknown: {', '.join(unknown[:10])}" if unknown else "")
                                       if part),
                           f"the model was fitted on: {', '.join(fields[:20])}")
    return x


def _check_array(arr: np.ndarray) -> None:
    """Refuse a numeric input that holds no number or has too many dimensions to batch."""
    if arr.size == 0:
        raise BadInput(f"input is empty (shape {list(arr.shape)})", "send at least one number")
    if arr.ndim > MAX_INPUT_DIMS:
        raise BadInput(f"input is nested {arr.ndim} deep; at most {MAX_INPUT_DIMS} dimensions are served",
                       "flatten the input")


def _check_depth(x: Any) -> None:
    """Refuse a ``json`` input nested deeper than ``MAX_JSON_DEPTH`` (iteratively: the
    check itself must not recurse)."""
    level = [x]
    for depth in range(MAX_JSON_DEPTH + 1):
        level = [v for c in level if isinstance(c, (list, dict)) for v in (c.values() if isinstance(c, dict) else c)]
        if not level:
            return
    raise BadInput(f"input is nested more than {MAX_JSON_DEPTH} deep", "flatten the input")


def _flat_floats(x: Any, dtype: np.dtype) -> np.ndarray | None:
    """The common query, a flat list of JSON numbers, as a float array; else None.

    ``np.fromiter`` converts such a list 2-3x sooner than ``np.asarray``, and every
    query pays it. Anything else (rows of rows, odd items) returns None and takes
    the general path, which decides and explains.
    """
    if type(x) is not list or dtype.kind != "f":
        return None
    try:
        return np.fromiter(x, dtype=dtype, count=len(x))
    except (ValueError, TypeError, OverflowError):
        return None


def input_digest(x: Any) -> bytes:
    """A 16-byte digest of an input's bytes, dtype and shape: the cache key's heart."""
    h = hashlib.blake2b(digest_size=16)
    if isinstance(x, np.ndarray):
        h.update(x.dtype.str.encode())
        h.update(repr(x.shape).encode())
        h.update(np.ascontiguousarray(x).data)
    elif isinstance(x, bytes):
        h.update(b"b")
        h.update(x)
    elif isinstance(x, str):
        h.update(b"s")
        h.update(x.encode())
    else:
        h.update(b"j")
        h.update(json.dumps(x, sort_keys=True, default=repr).encode())
    return h.digest()


# ---------------------------------------------------------------- batches on the wire


def encode_batch(items: Sequence[Any]) -> list[bytes | memoryview]:
    """Frames for a batch: ``[header, payload]``. Same-shaped arrays are stacked."""
    first = items[0]
    if isinstance(first, np.ndarray) and all(
        isinstance(x, np.ndarray) and x.shape == first.shape and x.dtype == first.dtype for x in items
    ):
        arr = np.stack(items) if len(items) > 1 else first[None, ...]
        return encode_array(arr)
    header = json.dumps({"kind": "pickle", "n": len(items)}).encode()
    return [header, pickle.dumps(list(items), protocol=5)]


def encode_array(arr: np.ndarray) -> list[bytes | memoryview]:
    arr = np.ascontiguousarray(arr)
    header = json.dumps({"kind": "ndarray", "dtype": arr.dtype.str, "shape": list(arr.shape)}).encode()
    # memoryview cannot cast a view with a zero in its shape (an empty output row)
    return [header, memoryview(arr).cast("B") if arr.size else b""]


def decode_batch(header: bytes, payload: bytes | memoryview) -> np.ndarray | list:
    """Inverse of ``encode_batch``: an ndarray whose first axis is the batch, or a list."""
    meta = json.loads(header)
    if meta["kind"] == "ndarray":
        return np.frombuffer(payload, dtype=np.dtype(meta["dtype"])).reshape(meta["shape"])
    if meta["kind"] == "pickle":
        # Data only: what a worker sends the frontend must not be able to run code there.
        return _DataUnpickler(io.BytesIO(payload)).load()
    raise ValueError(f"unknown batch encoding {meta['kind']!r}")


#: The only globals a batch's pickle may name: containers, numbers and numpy arrays/scalars.
_DATA_GLOBALS = {
    ("builtins", n) for n in ("set", "frozenset", "bytearray", "complex", "slice", "range")
} | {("collections", "OrderedDict"), ("numpy", "dtype"), ("numpy", "ndarray")} | {
    (f"numpy.{core}.{mod}", n) for core in ("core", "_core")
    for mod, n in (("multiarray", "_reconstruct"), ("multiarray", "scalar"), ("numeric", "_frombuffer"))
}


class _DataUnpickler(pickle.Unpickler):
    """``pickle.loads`` restricted to data: a pickle naming any other global is refused."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _DATA_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not data: a batch carries lists, dicts, strings, "
                                     "numbers, bytes and numpy arrays only")


def encode_outputs(outputs: Any) -> list[bytes | memoryview]:
    """Frames for a model's outputs: a numeric ndarray as one buffer; anything else as
    the pickled list of each output in its JSON encoding (:func:`to_jsonable`, bytes kept),
    so that the frontend's data-only unpickler takes whatever the model returned."""
    if isinstance(outputs, np.ndarray) and outputs.dtype != object:
        return encode_array(outputs)
    values = [to_jsonable(v, keep_bytes=True) for v in outputs]
    return [json.dumps({"kind": "pickle"}).encode(), pickle.dumps(values, protocol=5)]


def rows(outputs: np.ndarray | list) -> list:
    """Split a decoded batch of outputs into one value per query; rows of a float array
    that hold NaN or infinities take their JSON encoding (:func:`to_jsonable`)."""
    if not isinstance(outputs, np.ndarray):
        return outputs
    if outputs.dtype.kind not in "fc" or not outputs.size:
        return list(outputs)
    finite = np.isfinite(outputs).reshape(len(outputs), -1).all(axis=1)
    if finite.all():
        return list(outputs)
    return [row if ok else to_jsonable(row) for row, ok in zip(outputs, finite)]


def to_jsonable(x: Any, keep_bytes: bool = False) -> Any:
    """``x`` as a JSON value, in the encoding the module docstring documents.

    ``to_jsonable([np.float32(1.5), float("nan"), b"\\x00", (1, 2)])`` is
    ``[1.5, "NaN", "AA==", [1, 2]]``. ``keep_bytes``: leave bytes as they are (what a
    worker sends: the frontend encodes them at the JSON edge).
    """
    if x is None or isinstance(x, (bool, int, str)):
        return x
    if isinstance(x, float):
        return x if math.isfinite(x) else NON_FINITE[repr(float(x))]
    if isinstance(x, (bytes, bytearray)):
        return bytes(x) if keep_bytes else base64.b64encode(x).decode()
    if isinstance(x, np.ndarray):
        if x.dtype.kind in "biu" or (x.dtype.kind == "f" and np.isfinite(x).all()):
            return x.tolist()  # JSON numbers already: no walk over every element
        return to_jsonable(x.tolist(), keep_bytes)
    if isinstance(x, np.generic):
        return to_jsonable(x.item(), keep_bytes)
    if isinstance(x, (list, tuple, set, frozenset)):
        return [to_jsonable(v, keep_bytes) for v in x]
    if isinstance(x, dict):
        return {str(k): to_jsonable(v, keep_bytes) for k, v in x.items()}
    tolist = getattr(x, "tolist", None)  # torch tensors, pandas objects
    if callable(tolist):
        return to_jsonable(tolist(), keep_bytes)
    return str(x)

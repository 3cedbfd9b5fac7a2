"""How inputs and outputs travel: JSON at the edge, numpy buffers between processes.

Pure functions, no I/O. A batch of same-shaped numeric inputs is stacked into one
contiguous array and sent as a single ZeroMQ frame (no JSON, no pickle between the
frontend and a worker); anything else (strings, bytes, ragged lists, dicts) travels
pickled. Outputs come back the same way.
"""

from __future__ import annotations

import base64
import hashlib
import json
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
OTHER_TYPES = ("strings", "bytes", "json")
INPUT_TYPES = tuple(NUMERIC_TYPES) + OTHER_TYPES


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
        if isinstance(x, (str, bytes, dict)) or x is None:
            raise BadInput(
                f"input must be a number or a list of numbers for input_type {input_type!r}",
                f"got {type(x).__name__}",
            )
        arr = _flat_floats(x, dtype)
        if arr is None:
            try:
                arr = np.asarray(x, dtype=dtype)
            except (ValueError, TypeError) as e:
                raise BadInput(
                    f"input is not a regular array of numbers for input_type {input_type!r}",
                    str(e),
                ) from None
        if arr.dtype == object:
            raise BadInput("input is a ragged list", "every row must have the same length")
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
    return x  # "json": any JSON value, passed as is


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
    return [header, memoryview(arr).cast("B")]


def decode_batch(header: bytes, payload: bytes | memoryview) -> np.ndarray | list:
    """Inverse of ``encode_batch``: an ndarray whose first axis is the batch, or a list."""
    meta = json.loads(header)
    if meta["kind"] == "ndarray":
        return np.frombuffer(payload, dtype=np.dtype(meta["dtype"])).reshape(meta["shape"])
    if meta["kind"] == "pickle":
        return pickle.loads(payload)
    raise ValueError(f"unknown batch encoding {meta['kind']!r}")


def encode_outputs(outputs: Any) -> list[bytes | memoryview]:
    """Frames for a model's outputs: numeric ndarrays as buffers, the rest pickled."""
    if isinstance(outputs, np.ndarray) and outputs.dtype != object:
        return encode_array(outputs)
    return [json.dumps({"kind": "pickle"}).encode(), pickle.dumps(list(outputs), protocol=5)]


def rows(outputs: np.ndarray | list) -> list:
    """Split a decoded batch of outputs into one value per query."""
    if isinstance(outputs, np.ndarray):
        return list(outputs)
    return outputs


def to_jsonable(x: Any) -> Any:
    """Numpy scalars and arrays, bytes and tuples into JSON values."""
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, (list, tuple)):
        return [to_jsonable(v) for v in x]
    if isinstance(x, dict):
        return {str(k): to_jsonable(v) for k, v in x.items()}
    if isinstance(x, bytes):
        return base64.b64encode(x).decode()
    if isinstance(x, float) and x != x:
        return None
    return x

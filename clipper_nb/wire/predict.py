"""The one predict path every replica backend shares: load an artifact folder, run a batch.

The worker process (``clipper_nb.containers.worker``) and the in-process test backend
(``clipper_nb.abstraction.inprocess``) both call :func:`load_dir` once and
:func:`run_frames` per batch, so a model behaves the same whichever backend runs it:
same unpickling, same output checks, same codec round trip for inputs and outputs.

::

    predictor = load_dir(artifact_dir, device, threads)       # raises: the model cannot load
    out_frames, meta = run_frames(predictor, header, payload)  # raises: the model failed
    outputs = decode_outputs(*out_frames)                      # one value per input
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import numpy as np

from clipper_nb.wire import artifact, codec

__all__ = ["decode_outputs", "load_dir", "run", "run_frames", "write_dir"]

PAYLOAD_FILE = "model.pkl"
META_FILE = "meta.json"


def write_dir(path: str, payload: bytes, meta: dict) -> str:
    """Write an artifact folder (``model.pkl`` + ``meta.json``) as the store does; for tests and tools."""
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, PAYLOAD_FILE), "wb") as f:
        f.write(payload)
    with open(os.path.join(path, META_FILE), "w") as f:
        json.dump(meta, f, indent=1)
    return path


def load_dir(artifact_dir: str, device: str = "auto", threads: int | None = None) -> artifact.Predictor:
    """Load the artifact in ``artifact_dir``; raises whatever unpickling or placing the model raised."""
    with open(os.path.join(artifact_dir, META_FILE)) as f:
        meta = json.load(f)
    with open(os.path.join(artifact_dir, PAYLOAD_FILE), "rb") as f:
        payload = f.read()
    return artifact.load(payload, meta, device, threads)


def run(predictor: artifact.Predictor, batch: Any) -> tuple[Any, float]:
    """``(outputs, compute_ms)`` for a decoded batch; raises when the model raised or
    returned something other than exactly one output per input."""
    n = len(batch)
    start = time.perf_counter()
    outputs = predictor.predict(batch)
    compute_ms = (time.perf_counter() - start) * 1000
    if isinstance(outputs, (str, bytes, bytearray, dict)) or not hasattr(outputs, "__len__"):
        # A string has a length too: taken as the batch's outputs, its characters would
        # answer the queries one each whenever the lengths happened to match.
        raise TypeError(f"the model returned one {type(outputs).__name__} for the batch, not a list or array "
                        f"of outputs: return one output per input, e.g. [{'spam'!r}] for a batch of one")
    if not isinstance(outputs, np.ndarray) and callable(getattr(outputs, "to_numpy", None)):
        outputs = outputs.to_numpy()  # pandas: a DataFrame's rows, not its column names
    got = len(outputs)
    if got != n:
        raise ValueError(f"the model returned {got} outputs for a batch of {n} inputs; "
                         "it must return exactly one output per input")
    if not isinstance(outputs, (list, tuple)) and not hasattr(outputs, "dtype"):
        outputs = list(outputs)
    return outputs, compute_ms


def run_frames(predictor: artifact.Predictor, header: bytes, payload: Any) -> tuple[list, dict]:
    """Decode a batch's frames, predict, encode the outputs: ``(frames, {"n", "compute_ms"})``."""
    batch = codec.decode_batch(header, payload)
    outputs, compute_ms = run(predictor, batch)
    return codec.encode_outputs(outputs), {"n": len(batch), "compute_ms": compute_ms}


def decode_outputs(header: bytes, payload: Any) -> list:
    """A reply's output frames as one value per input: numbers in numpy rows, anything
    else (and rows holding NaN or infinities) in :func:`codec.to_jsonable`'s encoding.
    Every backend hands the abstraction layer its outputs through here."""
    return codec.rows(codec.decode_batch(header, payload))

"""Model artifacts: package a live object in the deploying session, load it in a worker.

The deploying process (a notebook kernel, a script) calls :func:`package`; it never
runs on the server. The server only stores the bytes. The worker calls :func:`load`
and gets a :class:`Predictor` that maps a batch to a list of outputs.

Objects defined in ``__main__`` (a notebook) are pickled by value by cloudpickle. A
class imported from a plain module next to the notebook (``from mynet import Net``)
would be pickled by reference and fail to import in the worker, so such modules (any
module that is not part of an installed distribution or the standard library) are
registered for pickling by value before dumping.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import sys
import sysconfig
import time
import traceback
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from clipper_nb.errors import DeployError

KINDS = ("sklearn", "torch", "callable")
SKLEARN_METHODS = ("predict", "predict_proba", "predict_log_proba", "decision_function", "transform", "score_samples")


def detect_kind(obj: Any) -> str:
    """``"torch"`` for an ``nn.Module``, ``"sklearn"`` for an estimator, else ``"callable"``."""
    if "torch" in sys.modules:
        import torch

        if isinstance(obj, torch.nn.Module):
            return "torch"
    # Duck typing: anything with an estimator's prediction method is served like one
    # (xgboost, lightgbm and hand-written models share scikit-learn's interface).
    if type(obj).__module__.split(".")[0] == "sklearn" or any(
        callable(getattr(obj, m, None)) for m in SKLEARN_METHODS
    ):
        return "sklearn"
    if callable(obj):
        return "callable"
    raise DeployError(
        f"cannot deploy an object of type {type(obj).__name__}",
        "deploy a scikit-learn estimator, a torch.nn.Module, or a function that maps a batch to a list of outputs",
    )


def default_method(obj: Any, kind: str, method: str | None) -> str | None:
    if kind != "sklearn":
        if method not in (None, "__call__", "forward"):
            if not callable(getattr(obj, method, None)):
                raise DeployError(f"{type(obj).__name__} has no method {method!r}")
            return method
        return None
    method = method or "predict"
    if not callable(getattr(obj, method, None)):
        have = [m for m in SKLEARN_METHODS if callable(getattr(obj, m, None))]
        raise DeployError(
            f"{type(obj).__name__} has no method {method!r}",
            f"choose one of: {', '.join(have) or 'none found'}",
        )
    return method


def input_shape(obj: Any, kind: str) -> list[int] | None:
    """The shape of one input when the model tells us (features of an estimator, a first Linear)."""
    if kind == "sklearn":
        n = getattr(obj, "n_features_in_", None)
        if n is None and hasattr(obj, "steps"):  # a Pipeline whose first step knows
            n = getattr(obj.steps[0][1], "n_features_in_", None)
        return [int(n)] if n is not None else None
    if kind == "torch":
        import torch

        for module in obj.modules():
            if isinstance(module, torch.nn.Linear):
                return [module.in_features]
            if not isinstance(module, (torch.nn.Sequential, torch.nn.Flatten)) and module is not obj:
                break
    return None


def feature_names(obj: Any) -> list[str] | None:
    """The column names a scikit-learn model was fitted on (``feature_names_in_``), if any."""
    names = getattr(obj, "feature_names_in_", None)
    if names is None and hasattr(obj, "steps"):  # a Pipeline whose first step knows
        names = getattr(obj.steps[0][1], "feature_names_in_", None)
    return [str(n) for n in names] if names is not None else None


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for dist in ("numpy", "scikit-learn", "torch", "cloudpickle", "clipper-nb", "pandas"):
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            pass
    return versions


def _register_local_modules(obj: Any) -> list[str]:
    """Register modules that live outside installed packages for pickling by value."""
    import cloudpickle

    installed = {os.path.realpath(p) for p in {sysconfig.get_path("purelib"), sysconfig.get_path("platlib"),
                                               sysconfig.get_path("stdlib"), sys.prefix, sys.base_prefix} if p}
    names = set()
    for cls in type(obj).__mro__:
        names.add(cls.__module__)
    if isinstance(getattr(obj, "__module__", None), str):  # a function from a local module
        names.add(obj.__module__)
    if hasattr(obj, "modules") and callable(obj.modules):  # torch: every submodule's class
        try:
            names.update(type(m).__module__ for m in obj.modules())
        except Exception:  # noqa: BLE001 - best effort, never block a deploy on this
            pass
    if hasattr(obj, "steps"):
        names.update(type(step).__module__ for _, step in obj.steps)
    registered = []
    for name in sorted(names):
        module = sys.modules.get(name)
        path = getattr(module, "__file__", None)
        if name == "__main__" or module is None or path is None:
            continue
        real = os.path.realpath(path)
        if any(real.startswith(root + os.sep) for root in installed):
            continue
        cloudpickle.register_pickle_by_value(module)
        registered.append(name)
    return registered


def package(obj: Any, method: str | None = None) -> tuple[bytes, dict]:
    """Pickle ``obj`` for a worker and describe it; raise ``DeployError`` naming the cause."""
    import cloudpickle

    kind = detect_kind(obj)
    method = default_method(obj, kind, method)
    if kind == "torch":
        obj.eval()
    by_value = _register_local_modules(obj)
    try:
        payload = cloudpickle.dumps(obj, protocol=5)
    except Exception as e:  # noqa: BLE001 - any pickling failure is the user's to fix
        raise DeployError(
            f"cannot pickle the model: {type(e).__name__}: {e}",
            "the model holds something that cannot be serialised (an open file, a lock, a socket, a generator); "
            "remove it or deploy a function that builds what it needs",
        ) from None
    meta = {
        "kind": kind,
        "method": method,
        "input_shape": input_shape(obj, kind),
        "feature_names": feature_names(obj),
        "object_type": f"{type(obj).__module__}.{type(obj).__qualname__}",
        "versions": library_versions(),
        "python_executable": sys.executable,
        "cwd": os.getcwd(),
        "pickled_by_value": by_value,
        "created": time.time(),
    }
    return payload, meta


# ---------------------------------------------------------------- worker side


@dataclass
class Predictor:
    """A loaded model: ``predict(batch) -> outputs`` of the same length."""

    kind: str
    device: str
    predict: Callable[[Any], Any]


def resolve_device(device: str) -> str:
    if device in ("", "auto"):
        try:
            import torch

            return "cuda" if torch.cuda.is_available() else "cpu"
        except ImportError:
            return "cpu"
    return device


def load(payload: bytes, meta: dict, device: str = "auto", threads: int | None = None) -> Predictor:
    """Unpickle an artifact and wrap it; errors name the library versions that differ."""
    import pickle

    if meta["kind"] == "torch":
        import torch  # noqa: F401 - unpickling a module needs torch imported first
    try:
        obj = pickle.loads(payload)
    except Exception as e:
        raise RuntimeError(f"cannot load the model: {type(e).__name__}: {e}{_version_note(meta)}") from e
    kind, method = meta["kind"], meta.get("method")
    if kind == "torch":
        return _torch_predictor(obj, device, threads)
    fn = getattr(obj, method) if method else obj
    if meta.get("input_type") == "records":
        fn = _records_as_frame(fn, meta.get("feature_names"))
    return Predictor(kind, "cpu", fn)


def _records_as_frame(fn: Callable[[Any], Any], columns: list[str] | None) -> Callable[[Any], Any]:
    """A ``records`` model gets its batch as one pandas DataFrame (a row per query, the
    columns in the order the model was fitted on), as a pipeline selecting columns by name needs."""
    import pandas as pd

    def predict(batch: Any) -> Any:
        return fn(pd.DataFrame.from_records(list(batch), columns=columns))

    return predict


def _version_note(meta: dict) -> str:
    here = library_versions()
    diffs = [f"{k} {v} at deploy, {here.get(k, 'missing')} here"
             for k, v in meta.get("versions", {}).items() if here.get(k) != v and k != "clipper-nb"]
    return ("; library versions differ: " + ", ".join(diffs)) if diffs else ""


def _torch_predictor(module: Any, device: str, threads: int | None = None) -> Predictor:
    import torch

    if threads:
        # Replicas share the machine's cores: R replicas each using every core thrash
        # (batches ran ~5x slower with 2 replicas x 2 threads on 2 cores).
        torch.set_num_threads(threads)
    device = resolve_device(device)
    module = module.to(device).eval()
    try:
        dtype = next(module.parameters()).dtype
    except StopIteration:
        dtype = torch.float32

    def predict(batch: Any) -> Any:
        with torch.inference_mode():
            if isinstance(batch, np.ndarray):
                x = torch.from_numpy(np.ascontiguousarray(batch))
                x = x.to(device=device, dtype=dtype if x.is_floating_point() else x.dtype)
                out = module(x)
            else:
                out = module(batch)
            if isinstance(out, torch.Tensor):
                return out.detach().to("cpu").numpy()
            return out

    return Predictor("torch", device, predict)


def format_exception(e: BaseException) -> str:
    return "".join(traceback.format_exception_only(type(e), e)).strip()

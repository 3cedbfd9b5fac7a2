"""The four workloads as every peer server loads them: the same weights everywhere.

``bench_peers.py`` builds the models once from ``_workloads.py`` (fixed seeds) and
exports them with :func:`export` into a folder of plain arrays (``.npz``): the
LogisticRegression's ``coef_``, ``intercept_`` and ``classes_``, and the MLP's
weights. Each server under comparison (the bare Tornado floor, MLServer's custom
runtime, Ray Serve's deployment) copies this file next to its own code and calls
:func:`load`, which rebuilds the same model from those arrays: no pickle crosses
virtualenvs with different scikit-learn versions. clipper-nb deploys the
``_workloads.py`` objects themselves, built from the same seeds.

This file must import nothing from the benchmark or clipper-nb: only numpy, and
scikit-learn or torch for those two workloads.
"""

from __future__ import annotations

import os
import time
from typing import Any, Callable

import numpy as np

FEATURES = 784
SLEEP_BASE_S = 0.005
SLEEP_PER_ROW_S = 0.00002
WORKLOADS = ("noop", "sklearn", "torch", "sleep")


def export(model_dir: str) -> None:
    """Write ``sklearn.npz`` and ``torch.npz`` built by ``_workloads.py`` into ``model_dir``."""
    import _workloads  # only in the benchmark's own process

    os.makedirs(model_dir, exist_ok=True)
    lr = _workloads.build_sklearn()
    np.savez(os.path.join(model_dir, "sklearn.npz"), coef=lr.coef_, intercept=lr.intercept_,
             classes=lr.classes_)
    mlp = _workloads.build_torch()
    np.savez(os.path.join(model_dir, "torch.npz"),
             **{k.replace(".", "_"): v.detach().numpy() for k, v in mlp.state_dict().items()})


def _sklearn(model_dir: str) -> Callable[[np.ndarray], Any]:
    from sklearn.linear_model import LogisticRegression

    arrays = np.load(os.path.join(model_dir, "sklearn.npz"))
    lr = LogisticRegression()
    lr.coef_, lr.intercept_, lr.classes_ = arrays["coef"], arrays["intercept"], arrays["classes"]
    lr.n_features_in_ = arrays["coef"].shape[1]
    return lr.predict


def _torch(model_dir: str) -> Callable[[np.ndarray], Any]:
    import torch

    torch.set_num_threads(1)  # one core per replica, as clipper-nb's workers (OMP_NUM_THREADS=1)
    arrays = np.load(os.path.join(model_dir, "torch.npz"))
    module = torch.nn.Sequential(torch.nn.Linear(FEATURES, 1024), torch.nn.ReLU(),
                                 torch.nn.Linear(1024, 1024), torch.nn.ReLU(),
                                 torch.nn.Linear(1024, 10)).eval()
    module.load_state_dict({k.replace("_", "."): torch.from_numpy(arrays[k]) for k in arrays.files})

    def predict(batch: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return module(torch.from_numpy(np.asarray(batch, dtype=np.float32))).numpy()

    return predict


def _sleep(batch: Any) -> np.ndarray:
    time.sleep(SLEEP_BASE_S + SLEEP_PER_ROW_S * len(batch))
    return np.zeros(len(batch))


def _noop(batch: Any) -> np.ndarray:
    return np.zeros(len(batch))


def load(name: str, model_dir: str) -> Callable[[np.ndarray], Any]:
    """``predict(batch)`` for workload ``name``: an (n, 784) array in, n outputs out."""
    if name == "sklearn":
        return _sklearn(model_dir)
    if name == "torch":
        return _torch(model_dir)
    if name == "sleep":
        return _sleep
    if name == "noop":
        return _noop
    raise ValueError(f"unknown workload {name!r}")


def row_output(y: Any) -> Any:
    """One row's output as JSON-ready Python (a number, or a list for the MLP's logits)."""
    y = np.asarray(y)
    return y.item() if y.ndim == 0 else y.tolist()

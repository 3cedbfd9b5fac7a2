"""The benchmark's four models, built in code, and their in-process compute limit.

* ``sklearn``: LogisticRegression on 784 features, 10 classes (fitted on random data:
  the cost of ``predict`` does not depend on what it learned);
* ``torch``: an MLP 784-1024-1024-10 on CPU (random weights), one intra-op thread
  (one core per replica, as in Clipper's containers);
* ``sleep``: a batch costs 5 ms + 0.02 ms per row (``time.sleep``), the paper's
  shape of a model whose per-batch overhead batching amortises;
* ``noop``: returns zeros; what is left is the serving system's own cost.

Reference (b), the compute limit, is the model's throughput called directly in
this process on ready-made float64 batches: no HTTP, no queue, no worker.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

FEATURES = 784
SLEEP_BASE_S = 0.005
SLEEP_PER_ROW_S = 0.00002


def sleep_model(batch: Any) -> np.ndarray:
    """5 ms + 0.02 ms per row, then one zero per row."""
    time.sleep(SLEEP_BASE_S + SLEEP_PER_ROW_S * len(batch))
    return np.zeros(len(batch))


def noop_model(batch: Any) -> np.ndarray:
    """Zeros, one per row: the serving system's own cost and nothing else."""
    return np.zeros(len(batch))


def build_sklearn() -> Any:
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    X = rng.random((2000, FEATURES))
    y = rng.integers(0, 10, 2000)
    with warnings.catch_warnings():  # it need not converge: predict costs the same
        warnings.simplefilter("ignore")
        return LogisticRegression(max_iter=30).fit(X, y)


def build_torch() -> Any:
    import torch

    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(FEATURES, 1024), torch.nn.ReLU(),
                               torch.nn.Linear(1024, 1024), torch.nn.ReLU(),
                               torch.nn.Linear(1024, 10)).eval()


@dataclass
class Workload:
    """A model to deploy and the function that runs one batch of it in process."""

    name: str
    obj: Any
    predict: Callable[[np.ndarray], Any]


def build(name: str) -> Workload:
    """Build workload ``name`` (``sklearn``, ``torch``, ``sleep`` or ``noop``)."""
    if name == "sklearn":
        model = build_sklearn()
        return Workload(name, model, model.predict)
    if name == "torch":
        import torch

        torch.set_num_threads(1)  # the worker gets OMP_NUM_THREADS=1 too
        module = build_torch()

        def predict(batch: np.ndarray) -> np.ndarray:
            with torch.inference_mode():
                return module(torch.from_numpy(batch).float()).numpy()

        return Workload(name, module, predict)
    if name == "sleep":
        return Workload(name, sleep_model, sleep_model)
    if name == "noop":
        return Workload(name, noop_model, noop_model)
    raise ValueError(f"unknown workload {name!r}")


def compute_limit(predict: Callable[[np.ndarray], Any], batch_sizes: list[int],
                  budget_s: float = 0.4) -> dict[int, float]:
    """Rows per second of ``predict`` at each batch size, each timed for ``budget_s``."""
    from threadpoolctl import threadpool_limits

    rng = np.random.default_rng(1)
    out = {}
    with threadpool_limits(1):  # one core, as the workers have (OMP_NUM_THREADS=1)
        for n in batch_sizes:
            batch = rng.random((n, FEATURES))
            predict(batch)  # warm up (lazy init, caches)
            calls, start = 0, time.perf_counter()
            while (elapsed := time.perf_counter() - start) < budget_s:
                predict(batch)
                calls += 1
            out[n] = calls * n / elapsed
    return out

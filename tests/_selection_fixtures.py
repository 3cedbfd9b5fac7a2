"""Synthetic models and drivers for the model-selection scenarios (issue 4).

The models are deterministic functions of their input, so every scenario is exactly
reproducible and its error rates are known in advance. An input row is
``[q, group]``: ``q`` is the query index (so "noise for queries 5,000-10,000" is a
property of the model, not of timing) and ``group`` the user group of the contexts
scenario. The true label of query ``q`` is :func:`true_label`.

These classes live in a module outside any installed package, so
``clipper_nb.wire.artifact`` pickles them by value and the worker processes need not
import the tests.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from clipper_nb.errors import ModelError

N_CLASSES = 10
_MASK = (1 << 64) - 1


def _mix(q: int, salt: int) -> int:
    """A 64-bit hash of (q, salt) (splitmix64's finaliser): cheap, deterministic, well spread."""
    z = (q * 0x9E3779B97F4A7C15 + salt * 0xBF58476D1CE4E5B9 + 0x94D049BB133111EB) & _MASK
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK
    return z ^ (z >> 31)


def _unit(q: int, salt: int) -> float:
    """A uniform number in [0, 1) that depends only on (q, salt)."""
    return _mix(q, salt) / 2.0**64


def true_label(q: int) -> int:
    """The label of query ``q``: a fixed pseudo-random class."""
    return _mix(q, 0) % N_CLASSES


def wrong_label(q: int, salt: int) -> int:
    """A class other than ``true_label(q)``, different per ``salt`` (models err differently)."""
    return (true_label(q) + 1 + _mix(q, 7_000 + salt) % (N_CLASSES - 1)) % N_CLASSES


@dataclass
class SyntheticClassifier:
    """Errs on a ``error`` share of queries, independently of other seeds.

    Inside ``noise`` (a half-open range of query indices) it answers a uniformly
    random class instead (the paper's "model starts returning noise"). ``sleep_s``
    makes every batch take that long (a straggler).
    """

    seed: int
    error: float
    noise: tuple[int, int] | None = None
    sleep_s: float = 0.0

    def predict_one(self, q: int) -> int:
        if self.noise is not None and self.noise[0] <= q < self.noise[1]:
            return _mix(q, 5_000 + self.seed) % N_CLASSES
        if _unit(q, 1_000 + self.seed) < self.error:
            return wrong_label(q, self.seed)
        return true_label(q)

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        if self.sleep_s:
            time.sleep(self.sleep_s)
        return np.asarray([self.predict_one(int(row[0])) for row in batch], dtype=np.int64)


@dataclass
class CrashingClassifier(SyntheticClassifier):
    """A :class:`SyntheticClassifier` that fails hard (raises: the query path gets a
    ``ModelError``) on every batch holding a query whose position in its stream,
    ``q % period``, lies in ``crash`` (half-open). Each seed of a scenario uses its own
    stream of queries ``seed * period + i``, so the same deployed model serves every seed.
    """

    crash: tuple[int, int] = (0, 0)
    period: int = 20_000

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        if any(self.crash[0] <= int(row[0]) % self.period < self.crash[1] for row in batch):
            raise RuntimeError("the model crashed")
        return super().__call__(batch)


@dataclass
class ResidueClassifier:
    """Errs exactly on the queries of group ``g`` whose per-group index ``k`` has
    ``k % 10`` in ``wrong[g]`` (with queries alternating between groups 0 and 1,
    ``k = q // 2``). Exact error counts, rather than sampled ones, make the app-wide
    state of the contexts scenario neutral by construction instead of by luck."""

    seed: int
    wrong: dict[int, tuple[int, ...]]

    def predict_one(self, q: int, group: int) -> int:
        if (q // 2) % 10 in self.wrong.get(group, ()):
            return wrong_label(q, self.seed)
        return true_label(q)

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return np.asarray([self.predict_one(int(r[0]), int(r[1])) for r in batch], dtype=np.int64)


def query(q: int, group: int = 0) -> list[float]:
    """The input row of query ``q``."""
    return [float(q), float(group)]


def warm(client: Any, app: str, qs: range, groups: Callable[[int], int] | None = None,
         chunk: int = 1_000) -> None:
    """Have every linked model predict every query once, in large batches through the
    workers, so that the per-query loop that follows finds each prediction in the cache.

    The app's SLO must be generous (seconds): a row that misses its deadline is not
    computed, and so not cached.
    """
    qs = list(qs)
    for i in range(0, len(qs), chunk):
        part = qs[i:i + chunk]
        rows = [query(q, 0 if groups is None else groups(q)) for q in part]
        answers = client.predict_batch(app, rows)
        assert not any(a["default"] for a in answers), "warm-up rows missed their deadline"


@dataclass
class Step:
    """What one query and its feedback produced."""

    q: int
    output: Any
    confidence: float | None
    models_used: list[str]
    losses: dict[str, float]
    weights: dict[str, float]


@dataclass
class Outcome:
    """What one query and its feedback produced when a model may fail hard."""

    q: int
    #: the query got an error or the default output
    failed: bool
    #: failed, or answered a wrong class
    bad: bool
    #: the watched model's normalised weight and selection probability after the feedback
    weight: float
    probability: float


async def predict_then_feedback_through_failures(engine: Any, app: str, qs: list[int], watch: str) -> list[Outcome]:
    """For each query in order: predict (an error counts as a failed query), then send
    its true label as feedback; record the weight of the model ``watch``."""
    outcomes = []
    for q in qs:
        x, label = query(q), true_label(q)
        try:
            answer = await engine.predict(app, x)
            failed = bool(answer["default"])
            bad = failed or answer["output"] != label
        except ModelError:
            failed = bad = True
        fb = await engine.feedback(app, x, label)
        outcomes.append(Outcome(q, failed, bad, fb["weights"][watch], fb["probabilities"][watch]))
    return outcomes


def run_on_server_loop(server: Any, coro: Any, timeout: float = 240.0) -> Any:
    """Run ``coro`` on the in-process server's event loop and wait for its result."""
    return asyncio.run_coroutine_threadsafe(coro, server._loop).result(timeout)


async def predict_then_feedback(engine: Any, app: str, qs: list[int], groups: Callable[[int], int] | None = None,
                                contexts: Callable[[int], str | None] | None = None) -> list[Step]:
    """For each query in order: predict, then send its true label as feedback.

    Runs on the server's loop and calls the Engine directly (the HTTP layer is
    exercised elsewhere); the predictions come from the real workers, through the cache.
    """
    steps = []
    for q in qs:
        g = 0 if groups is None else groups(q)
        ctx = None if contexts is None else contexts(q)
        x = query(q, g)
        answer = await engine.predict(app, x, ctx)
        assert not answer["default"], answer
        fb = await engine.feedback(app, x, true_label(q), ctx)
        steps.append(Step(q, answer["output"], answer.get("confidence"), answer.get("models_used", []),
                          fb["losses"], fb["weights"]))
    return steps

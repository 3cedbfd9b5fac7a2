"""Model selection: which linked models answer a query, and how their answers combine.

This is the pure logic of Clipper's model-selection layer (Crankshaw et al., NSDI
2017, section 5): bandit policies that learn from feedback which of an application's
models to trust, one :class:`SelectionState` per (application, context). Nothing here
does I/O, reads a clock or owns randomness; the engine passes a ``random.Random`` to
:meth:`Policy.select`, so every decision can be replayed in a test.

Example::

    policy = make_policy("exp4", eta=0.1)
    state = policy.init_state(["svm", "forest"])
    policy.select(state, random.Random(0))                  # ['svm', 'forest']
    policy.combine(state, {"svm": 3, "forest": 3}).output    # 3
    loss = make_loss("zero_one")
    state = policy.update(state, {"svm": loss(3, 7), "forest": loss(5, 5)})

    exp3 = make_policy("exp3")
    draw = exp3.draw(exp3.init_state(["svm", "forest"]), random.Random(0))
    draw                                    # Draw(models=('forest',), probabilities=(0.5,))
    exp3.update(exp3.init_state(["svm", "forest"]), {"forest": 1.0}, draw)  # w /= e^(0.1 / 0.5)
"""

from __future__ import annotations

import copy
import functools
import json
import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from clipper_nb.wire.codec import to_jsonable

__all__ = [
    "LOSSES", "POLICIES", "Combined", "Draw", "EpsilonGreedyPolicy", "Exp3Policy", "Exp4Policy",
    "Option", "Policy", "SelectionState", "SinglePolicy", "ThompsonPolicy", "abs_loss",
    "combine_outputs", "make_loss", "make_policy", "normalised_weights", "to_jsonable", "zero_one_loss",
]

Loss = Callable[[Any, Any], float]

# Monte Carlo draws behind ThompsonPolicy.probabilities(): enough for a dashboard's
# two significant digits while staying around a millisecond for a handful of models.
_THOMPSON_DRAWS = 500


# --- values and losses ---------------------------------------------------------------

def _is_number(value: Any) -> bool:
    # bool is an int subclass, but True is a class label, not the number 1.
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_label(value: Any) -> bool:
    return isinstance(value, (str, int, bool))


def _is_vector(value: Any) -> bool:
    return isinstance(value, list) and len(value) > 0 and all(map(_is_number, value))


def _values_equal(a: Any, b: Any) -> bool:
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_values_equal(x, y) for x, y in zip(a, b))
    if isinstance(a, str) or isinstance(b, str):
        return isinstance(a, str) and isinstance(b, str) and a == b
    return bool(a == b)


def zero_one_loss(output: Any, label: Any) -> float:
    """0.0 when ``output`` equals ``label`` (lists and arrays elementwise), else 1.0."""
    return 0.0 if _values_equal(to_jsonable(output), to_jsonable(label)) else 1.0


def abs_loss(output: Any, label: Any, scale: float = 1.0) -> float:
    """``min(1, |output - label| / scale)``; equal-length number lists use the mean |diff|."""
    y, t = to_jsonable(output), to_jsonable(label)
    if _is_number(y) and _is_number(t):
        diff = abs(y - t)
    elif _is_vector(y) and _is_vector(t) and len(y) == len(t):
        diff = sum(abs(a - b) for a, b in zip(y, t)) / len(y)
    else:
        raise ValueError(f"the 'abs' loss needs numbers (or equal-length lists of numbers), "
                         f"got output {y!r} and label {t!r}; use 'zero_one' for class labels")
    # A NaN prediction is as wrong as a prediction can be, not a free pass.
    return 1.0 if math.isnan(diff) else min(1.0, diff / scale)


LOSSES: dict[str, Loss] = {"zero_one": zero_one_loss, "abs": abs_loss}


def make_loss(spec: str | Loss, scale: float = 1.0) -> Loss:
    """Return a loss ``f(output, label) -> float in [0, 1]``.

    ``spec`` names one of :data:`LOSSES` or is a callable; a callable's result is
    clipped into [0, 1] (NaN counts as 1) because the bandit updates assume bounded loss.
    ``scale`` is the distance that counts as fully wrong for ``"abs"``.
    """
    if not (_is_number(scale) and math.isfinite(scale) and scale > 0):
        raise ValueError(f"loss scale must be a finite number > 0, got {scale!r}")
    if callable(spec):
        @functools.wraps(spec)
        def clipped(output: Any, label: Any) -> float:
            value = float(spec(output, label))
            return 1.0 if math.isnan(value) else min(1.0, max(0.0, value))
        return clipped
    if spec == "abs":
        return functools.partial(abs_loss, scale=float(scale))
    if isinstance(spec, str) and spec in LOSSES:
        return LOSSES[spec]
    raise ValueError(f"unknown loss {spec!r}; valid losses: {', '.join(LOSSES)} "
                     f"(or pass a callable f(output, label) -> float)")


# --- state ---------------------------------------------------------------------------

def _check_models(models: list[str]) -> list[str]:
    models = list(models)
    if not all(isinstance(m, str) and m for m in models):
        raise ValueError(f"model names must be non-empty strings, got {models!r}")
    if len(set(models)) != len(models):
        raise ValueError(f"model names must be unique, got {models!r}")
    return models


def _log_mean_weight(log_weights: list[float]) -> float:
    top = max(log_weights)
    return top + math.log(sum(math.exp(x - top) for x in log_weights) / len(log_weights))


@dataclass
class SelectionState:
    """What a policy has learned for one (application, context); JSON-safe.

    Weights live in log space so that a million updates cannot underflow them; the
    dict order of ``log_weights`` is the model order given to ``init_state``.
    """

    log_weights: dict[str, float]
    counts: dict[str, int]
    cum_loss: dict[str, float]
    extra: dict[str, Any] = field(default_factory=dict)
    updates: int = 0

    @property
    def models(self) -> list[str]:
        """The models this state covers, in their original order."""
        return list(self.log_weights)

    def to_json(self) -> dict[str, Any]:
        """Return a plain dict that ``json.dumps`` accepts and :meth:`from_json` reads."""
        return {"log_weights": dict(self.log_weights), "counts": dict(self.counts),
                "cum_loss": dict(self.cum_loss), "extra": copy.deepcopy(self.extra),
                "updates": self.updates}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> SelectionState:
        """Rebuild a state saved by :meth:`to_json`; malformed input raises ValueError."""
        try:
            log_weights = {str(m): float(v) for m, v in d["log_weights"].items()}
            counts = {m: int(d.get("counts", {}).get(m, 0)) for m in log_weights}
            cum_loss = {m: float(d.get("cum_loss", {}).get(m, 0.0)) for m in log_weights}
            extra = copy.deepcopy(dict(d.get("extra", {})))
            updates = int(d.get("updates", 0))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ValueError(f"not a saved selection state ({exc!r}); "
                             f"expected the dict SelectionState.to_json() returns") from exc
        if not all(math.isfinite(v) for v in log_weights.values()):
            raise ValueError(f"saved log weights must be finite, got {log_weights}")
        return cls(log_weights, counts, cum_loss, extra, updates)

    def copy(self) -> SelectionState:
        """Return an independent copy (``extra`` is copied deeply)."""
        return SelectionState(dict(self.log_weights), dict(self.counts), dict(self.cum_loss),
                              copy.deepcopy(self.extra), self.updates)

    def with_models(self, models: list[str]) -> SelectionState:
        """Return a copy covering exactly ``models``, for when links change.

        A new model starts at the mean weight of the models that stay, so it gets a fair
        hearing without displacing a model that has earned its weight; removed models are
        dropped, also from per-model dicts in ``extra``.
        """
        models = _check_models(models)
        kept = [self.log_weights[m] for m in models if m in self.log_weights]
        fresh = _log_mean_weight(kept) if kept else 0.0
        removed = set(self.log_weights) - set(models)
        extra = {key: ({m: v for m, v in value.items() if m not in removed}
                       if isinstance(value, dict) else value)
                 for key, value in copy.deepcopy(self.extra).items()}
        return SelectionState({m: self.log_weights.get(m, fresh) for m in models},
                              {m: self.counts.get(m, 0) for m in models},
                              {m: self.cum_loss.get(m, 0.0) for m in models},
                              extra, self.updates)


def normalised_weights(log_weights: dict[str, float]) -> dict[str, float]:
    """Log-space weights as weights summing to 1 (a softmax, stable for any scale)."""
    if not log_weights:
        return {}
    top = max(log_weights.values())
    scaled = {m: math.exp(x - top) for m, x in log_weights.items()}
    total = sum(scaled.values())
    return {m: x / total for m, x in scaled.items()}


def _renormalise(log_weights: dict[str, float], floor: float | None) -> None:
    # Subtracting the max keeps numbers bounded however long the app runs. The floor
    # bounds how far a model can fall behind: a model that failed and then recovered
    # needs about |floor| / (eta * loss gap) feedback rounds to win back its weight,
    # instead of as many rounds as it spent failing.
    top = max(log_weights.values())
    for m, x in log_weights.items():
        x -= top
        log_weights[m] = x if floor is None else max(x, floor)


def _sample(probabilities: dict[str, float], rng: random.Random) -> str:
    u, cumulative = rng.random(), 0.0
    for m, p in probabilities.items():
        cumulative += p
        if u < cumulative:
            return m
    return next(reversed(probabilities))  # u landed in the rounding gap below 1.0


@dataclass(frozen=True, slots=True)
class Draw:
    """What a policy chose for one query: the models asked and, for a policy that
    importance-weights its feedback (Exp3), the probability each was drawn with.

    The probabilities are those of the state that drew, at selection time: feedback
    divides a loss by them, whatever the weights have become since.
    """

    models: tuple[str, ...]
    probabilities: tuple[float, ...] | None = None

    def probability(self, model: str) -> float:
        """The probability ``model`` was drawn with; ValueError when it was not drawn or none was kept."""
        if self.probabilities is None or model not in self.models:
            raise ValueError(f"no selection probability for model {model!r} in {self!r}")
        return self.probabilities[self.models.index(model)]


# --- combining outputs ---------------------------------------------------------------

@dataclass
class Combined:
    """The answer to one query: combined output, agreement over the ensemble in [0, 1]
    (see :func:`combine_outputs`), models used (the ones that replied)."""

    output: Any
    confidence: float
    models_used: list[str]


def _weights_of(models: list[str], weights: dict[str, float]) -> list[float]:
    raw = [float(weights.get(m, 0.0)) for m in models]
    for m, w in zip(models, raw):
        if not (math.isfinite(w) and w >= 0):
            raise ValueError(f"weight of model {m!r} must be finite and >= 0, got {w}")
    return raw


def _reply_weights(raw: list[float]) -> list[float]:
    total = sum(raw)
    # Only models without weight replied: let them count equally rather than divide by 0.
    return [w / total for w in raw] if total > 0 else [1.0 / len(raw)] * len(raw)


def _coverage(models: list[str], ensemble: list[str], weights: dict[str, float]) -> float:
    """The share of the ensemble's weight held by the models that replied (1.0: all replied).

    An ensemble whose weights are all 0 counts its members equally.
    """
    if len(ensemble) == len(models):
        return 1.0
    raw = _weights_of(ensemble, weights)
    total = sum(raw)
    if total <= 0:
        return len(models) / len(ensemble)
    replied = set(models)
    return min(1.0, sum(w for m, w in zip(ensemble, raw) if m in replied) / total)


def _vote(values: list[Any], weights: list[float]) -> tuple[Any, float]:
    totals: dict[str, float] = {}
    first: dict[str, Any] = {}
    for value, w in zip(values, weights):
        key = json.dumps(value, sort_keys=True, default=repr)
        totals[key] = totals.get(key, 0.0) + w
        first.setdefault(key, value)
    best = max(totals, key=totals.__getitem__)  # on a tie, the first class seen wins
    return first[best], min(1.0, totals[best])


def _mean_scalar(values: list[float], weights: list[float]) -> tuple[float, float]:
    mean = sum(w * v for v, w in zip(values, weights))
    tolerance = max(0.1 * abs(mean), 1e-9)
    agree = sum(w for v, w in zip(values, weights) if abs(v - mean) <= tolerance)
    return float(mean), min(1.0, agree)


def _mean_vector(values: list[list[float]], weights: list[float]) -> tuple[list[float], float]:
    rows, w = np.asarray(values, dtype=float), np.asarray(weights)
    mean = w @ rows
    is_distribution = bool(np.all(rows >= -1e-9) and np.allclose(rows.sum(axis=1), 1, atol=1e-3))
    if is_distribution:
        agree = w[rows.argmax(axis=1) == mean.argmax()].sum()
    else:  # e.g. multi-output regression: agreement is being within 10% of the mean
        distance = np.linalg.norm(rows - mean, axis=1)
        agree = w[distance <= max(0.1 * float(np.linalg.norm(mean)), 1e-9)].sum()
    return mean.tolist(), min(1.0, float(agree))


def combine_outputs(outputs: dict[str, Any], weights: dict[str, float],
                    ensemble: list[str] | None = None) -> Combined:
    """Combine the outputs of the models that replied, weighting each by ``weights``.

    ``ensemble`` is every model the query was sent to (default: the ones that replied);
    with straggler mitigation some of them may be missing from ``outputs``.

    The **output** uses the replies only, their weights renormalised among them;
    models missing from ``weights`` weigh 0. The **confidence** is the agreement over
    the whole ensemble: the weight of the replies that agree with the output divided
    by the weight of every model in ``ensemble``, so a model that did not reply counts
    as disagreeing (with equal weights: "4 of 5 models agree" is 0.8, and one reply out
    of five is at most 0.2, never 1.0).

    * identical outputs (or just one): that output; confidence = the replies' weight share;
    * class labels (str/int/bool): weighted vote; confidence is the winner's weight share;
    * numbers with at least one float: weighted mean; confidence is the weight share of
      models within 10% of the mean (relative, or 1e-9 absolute near zero);
    * equal-length number lists: weighted mean vector; for probability vectors the
      confidence is the weight share whose argmax matches the mean's argmax, otherwise
      the share within 10% of the mean in Euclidean norm;
    * anything else: weighted vote on equal values.

    Example: ``combine_outputs({"a": "cat", "b": "dog", "c": "cat"},
    {"a": 0.5, "b": 0.3, "c": 0.2})`` is ``Combined("cat", 0.7, ["a", "b", "c"])``; with
    ``ensemble=["a", "b", "c", "d"]`` and ``"d": 1.0`` in the weights (d missed the
    deadline), the output is still "cat" and the confidence 0.7 / 2.0 = 0.35.
    """
    if not outputs:
        raise ValueError("no model replied, so there is nothing to combine; "
                         "answer the application's default output instead")
    models = list(outputs)
    ensemble = models if ensemble is None else list(dict.fromkeys([*ensemble, *models]))
    coverage = _coverage(models, ensemble, weights)
    values = [to_jsonable(outputs[m]) for m in models]
    if all(_values_equal(values[0], v) for v in values[1:]):
        return Combined(values[0], coverage, models)
    weights_used = _reply_weights(_weights_of(models, weights))
    if all(map(_is_label, values)):
        output, agreement = _vote(values, weights_used)
    elif all(map(_is_number, values)):
        output, agreement = _mean_scalar(values, weights_used)
    elif all(map(_is_vector, values)) and len({len(v) for v in values}) == 1:
        output, agreement = _mean_vector(values, weights_used)
    else:
        output, agreement = _vote(values, weights_used)
    return Combined(output, agreement * coverage, models)


# --- policies ------------------------------------------------------------------------

@dataclass(frozen=True)
class Option:
    """One policy option: default, bounds and help text (shown by the widgets)."""

    name: str
    default: float | None
    help: str
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    allow_none: bool = False

    def check(self, policy: str, value: Any) -> float | None:
        """Return ``value`` as a float, or raise ValueError saying what is allowed."""
        if value is None and self.allow_none:
            return None
        bounds = [f"{'>' if self.low_open else '>='} {self.low}"] if self.low is not None else []
        bounds += [f"<= {self.high}"] if self.high is not None else []
        ok = _is_number(value) and math.isfinite(value)
        if ok and self.low is not None:
            ok = value > self.low if self.low_open else value >= self.low
        if ok and self.high is not None:
            ok = value <= self.high
        if not ok:
            wanted = "a number " + " and ".join(bounds) + (" or None" if self.allow_none else "")
            raise ValueError(f"{policy} option {self.name!r} must be {wanted.strip()}, "
                             f"got {value!r} ({self.help})")
        return float(value)


_ETA = Option("eta", 0.1, "learning rate: how far one unit of loss moves a log weight",
              low=0.0, low_open=True)
_FLOOR = Option("log_weight_floor", -20.0, "lowest log weight relative to the best model, so "
                "a model that recovers can win back its weight; None: no floor",
                high=0.0, allow_none=True)


class Policy:
    """A model-selection policy; subclasses are listed in :data:`POLICIES`.

    Policies hold only their options; everything learned lives in a
    :class:`SelectionState`, so one policy object serves every context of an app.
    """

    name: ClassVar[str] = ""
    #: Capabilities the engine reads instead of the policy's name:
    #: ``queries_all``: every query goes to every linked model (an ensemble).
    queries_all: ClassVar[bool] = False
    #: ``adaptive``: which models answer depends on the learned state; False: the policy
    #: selects from a fresh state, so the query path neither reads nor creates one.
    adaptive: ClassVar[bool] = True
    #: ``picks_one``: one model per query, learning from that chosen model's loss (bandit
    #: feedback); the engine remembers the :class:`Draw` of each input so that feedback
    #: on it names the chosen model (and the probability it was drawn with).
    picks_one: ClassVar[bool] = False
    #: ``combines``: answers carry the combined output's ``confidence``, ``models_used``
    #: (and ``models_missing``, ``low_confidence``); False: the one model's output as is.
    combines: ClassVar[bool] = True
    OPTIONS: ClassVar[tuple[Option, ...]] = ()

    def __init__(self, **options: Any) -> None:
        valid = [o.name for o in self.OPTIONS]
        unknown = sorted(set(options) - set(valid))
        if unknown:
            raise ValueError(f"unknown option(s) {', '.join(map(repr, unknown))} for policy "
                             f"{self.name!r}; valid options: {', '.join(valid) or '(none)'}")
        self._options: dict[str, Any] = {
            o.name: o.check(self.name, options.get(o.name, o.default)) for o in self.OPTIONS}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self._options.items())
        return f"{type(self).__name__}({args})"

    def options(self) -> dict[str, Any]:
        """The effective options, defaults included."""
        return dict(self._options)

    @classmethod
    def describe_options(cls) -> dict[str, dict[str, Any]]:
        """Each option's default and help text, for forms and error pages."""
        return {o.name: {"default": o.default, "help": o.help} for o in cls.OPTIONS}

    def init_state(self, models: list[str]) -> SelectionState:
        """A fresh state for ``models``: equal weights, no feedback yet."""
        models = _check_models(models)
        return SelectionState(dict.fromkeys(models, 0.0), dict.fromkeys(models, 0),
                              dict.fromkeys(models, 0.0))

    def probabilities(self, state: SelectionState) -> dict[str, float]:
        """Per model, the probability of selecting it (or its ensemble weight); sums to 1."""
        raise NotImplementedError

    def select(self, state: SelectionState, rng: random.Random) -> list[str]:
        """The models to query for one query; empty only when no model is linked."""
        return [_sample(self.probabilities(state), rng)] if state.log_weights else []

    def draw(self, state: SelectionState, rng: random.Random) -> Draw:
        """:meth:`select` as a :class:`Draw` (same models, same use of ``rng``), with the
        probabilities when the policy's feedback needs them."""
        return Draw(tuple(self.select(state, rng)))

    def combine(self, state: SelectionState, outputs: dict[str, Any],
                ensemble: list[str] | None = None) -> Combined:
        """Combine the replies to one query sent to ``ensemble`` (see :func:`combine_outputs`)."""
        if len(outputs) == 1 and (ensemble is None or list(ensemble) == list(outputs)):
            (model, output), = outputs.items()
            return Combined(to_jsonable(output), 1.0, [model])
        return combine_outputs(outputs, self.probabilities(state), ensemble)

    def update(self, state: SelectionState, losses: dict[str, float],
               chosen: Draw | None = None) -> SelectionState:
        """Learn from feedback and return a new state; ``state`` is left unchanged.

        ``losses`` maps models to losses in [0, 1] for the models whose prediction for
        the feedback's input is known (a model that failed to answer the query counts 1);
        models no longer in the state (unlinked since) are ignored. ``chosen`` is the
        :class:`Draw` that answered the query, when it is known: a one-model policy then
        learns from the chosen model only (bandit feedback). ``None``: the choice is
        unknown, every given loss is full information and nothing is importance-weighted.
        Counts and cumulative losses are kept for every given model.
        """
        known: dict[str, float] = {}
        for model, loss in losses.items():
            loss = float(loss)
            if not 0.0 <= loss <= 1.0:  # also rejects NaN
                raise ValueError(f"loss of model {model!r} must be in [0, 1], got {loss}; "
                                 f"make_loss() builds losses that are")
            if model in state.log_weights:
                known[model] = loss
        new = state.copy()
        if not known:
            return new
        for model, loss in known.items():
            new.counts[model] += 1
            new.cum_loss[model] += loss
        new.updates += 1
        self._learn(state, new, known, chosen)
        return new

    def _learn(self, before: SelectionState, after: SelectionState,
               losses: dict[str, float], chosen: Draw | None) -> None:
        """Apply the policy's own update to ``after`` (a fresh copy of ``before``)."""


def _feedback_targets(losses: dict[str, float], chosen: Draw | None) -> list[str]:
    """Which models a one-model policy learns from.

    With ``chosen``, only the chosen model(s) (bandit feedback, as in the paper).
    Without it, the choice is unknown, so every given loss is full information: the
    engine evaluated those models on the feedback's input.
    """
    if chosen is None:
        return list(losses)
    return [m for m in chosen.models if m in losses]


class SinglePolicy(Policy):
    """Always the first linked model; feedback is only recorded."""

    name = "single"
    adaptive = False
    combines = False

    def probabilities(self, state: SelectionState) -> dict[str, float]:
        return {m: 1.0 if i == 0 else 0.0 for i, m in enumerate(state.log_weights)}

    def select(self, state: SelectionState, rng: random.Random) -> list[str]:
        return state.models[:1]


class Exp3Policy(Policy):
    """Exp3 (Auer et al.): query one model sampled from p_i = (1-gamma) w_i/W + gamma/K.

    On bandit feedback the chosen model's weight moves by ``w_i *= exp(-eta * l / p_i)``
    with p_i the probability it was drawn with (kept in the :class:`Draw` at selection
    time, not read again at feedback time): dividing by p_i makes the loss estimate
    unbiased for models that are rarely chosen. When the choice is unknown (no
    ``chosen``), each given loss was observed with probability 1, so the update is
    ``exp(-eta * l_i)``: never importance-weighted.
    """

    name = "exp3"
    picks_one = True
    OPTIONS = (_ETA, Option("gamma", 0.1, "share of queries spread uniformly to keep "
                            "exploring every model", low=0.0, high=1.0), _FLOOR)

    def probabilities(self, state: SelectionState) -> dict[str, float]:
        gamma, k = self._options["gamma"], len(state.log_weights)
        return {m: (1 - gamma) * s + gamma / k for m, s in normalised_weights(state.log_weights).items()}

    def draw(self, state: SelectionState, rng: random.Random) -> Draw:
        if not state.log_weights:
            return Draw(())
        probabilities = self.probabilities(state)
        model = _sample(probabilities, rng)
        return Draw((model,), (probabilities[model],))

    def _learn(self, before: SelectionState, after: SelectionState,
               losses: dict[str, float], chosen: Draw | None) -> None:
        targets = _feedback_targets(losses, chosen)
        if not targets:
            return
        for m in targets:
            seen_with = 1.0 if chosen is None else chosen.probability(m)
            if not 0.0 < seen_with <= 1.0:
                raise ValueError(f"selection probability of model {m!r} must be in (0, 1], got {seen_with}")
            after.log_weights[m] -= self._options["eta"] * losses[m] / seen_with
        _renormalise(after.log_weights, self._options["log_weight_floor"])


class Exp4Policy(Policy):
    """Exp4 ensemble: query every model, answer the weight-combined output.

    Each model with a loss moves by ``w_i *= exp(-eta * l_i)``. The default eta = 0.1
    trades noise for speed: in the degradation scenario of the tests (best model's
    error 0.1 -> 0.9, runner-up 0.175) its weight share falls below 0.1 within ~300
    feedback rounds, and the default floor (e^-20) lets it win the lead back within
    ~3,000 rounds once it recovers, where an unclamped weight would need ~40,000.
    """

    name = "exp4"
    queries_all = True
    OPTIONS = (_ETA, _FLOOR)

    def probabilities(self, state: SelectionState) -> dict[str, float]:
        return normalised_weights(state.log_weights)

    def select(self, state: SelectionState, rng: random.Random) -> list[str]:
        return state.models

    def _learn(self, before: SelectionState, after: SelectionState,
               losses: dict[str, float], chosen: Draw | None) -> None:
        for m, loss in losses.items():
            after.log_weights[m] -= self._options["eta"] * loss
        _renormalise(after.log_weights, self._options["log_weight_floor"])


class EpsilonGreedyPolicy(Policy):
    """With probability 1-epsilon the model with the lowest mean loss, else a uniform one.

    Untried models count as best, so a newly linked model is tried at once. Mean
    losses and their counts are kept in ``extra["mean_loss"]`` and ``extra["pulls"]``.
    """

    name = "epsilon_greedy"
    picks_one = True
    OPTIONS = (Option("epsilon", 0.1, "share of queries sent to a uniformly random model",
                      low=0.0, high=1.0),)

    def best(self, state: SelectionState) -> str:
        """The greedy choice: the first untried model, else the lowest mean loss."""
        means = state.extra.get("mean_loss", {})
        untried = [m for m in state.log_weights if m not in means]
        return untried[0] if untried else min(state.log_weights, key=means.__getitem__)

    def probabilities(self, state: SelectionState) -> dict[str, float]:
        if not state.log_weights:
            return {}
        epsilon, best = self._options["epsilon"], self.best(state)
        k = len(state.log_weights)
        return {m: epsilon / k + (1 - epsilon) * (m == best) for m in state.log_weights}

    def select(self, state: SelectionState, rng: random.Random) -> list[str]:
        if not state.log_weights:
            return []
        if rng.random() < self._options["epsilon"]:
            return [rng.choice(state.models)]
        return [self.best(state)]

    def _learn(self, before: SelectionState, after: SelectionState,
               losses: dict[str, float], chosen: Draw | None) -> None:
        means = after.extra.setdefault("mean_loss", {})
        pulls = after.extra.setdefault("pulls", {})
        for m in _feedback_targets(losses, chosen):
            pulls[m] = pulls.get(m, 0) + 1
            means[m] = means.get(m, 0.0) + (losses[m] - means.get(m, 0.0)) / pulls[m]


class ThompsonPolicy(Policy):
    """Thompson sampling: per model Beta(alpha, beta), loss counting as failure.

    Feedback adds ``1 - l`` to alpha and ``l`` to beta; ``discount`` < 1 first fades
    all evidence toward the prior so the policy can follow models that change.
    Kept in ``extra["alpha"]`` and ``extra["beta"]``; a model absent there has the prior.
    """

    name = "thompson"
    picks_one = True
    OPTIONS = (Option("prior_alpha", 1.0, "prior successes per model", low=0.0, low_open=True),
               Option("prior_beta", 1.0, "prior failures per model", low=0.0, low_open=True),
               Option("discount", 1.0, "evidence kept per feedback round (1: all of it)",
                      low=0.0, high=1.0, low_open=True))

    def _posterior(self, state: SelectionState, model: str) -> tuple[float, float]:
        return (state.extra.get("alpha", {}).get(model, self._options["prior_alpha"]),
                state.extra.get("beta", {}).get(model, self._options["prior_beta"]))

    def select(self, state: SelectionState, rng: random.Random) -> list[str]:
        if not state.log_weights:
            return []
        draws = {m: rng.betavariate(*self._posterior(state, m)) for m in state.log_weights}
        return [max(draws, key=draws.__getitem__)]

    def probabilities(self, state: SelectionState) -> dict[str, float]:
        """Monte Carlo estimate of each model's chance to be selected (fixed seed)."""
        rng, wins = random.Random(0), dict.fromkeys(state.log_weights, 0)
        for _ in range(_THOMPSON_DRAWS if wins else 0):
            wins[self.select(state, rng)[0]] += 1
        return {m: n / _THOMPSON_DRAWS for m, n in wins.items()}

    def _learn(self, before: SelectionState, after: SelectionState,
               losses: dict[str, float], chosen: Draw | None) -> None:
        alpha = after.extra.setdefault("alpha", {})
        beta = after.extra.setdefault("beta", {})
        prior_a, prior_b = self._options["prior_alpha"], self._options["prior_beta"]
        discount = self._options["discount"]
        if discount < 1.0:
            for m in after.log_weights:
                a, b = self._posterior(after, m)
                alpha[m] = prior_a + discount * (a - prior_a)
                beta[m] = prior_b + discount * (b - prior_b)
        for m in _feedback_targets(losses, chosen):
            a, b = self._posterior(after, m)
            alpha[m], beta[m] = a + 1.0 - losses[m], b + losses[m]


POLICIES: dict[str, type[Policy]] = {
    cls.name: cls
    for cls in (SinglePolicy, Exp3Policy, Exp4Policy, EpsilonGreedyPolicy, ThompsonPolicy)
}


def make_policy(name: str, **options: Any) -> Policy:
    """Build the policy called ``name`` (a key of :data:`POLICIES`) with ``options``."""
    if name not in POLICIES:
        raise ValueError(f"unknown selection policy {name!r}; "
                         f"valid policies: {', '.join(POLICIES)}")
    return POLICIES[name](**options)

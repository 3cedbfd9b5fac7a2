"""Pure-Python replays for notebook 04 (model selection): kernel-side only.

The live notebook runs Exp3 and Exp4 on the server. These helpers replay the same
scenario with the very policy classes the server uses (``clipper_nb.selection.policies``)
and no server, so a knob (learning rate, exploration, weight floor) can be turned and
the replay rerun in milliseconds: cheap exercises with deterministic answers.

The replay follows the engine's query path step by step: for every query the policy
draws (Exp3: one model, with the probability it was drawn with; Exp4: every model),
the answer is the chosen model's output (Exp3) or the weighted vote of the models that
did not crash (Exp4, ``policy.combine``), then the feedback updates the state with
each evaluated model's loss (a crash counts 1), exactly as ``feedback`` does.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import Any

from clipper_nb.selection.policies import make_policy, normalised_weights

#: ``outputs(q) -> {model: output or None}``: None is a crash on query q.
Outputs = Callable[[int], dict[str, Any]]


def replay(policy_name: str, models: Sequence[str], outputs: Outputs, labels: Sequence[Any],
           seed: int = 0, **options: Any) -> dict[str, list]:
    """Replay ``len(labels)`` queries in order; returns per query whether the answer was
    wrong (a crash, a default or a wrong class), which models were asked, and the
    normalised weight (``weights``) and selection probability (``probabilities``) of every
    model after the query's feedback, as the server's ``feedback`` reply reports them."""
    policy = make_policy(policy_name, **options)
    state = policy.init_state(list(models))
    rng = random.Random(seed)
    wrong, asked, weights, probabilities = [], [], [], []
    for q, label in enumerate(labels):
        draw = policy.draw(state, rng)
        out = outputs(q)
        replies = {m: out[m] for m in draw.models if out[m] is not None}
        if not replies:
            wrong.append(True)
        else:
            answer = policy.combine(state, replies, list(draw.models)).output
            wrong.append(answer != label)
        asked.append(draw.models)
        if policy.picks_one:   # bandit feedback: only the chosen model's loss
            losses = {m: 1.0 if out[m] is None else float(out[m] != label) for m in draw.models}
            state = policy.update(state, losses, draw)
        else:                  # Exp4: every model is evaluated on the feedback's input
            losses = {m: 1.0 if out[m] is None else float(out[m] != label) for m in models}
            state = policy.update(state, losses)
        weights.append(normalised_weights(state.log_weights))
        probabilities.append(policy.probabilities(state))
    return {"wrong": wrong, "asked": asked, "weights": weights, "probabilities": probabilities}


def first_index(values: Sequence[float], start: int, stop: int, test: Callable[[float], bool]) -> int | None:
    """How many queries after ``start`` until ``test`` first holds (1: the first query), or None."""
    for i in range(start, min(stop, len(values))):
        if test(values[i]):
            return i - start + 1
    return None


def recovery(weights_m0: Sequence[float], broken: tuple[int, int]) -> dict[str, Any]:
    """How fast the weight on the failing model falls and comes back."""
    return {
        "< 0.1 after (failing queries)": first_index(weights_m0, broken[0], broken[1], lambda w: w < 0.1),
        "weight when it heals": weights_m0[broken[1] - 1],
        "> 0.5 again after (queries)": first_index(weights_m0, broken[1], len(weights_m0), lambda w: w > 0.5),
    }

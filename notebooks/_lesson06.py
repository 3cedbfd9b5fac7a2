"""Kernel-side helpers of notebook 06-personalization: a pure-Python replay of per-user selection states.

Only the notebook's kernel runs this module (a deployed model must not import it). The
replay runs the very policy class the server runs (``clipper_nb.selection.policies``)
on the same queries, so its weights match the live ones; it takes milliseconds, which
makes it the tool for the exercises' knobs (learning rate, number of dialects).
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

from clipper_nb.selection.policies import make_loss, make_policy, normalised_weights


def replay(experts: Sequence[Callable[[Any], list]], names: Sequence[str], true_label: Callable[[int], int],
           users: Mapping[str, int], query: Callable[[int, int], int], rounds: int, eta: float = 0.3,
           **options: Any) -> dict[str, dict[str, list]]:
    """An application with a context per user, replayed as the server runs it.

    Each round every user (in ``users``' order: name -> dialect group) sends the row
    ``[q, group]`` with ``q = query(round, group)``, gets the ensemble's answer from their
    state, and sends the true label. As on the server, feedback updates the app-wide
    state and the user's own; a user's first feedback starts their state from a copy of
    the app-wide one (what a new user is served from), and both updates start from the
    states as they were before that feedback. Returns, per user, ``{"wrong": [...],
    "own weight": [...]}``: whether each answer was wrong, and the weight on their own
    dialect's model (``names[group]``) after each feedback.
    """
    policy = make_policy("exp4", eta=eta, **options)
    loss = make_loss("zero_one")
    app_state = policy.init_state(list(names))
    states: dict[str, Any] = {}
    out: dict[str, dict[str, list]] = {user: {"wrong": [], "own weight": []} for user in users}
    for r in range(rounds):
        for user, group in users.items():
            q = query(r, group)
            outputs = {name: expert([[q, group]])[0] for name, expert in zip(names, experts)}
            label = true_label(q)
            mine = states.get(user, app_state)
            out[user]["wrong"].append(policy.combine(mine, outputs).output != label)
            losses = {name: loss(value, label) for name, value in outputs.items()}
            states[user] = policy.update(mine, losses)
            app_state = policy.update(app_state, losses)
            out[user]["own weight"].append(normalised_weights(states[user].log_weights)[names[group]])
    return out


def feedbacks_until(own_weights: Sequence[float], threshold: float = 0.5) -> int | None:
    """How many feedbacks until the weight on the user's own model first exceeds ``threshold``."""
    return next((k + 1 for k, w in enumerate(own_weights) if w > threshold), None)

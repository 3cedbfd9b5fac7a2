"""What the selection layer has learned, per (application, context), and what must be saved.

:class:`SelectionStates` holds one :class:`~clipper_nb.selection.policies.SelectionState`
per (app, context) key; the context ``""`` is the app-wide state, which an unseen
context falls back to. It does no I/O: :meth:`SelectionStates.apply_feedback` says which
contexts were evicted (to delete from the store) and :meth:`SelectionStates.take_dirty`
hands over the rows to write; the engine does both on its store executor.

Example::

    states = SelectionStates(max_contexts=2)
    policy = make_policy("exp4")
    states.state("digits", ["svm", "forest"], policy)            # app-wide, created on first use
    outcome = states.apply_feedback("digits", ["svm", "forest"], policy,
                                    {"svm": 0.0, "forest": 1.0}, chosen=None, context="user-1")
    outcome.evicted                                                # [] until a third context
    states.take_dirty()                                            # [("digits", "", {...}), ...]
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field

from clipper_nb.selection.policies import Policy, SelectionState

__all__ = ["MAX_REMEMBERED_CHOICES", "Feedback", "SelectionStates"]

#: How many (app, input) -> chosen model records one-model policies keep for feedback.
MAX_REMEMBERED_CHOICES = 100_000

Key = tuple[str, str]


@dataclass
class Feedback:
    """What one round of feedback changed."""

    #: context ("" for the app-wide state) -> its new state
    states: dict[str, SelectionState]
    #: contexts of the app evicted to respect ``max_contexts`` (delete them from the store)
    evicted: list[str] = field(default_factory=list)


class SelectionStates:
    """Per-app and per-context selection states, the dirty set, and the chosen models.

    ``states`` keeps insertion order = least recently updated first, which is the order
    contexts are evicted in.
    """

    def __init__(self, max_contexts: int = 10_000) -> None:
        self.max_contexts = max_contexts
        self.states: dict[Key, SelectionState] = {}
        self.dirty: set[Key] = set()
        self._chosen: collections.OrderedDict[tuple[str, bytes], str] = collections.OrderedDict()

    def load(self, app: str, context: str, saved: dict) -> None:
        """Bring back a state saved by :meth:`take_dirty` (its ``to_json`` dict)."""
        self.states[(app, context)] = SelectionState.from_json(saved)

    def state(self, app: str, models: list[str], policy: Policy, context: str | None = None,
              create: bool = False) -> SelectionState:
        """The state for (app, context) covering ``models``; an unseen context starts from the app's.

        Only feedback creates a context's state (``create=True`` returns a copy of the
        app's to update): queries with ever-new uids, which any anonymous caller can
        send, must not grow memory.
        """
        base = self.states.get((app, ""))
        if base is None or list(base.log_weights) != models:
            base = base.with_models(models) if base is not None else policy.init_state(models)
            self.states[(app, "")] = base
        if not context:
            return base
        state = self.states.get((app, context))
        if state is None:
            return base.copy() if create else base
        if list(state.log_weights) != models:
            state = state.with_models(models)
            self.states[(app, context)] = state
        return state

    def contexts(self, app: str) -> list[str]:
        """The app's contexts that have a state of their own, sorted."""
        return sorted(c for a, c in self.states if a == app and c)

    def forget(self, app: str) -> None:
        """Drop every state of ``app`` (deleted, or its policy changed)."""
        for key in [k for k in self.states if k[0] == app]:
            del self.states[key]
            self.dirty.discard(key)

    # ---------------------------------------------------------------- chosen models
    def remember_choice(self, app: str, digest: bytes, model: str) -> None:
        """Record that ``model`` answered the input with ``digest`` (a one-model policy)."""
        key = (app, digest)
        self._chosen[key] = model
        self._chosen.move_to_end(key)
        if len(self._chosen) > MAX_REMEMBERED_CHOICES:
            self._chosen.popitem(last=False)

    def chosen(self, app: str, digest: bytes) -> str | None:
        """The model that answered this input, when a one-model policy chose it."""
        return self._chosen.get((app, digest))

    # ---------------------------------------------------------------- feedback
    def apply_feedback(self, app: str, models: list[str], policy: Policy, losses: dict[str, float],
                       chosen: str | None, context: str | None = None) -> Feedback:
        """Update the app-wide state, and ``context``'s when given, with one round of losses.

        Both updates start from the states as they were (a new context from the app's
        state before this round). Updated states become the most recently used; with a
        context, the least recently updated contexts beyond ``max_contexts`` are evicted.
        """
        contexts = [""] + ([context] if context else [])
        new = {ctx: policy.update(self.state(app, models, policy, ctx, create=True), losses, chosen)
               for ctx in contexts}
        for ctx, state in new.items():
            self.states.pop((app, ctx), None)  # re-insert: most recent last
            self.states[(app, ctx)] = state
            self.dirty.add((app, ctx))
        return Feedback(new, self._evict(app) if context else [])

    def _evict(self, app: str) -> list[str]:
        keys = [k for k in self.states if k[0] == app and k[1]]
        gone = keys[:max(0, len(keys) - self.max_contexts)]
        for key in gone:
            del self.states[key]
            self.dirty.discard(key)
        return [c for _, c in gone]

    def take_dirty(self) -> list[tuple[str, str, dict]]:
        """The ``(app, context, state_json)`` rows changed since the last call; clears the set."""
        rows = [(a, c, self.states[(a, c)].to_json()) for a, c in self.dirty if (a, c) in self.states]
        self.dirty.clear()
        return rows

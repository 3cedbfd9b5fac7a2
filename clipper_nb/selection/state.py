"""What the selection layer has learned, per (application, context), and what must be saved.

:class:`SelectionStates` holds one :class:`~clipper_nb.selection.policies.SelectionState`
per (app, context) key; the context ``""`` is the app-wide state, which an unseen
context falls back to. It also keeps, per (app, input digest), the :class:`Choice` made
for the last query of that input (the models asked, the probability each was drawn
with, the ones that failed), so that feedback on the input learns from the choice as it
was made (bounded, least recently recorded first out).

It does no I/O: :meth:`SelectionStates.apply_feedback` says which contexts were evicted
(to delete from the store), :meth:`SelectionStates.take_dirty` hands over the rows to
write and :meth:`SelectionStates.take_deleted` the rows to delete; the engine does
these on its store executor. Choices are saved in the same (app, context, state) rows
as the states, under the key ``CHOICE_PREFIX + digest`` (a prefix no context may use),
as ``{"m": models, "p": probabilities, "f": failed}`` (empty parts left out).

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

import base64
import binascii
import collections
from dataclasses import dataclass, field
from typing import Any

from clipper_nb.config import DEFAULT_MAX_CONTEXTS
from clipper_nb.selection.policies import Draw, Policy, SelectionState

__all__ = ["CHOICE_PREFIX", "MAX_REMEMBERED_CHOICES", "Choice", "Feedback", "SelectionStates", "choice_key"]

#: How many (app, input) -> choice records are kept for feedback, all apps together.
MAX_REMEMBERED_CHOICES = 100_000

#: Saved rows whose context starts with this hold a :class:`Choice`, not a context's state.
CHOICE_PREFIX = "\x00choice:"

Key = tuple[str, str]
ChoiceKey = tuple[str, bytes]


@dataclass(frozen=True, slots=True)
class Choice:
    """What the query path chose for one input, and which of those models failed.

    ``failed``: chosen models that raised, timed out (missed the deadline) or were not
    running, so the query was answered without them (or with the default output, or
    an error); feedback on the input counts loss 1 for each of them.
    """

    draw: Draw
    failed: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        """The compact saved form: ``{"m": [...], "p": [...], "f": [...]}``, empty parts left out."""
        saved: dict[str, Any] = {"m": list(self.draw.models)}
        if self.draw.probabilities is not None:
            saved["p"] = list(self.draw.probabilities)
        if self.failed:
            saved["f"] = list(self.failed)
        return saved

    @classmethod
    def from_json(cls, saved: dict[str, Any]) -> Choice:
        """Rebuild a choice saved by :meth:`to_json`; malformed input raises ValueError."""
        try:
            models = tuple(str(m) for m in saved["m"])
            probabilities = None if "p" not in saved else tuple(float(p) for p in saved["p"])
            failed = tuple(str(m) for m in saved.get("f", ()))
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"not a saved choice ({exc!r})") from exc
        if probabilities is not None and (len(probabilities) != len(models)
                                          or not all(0.0 < p <= 1.0 for p in probabilities)):
            raise ValueError(f"not a saved choice: probabilities {probabilities} for models {models}")
        return cls(Draw(models, probabilities), failed)


def choice_key(digest: bytes) -> str:
    """The saved row's context for the choice of the input with ``digest``."""
    return CHOICE_PREFIX + base64.b64encode(digest).decode().rstrip("=")


def _digest_of(key: str) -> bytes:
    text = key[len(CHOICE_PREFIX):]
    return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)


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

    def __init__(self, max_contexts: int = DEFAULT_MAX_CONTEXTS) -> None:
        self.max_contexts = max_contexts
        self.states: dict[Key, SelectionState] = {}
        self.dirty: set[Key] = set()
        self._chosen: collections.OrderedDict[ChoiceKey, Choice] = collections.OrderedDict()
        self._chosen_dirty: set[ChoiceKey] = set()
        self._chosen_gone: set[ChoiceKey] = set()

    def load(self, app: str, context: str, saved: dict) -> None:
        """Bring back a row saved by :meth:`take_dirty`: a state (its ``to_json`` dict) or a
        choice (rows are loaded in the order they were saved, oldest first)."""
        if context.startswith(CHOICE_PREFIX):
            try:
                key = (app, _digest_of(context))
                self._chosen[key] = Choice.from_json(saved)
            except (ValueError, binascii.Error):
                return  # a record we cannot read only costs the importance weight of one input
            self._chosen.move_to_end(key)
            self._trim_choices()
            return
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
        """Drop every state and choice of ``app`` (deleted, or its policy changed); the
        caller deletes the app's saved rows."""
        for key in [k for k in self.states if k[0] == app]:
            del self.states[key]
            self.dirty.discard(key)
        for key in [k for k in self._chosen if k[0] == app]:
            del self._chosen[key]
        self._chosen_dirty = {k for k in self._chosen_dirty if k[0] != app}
        self._chosen_gone = {k for k in self._chosen_gone if k[0] != app}

    # ---------------------------------------------------------------- choices
    def remember_choice(self, app: str, digest: bytes, choice: Choice) -> None:
        """Record the choice made for the input with ``digest`` (replacing an older one)."""
        key = (app, digest)
        self._chosen[key] = choice
        self._chosen.move_to_end(key)
        self._chosen_dirty.add(key)
        self._chosen_gone.discard(key)
        self._trim_choices()

    def forget_choice(self, app: str, digest: bytes) -> None:
        """Drop the record for this input, if any (its last query needs none)."""
        if self._chosen.pop((app, digest), None) is not None:
            self._drop_saved((app, digest))

    def chosen(self, app: str, digest: bytes) -> Choice | None:
        """The choice made for the last query of this input, when it is still remembered."""
        return self._chosen.get((app, digest))

    def _trim_choices(self) -> None:
        while len(self._chosen) > MAX_REMEMBERED_CHOICES:
            key, _ = self._chosen.popitem(last=False)
            self._drop_saved(key)

    def _drop_saved(self, key: ChoiceKey) -> None:
        self._chosen_dirty.discard(key)
        self._chosen_gone.add(key)

    # ---------------------------------------------------------------- feedback
    def apply_feedback(self, app: str, models: list[str], policy: Policy, losses: dict[str, float],
                       chosen: Draw | None, context: str | None = None) -> Feedback:
        """Update the app-wide state, and ``context``'s when given, with one round of losses.

        ``chosen`` is the draw that answered the query (None: unknown). Both states
        learn from it with the probabilities it was drawn with, whichever state drew:
        dividing by the probability of the actual draw is what keeps each state's loss
        estimates unbiased (the app-wide state's own probability would over- or
        under-count the models a context prefers or avoids).

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
        """The ``(app, context, state_json)`` rows changed since the last call, states and
        choices; clears the sets."""
        rows = [(a, c, self.states[(a, c)].to_json()) for a, c in self.dirty if (a, c) in self.states]
        rows += [(a, choice_key(d), self._chosen[(a, d)].to_json())
                 for a, d in self._chosen_dirty if (a, d) in self._chosen]
        self.dirty.clear()
        self._chosen_dirty.clear()
        return rows

    def keep_dirty(self, rows: list[tuple[str, str, dict]]) -> None:
        """Rows :meth:`take_dirty` handed over that could not be written: they are dirty
        again (a failed flush must not forget them), unless they changed or went since."""
        for app, context, _ in rows:
            if context.startswith(CHOICE_PREFIX):
                try:
                    key = (app, _digest_of(context))
                except (ValueError, binascii.Error):
                    continue
                if key in self._chosen:
                    self._chosen_dirty.add(key)
            elif (app, context) in self.states:
                self.dirty.add((app, context))

    def take_deleted(self) -> dict[str, list[str]]:
        """Per app, the saved choice rows (contexts) to delete since the last call; clears the set."""
        gone: dict[str, list[str]] = {}
        for app, digest in self._chosen_gone:
            gone.setdefault(app, []).append(choice_key(digest))
        self._chosen_gone.clear()
        return gone

"""The query path (predict, predict_batch) and the feedback path of the Engine.

Query semantics follow Clipper: every query gets a deadline = arrival + the app's SLO.
One query goes through four steps:

1. **select**: the app's policy picks the linked models to ask (one, or all of them);
2. **submit**: each chosen model's running version gets the input (cache, then batch queue);
3. **wait**: until every chosen model answered or the deadline passed (straggler
   mitigation: never wait for the slowest; its late result still fills the cache);
4. **assemble**: the one output as is, or the policy's combination of the outputs that
   arrived with its confidence, or, when nothing arrived, the app's default output with
   ``"default": true`` and a ``default_explanation``.

The **confidence** is the agreement over the whole chosen ensemble: the weight of the
models whose reply agrees with the answer over the weight of every model the query was
sent to. A model that missed the deadline, raised or is not running counts as
disagreeing, so one reply out of five equally weighted models is 0.2, not 1.0, and a
``confidence_threshold`` catches answers depleted by stragglers.

What a policy can do is read from the policy (``adaptive``, ``picks_one``,
``combines``), never from its name.

**Feedback** (Clipper's ``update``) joins a label with the predictions for the input,
from the cache where the query left them. An adaptive policy's query records its
:class:`~clipper_nb.selection.state.Choice` for the input (a one-model policy always;
an ensemble only when a model failed): the models asked, the probability each was drawn
with (Exp3), and the ones that failed. Feedback then

* counts **loss 1** for each chosen model that failed on the query (raised, missed the
  deadline, was not running): a hard failure has no prediction to compare, and is the
  worst answer the model could have given. It is counted at feedback, with the other
  losses, so a failure weighs exactly as much as a wrong answer would, at the rate
  feedback arrives;
* evaluates only the models it needs: the chosen model for a one-model policy, every
  linked model that did not fail for an ensemble, every linked model when the choice
  is unknown (then the update is full information, never importance-weighted);
* counts loss 1 for a model it evaluates that raises (a ``ModelError``); a model that
  cannot answer (not running, too slow) is left out;
* updates the app-wide state and the context's with the draw's probabilities.
"""

from __future__ import annotations

import asyncio
import itertools
import random
from dataclasses import dataclass, field
from typing import Any

from clipper_nb.abstraction.model_version import ModelVersion
from clipper_nb.engine.registry import App, Db, Registry
from clipper_nb.engine.store import Store
from clipper_nb.errors import (
    BadInput,
    Conflict,
    DeadlineMissed,
    ModelError,
    Unavailable,
)
from clipper_nb.selection import policies as selection
from clipper_nb.selection.state import CHOICE_PREFIX, Choice, SelectionStates
from clipper_nb.wire.codec import decode_input, input_digest, to_jsonable

__all__ = ["WAIT_WITHOUT_MITIGATION_S", "QueryPath"]

#: Without straggler mitigation, how long a query waits for every model to answer.
WAIT_WITHOUT_MITIGATION_S = 60.0

#: Feedback waits at least this long for a model to compute a prediction missing from the cache.
FEEDBACK_MIN_WAIT_S = 5.0


@dataclass(slots=True)
class _Query:
    """One query on its way through select -> submit -> wait -> assemble."""

    app: App
    policy: selection.Policy
    x: Any
    context: str | None
    qid: int
    start: float
    deadline: float
    chosen: list[str] = field(default_factory=list)
    #: what an adaptive policy drew (None: the policy does not adapt, nothing is recorded)
    draw: selection.Draw | None = None
    futures: dict[str, asyncio.Future] = field(default_factory=dict)
    #: every model's output was at hand when the query was submitted
    cache_hit: bool = False

    @property
    def waits_for_all(self) -> bool:
        """Whether this query waits past its deadline for every model (no straggler mitigation)."""
        return not self.app.straggler_mitigation and len(self.chosen) > 1


def _started(arrival: float | None) -> float:
    """When a query's SLO clock starts: its arrival, never later than now."""
    now = asyncio.get_running_loop().time()
    return now if arrival is None else min(arrival, now)


class QueryPath:
    """Answers queries and feedback for the apps of ``registry`` with the versions in ``running``."""

    def __init__(self, registry: Registry, states: SelectionStates, running: dict[str, ModelVersion],
                 metrics: Any, store: Store, db: Db, max_batch_rows: int) -> None:
        self.registry = registry
        self.states = states
        self.running = running
        self.metrics = metrics
        self.store = store
        self._db = db
        self.max_batch_rows = max_batch_rows
        self._rng = random.Random(0)
        self._query_ids = itertools.count()

    # ---------------------------------------------------------------- queries
    async def predict(self, app_name: str, x: Any, context: str | None = None, *,
                      arrival: float | None = None) -> dict:
        """Answer one query (Clipper's ``{"query_id", "output", "default", ...}``); its SLO
        clock starts at ``arrival`` (event-loop time; the frontend passes when the request's
        headers were read, so time spent waiting for the event loop counts), else now."""
        start = _started(arrival)
        app = self.registry.app(app_name)
        _check_context(context)
        x = decode_input(app.input_type, x, self.registry.expected_shape(app))
        return await self._answer(app, x, context, start, start + app.slo_s)

    async def predict_batch(self, app_name: str, xs: list, context: str | None = None, *,
                            arrival: float | None = None) -> list[dict]:
        """Answer each row as its own query; all rows share the arrival time and deadline."""
        start = _started(arrival)
        app = self.registry.app(app_name)
        _check_context(context)
        if not isinstance(xs, list) or not xs:
            raise BadInput("'input_batch' must be a non-empty list of inputs")
        if len(xs) > self.max_batch_rows:
            raise BadInput(f"'input_batch' has {len(xs)} rows; the limit is {self.max_batch_rows}",
                           "split it into smaller requests")
        shape = self.registry.expected_shape(app)
        decoded = []
        for i, x in enumerate(xs):
            try:
                decoded.append(decode_input(app.input_type, x, shape))
            except BadInput as e:
                raise BadInput(f"input_batch[{i}]: {e.message}", e.cause) from None
        deadline = start + app.slo_s
        # The rows are submitted together and waited for together: one wait, not one per row.
        begun = [self._begin(app, x, context, start, deadline) for x in decoded]
        await self._wait([q for q in begun if isinstance(q, _Query)])
        return [q if isinstance(q, dict) else self._finish(q) for q in begun]

    async def _answer(self, app: App, x: Any, context: str | None, start: float, deadline: float) -> dict:
        q = self._begin(app, x, context, start, deadline)
        if isinstance(q, dict):
            return q
        await self._wait([q])
        return self._finish(q)

    def _begin(self, app: App, x: Any, context: str | None, start: float, deadline: float) -> _Query | dict:
        """Select and submit one query; its answer already when it cannot be submitted."""
        qid = next(self._query_ids)
        if not app.models:
            return self._default(app, qid, start, f"no model is linked to application {app.name!r}")
        q = _Query(app, self.registry.policies[app.name], x, context, qid, start, deadline)
        q.chosen = self._select(q)
        q.futures = self._submit(q)
        if not q.futures:
            self._remember(q, {})
            return self._default(app, qid, start, f"model(s) {', '.join(q.chosen)} are not running")
        q.cache_hit = all(f.done() for f in q.futures.values())
        return q

    def _finish(self, q: _Query) -> dict:
        """The answer of a query whose wait is over."""
        outputs, failures = _settled(q.futures)
        self._remember(q, outputs)
        if not outputs:
            return self._no_answer(q, failures)
        return self._assemble(q, outputs, q.cache_hit)

    def _select(self, q: _Query) -> list[str]:
        """The models to ask; a policy that does not adapt neither reads nor creates a state."""
        if not q.policy.adaptive:
            return q.policy.select(q.policy.init_state(q.app.models), self._rng)
        q.draw = q.policy.draw(self._state(q.app, q.context), self._rng)
        return list(q.draw.models)

    def _remember(self, q: _Query, outputs: dict[str, Any]) -> None:
        """Record what an adaptive policy chose for ``q.x`` and which chosen models failed,
        for feedback on x: always for a one-model policy (the chosen model and its
        probability), for an ensemble only when a model failed (it learns from every
        model anyway)."""
        if q.draw is None:
            return
        failed = tuple(m for m in q.chosen if m not in outputs)
        digest = input_digest(q.x)
        if q.policy.picks_one or failed:
            self.states.remember_choice(q.app.name, digest, Choice(q.draw, failed))
        else:
            self.states.forget_choice(q.app.name, digest)

    def _submit(self, q: _Query) -> dict[str, asyncio.Future]:
        """Hand the input to each chosen model that runs; its future may be done (a cache hit)."""
        # Without straggler mitigation the query waits for every model, so the batcher
        # must not drop a slow model's share of it at the SLO deadline.
        if q.waits_for_all:
            deadline = asyncio.get_running_loop().time() + WAIT_WITHOUT_MITIGATION_S
        else:
            deadline = q.deadline
        futures = {}
        for m in q.chosen:
            version = self.running.get(m)
            if version is not None:
                futures[m] = version.submit(q.x, deadline, use_cache=q.app.cache)
        return futures

    async def _wait(self, queries: list[_Query]) -> None:
        """Until every submitted model answered, or the deadline: the end of the wait with
        straggler mitigation (and for a query with one model); a query that waits for
        every model goes on waiting, up to ``WAIT_WITHOUT_MITIGATION_S`` in all. The
        queries share one deadline (the rows of one request)."""
        loop = asyncio.get_running_loop()
        began = loop.time()
        pending = [f for q in queries for f in q.futures.values() if not f.done()]
        if pending and queries[0].deadline > began:
            await _wait_all(pending, queries[0].deadline - began)
        rest = [f for q in queries if not q.app.straggler_mitigation and len(q.futures) > 1
                for f in q.futures.values() if not f.done()]
        if rest:
            await _wait_all(rest, WAIT_WITHOUT_MITIGATION_S - (loop.time() - began))

    def _assemble(self, q: _Query, outputs: dict[str, Any], cache_hit: bool) -> dict:
        """The answer from the outputs that arrived: as is, or combined by the policy."""
        app = q.app
        result: dict[str, Any] = {"query_id": q.qid}
        if len(q.futures) == 1 and not q.policy.combines:
            result["output"] = next(iter(outputs.values()))
            result["default"] = False
        else:
            combined = q.policy.combine(self._state(app, q.context), outputs, q.chosen)
            result.update(output=combined.output, default=False, confidence=combined.confidence,
                          models_used=combined.models_used)
            missing = [m for m in q.chosen if m not in outputs]
            if missing:
                result["models_missing"] = missing
            if app.confidence_threshold is not None and combined.confidence < app.confidence_threshold:
                why = f"confidence {combined.confidence:.2f} is below the threshold {app.confidence_threshold:g}"
                if app.low_confidence == "default":
                    out = self._default(app, q.qid, q.start, why)
                    out.update(confidence=combined.confidence, models_used=combined.models_used)
                    return out
                result["low_confidence"] = True
        latency = asyncio.get_running_loop().time() - q.start
        self.metrics.record_query(app.name, latency, slo_s=app.slo_s, default=False, cache_hit=cache_hit)
        return result

    def _no_answer(self, q: _Query, failures: dict[str, BaseException]) -> dict:
        """No output arrived: raise when every model raised, else the default output saying why."""
        app = q.app
        if failures and all(isinstance(e, ModelError) for e in failures.values()):
            latency = asyncio.get_running_loop().time() - q.start
            self.metrics.record_query(app.name, latency, slo_s=app.slo_s, default=True, error=True)
            raise ModelError("; ".join(e.message for e in failures.values()), next(iter(failures.values())).cause)
        unavailable = [e for e in failures.values() if isinstance(e, Unavailable)]
        if unavailable:
            why = "; ".join(e.message for e in unavailable)
        elif any(isinstance(e, DeadlineMissed) for e in failures.values()):
            for m in failures:
                self.metrics.record_deadline_drop(app.name, m)
            why = "the query could not meet its deadline when its batch was formed (the system is overloaded)"
        else:
            why = f"no model answered within the SLO of {app.slo_ms:g} ms"
        return self._default(app, q.qid, q.start, why)

    def _default(self, app: App, qid: int, start: float, why: str) -> dict:
        latency = asyncio.get_running_loop().time() - start
        self.metrics.record_query(app.name, latency, slo_s=app.slo_s, default=True)
        return {"query_id": qid, "output": app.default_output, "default": True, "default_explanation": why}

    def _state(self, app: App, context: str | None, create: bool = False) -> selection.SelectionState:
        return self.states.state(app.name, app.models, self.registry.policies[app.name], context, create)

    # ---------------------------------------------------------------- feedback
    async def feedback(self, app_name: str, x: Any, label: Any, context: str | None = None) -> dict:
        """Clipper's ``update``: join ``label`` with the predictions for ``x`` that the
        app's policy learns from (from the cache, computed on a miss), count loss 1 for
        the chosen models that failed on the query, update the selection state."""
        app = self.registry.app(app_name)
        if not app.models:
            raise Conflict(f"application {app_name!r} has no linked model to give feedback on")
        _check_context(context)
        x = decode_input(app.input_type, x, self.registry.expected_shape(app))
        policy = self.registry.policies[app_name]
        choice = self._choice(app, policy, x)
        losses = await self._losses(app, x, label, choice)
        outcome = self.states.apply_feedback(app_name, app.models, policy, losses,
                                             None if choice is None else choice.draw, context)
        if outcome.evicted:
            await self._db(self.store.delete_contexts, app_name, outcome.evicted)
        for ctx, state in outcome.states.items():
            self.metrics.record_weights(app_name, ctx or "default", selection.normalised_weights(state.log_weights),
                                        policy.probabilities(state))
        for m, loss in losses.items():
            self.metrics.record_model_loss(app_name, m, loss)
        final = outcome.states[context or ""]
        return {"app": app_name, "context": context, "losses": losses, "weights": selection.normalised_weights(final.log_weights),
                "probabilities": policy.probabilities(final), "updates": final.updates}

    def _choice(self, app: App, policy: selection.Policy, x: Any) -> Choice | None:
        """The recorded choice for ``x``; None when there is none, or when none of its
        models is still linked (the feedback is then full information)."""
        choice = self.states.chosen(app.name, input_digest(x)) if policy.adaptive else None
        if choice is None or not set(choice.draw.models) & set(app.models):
            return None
        return choice

    async def _losses(self, app: App, x: Any, label: Any, choice: Choice | None) -> dict[str, float]:
        """The losses feedback on ``(x, label)`` learns from: 1 for each chosen model that
        failed on the query, and the loss of each model it needs to evaluate (see
        :func:`_to_evaluate`); a model that raises on x counts 1, one that cannot answer
        is left out."""
        loss_fn = selection.make_loss(app.loss, app.loss_scale)
        if app.loss == "abs" and not isinstance(label, (int, float)):
            raise BadInput(f"label must be a number for loss 'abs', got {type(label).__name__}")
        if label is None or isinstance(label, dict):
            raise BadInput("label must be a class, a number or a list", f"got {type(label).__name__}")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(app.slo_s, FEEDBACK_MIN_WAIT_S)
        futures = {m: self.running[m].submit(x, deadline, use_cache=True)
                   for m in _to_evaluate(app, self.registry.policies[app.name], choice) if m in self.running}
        if futures:
            await asyncio.wait(list(futures.values()), timeout=max(0.0, deadline - loop.time()))
        losses = dict.fromkeys((m for m in choice.failed if m in app.models), 1.0) if choice else {}
        outputs, failures = _settled(futures)
        losses.update({m: _loss(app, m, loss_fn, to_jsonable(y), label) for m, y in outputs.items()})
        losses.update({m: 1.0 for m, e in failures.items() if isinstance(e, ModelError)})
        if not losses:
            raise Unavailable(f"no model linked to {app.name!r} could predict this input; feedback not recorded",
                              "check the models' status and send the feedback again")
        return losses

    def selection(self, app_name: str, context: str | None = None) -> dict:
        """What the app's policy has learned, app-wide or for ``context``."""
        app = self.registry.app(app_name)
        state = self._state(app, context)
        policy = self.registry.policies[app.name]
        return {"app": app.name, "context": context, "policy": app.policy, "weights": selection.normalised_weights(state.log_weights),
                "probabilities": policy.probabilities(state), "counts": state.counts, "cum_loss": state.cum_loss,
                "updates": state.updates, "contexts": self.states.contexts(app.name)}


def _to_evaluate(app: App, policy: selection.Policy, choice: Choice | None) -> list[str]:
    """The linked models whose prediction feedback needs: a one-model policy's chosen
    model when the choice is known, else every model; never one that failed on the query."""
    failed = set(choice.failed) if choice is not None else set()
    if choice is not None and policy.picks_one:
        return [m for m in choice.draw.models if m in app.models and m not in failed]
    return [m for m in app.models if m not in failed]


def _check_context(context: str | None) -> None:
    if context is not None and context.startswith(CHOICE_PREFIX):
        raise BadInput(f"a context must not start with {CHOICE_PREFIX!r}", "that prefix is reserved")


def _settled(futures: dict[str, asyncio.Future]) -> tuple[dict[str, Any], dict[str, BaseException]]:
    """The outputs and the failures of the futures that are done, by model."""
    outputs, failures = {}, {}
    for m, f in futures.items():
        if not f.done():
            continue
        exc = f.exception()
        if exc is None:
            outputs[m] = f.result()
        else:
            failures[m] = exc
    return outputs, failures


def _loss(app: App, model: str, loss_fn: selection.Loss, output: Any, label: Any) -> float:
    # zero_one compares anything, so a label of another type than the outputs
    # ("3" for 3) would silently count as every model being wrong.
    if app.loss == "zero_one" and output is not None and _json_kind(output) != _json_kind(label):
        raise BadInput(f"label {label!r} is a {_json_kind(label)} but model {model!r} answers a "
                       f"{_json_kind(output)}", "send the label as the models' output type")
    try:
        return float(loss_fn(output, label))
    except Exception as e:  # noqa: BLE001 - a label the loss cannot compare with
        raise BadInput(f"cannot compare label {label!r} with model {model!r}'s output: {e}") from None


async def _wait_all(futures: list[asyncio.Future], timeout: float) -> None:
    """Until every future is done or ``timeout`` seconds pass.

    ``asyncio.wait`` less the set building and checks it spends about half its time
    on; every query that is not a cache hit waits here once.
    """
    loop = asyncio.get_running_loop()
    waiter: asyncio.Future[None] = loop.create_future()
    left = len(futures)

    def one_done(_: asyncio.Future) -> None:
        nonlocal left
        left -= 1
        if left == 0 and not waiter.done():
            waiter.set_result(None)

    timer = loop.call_later(timeout, _release, waiter)
    for f in futures:
        f.add_done_callback(one_done)
    try:
        await waiter
    finally:
        timer.cancel()
        for f in futures:
            f.remove_done_callback(one_done)


def _release(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


def _json_kind(value: Any) -> str:
    """The JSON type of a label or output: bool, number, string, list or object."""
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    return "list" if isinstance(value, list) else type(value).__name__

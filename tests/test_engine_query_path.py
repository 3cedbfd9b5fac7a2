"""The Engine's query and feedback paths, driven directly with asyncio.

No HTTP and no worker processes: the engine's ``"process"`` backend is an
:class:`~clipper_nb.abstraction.inprocess.InProcessBackend`, which runs the deployed
function models on the event loop with scripted latencies, and records every batch it
runs (``backend.batches``), so a test can tell a cache hit from a recomputation.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections.abc import Callable
from typing import Any

import pytest

from clipper_nb.abstraction.inprocess import InProcessBackend
from clipper_nb.config import ClipperNB
from clipper_nb.engine import Engine
from clipper_nb.errors import BadInput, ModelError
from clipper_nb.selection.policies import SelectionState
from clipper_nb.selection.state import CHOICE_PREFIX
from clipper_nb.wire import artifact
from clipper_nb.wire.codec import decode_input, input_digest

#: Scripted time per batch of the model called "slow": far past every SLO used here.
SLOW_S = 0.8
SLO_MS = 100


# --- models (functions: batch -> one output per row) --------------------------------------

def answers_one(batch):
    return [1 for _ in batch]


def answers_two(batch):
    return [2 for _ in batch]


def answers_three(batch):
    return [3 for _ in batch]


def raises(batch):
    raise ValueError("this model is broken")


# --- fixtures and helpers ----------------------------------------------------------------

@pytest.fixture
def backend() -> InProcessBackend:
    return InProcessBackend(delays={"slow": SLOW_S})


@pytest.fixture
async def engine(tmp_path, backend):
    eng = Engine(ClipperNB(state_dir=str(tmp_path)), backends={"process": backend})
    await eng.start()
    yield eng
    await eng.stop()


async def deploy(engine: Engine, fn: Callable, name: str, **options: Any) -> dict:
    """Package ``fn`` as the kernel's client does and deploy it."""
    payload, meta = artifact.package(fn)
    return await engine.deploy(name, payload, meta, **options)


def batches_of(backend: InProcessBackend, model: str) -> int:
    """How many batches ``model`` has computed so far."""
    return sum(1 for replica, _ in backend.batches if replica.startswith(f"{model}:"))


def cached(engine: Engine, model: str, x: list[float]) -> bool:
    return input_digest(decode_input("floats", x)) in engine.deployments[model].cache


async def until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    end = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < end, "condition not met in time"
        await asyncio.sleep(0.01)


async def timed(coro) -> tuple[Any, float]:
    start = time.perf_counter()
    result = await coro
    return result, time.perf_counter() - start


# --- straggler mitigation ----------------------------------------------------------------

async def test_straggler_answers_at_the_deadline_and_fills_the_cache_later(engine, backend) -> None:
    await deploy(engine, answers_one, "fast")
    await deploy(engine, answers_two, "slow")
    await engine.register_app("ens", policy="exp4", models=["fast", "slow"], slo_ms=SLO_MS)
    x = [1.0, 2.0]

    result, elapsed = await timed(engine.predict("ens", x))
    assert SLO_MS / 1000 * 0.9 <= elapsed < SLOW_S * 0.75  # at the deadline, not the slowest model
    assert result["default"] is False
    assert result["output"] == 1
    assert result["models_used"] == ["fast"]
    assert result["models_missing"] == ["slow"]
    assert result["confidence"] == 0.5  # the missing model counts as disagreeing: 1 of 2 equal weights
    assert not cached(engine, "slow", x)

    # The slow model's late result still fills its cache: the same query is then answered
    # by both models at once, with nothing recomputed.
    await until(lambda: cached(engine, "slow", x))
    assert batches_of(backend, "slow") == 1
    result, elapsed = await timed(engine.predict("ens", x))
    assert elapsed < SLO_MS / 1000 / 2
    assert result["models_used"] == ["fast", "slow"]
    assert "models_missing" not in result
    assert result["confidence"] == pytest.approx(0.5)
    assert (batches_of(backend, "fast"), batches_of(backend, "slow")) == (1, 1)


async def test_without_straggler_mitigation_the_query_waits_for_every_model(engine) -> None:
    await deploy(engine, answers_one, "fast")
    await deploy(engine, answers_two, "slow")
    await engine.register_app("ens", policy="exp4", models=["fast", "slow"], slo_ms=SLO_MS,
                              straggler_mitigation=False)
    result, elapsed = await timed(engine.predict("ens", [3.0]))
    assert elapsed >= SLOW_S * 0.9
    assert result["models_used"] == ["fast", "slow"] and "models_missing" not in result
    assert result["default"] is False

    # A query queued behind the slow model's running batch stays queued past its SLO
    # deadline: the batcher must not drop the slow model's share of it.
    first = asyncio.ensure_future(engine.predict("ens", [4.0]))
    await asyncio.sleep(0.05)
    second = await engine.predict("ens", [5.0])
    assert second["models_used"] == ["fast", "slow"]
    assert (await first)["models_used"] == ["fast", "slow"]


# --- the default output ------------------------------------------------------------------

async def test_default_when_no_model_answers_within_the_slo(engine) -> None:
    await deploy(engine, answers_two, "slow", app="late", slo_ms=SLO_MS, default_output=-1)
    result, elapsed = await timed(engine.predict("late", [1.0]))
    assert elapsed < SLOW_S * 0.75
    assert result == {"query_id": result["query_id"], "output": -1, "default": True,
                      "default_explanation": f"no model answered within the SLO of {SLO_MS} ms"}

    batch = await engine.predict_batch("late", [[5.0], [6.0]])
    assert [r["default"] for r in batch] == [True, True]
    assert batch[0]["query_id"] != batch[1]["query_id"]


async def test_default_when_no_model_is_linked(engine) -> None:
    await engine.register_app("empty", default_output="nothing")
    result = await engine.predict("empty", [1.0])
    assert result["output"] == "nothing" and result["default"] is True
    assert result["default_explanation"] == "no model is linked to application 'empty'"


async def test_default_when_the_model_has_no_replica(engine) -> None:
    await deploy(engine, answers_one, "idle", replicas=0, app="zero", default_output=0)
    result = await engine.predict("zero", [1.0])
    assert result["default"] is True and result["output"] == 0
    assert "has no replicas" in result["default_explanation"]


async def test_default_when_the_model_is_not_running(tmp_path) -> None:
    # A model stored on a backend the restarted server does not have cannot be restored.
    config = ClipperNB(state_dir=str(tmp_path))
    first = Engine(config, backends={"process": InProcessBackend(), "gpu": InProcessBackend()})
    await first.start()
    await deploy(first, answers_one, "m", backend="gpu", app="app", default_output=-1)
    assert (await first.predict("app", [1.0]))["output"] == 1
    await first.stop()

    second = Engine(ClipperNB(state_dir=str(tmp_path)), backends={"process": InProcessBackend()})
    await second.start()
    try:
        assert "gpu" in second.restore_errors["m"]
        assert second.describe_model("m")["error"] == second.restore_errors["m"]
        result = await second.predict("app", [1.0])
        assert result["default"] is True and result["output"] == -1
        assert result["default_explanation"] == "model(s) m are not running"
    finally:
        await second.stop()


async def test_a_failing_model_fails_the_query(engine) -> None:
    await deploy(engine, raises, "broken", app="app")
    with pytest.raises(ModelError, match="this model is broken"):
        await engine.predict("app", [1.0])


# --- result shapes -----------------------------------------------------------------------

async def test_single_policy_answers_the_output_as_is(engine) -> None:
    await deploy(engine, answers_one, "a")
    await deploy(engine, answers_two, "b")
    await engine.register_app("one", models=["a", "b"])
    result = await engine.predict("one", [1.0])
    assert set(result) == {"query_id", "output", "default"}
    assert result["output"] == 1 and result["default"] is False
    # The single policy never reads or creates a selection state on the query path.
    assert not [key for key in engine.selection_states if key[0] == "one"]


async def test_other_policies_answer_confidence_and_models_used(engine) -> None:
    await deploy(engine, answers_one, "a")
    for policy in ("exp3", "exp4", "epsilon_greedy", "thompson"):
        await engine.register_app(policy, policy=policy, models=["a"])
        result = await engine.predict(policy, [1.0])
        assert set(result) == {"query_id", "output", "default", "confidence", "models_used"}, policy
        assert (result["output"], result["confidence"], result["models_used"]) == (1, 1.0, ["a"])


async def test_low_confidence_is_flagged_or_answers_the_default(engine) -> None:
    await deploy(engine, answers_one, "a")
    await deploy(engine, answers_two, "b")
    await deploy(engine, answers_three, "c")
    await engine.register_app("vote", policy="exp4", models=["a", "b", "c"], confidence_threshold=0.5,
                              default_output=0)
    result = await engine.predict("vote", [1.0])
    assert result["low_confidence"] is True and result["default"] is False
    assert result["confidence"] == pytest.approx(1 / 3)

    await engine.update_app("vote", low_confidence="default")
    result = await engine.predict("vote", [1.0])
    assert result["default"] is True and result["output"] == 0
    assert result["default_explanation"] == "confidence 0.33 is below the threshold 0.5"
    assert result["models_used"] == ["a", "b", "c"]


# --- feedback ----------------------------------------------------------------------------

async def test_feedback_is_joined_through_the_cache(engine, backend) -> None:
    await deploy(engine, answers_one, "right")
    await deploy(engine, answers_two, "wrong")
    await engine.register_app("ens", policy="exp4", models=["right", "wrong"])
    x = [4.0, 2.0]
    await engine.predict("ens", x, context="user-1")
    computed = len(backend.batches)
    assert computed == 2
    assert ("ens", "user-1") not in engine.selection_states  # a query creates no context state

    report = await engine.feedback("ens", x, 1, context="user-1")
    assert len(backend.batches) == computed  # both predictions came from the cache
    assert report["losses"] == {"right": 0.0, "wrong": 1.0}
    assert report["updates"] == 1
    assert report["weights"]["right"] > report["weights"]["wrong"]
    assert ("ens", "user-1") in engine.selection_states  # feedback created it
    assert engine.selection("ens", "user-1")["contexts"] == ["user-1"]
    assert engine.selection("ens")["cum_loss"] == {"right": 0.0, "wrong": 1.0}

    # Feedback on an input nobody asked about computes the predictions it needs.
    report = await engine.feedback("ens", [9.0, 9.0], 2)
    assert len(backend.batches) == computed + 2
    assert report["losses"] == {"right": 1.0, "wrong": 0.0}
    assert engine.selection("ens")["updates"] == 2
    assert engine.selection("ens", "user-1")["updates"] == 1  # app-wide feedback leaves the context


async def test_one_model_policies_learn_only_from_the_chosen_model(engine, backend) -> None:
    await deploy(engine, answers_one, "a")
    await deploy(engine, answers_two, "b")
    await engine.register_app("bandit", policy="exp3", models=["a", "b"])
    x = [1.0]
    (chosen,) = (await engine.predict("bandit", x))["models_used"]
    other = ({"a", "b"} - {chosen}).pop()
    report = await engine.feedback("bandit", x, 7)  # both models are wrong
    # Bandit feedback evaluates and learns from the model that answered the query only,
    # importance-weighted with the probability it was drawn with (0.5): log w -= 0.1 / 0.5.
    assert report["losses"] == {chosen: 1.0}
    assert batches_of(backend, other) == 0
    assert math.log(report["weights"][chosen] / report["weights"][other]) == pytest.approx(-0.2)


# --- learning from failures (issue 16) ---------------------------------------------------

def raises_on_odd(batch):
    if any(int(row[0]) % 2 for row in batch):
        raise ValueError("odd input")
    return [1 for _ in batch]


def log_gap(report: dict, model: str, other: str) -> float:
    return math.log(report["weights"][model] / report["weights"][other])


async def test_exp3_a_chosen_model_that_raises_counts_loss_one_at_feedback(engine, backend) -> None:
    await deploy(engine, raises, "broken")
    await deploy(engine, answers_one, "fine")
    await engine.register_app("bandit", policy="exp3", models=["broken", "fine"],
                              policy_options={"eta": 0.5})
    engine.queries._rng = ScriptedRng([0.1])  # draws "broken" (p = 0.5)
    with pytest.raises(ModelError):
        await engine.predict("bandit", [1.0])
    computed = len(backend.batches)
    report = await engine.feedback("bandit", [1.0], 1)
    assert len(backend.batches) == computed  # nothing evaluated: the failure is the loss
    assert report["losses"] == {"broken": 1.0}
    assert log_gap(report, "broken", "fine") == pytest.approx(-0.5 / 0.5)


async def test_a_choice_of_models_unlinked_since_counts_as_unknown(engine) -> None:
    await deploy(engine, answers_one, "a")
    await deploy(engine, answers_two, "b")
    await deploy(engine, answers_three, "c")
    await engine.register_app("bandit", policy="exp3", models=["a", "b"])
    engine.queries._rng = ScriptedRng([0.1])  # draws "a"
    await engine.predict("bandit", [1.0])
    await engine.unlink("bandit", "a")
    await engine.link("bandit", "c")
    report = await engine.feedback("bandit", [1.0], 3)
    assert report["losses"] == {"b": 1.0, "c": 0.0}  # full information from the linked models


async def test_exp3_feedback_uses_the_probability_at_selection(engine) -> None:
    await deploy(engine, answers_one, "a")
    await deploy(engine, answers_two, "b")
    await engine.register_app("bandit", policy="exp3", models=["a", "b"],
                              policy_options={"eta": 1.0, "gamma": 0.2})
    engine.queries._rng = ScriptedRng([0.1, 0.1])  # both queries draw "a" with p = 0.5
    await engine.predict("bandit", [1.0])
    await engine.predict("bandit", [2.0])
    first = await engine.feedback("bandit", [1.0], 2)  # a is wrong: log w_a = -1 / 0.5
    assert log_gap(first, "a", "b") == pytest.approx(-2.0)
    assert first["probabilities"]["a"] < 0.5
    # The second query was drawn before that feedback moved the weights: still 1 / 0.5.
    second = await engine.feedback("bandit", [2.0], 2)
    assert log_gap(second, "a", "b") == pytest.approx(-4.0)


async def test_unknown_choice_is_full_information(engine, backend) -> None:
    await deploy(engine, answers_one, "a")
    await deploy(engine, answers_two, "b")
    await engine.register_app("bandit", policy="exp3", models=["a", "b"])
    report = await engine.feedback("bandit", [5.0], 2)  # never queried: every model is evaluated
    assert report["losses"] == {"a": 1.0, "b": 0.0}
    assert log_gap(report, "a", "b") == pytest.approx(-0.1)  # not importance-weighted
    await deploy(engine, raises, "c")
    await engine.link("bandit", "c")
    report = await engine.feedback("bandit", [6.0], 2)
    assert report["losses"] == {"a": 1.0, "b": 0.0, "c": 1.0}  # a model that raises: loss 1


async def test_exp4_a_model_that_fails_counts_loss_one_and_lowers_confidence(engine, backend) -> None:
    await deploy(engine, answers_one, "a")
    await deploy(engine, answers_one, "b")
    await deploy(engine, raises_on_odd, "flaky")
    await engine.register_app("ens", policy="exp4", models=["a", "b", "flaky"],
                              policy_options={"eta": 1.0})
    result = await engine.predict("ens", [1.0])
    assert result["output"] == 1 and result["models_missing"] == ["flaky"]
    assert result["confidence"] == pytest.approx(2 / 3)
    flaky_batches = batches_of(backend, "flaky")
    report = await engine.feedback("ens", [1.0], 1)
    assert report["losses"] == {"a": 0.0, "b": 0.0, "flaky": 1.0}
    assert batches_of(backend, "flaky") == flaky_batches  # the recorded failure is not re-run
    assert log_gap(report, "flaky", "a") == pytest.approx(-1.0)
    # An answer from every model clears the input's failure record.
    await engine.predict("ens", [2.0])
    assert engine.states.chosen("ens", input_digest(decode_input("floats", [2.0]))) is None


async def test_exp4_a_straggler_counts_loss_one_though_its_late_answer_is_cached(engine) -> None:
    await deploy(engine, answers_one, "fast")
    await deploy(engine, answers_one, "slow")
    await engine.register_app("ens", policy="exp4", models=["fast", "slow"], slo_ms=SLO_MS,
                              policy_options={"eta": 1.0})
    x = [1.0]
    result = await engine.predict("ens", x)
    assert result["models_missing"] == ["slow"] and result["confidence"] == 0.5
    await until(lambda: cached(engine, "slow", x))
    report = await engine.feedback("ens", x, 1)
    assert report["losses"] == {"fast": 0.0, "slow": 1.0}  # it did not answer in time


async def test_a_default_because_nothing_runs_counts_loss_one(engine) -> None:
    await deploy(engine, answers_one, "idle", replicas=0)
    await deploy(engine, answers_one, "up")
    await engine.register_app("bandit", policy="exp3", models=["idle", "up"], default_output=-1)
    engine.queries._rng = ScriptedRng([0.1])  # draws "idle"
    result = await engine.predict("bandit", [1.0])
    assert result["default"] is True
    report = await engine.feedback("bandit", [1.0], 1)
    assert report["losses"] == {"idle": 1.0}
    assert log_gap(report, "idle", "up") == pytest.approx(-0.2)


async def test_a_context_draw_updates_both_states_with_its_probability(engine) -> None:
    await deploy(engine, answers_one, "a")
    await deploy(engine, answers_two, "b")
    await engine.register_app("bandit", policy="exp3", models=["a", "b"],
                              policy_options={"eta": 1.0, "gamma": 0.2, "log_weight_floor": None})
    engine.states.states[("bandit", "u")] = SelectionState(
        {"a": 0.0, "b": -50.0}, {"a": 0, "b": 0}, {"a": 0.0, "b": 0.0})
    engine.queries._rng = ScriptedRng([0.5])  # the context's state draws "a" with p = 0.9
    await engine.predict("bandit", [1.0], context="u")
    report = await engine.feedback("bandit", [1.0], 2, context="u")
    app_wide = engine.selection("bandit")
    assert app_wide["weights"]["a"] < 0.5
    assert math.log(app_wide["weights"]["a"] / app_wide["weights"]["b"]) == pytest.approx(-1 / 0.9)
    assert report["updates"] == 1


async def test_choices_survive_a_restart(tmp_path) -> None:
    engine = Engine(ClipperNB(state_dir=str(tmp_path)), backends={"process": InProcessBackend()})
    await engine.start()
    await deploy(engine, answers_one, "a")
    await deploy(engine, answers_two, "b")
    await engine.register_app("bandit", policy="exp3", models=["a", "b"], policy_options={"eta": 1.0})
    engine.queries._rng = ScriptedRng([0.9, 0.9])  # draws "b" with p = 0.5
    await engine.predict("bandit", [1.0])
    await engine.predict("bandit", [2.0])
    await engine.feedback("bandit", [2.0], 1)  # moves the weights: p_b is no longer 0.5
    await engine.stop()  # flushes states and choices

    engine = Engine(ClipperNB(state_dir=str(tmp_path)), backends={"process": InProcessBackend()})
    await engine.start()
    try:
        before = engine.selection("bandit")
        report = await engine.feedback("bandit", [1.0], 1)
        assert report["losses"] == {"b": 1.0}  # the restored record names the chosen model
        gap_before = math.log(before["weights"]["b"] / before["weights"]["a"])
        assert log_gap(report, "b", "a") - gap_before == pytest.approx(-1 / 0.5)
    finally:
        await engine.stop()


async def test_a_context_may_not_use_the_prefix_of_saved_choices(engine) -> None:
    await deploy(engine, answers_one, "a", app="app")
    with pytest.raises(BadInput, match="must not start with"):
        await engine.predict("app", [1.0], context=CHOICE_PREFIX + "x")
    with pytest.raises(BadInput, match="must not start with"):
        await engine.feedback("app", [1.0], 1, context=CHOICE_PREFIX + "x")


class ScriptedRng(random.Random):
    """``random()`` returns the scripted numbers in order, so a test picks the draw."""

    def __init__(self, values: list[float]) -> None:
        super().__init__(0)
        self.values = list(values)

    def random(self) -> float:
        return self.values.pop(0)

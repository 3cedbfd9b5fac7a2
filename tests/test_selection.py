"""Tests for clipper_nb.selection (policies and per-app/context state): pure, seeded, fast."""

from __future__ import annotations

import json
import math
import random

import numpy as np
import pytest

from clipper_nb.selection.policies import (
    LOSSES,
    POLICIES,
    Combined,
    EpsilonGreedyPolicy,
    Exp3Policy,
    Exp4Policy,
    SelectionState,
    ThompsonPolicy,
    combine_outputs,
    make_loss,
    make_policy,
    zero_one_loss,
)
from clipper_nb.selection.state import MAX_REMEMBERED_CHOICES, SelectionStates
from clipper_nb.wire import protocol

# --- hand-computed updates -------------------------------------------------------------

def test_exp3_update_matches_hand_computation() -> None:
    policy = make_policy("exp3", eta=0.1, gamma=0.1)
    state = policy.init_state(["a", "b"])
    assert policy.probabilities(state) == pytest.approx({"a": 0.5, "b": 0.5})

    # w = (1, 1), p_a = 0.9 * 0.5 + 0.1 / 2 = 0.5, l = 1: log w_a = -0.1 * 1 / 0.5 = -0.2
    state = policy.update(state, {"a": 1.0}, chosen="a")
    assert state.log_weights == pytest.approx({"a": -0.2, "b": 0.0})

    # p_b = 0.9 * 1 / (1 + e^-0.2) + 0.05 = 0.544850; log w_b = -0.1 / 0.544850 = -0.183537,
    # then subtracting the new max (-0.183537) gives a = -0.016463, b = 0.
    assert policy.probabilities(state)["b"] == pytest.approx(0.544850, abs=1e-6)
    state = policy.update(state, {"b": 1.0, "a": 0.0}, chosen="b")
    assert state.log_weights == pytest.approx({"a": -0.016463, "b": 0.0}, abs=1e-6)
    assert state.counts == {"a": 2, "b": 1}
    assert state.cum_loss == pytest.approx({"a": 1.0, "b": 1.0})
    assert state.updates == 2


def test_exp3_loss_on_unchosen_model_does_not_move_weights() -> None:
    policy = Exp3Policy()
    state = policy.update(policy.init_state(["a", "b"]), {"a": 1.0}, chosen="b")
    assert state.log_weights == {"a": 0.0, "b": 0.0}
    assert state.counts == {"a": 1, "b": 0}


def test_exp3_full_information_feedback_is_not_importance_weighted() -> None:
    policy = Exp3Policy(eta=0.1)
    state = policy.update(policy.init_state(["a", "b", "c"]), {"a": 1.0, "b": 0.5, "c": 0.0})
    assert state.log_weights == pytest.approx({"a": -0.1, "b": -0.05, "c": 0.0})


def test_exp4_update_matches_hand_computation() -> None:
    policy = make_policy("exp4", eta=0.1)
    state = policy.init_state(["a", "b"])
    state = policy.update(state, {"a": 1.0, "b": 0.0})
    assert state.log_weights == pytest.approx({"a": -0.1, "b": 0.0})
    # p_a = e^-0.1 / (1 + e^-0.1) = 0.475021
    assert policy.probabilities(state) == pytest.approx({"a": 0.475021, "b": 0.524979}, abs=1e-6)
    # a stays at -0.1, b drops to -0.05; subtracting the max (-0.05) gives a = -0.05, b = 0
    state = policy.update(state, {"a": 0.0, "b": 0.5})
    assert state.log_weights == pytest.approx({"a": -0.05, "b": 0.0})


def test_exp4_floor_bounds_how_far_a_model_falls() -> None:
    policy = Exp4Policy(eta=1.0, log_weight_floor=-5.0)
    state = policy.init_state(["a", "b"])
    for _ in range(10):
        state = policy.update(state, {"a": 1.0, "b": 0.0})
    assert state.log_weights == {"a": -5.0, "b": 0.0}


def test_update_returns_new_state_and_leaves_input_alone() -> None:
    for name in POLICIES:
        policy = make_policy(name)
        state = policy.init_state(["a", "b"])
        before = json.dumps(state.to_json())
        new = policy.update(state, {"a": 1.0, "b": 0.0}, chosen="a")
        assert json.dumps(state.to_json()) == before
        assert new is not state and new.counts == {"a": 1, "b": 1}


def test_update_rejects_losses_outside_unit_interval_and_ignores_unlinked() -> None:
    policy = Exp4Policy()
    state = policy.init_state(["a"])
    for bad in (1.5, -0.1, float("nan")):
        with pytest.raises(ValueError, match="must be in \\[0, 1\\]"):
            policy.update(state, {"a": bad})
    assert policy.update(state, {"gone": 1.0}).updates == 0


# --- probabilities and log space ------------------------------------------------------

@pytest.mark.parametrize("name", sorted(POLICIES))
def test_probabilities_sum_to_one(name: str) -> None:
    policy = make_policy(name)
    rng = random.Random(1)
    state = policy.init_state(["a", "b", "c"])
    for _ in range(50):
        model = policy.select(state, rng)[0]
        state = policy.update(state, {model: rng.random()}, chosen=model)
    probabilities = policy.probabilities(state)
    assert list(probabilities) == ["a", "b", "c"]
    assert sum(probabilities.values()) == pytest.approx(1.0)
    assert all(0.0 <= p <= 1.0 for p in probabilities.values())


def test_exp3_probabilities_keep_the_gamma_floor() -> None:
    policy = Exp3Policy(gamma=0.2, log_weight_floor=None)
    state = SelectionState({"a": 0.0, "b": -500.0, "c": -1e6}, {}, {})
    probabilities = policy.probabilities(state)
    assert probabilities["b"] == pytest.approx(0.2 / 3)
    assert probabilities["c"] == pytest.approx(0.2 / 3)
    assert probabilities["a"] == pytest.approx(0.8 + 0.2 / 3)


def test_log_space_survives_the_equivalent_of_a_million_updates() -> None:
    # 50k updates at eta = 20 push a weight as far (log w = -1e6) as a million at eta = 1;
    # linear weights would have underflowed to 0 after ~40 of them.
    for policy in (Exp4Policy(eta=20.0, log_weight_floor=None),
                   Exp3Policy(eta=20.0, log_weight_floor=None)):
        state = policy.init_state(["a", "b"])
        for _ in range(50_000):
            state = policy.update(state, {"a": 1.0, "b": 0.0})
        assert state.log_weights["a"] == pytest.approx(-1e6)
        probabilities = policy.probabilities(state)
        assert all(math.isfinite(p) for p in probabilities.values())
        assert sum(probabilities.values()) == pytest.approx(1.0)
        assert policy.select(state, random.Random(0)) in (["a"], ["b"], ["a", "b"])


# --- state ------------------------------------------------------------------------------

def test_state_json_round_trip() -> None:
    policy = ThompsonPolicy(discount=0.9)
    state = policy.init_state(["b", "a"])
    state = policy.update(state, {"b": 0.25}, chosen="b")
    saved = json.loads(json.dumps(state.to_json()))
    restored = SelectionState.from_json(saved)
    assert restored == state
    assert restored.models == ["b", "a"]
    with pytest.raises(ValueError, match="not a saved selection state"):
        SelectionState.from_json({"weights": {}})


def test_with_models_adds_at_mean_weight_and_drops_removed() -> None:
    policy = EpsilonGreedyPolicy()
    state = policy.init_state(["a", "b", "c"])
    state.log_weights.update(a=0.0, b=math.log(0.5))
    state = policy.update(state, {"a": 0.0, "c": 1.0})
    changed = state.with_models(["b", "a", "d"])
    assert changed.models == ["b", "a", "d"]
    assert changed.log_weights["d"] == pytest.approx(math.log(0.75))
    assert changed.counts == {"b": 0, "a": 1, "d": 0}
    assert "c" not in changed.cum_loss and "c" not in changed.extra["mean_loss"]
    assert "c" in state.log_weights  # the original is untouched
    assert SelectionState({}, {}, {}).with_models(["x"]).log_weights == {"x": 0.0}
    assert policy.best(changed) == "b"  # untried models are tried first
    with pytest.raises(ValueError, match="unique"):
        state.with_models(["a", "a"])


# --- combining ------------------------------------------------------------------------

def test_combine_labels_by_weighted_vote() -> None:
    result = combine_outputs({"a": "cat", "b": "dog", "c": "cat"}, {"a": 0.5, "b": 0.3, "c": 0.2})
    assert result == Combined("cat", pytest.approx(0.7), ["a", "b", "c"])
    result = combine_outputs({"a": np.int64(3), "b": 4}, {"a": 0.2, "b": 0.8})
    assert result.output == 4 and type(result.output) is int
    assert result.confidence == pytest.approx(0.8)


def test_combine_probability_vectors() -> None:
    outputs = {"a": np.array([0.7, 0.3]), "b": [0.2, 0.8], "c": [0.6, 0.4]}
    result = combine_outputs(outputs, {"a": 0.5, "b": 0.25, "c": 0.25})
    assert result.output == pytest.approx([0.55, 0.45])
    assert isinstance(result.output, list)
    assert result.confidence == pytest.approx(0.75)
    json.dumps(result.output)


def test_combine_floats_by_weighted_mean() -> None:
    result = combine_outputs({"a": 10.0, "b": 10.5, "c": 13.0}, {"a": 0.4, "b": 0.4, "c": 0.2})
    assert result.output == pytest.approx(10.8)
    assert result.confidence == pytest.approx(0.8)  # 10 and 10.5 are within 1.08 of 10.8
    assert type(combine_outputs({"a": np.float32(1.5)}, {}).output) is float


def test_combine_renormalises_among_models_that_replied() -> None:
    policy = Exp4Policy()
    state = SelectionState({"a": 0.0, "b": math.log(0.25), "c": math.log(0.5)}, {}, {})
    result = policy.combine(state, {"b": "x", "c": "y"})  # "a" missed the deadline
    assert result.output == "y" and result.models_used == ["b", "c"]
    assert result.confidence == pytest.approx(0.5 / 0.75)
    single = policy.combine(state, {"b": np.array([1, 2])})
    assert single == Combined([1, 2], 1.0, ["b"])
    agreeing = combine_outputs({"a": [1, 2], "b": (1, 2)}, {"a": 1.0, "b": 0.0})
    assert agreeing.confidence == 1.0
    with pytest.raises(ValueError, match="default output"):
        policy.combine(state, {})


def test_one_model_policies_pass_a_single_output_through() -> None:
    for name in ("single", "exp3", "epsilon_greedy", "thompson"):
        policy = make_policy(name)
        state = policy.init_state(["a", "b"])
        assert policy.combine(state, {"a": {"k": 1}}) == Combined({"k": 1}, 1.0, ["a"])


# --- losses ---------------------------------------------------------------------------

def test_losses() -> None:
    zero_one = make_loss("zero_one")
    assert zero_one(3, 3.0) == 0.0 and zero_one("3", 3) == 1.0
    assert zero_one(np.array([1, 2]), [1, 2]) == 0.0 and zero_one([1, 2], [1, 3]) == 1.0
    assert make_loss("abs", scale=4.0)(1.0, 3.0) == pytest.approx(0.5)
    assert make_loss("abs")(0.0, 3.0) == 1.0
    assert make_loss(lambda y, t: y - t)(5, 1) == 1.0
    assert make_loss(lambda y, t: y - t)(1, 5) == 0.0
    assert set(LOSSES) == {"zero_one", "abs"} and LOSSES["zero_one"] is zero_one_loss
    with pytest.raises(ValueError, match="zero_one, abs"):
        make_loss("hinge")
    with pytest.raises(ValueError, match="class labels"):
        make_loss("abs")("cat", "dog")
    with pytest.raises(ValueError, match="scale"):
        make_loss("abs", scale=0)


# --- validation -----------------------------------------------------------------------

def test_invalid_policy_names_and_options_raise_helpful_errors() -> None:
    with pytest.raises(ValueError, match="single, exp3, exp4, epsilon_greedy, thompson"):
        make_policy("exp5")
    with pytest.raises(ValueError, match="valid options: eta, gamma, log_weight_floor"):
        make_policy("exp3", etaa=0.1)
    with pytest.raises(ValueError, match="valid options: \\(none\\)"):
        make_policy("single", eta=0.1)
    with pytest.raises(ValueError, match="'eta' must be a number > 0"):
        make_policy("exp4", eta=0)
    with pytest.raises(ValueError, match="'gamma' must be a number >= 0.0 and <= 1.0"):
        make_policy("exp3", gamma=1.5)
    for bad in ("0.1", True, float("inf")):
        with pytest.raises(ValueError, match="'epsilon'"):
            make_policy("epsilon_greedy", epsilon=bad)
    assert make_policy("exp4", log_weight_floor=None).options() == {
        "eta": 0.1, "log_weight_floor": None}
    assert make_policy("thompson").options() == {
        "prior_alpha": 1.0, "prior_beta": 1.0, "discount": 1.0}
    assert Exp3Policy(eta=1).options()["eta"] == 1.0
    with pytest.raises(ValueError, match="unique"):
        Exp3Policy().init_state(["a", "a"])


def test_policy_names_match_the_wire_protocol() -> None:
    assert set(POLICIES) == set(protocol.POLICY_NAMES)


def test_policy_flags_and_empty_states() -> None:
    assert [name for name, cls in POLICIES.items() if cls.queries_all] == ["exp4"]
    assert sorted(name for name, cls in POLICIES.items() if cls.picks_one) == [
        "epsilon_greedy", "exp3", "thompson"]
    assert [name for name, cls in POLICIES.items() if not cls.combines] == ["single"]
    assert [name for name, cls in POLICIES.items() if not cls.adaptive] == ["single"]
    for cls in POLICIES.values():  # an ensemble neither picks one model nor skips combining
        assert not (cls.queries_all and cls.picks_one)
    for name in POLICIES:
        policy = make_policy(name)
        empty = policy.init_state([])
        assert policy.select(empty, random.Random(0)) == []
        assert policy.probabilities(empty) == {}


# --- learning behaviour ---------------------------------------------------------------

RATES = [0.1, 0.175, 0.25, 0.325, 0.4]
MODELS = [f"m{i}" for i in range(len(RATES))]
STEPS, FAIL_START, FAIL_END, N_CLASSES = 20_000, 5_000, 10_000, 10


def _stream(seed: int = 7) -> list[tuple[int, dict[str, int]]]:
    """Labels and each model's prediction; the best model errs 90% during the failure."""
    rng = random.Random(seed)
    stream = []
    for step in range(STEPS):
        label = rng.randrange(N_CLASSES)
        outputs = {}
        for model, rate in zip(MODELS, RATES):
            if model == "m0" and FAIL_START <= step < FAIL_END:
                rate = 0.9
            wrong = (label + 1 + rng.randrange(N_CLASSES - 1)) % N_CLASSES
            outputs[model] = label if rng.random() >= rate else wrong
        stream.append((label, outputs))
    return stream


@pytest.fixture(scope="module")
def stream() -> list[tuple[int, dict[str, int]]]:
    return _stream()


def _best_static_errors(stream: list[tuple[int, dict[str, int]]]) -> int:
    return min(sum(outputs[m] != label for label, outputs in stream) for m in MODELS)


def test_exp4_drops_a_failed_model_and_takes_it_back(stream) -> None:
    policy = Exp4Policy()
    state = policy.init_state(MODELS)
    errors, share = 0, {}
    for step, (label, outputs) in enumerate(stream):
        errors += policy.combine(state, outputs).output != label
        state = policy.update(state, {m: zero_one_loss(y, label) for m, y in outputs.items()})
        if step + 1 in (FAIL_START, FAIL_START + 1000, STEPS):
            share[step + 1] = policy.probabilities(state)["m0"]
    assert share[FAIL_START] > 0.9  # learned that m0 is best
    assert share[FAIL_START + 1000] < 0.1  # dropped within 1000 noisy steps of failing
    assert share[STEPS] > 0.9  # and recovered after it healed
    assert errors < _best_static_errors(stream)


def test_exp3_beats_the_best_static_model(stream) -> None:
    policy, rng = Exp3Policy(), random.Random(3)
    state = policy.init_state(MODELS)
    errors = 0
    for label, outputs in stream:
        (chosen,) = policy.select(state, rng)
        loss = zero_one_loss(outputs[chosen], label)
        errors += int(loss)
        state = policy.update(state, {chosen: loss}, chosen=chosen)
    assert errors < _best_static_errors(stream)
    assert max(state.log_weights, key=state.log_weights.__getitem__) == "m0"


@pytest.mark.parametrize("policy", [EpsilonGreedyPolicy(), ThompsonPolicy()], ids=repr)
def test_bandits_prefer_the_best_model_after_feedback(stream, policy) -> None:
    rng = random.Random(5)
    state = policy.init_state(MODELS)
    for label, outputs in stream[:FAIL_START]:
        (chosen,) = policy.select(state, rng)
        state = policy.update(state, {chosen: zero_one_loss(outputs[chosen], label)}, chosen)
    picks = [policy.select(state, rng)[0] for _ in range(1000)]
    assert picks.count("m0") > 800
    assert policy.probabilities(state)["m0"] > 0.8


# --- per-app and per-context state (selection.state) ------------------------------------

def test_states_contexts_are_created_only_by_feedback() -> None:
    states, policy = SelectionStates(max_contexts=10), make_policy("exp4", eta=1.0)
    base = states.state("app", ["a", "b"], policy, "user-1")
    assert base is states.state("app", ["a", "b"], policy)  # a query falls back to the app's
    assert list(states.states) == [("app", "")] and states.contexts("app") == []
    assert states.take_dirty() == []  # reading is not a change to save

    outcome = states.apply_feedback("app", ["a", "b"], policy, {"a": 1.0, "b": 0.0}, None, "user-1")
    assert set(outcome.states) == {"", "user-1"} and outcome.evicted == []
    assert outcome.states["user-1"].log_weights == pytest.approx({"a": -1.0, "b": 0.0})
    assert outcome.states[""].log_weights == pytest.approx({"a": -1.0, "b": 0.0})
    assert states.contexts("app") == ["user-1"]
    rows = sorted(states.take_dirty())
    assert [(a, c) for a, c, _ in rows] == [("app", ""), ("app", "user-1")]
    assert SelectionState.from_json(rows[1][2]).updates == 1
    assert states.take_dirty() == []  # taken once

    # A second context starts from the app-wide state as it was before this feedback.
    outcome = states.apply_feedback("app", ["a", "b"], policy, {"a": 0.0, "b": 1.0}, None, "user-2")
    assert outcome.states["user-2"].log_weights == pytest.approx({"a": 0.0, "b": 0.0})
    assert outcome.states[""].updates == 2


def test_states_evict_the_least_recently_updated_context() -> None:
    states, policy = SelectionStates(max_contexts=2), make_policy("exp3")
    losses = {"a": 0.5}
    for ctx in ("u1", "u2", "u1"):
        assert states.apply_feedback("app", ["a", "b"], policy, losses, "a", ctx).evicted == []
    assert states.apply_feedback("app", ["a", "b"], policy, losses, "a", "u3").evicted == ["u2"]
    assert states.contexts("app") == ["u1", "u3"]
    assert ("app", "u2") not in {(a, c) for a, c, _ in states.take_dirty()}
    # App-wide feedback (no context) evicts nothing.
    assert states.apply_feedback("app", ["a", "b"], policy, losses, "a").evicted == []


def test_states_follow_link_changes_and_forget() -> None:
    states, policy = SelectionStates(), make_policy("exp4")
    states.apply_feedback("app", ["a", "b"], policy, {"a": 1.0, "b": 0.0}, None, "u")
    grown = states.state("app", ["a", "b", "c"], policy, "u")
    assert grown.models == ["a", "b", "c"] and states.states[("app", "u")] is grown
    assert states.state("app", ["b"], policy).models == ["b"]
    states.forget("app")
    assert states.states == {} and states.take_dirty() == []


def test_states_remember_the_chosen_model_bounded() -> None:
    states = SelectionStates()
    states.remember_choice("app", b"x", "a")
    states.remember_choice("app", b"x", "b")
    assert states.chosen("app", b"x") == "b" and states.chosen("other", b"x") is None
    for i in range(MAX_REMEMBERED_CHOICES):
        states.remember_choice("app", i.to_bytes(4, "big"), "a")
    assert states.chosen("app", b"x") is None  # the oldest record went first

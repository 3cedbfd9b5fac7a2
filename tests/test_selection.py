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
    Draw,
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
from clipper_nb.selection.state import (
    CHOICE_PREFIX,
    MAX_REMEMBERED_CHOICES,
    Choice,
    SelectionStates,
    choice_key,
)
from clipper_nb.wire import protocol

# --- hand-computed updates -------------------------------------------------------------

def test_exp3_update_matches_hand_computation() -> None:
    policy = make_policy("exp3", eta=0.1, gamma=0.1)
    state = policy.init_state(["a", "b"])
    assert policy.probabilities(state) == pytest.approx({"a": 0.5, "b": 0.5})

    # w = (1, 1), p_a = 0.9 * 0.5 + 0.1 / 2 = 0.5, l = 1: log w_a = -0.1 * 1 / 0.5 = -0.2
    state = policy.update(state, {"a": 1.0}, chosen=Draw(("a",), (0.5,)))
    assert state.log_weights == pytest.approx({"a": -0.2, "b": 0.0})

    # p_b = 0.9 * 1 / (1 + e^-0.2) + 0.05 = 0.544850; log w_b = -0.1 / 0.544850 = -0.183537,
    # then subtracting the new max (-0.183537) gives a = -0.016463, b = 0.
    assert policy.probabilities(state)["b"] == pytest.approx(0.544850, abs=1e-6)
    state = policy.update(state, {"b": 1.0, "a": 0.0}, chosen=Draw(("b",), (0.544850,)))
    assert state.log_weights == pytest.approx({"a": -0.016463, "b": 0.0}, abs=1e-6)
    assert state.counts == {"a": 2, "b": 1}
    assert state.cum_loss == pytest.approx({"a": 1.0, "b": 1.0})
    assert state.updates == 2


def test_exp3_loss_on_unchosen_model_does_not_move_weights() -> None:
    policy = Exp3Policy()
    state = policy.update(policy.init_state(["a", "b"]), {"a": 1.0}, chosen=Draw(("b",), (0.5,)))
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
        new = policy.update(state, {"a": 1.0, "b": 0.0}, chosen=Draw(("a",), (0.5,)))
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
        draw = policy.draw(state, rng)
        state = policy.update(state, {draw.models[0]: rng.random()}, chosen=draw)
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
    state = policy.update(state, {"b": 0.25}, chosen=Draw(("b",)))
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


def test_confidence_is_agreement_over_the_whole_chosen_ensemble() -> None:
    """Issue 16: a model that was asked and did not reply counts as disagreeing."""
    five, equal = list("abcde"), dict.fromkeys("abcde", 0.2)
    assert combine_outputs({"a": 3}, equal, five) == Combined(3, pytest.approx(0.2), ["a"])  # not 1.0
    assert combine_outputs(dict.fromkeys("abcd", 3), equal, five).confidence == pytest.approx(0.8)  # 4 of 5
    split = combine_outputs({"a": 3, "b": 3, "c": 4}, equal, five)
    assert (split.output, split.confidence) == (3, pytest.approx(0.4))
    assert combine_outputs({"a": 3, "b": 3, "c": 4}, equal).confidence == pytest.approx(2 / 3)  # replies only
    # With learned weights, the missing model's weight counts against the answer.
    policy = Exp4Policy()
    state = SelectionState({"a": 0.0, "b": math.log(0.25), "c": math.log(0.5)}, {}, {})
    result = policy.combine(state, {"b": "x", "c": "y"}, ["a", "b", "c"])
    assert result.output == "y" and result.confidence == pytest.approx(0.5 / 1.75)
    assert policy.combine(state, {"b": 1}, ["a", "b", "c"]) == Combined(1, pytest.approx(0.25 / 1.75), ["b"])
    assert policy.combine(state, {"b": 1}, ["b"]).confidence == 1.0
    assert combine_outputs({"a": 1}, {}, ["a", "b"]).confidence == 0.5  # no weights: members count equally


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


def _stream(seed: int = 7, steps: int = STEPS,
            noise: tuple[int, int] | None = (FAIL_START, FAIL_END)) -> list[tuple[int, dict[str, int]]]:
    """Labels and each model's prediction; the best model errs 90% during ``noise``."""
    rng = random.Random(seed)
    stream = []
    for step in range(steps):
        label = rng.randrange(N_CLASSES)
        outputs = {}
        for model, rate in zip(MODELS, RATES):
            if model == "m0" and noise is not None and noise[0] <= step < noise[1]:
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
        draw = policy.draw(state, rng)
        (chosen,) = draw.models
        loss = zero_one_loss(outputs[chosen], label)
        errors += int(loss)
        state = policy.update(state, {chosen: loss}, chosen=draw)
    assert errors < _best_static_errors(stream)
    assert max(state.log_weights, key=state.log_weights.__getitem__) == "m0"


@pytest.mark.parametrize("policy", [EpsilonGreedyPolicy(), ThompsonPolicy()], ids=repr)
def test_bandits_prefer_the_best_model_after_feedback(stream, policy) -> None:
    rng = random.Random(5)
    state = policy.init_state(MODELS)
    for label, outputs in stream[:FAIL_START]:
        draw = policy.draw(state, rng)
        (chosen,) = draw.models
        state = policy.update(state, {chosen: zero_one_loss(outputs[chosen], label)}, draw)
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
    drew_a = Draw(("a",), (0.5,))
    for ctx in ("u1", "u2", "u1"):
        assert states.apply_feedback("app", ["a", "b"], policy, losses, drew_a, ctx).evicted == []
    assert states.apply_feedback("app", ["a", "b"], policy, losses, drew_a, "u3").evicted == ["u2"]
    assert states.contexts("app") == ["u1", "u3"]
    assert ("app", "u2") not in {(a, c) for a, c, _ in states.take_dirty()}
    # App-wide feedback (no context) evicts nothing.
    assert states.apply_feedback("app", ["a", "b"], policy, losses, drew_a).evicted == []


def test_states_follow_link_changes_and_forget() -> None:
    states, policy = SelectionStates(), make_policy("exp4")
    states.apply_feedback("app", ["a", "b"], policy, {"a": 1.0, "b": 0.0}, None, "u")
    grown = states.state("app", ["a", "b", "c"], policy, "u")
    assert grown.models == ["a", "b", "c"] and states.states[("app", "u")] is grown
    assert states.state("app", ["b"], policy).models == ["b"]
    states.forget("app")
    assert states.states == {} and states.take_dirty() == []


def test_states_remember_choices_bounded_and_hand_them_to_the_store() -> None:
    states = SelectionStates()
    states.remember_choice("app", b"x", Choice(Draw(("a",), (0.25,))))
    states.remember_choice("app", b"x", Choice(Draw(("b",), (0.75,)), failed=("b",)))
    assert states.chosen("app", b"x") == Choice(Draw(("b",), (0.75,)), ("b",))
    assert states.chosen("other", b"x") is None
    (row,) = states.take_dirty()
    assert row == ("app", choice_key(b"x"), {"m": ["b"], "p": [0.75], "f": ["b"]})
    assert row[1].startswith(CHOICE_PREFIX) and states.contexts("app") == []  # not a context
    assert states.take_dirty() == [] and states.take_deleted() == {}

    for i in range(MAX_REMEMBERED_CHOICES):
        states.remember_choice("app", i.to_bytes(4, "big"), Choice(Draw(("a",), (0.5,))))
    assert states.chosen("app", b"x") is None  # the oldest record went first
    assert states.take_deleted() == {"app": [choice_key(b"x")]}  # ... and its saved row goes too
    assert len(states.take_dirty()) == MAX_REMEMBERED_CHOICES

    states.forget_choice("app", (0).to_bytes(4, "big"))
    assert states.take_deleted() == {"app": [choice_key((0).to_bytes(4, "big"))]}
    states.forget("app")
    assert states.chosen("app", (1).to_bytes(4, "big")) is None
    assert states.take_dirty() == [] and states.take_deleted() == {}


def test_choices_come_back_from_saved_rows() -> None:
    ensemble = Choice(Draw(("a", "b", "c")), failed=("c",))
    picked = Choice(Draw(("a",), (0.125,)))
    saved = SelectionStates()
    saved.remember_choice("app", b"\x01" * 16, ensemble)
    saved.remember_choice("app", b"\x02" * 16, picked)
    rows = json.loads(json.dumps(saved.take_dirty()))
    # compact: short keys, empty parts left out
    assert {c: state for _, c, state in rows} == {choice_key(b"\x01" * 16): {"m": ["a", "b", "c"], "f": ["c"]},
                                                  choice_key(b"\x02" * 16): {"m": ["a"], "p": [0.125]}}

    restored = SelectionStates()
    for app, context, state in rows:
        restored.load(app, context, state)
    restored.load("app", CHOICE_PREFIX + "not base64!", {"m": ["a"]})  # unreadable: skipped
    restored.load("app", choice_key(b"\x03" * 16), {"m": ["a"], "p": [0.0]})
    assert restored.chosen("app", b"\x01" * 16) == ensemble
    assert restored.chosen("app", b"\x02" * 16) == picked
    assert restored.chosen("app", b"\x03" * 16) is None
    assert restored.states == {} and restored.take_dirty() == []  # loading is not a change


# --- learning from the choice as it was made (issue 16) ---------------------------------

def test_exp3_draw_keeps_the_probability_it_drew_with() -> None:
    policy = Exp3Policy(gamma=0.1)
    state = SelectionState({"a": 0.0, "b": math.log(3.0)}, {}, {})
    draws = [policy.draw(state, random.Random(seed)) for seed in range(20)]
    selects = [policy.select(state, random.Random(seed)) for seed in range(20)]
    assert [list(d.models) for d in draws] == selects  # same choice, same use of the rng
    for d in draws:
        assert d.probability(d.models[0]) == pytest.approx(policy.probabilities(state)[d.models[0]])
    assert Exp4Policy().draw(state, random.Random(0)) == Draw(("a", "b"))  # no probabilities needed
    with pytest.raises(ValueError, match="no selection probability"):
        Draw(("a",)).probability("a")


def test_exp3_divides_by_the_probability_at_selection_not_at_feedback() -> None:
    policy = Exp3Policy(eta=0.1, gamma=0.1)
    state = policy.init_state(["a", "b"])
    draw = Draw(("a",), (policy.probabilities(state)["a"],))  # 0.5 when a was drawn
    # Feedback on other queries moves the weights before this one's feedback arrives.
    state = policy.update(state, {"b": 1.0, "a": 1.0})
    state = policy.update(state, {"b": 1.0})
    assert policy.probabilities(state)["a"] != pytest.approx(0.5)
    later = policy.update(state, {"a": 1.0}, chosen=draw)
    # log w_a - log w_b falls by exactly eta * 1 / 0.5
    gap = lambda s: s.log_weights["a"] - s.log_weights["b"]
    assert gap(later) - gap(state) == pytest.approx(-0.2)
    with pytest.raises(ValueError, match="must be in \\(0, 1\\]"):
        policy.update(state, {"a": 1.0}, chosen=Draw(("a",), (0.0,)))


def test_unknown_choice_is_never_importance_weighted() -> None:
    # One loss and no choice: before issue 16 it was taken as the chosen model's and
    # divided by its current probability (-0.2 here); it is full information (-0.1).
    policy = Exp3Policy(eta=0.1)
    state = policy.update(policy.init_state(["a", "b"]), {"a": 1.0})
    assert state.log_weights == pytest.approx({"a": -0.1, "b": 0.0})
    # The other one-model policies learn from every given loss then, and from the chosen one otherwise.
    greedy = EpsilonGreedyPolicy()
    assert greedy.update(greedy.init_state(["a", "b"]), {"a": 1.0, "b": 0.0}).extra["pulls"] == {"a": 1, "b": 1}
    assert greedy.update(greedy.init_state(["a", "b"]), {"a": 1.0, "b": 0.0},
                         Draw(("b",))).extra["pulls"] == {"b": 1}
    thompson = ThompsonPolicy()
    assert thompson.update(thompson.init_state(["a", "b"]), {"a": 1.0, "b": 0.0}).extra["beta"] == {"a": 2.0, "b": 1.0}


def test_both_states_learn_with_the_probability_of_the_draw() -> None:
    """The context's state drew "a" with p = 0.9; the app-wide state would have given 0.5.
    Both learn with 0.9: the app-wide state's own p would over-count "a"'s loss."""
    states, policy = SelectionStates(), Exp3Policy(eta=0.1, gamma=0.2, log_weight_floor=None)
    states.states[("app", "")] = policy.init_state(["a", "b"])
    states.states[("app", "u")] = SelectionState({"a": 0.0, "b": -50.0}, {"a": 0, "b": 0}, {"a": 0.0, "b": 0.0})
    draw = policy.draw(states.state("app", ["a", "b"], policy, "u"), random.Random(0))
    assert draw == Draw(("a",), (pytest.approx(0.9),))
    outcome = states.apply_feedback("app", ["a", "b"], policy, {"a": 1.0}, draw, "u")
    assert outcome.states[""].log_weights == pytest.approx({"a": -0.1 / 0.9, "b": 0.0})
    assert outcome.states["u"].log_weights["a"] - outcome.states["u"].log_weights["b"] == pytest.approx(
        50.0 - 0.1 / 0.9)


def test_a_failure_counted_as_loss_one_moves_weight_away_old_logic_moved_it_toward() -> None:
    """The chosen model crashes: it gets loss 1 with the probability it was drawn with.
    The old feedback never saw its loss and treated the survivors' losses as full
    information, so the crashing model gained weight."""
    policy = Exp3Policy(eta=0.1)
    state = policy.init_state(["a", "b", "c"])
    draw = Draw(("a",), (policy.probabilities(state)["a"],))
    new = policy.update(state, {"a": 1.0}, chosen=draw)  # the query path's failure record
    assert policy.probabilities(new)["a"] < policy.probabilities(state)["a"]
    old = policy.update(state, {"b": 0.2, "c": 0.3})  # what the old feedback did
    assert policy.probabilities(old)["a"] > policy.probabilities(state)["a"]


# --- the paper's Fig. 8 with a hard failure, pure ----------------------------------------

HARD_FAIL = (FAIL_START, FAIL_END)  # the paper's Fig. 8 stretch, the model raising instead of erring
HARD_STEPS = STEPS


def _hard_failure_run(policy_name: str, seed: int) -> dict[str, float]:
    """m0 (the best model) raises for HARD_FAIL: each query records its draw and failures as
    the query path does, and feedback follows every query with loss 1 for a failed model."""
    stream, rng = _stream(seed, HARD_STEPS, noise=None), random.Random(seed)
    states, policy = SelectionStates(), make_policy(policy_name)
    failing = lambda step: HARD_FAIL[0] <= step < HARD_FAIL[1]
    bad, weight, dropped, back = 0, {}, None, None
    for step, (label, outputs) in enumerate(stream):
        state = states.state("app", MODELS, policy)
        draw = policy.draw(state, rng)
        replies = {m: outputs[m] for m in draw.models if not (m == "m0" and failing(step))}
        failed = tuple(m for m in draw.models if m not in replies)
        bad += not replies or policy.combine(state, replies, list(draw.models)).output != label
        losses = dict.fromkeys(failed, 1.0) | {m: zero_one_loss(y, label) for m, y in replies.items()}
        states.apply_feedback("app", MODELS, policy, losses, draw)
        share = _normalised_share(states.state("app", MODELS, policy).log_weights)
        if failing(step) and dropped is None and share < 0.1:
            dropped = step - HARD_FAIL[0] + 1
        if step >= HARD_FAIL[1] and back is None and share > 0.5:
            back = step - HARD_FAIL[1] + 1
        weight[step + 1] = share
    return {"bad": bad, "dropped": dropped, "back": back, "at_heal": weight[HARD_FAIL[1]]}


def _normalised_share(log_weights: dict[str, float]) -> float:
    top = max(log_weights.values())
    return math.exp(log_weights["m0"] - top) / sum(math.exp(v - top) for v in log_weights.values())


@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize("policy_name", ["exp3", "exp4"])
def test_hard_failure_moves_weight_away_and_back_and_beats_the_best_static(policy_name: str, seed: int) -> None:
    run = _hard_failure_run(policy_name, seed)
    stream = _stream(seed, HARD_STEPS, noise=None)
    static = {m: sum(o[m] != label or (m == "m0" and HARD_FAIL[0] <= i < HARD_FAIL[1])
                     for i, (label, o) in enumerate(stream)) for m in MODELS}
    assert run["dropped"] is not None and run["dropped"] < 500, run  # measured 90-270
    assert run["at_heal"] < 0.01, run
    assert run["back"] is not None and run["back"] < 5_000, run  # measured 1,600-3,500
    assert run["bad"] < min(static.values()), (run, static)

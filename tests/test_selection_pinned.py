"""Pinned arithmetic of clipper_nb.selection.policies: exact expectations computed by hand.

These tests complement tests/test_selection.py for the mutation score of the ``selection``
core (.ci/mutate.py). Expected values come from the formulas in the module's docstrings
(Exp3/Exp4 weights, epsilon-greedy shares, Beta posteriors, the combine rules), chosen
dyadic where possible so that they are exact in floating point. No server, no conftest.

Mutants judged equivalent (they cannot change observable behaviour):

* policies.py:70 ``isinstance(a, str) or isinstance(b, str)`` -> ``and``: _values_equal
  only sees values that went through to_jsonable (None/bool/int/float/str/list/dict), and
  a str never compares equal to any non-str of those, so the fall-through
  ``bool(a == b)`` gives the same False.
* policies.py:91 ``1.0 if math.isnan(diff)`` -> ``2.0``: unreachable; to_jsonable turns
  NaN and +-inf into strings ("NaN", "Infinity"), which abs_loss rejects, and |a - b| (or
  a sum of them) over finite numbers is finite or +inf, never NaN.
* policies.py:289 ``min(1.0, ...)`` -> ``min(2.0, ...)`` in _coverage: the replied models
  are a subset of the ensemble and both sums add the same non-negative weights in the same
  order, so (by monotonic rounding) the numerator never exceeds the total: the ratio is
  <= 1 and the clamp never acts.
"""

from __future__ import annotations

import math
import random

import pytest

from clipper_nb.selection import policies
from clipper_nb.selection.policies import (
    Combined,
    Draw,
    EpsilonGreedyPolicy,
    Exp3Policy,
    Exp4Policy,
    Option,
    SelectionState,
    SinglePolicy,
    ThompsonPolicy,
    abs_loss,
    combine_outputs,
    make_loss,
    make_policy,
    normalised_weights,
    zero_one_loss,
)


class _FixedRng(random.Random):
    """A Random whose random() always returns ``u`` and whose choice() takes the last item."""

    def __init__(self, u: float) -> None:
        super().__init__(0)
        self.u = u

    def random(self) -> float:
        return self.u

    def choice(self, seq):
        return seq[-1]


def _state(models, extra=None, log_weights=None) -> SelectionState:
    lw = dict(log_weights) if log_weights is not None else dict.fromkeys(models, 0.0)
    return SelectionState(lw, dict.fromkeys(models, 0), dict.fromkeys(models, 0.0), extra or {})


# --- value predicates ---------------------------------------------------------------------

def test_value_predicates() -> None:
    assert policies._is_number(1) and policies._is_number(1.5)
    assert not policies._is_number(True) and not policies._is_number("1") and not policies._is_number(None)
    assert policies._is_label("x") and policies._is_label(3) and policies._is_label(False)
    assert not policies._is_label(1.5) and not policies._is_label(None) and not policies._is_label([1])
    assert policies._is_vector([1.0]) and policies._is_vector([1, 2.5])
    assert not policies._is_vector([]) and not policies._is_vector([True]) and not policies._is_vector([1, "x"])
    assert not policies._is_vector((1.0, 2.0)) and not policies._is_vector(1.0)


def test_values_equal() -> None:
    eq = policies._values_equal
    assert eq([1, 2], [1, 2]) and not eq([1, 2], [1, 2, 3]) and not eq([1, 2], [1, 3])
    assert not eq([1], 1) and not eq(1, [1])
    assert not eq("1", 1) and not eq(1, "1") and eq("a", "a") and not eq("a", "b")
    assert eq(1, 1.0) and eq([[1, "a"]], [[1.0, "a"]])


def test_zero_one_loss() -> None:
    assert zero_one_loss([1], 1) == 1.0
    assert zero_one_loss(1, [1]) == 1.0
    assert zero_one_loss([1, 2], [1, 2]) == 0.0
    assert zero_one_loss([1, 2], [1, 2, 3]) == 1.0
    assert zero_one_loss("1", 1) == 1.0
    assert zero_one_loss(3, 3.0) == 0.0
    assert zero_one_loss("cat", "cat") == 0.0


# --- abs loss and make_loss -------------------------------------------------------------------

def test_abs_loss_arithmetic_and_default_scale() -> None:
    assert abs_loss(3, 2.5) == 0.5                    # default scale 1
    assert abs_loss(3.0, 1.0, scale=4.0) == 0.5
    assert abs_loss(5, 0) == 1.0                      # clipped at 1
    assert abs_loss(-1.5, 0.0, scale=4.0) == 0.375
    assert abs_loss([2.0], [1.5]) == 0.5              # a one-element list is a vector
    assert abs_loss([1.0, 2.0], [1.0, 2.5]) == 0.25   # mean |diff|
    assert abs_loss([1.0, 2.0], [3.0, 2.0], scale=4.0) == 0.25
    assert abs_loss([0.0, 0.0], [4.0, 4.0]) == 1.0


@pytest.mark.parametrize("output, label", [
    ([], []), (1, [1.0]), ([1.0], 1), (2.0, "x"), ("x", 2.0), ([1.0, 2.0], [1.0]), ("a", "b"),
    ([1.0, "x"], [1.0, "x"]), (float("nan"), 1.0),
])
def test_abs_loss_rejects_what_is_not_numbers(output, label) -> None:
    with pytest.raises(ValueError):
        abs_loss(output, label)


def test_make_loss_scale_and_clipping() -> None:
    assert make_loss("abs")(3, 2.5) == 0.5
    assert make_loss("abs", scale=2.0)(3, 2.5) == 0.25
    assert make_loss("zero_one") is zero_one_loss
    assert make_loss(lambda o, t: float("nan"))(1, 2) == 1.0
    assert make_loss(lambda o, t: 5)(1, 2) == 1.0
    assert make_loss(lambda o, t: -3)(1, 2) == 0.0
    assert make_loss(lambda o, t: 0.25)(1, 2) == 0.25
    for bad in (0, -1.0, float("nan"), float("inf"), True, "1"):
        with pytest.raises(ValueError):
            make_loss("abs", scale=bad)
    with pytest.raises(ValueError):
        make_loss("squared")


# --- state -----------------------------------------------------------------------------

@pytest.mark.parametrize("models", [[""], [3], ["a", ""], ["a", None], ["a", "a"]])
def test_model_names_must_be_non_empty_unique_strings(models) -> None:
    with pytest.raises(ValueError):
        Exp4Policy().init_state(models)


def test_with_models_new_model_gets_the_log_mean_weight() -> None:
    state = _state(["a", "b"], log_weights={"a": -1.0, "b": -3.0})
    state.counts["a"], state.cum_loss["a"] = 4, 2.5
    new = state.with_models(["a", "b", "c"])
    assert new.log_weights["c"] == pytest.approx(math.log((math.exp(-1.0) + math.exp(-3.0)) / 2), rel=1e-12)
    assert new.counts == {"a": 4, "b": 0, "c": 0}
    assert new.cum_loss == {"a": 2.5, "b": 0.0, "c": 0.0}
    # stable far from 0: the mean of two equal weights is that weight
    far = _state(["a", "b"], log_weights={"a": -1000.0, "b": -1000.0}).with_models(["a", "c"])
    assert far.log_weights == {"a": -1000.0, "c": -1000.0}
    assert policies._log_mean_weight([0.0, math.log(3.0)]) == pytest.approx(math.log(2.0), rel=1e-12)
    assert policies._log_mean_weight([5.0]) == 5.0


def test_from_json_fills_in_defaults() -> None:
    state = SelectionState.from_json({"log_weights": {"a": 0.5, "b": -1.0}})
    assert state.log_weights == {"a": 0.5, "b": -1.0}
    assert state.counts == {"a": 0, "b": 0}
    assert state.cum_loss == {"a": 0.0, "b": 0.0}
    assert state.extra == {} and state.updates == 0


def test_normalised_weights_is_a_stable_softmax() -> None:
    assert normalised_weights({}) == {}
    assert normalised_weights({"a": 1000.0, "b": 1000.0}) == {"a": 0.5, "b": 0.5}
    assert normalised_weights({"a": -1000.0, "b": -1000.0}) == {"a": 0.5, "b": 0.5}
    w = normalised_weights({"a": 0.0, "b": -math.log(3.0)})
    assert w == pytest.approx({"a": 0.75, "b": 0.25}, rel=1e-12)


# --- sampling --------------------------------------------------------------------------

def test_sample_never_picks_a_model_with_probability_zero() -> None:
    policy = Exp3Policy(gamma=0.0, log_weight_floor=None)
    state = _state(["a", "b"], log_weights={"a": -1e6, "b": 0.0})
    assert policy.probabilities(state) == {"a": 0.0, "b": 1.0}
    assert policy.draw(state, _FixedRng(0.0)) == Draw(("b",), (1.0,))
    # u exactly on a boundary belongs to the next model: [0, 0.5) -> a, [0.5, 1) -> b
    assert policies._sample({"a": 0.5, "b": 0.5}, _FixedRng(0.5)) == "b"
    assert policies._sample({"a": 0.5, "b": 0.5}, _FixedRng(0.4999)) == "a"
    assert policies._sample({"a": 0.25, "b": 0.25}, _FixedRng(0.75)) == "b"  # rounding gap: the last


# --- combine_outputs -----------------------------------------------------------------------

def test_models_missing_from_weights_weigh_nothing() -> None:
    assert combine_outputs({"a": "cat", "b": "dog"}, {"a": 0.4}) == Combined("cat", 1.0, ["a", "b"])


@pytest.mark.parametrize("bad", [-0.5, float("inf"), float("nan")])
def test_weights_must_be_finite_and_non_negative(bad) -> None:
    with pytest.raises(ValueError):
        combine_outputs({"a": "cat", "b": "dog"}, {"a": bad, "b": 1.0})


def test_all_zero_weights_count_replies_equally() -> None:
    assert combine_outputs({"a": 1.0, "b": 3.0}, {}) == Combined(2.0, 0.0, ["a", "b"])
    out = combine_outputs({"a": "x", "b": "y", "c": "x"}, {"a": 0.0, "b": 0.0})
    assert out.output == "x" and out.confidence == pytest.approx(2 / 3, rel=1e-12)


def test_reply_weights_are_renormalised() -> None:
    # weights 1 and 3 -> 0.25 and 0.75: mean 0.25 * 2 + 0.75 * 4 = 3.5; neither within 0.35
    assert combine_outputs({"a": 2.0, "b": 4.0}, {"a": 1.0, "b": 3.0}) == Combined(3.5, 0.0, ["a", "b"])
    assert policies._reply_weights([1.0, 3.0]) == [0.25, 0.75]
    assert policies._reply_weights([0.0, 0.0, 0.0, 0.0]) == [0.25, 0.25, 0.25, 0.25]


def test_coverage_is_the_share_of_ensemble_weight_that_replied() -> None:
    ensemble = ["a", "b", "c"]
    got = combine_outputs({"a": "cat", "b": "cat"}, {"a": 1.0, "b": 1.0, "c": 2.0}, ensemble)
    assert got == Combined("cat", 0.5, ["a", "b"])
    # no weight anywhere: members count equally
    assert combine_outputs({"a": "cat"}, {}, ["a", "b", "c", "d"]) == Combined("cat", 0.25, ["a"])
    # the docstring's example
    weights = {"a": 0.5, "b": 0.3, "c": 0.2, "d": 1.0}
    got = combine_outputs({"a": "cat", "b": "dog", "c": "cat"}, weights)
    assert got.output == "cat" and got.confidence == pytest.approx(0.7 / 1.0)
    got = combine_outputs({"a": "cat", "b": "dog", "c": "cat"}, weights, ["a", "b", "c", "d"])
    assert got.output == "cat" and got.confidence == pytest.approx(0.7 / 2.0)


def test_vote_groups_equal_dicts_whatever_their_key_order() -> None:
    outputs = {"a": {"x": 1, "y": 2}, "b": {"y": 2, "x": 1}, "c": {"z": 0}}
    got = combine_outputs(outputs, {"a": 1.0, "b": 1.0, "c": 1.0})
    assert got.output == {"x": 1, "y": 2}
    assert got.confidence == pytest.approx(2 / 3, rel=1e-12)


def test_vote_ties_go_to_the_first_class_seen() -> None:
    assert combine_outputs({"a": "x", "b": "y"}, {"a": 1.0, "b": 1.0}) == Combined("x", 0.5, ["a", "b"])
    assert combine_outputs({"b": "y", "a": "x"}, {"a": 1.0, "b": 1.0}) == Combined("y", 0.5, ["b", "a"])
    # ints are class labels, not numbers to average
    assert combine_outputs({"a": 9, "b": 11}, {"a": 1.0, "b": 1.0}) == Combined(9, 0.5, ["a", "b"])
    assert combine_outputs({"a": True, "b": False, "c": False}, {"a": 0.5, "b": 0.25, "c": 0.25}) \
        == Combined(True, 0.5, ["a", "b", "c"])


def test_confidence_never_exceeds_one_despite_rounding() -> None:
    # 1.1 / 4.1 + 3.0 / 4.1 rounds to 1.0000000000000002: the clamp keeps confidence in [0, 1]
    got = combine_outputs({"a": "cat", "b": "cat", "c": "dog"}, {"a": 1.1, "b": 3.0, "c": 0.0})
    assert got.output == "cat" and got.confidence == 1.0
    # the normalised 0.1, 0.9, 0.65 sum to 1.0000000000000002; all three agree
    weights = {"a": 0.1, "b": 0.9, "c": 0.65}
    got = combine_outputs({"a": 1.0, "b": 1.0, "c": 1.05}, weights)
    assert got.output == pytest.approx((0.1 + 0.9 + 0.65 * 1.05) / 1.65) and got.confidence == 1.0
    got = combine_outputs({"a": [10.0, 0.0], "b": [10.0, 0.0], "c": [10.5, 0.0]}, weights)
    assert got.output == pytest.approx([(1.0 + 9.0 + 0.65 * 10.5) / 1.65, 0.0]) and got.confidence == 1.0


def test_scalar_mean_tolerance() -> None:
    # within 10 % of the mean, boundary included: |9 - 10| = 0.1 * 10
    assert combine_outputs({"a": 9.0, "b": 11.0}, {"a": 1.0, "b": 1.0}) == Combined(10.0, 1.0, ["a", "b"])
    # mean 0: the absolute tolerance is 1e-9
    assert combine_outputs({"a": -1.0, "b": 1.0}, {"a": 1.0, "b": 1.0}) == Combined(0.0, 0.0, ["a", "b"])
    got = combine_outputs({"a": 0.0, "b": 1e-10}, {"a": 1.0, "b": 1.0})
    assert got.confidence == 1.0
    # an int and a float are numbers to average
    assert combine_outputs({"a": 9, "b": 11.0}, {"a": 1.0, "b": 1.0}) == Combined(10.0, 1.0, ["a", "b"])
    # 0.75 * 10 + 0.25 * 14 = 11; 10 is within 1.1, 14 is not
    assert combine_outputs({"a": 10.0, "b": 14.0}, {"a": 3.0, "b": 1.0}) == Combined(11.0, 0.75, ["a", "b"])


def test_probability_vectors_agree_on_the_argmax() -> None:
    # a zero entry is still a probability: both argmax 0 -> agreement 1
    got = combine_outputs({"a": [1.0, 0.0], "b": [0.75, 0.25]}, {"a": 1.0, "b": 1.0})
    assert got == Combined([0.875, 0.125], 1.0, ["a", "b"])
    # -1e-9 is tolerated as rounding: still a distribution; mean argmax 1 = a's argmax
    got = combine_outputs({"a": [-1e-9, 1.0], "b": [0.75, 0.25]}, {"a": 1.0, "b": 1.0})
    assert got.output == pytest.approx([0.375, 0.625]) and got.confidence == 0.5


def test_regression_vectors_agree_within_ten_percent_of_the_mean_norm() -> None:
    # rows that do not sum to 1: not distributions, although non-negative; no row within 10 %
    got = combine_outputs({"a": [1.0, 0.5], "b": [0.2, 1.0]}, {"a": 1.0, "b": 1.0})
    assert got.output == pytest.approx([0.6, 0.75]) and got.confidence == 0.0
    # rows that sum to 1 but have a negative entry are not distributions either
    got = combine_outputs({"a": [1.5, -0.5], "b": [0.25, 0.75]}, {"a": 1.0, "b": 1.0})
    assert got == Combined([0.875, 0.125], 0.0, ["a", "b"])
    # boundary included: mean [10, 0], both rows at distance 1 = 0.1 * |mean|
    got = combine_outputs({"a": [9.0, 0.0], "b": [11.0, 0.0]}, {"a": 1.0, "b": 1.0})
    assert got == Combined([10.0, 0.0], 1.0, ["a", "b"])
    # mean [11, 0]: a at distance 1 <= 1.1 agrees, b at distance 3 does not
    got = combine_outputs({"a": [10.0, 0.0], "b": [14.0, 0.0]}, {"a": 3.0, "b": 1.0})
    assert got == Combined([11.0, 0.0], 0.75, ["a", "b"])
    # mean 0: absolute tolerance 1e-9
    got = combine_outputs({"a": [1.0, 0.0], "b": [-1.0, 0.0]}, {"a": 1.0, "b": 1.0})
    assert got == Combined([0.0, 0.0], 0.0, ["a", "b"])


def test_mixed_and_ragged_values_fall_back_to_a_vote() -> None:
    assert combine_outputs({"a": "cat", "b": 1.5}, {"a": 0.25, "b": 0.75}) == Combined(1.5, 0.75, ["a", "b"])
    got = combine_outputs({"a": [1.0], "b": [1.0, 2.0]}, {"a": 1.0, "b": 1.0})
    assert got == Combined([1.0], 0.5, ["a", "b"])
    got = combine_outputs({"a": None, "b": [1, "x"], "c": [1, "x"]}, {"a": 0.5, "b": 0.25, "c": 0.25})
    assert got == Combined(None, 0.5, ["a", "b", "c"])


# --- options -----------------------------------------------------------------------------

def test_option_check_bounds() -> None:
    plain = Option("x", 1.0, "h")
    with pytest.raises(ValueError):
        plain.check("p", None)
    for bad in (True, "0.5", float("nan"), float("inf")):
        with pytest.raises(ValueError):
            plain.check("p", bad)
    assert plain.check("p", 2) == 2.0 and type(plain.check("p", 2)) is float
    closed = Option("x", 0.5, "h", low=0.0, high=1.0)
    assert closed.check("p", 0.0) == 0.0 and closed.check("p", 1.0) == 1.0
    for bad in (-1e-12, 1.0 + 1e-12):
        with pytest.raises(ValueError):
            closed.check("p", bad)
    opened = Option("x", 0.5, "h", low=0.0, low_open=True)
    assert opened.check("p", 1e-12) == 1e-12
    with pytest.raises(ValueError):
        opened.check("p", 0.0)
    assert Option("x", None, "h", allow_none=True).check("p", None) is None


def test_policy_defaults() -> None:
    assert make_policy("exp4").options() == {"eta": 0.1, "log_weight_floor": -20.0}
    assert make_policy("exp3").options() == {"eta": 0.1, "gamma": 0.1, "log_weight_floor": -20.0}
    assert make_policy("epsilon_greedy").options() == {"epsilon": 0.1}
    assert make_policy("thompson").options() == {"prior_alpha": 1.0, "prior_beta": 1.0, "discount": 1.0}
    assert make_policy("single").options() == {}


@pytest.mark.parametrize("name, options", [
    ("exp4", {"log_weight_floor": 0.5}), ("exp4", {"eta": 0.0}), ("exp3", {"gamma": 1.5}),
    ("epsilon_greedy", {"epsilon": 1.5}), ("epsilon_greedy", {"epsilon": -0.1}),
    ("thompson", {"prior_alpha": 0.0}), ("thompson", {"prior_beta": 0.0}),
    ("thompson", {"discount": 0.0}), ("thompson", {"discount": 1.5}), ("thompson", {"prior_alpha": None}),
])
def test_policy_options_out_of_bounds_raise(name, options) -> None:
    with pytest.raises(ValueError):
        make_policy(name, **options)


@pytest.mark.parametrize("name, options", [
    ("exp4", {"log_weight_floor": 0.0}), ("exp4", {"log_weight_floor": None}), ("exp3", {"gamma": 0.0}),
    ("exp3", {"gamma": 1.0}), ("epsilon_greedy", {"epsilon": 0.0}), ("epsilon_greedy", {"epsilon": 1.0}),
    ("thompson", {"discount": 1.0}), ("thompson", {"prior_alpha": 1e-6, "prior_beta": 1e-6}),
])
def test_policy_options_on_the_bounds_are_accepted(name, options) -> None:
    assert make_policy(name, **options).options().items() >= options.items()


# --- Single, Exp3, Exp4 ------------------------------------------------------------------

def test_single_policy_is_the_first_model() -> None:
    policy = SinglePolicy()
    state = policy.init_state(["a", "b", "c"])
    assert policy.probabilities(state) == {"a": 1.0, "b": 0.0, "c": 0.0}
    assert policy.select(state, random.Random(0)) == ["a"]


def test_exp3_probabilities_mix_weights_and_uniform() -> None:
    policy = Exp3Policy(gamma=0.25)
    state = _state(["a", "b"], log_weights={"a": 0.0, "b": -math.log(3.0)})
    # (1 - 0.25) * [0.75, 0.25] + 0.25 / 2
    assert policy.probabilities(state) == pytest.approx({"a": 0.6875, "b": 0.3125}, rel=1e-12)


def test_exp3_selection_probability_must_be_in_unit_interval() -> None:
    policy = Exp3Policy(eta=0.1)
    state = policy.init_state(["a", "b"])
    for bad in (1.5, 0.0):
        with pytest.raises(ValueError):
            policy.update(state, {"a": 1.0}, chosen=Draw(("a",), (bad,)))
    new = policy.update(state, {"a": 1.0}, chosen=Draw(("a",), (1.0,)))
    assert new.log_weights == pytest.approx({"a": -0.1, "b": 0.0}, rel=1e-12)
    new = policy.update(state, {"a": 1.0}, chosen=Draw(("a",), (0.25,)))
    assert new.log_weights == pytest.approx({"a": -0.4, "b": 0.0}, rel=1e-12)


def test_exp4_default_floor_is_minus_twenty() -> None:
    state = Exp4Policy(eta=25.0).update(Exp4Policy().init_state(["a", "b"]), {"a": 1.0, "b": 0.0})
    assert state.log_weights == {"a": -20.0, "b": 0.0}
    state = Exp4Policy(eta=25.0, log_weight_floor=None).update(state, {"a": 1.0, "b": 0.0})
    assert state.log_weights == {"a": -45.0, "b": 0.0}
    # renormalising subtracts the max: both losses 0.5 -> both back at 0
    state = Exp4Policy(eta=0.5).update(Exp4Policy().init_state(["a", "b"]), {"a": 0.5, "b": 0.5})
    assert state.log_weights == {"a": 0.0, "b": 0.0}


# --- epsilon-greedy -----------------------------------------------------------------------

def test_epsilon_greedy_probabilities() -> None:
    policy = EpsilonGreedyPolicy(epsilon=0.25)
    state = policy.init_state(["a", "b", "c", "d"])
    assert policy.probabilities(state) == {"a": 0.8125, "b": 0.0625, "c": 0.0625, "d": 0.0625}
    state.extra["mean_loss"] = {"a": 0.5, "b": 0.25, "c": 0.75, "d": 0.5}
    assert policy.best(state) == "b"
    assert policy.probabilities(state) == {"a": 0.0625, "b": 0.8125, "c": 0.0625, "d": 0.0625}
    state.extra["mean_loss"] = {"a": 0.5, "c": 0.75}
    assert policy.best(state) == "b"  # the first untried model


def test_epsilon_greedy_explores_only_below_epsilon() -> None:
    state = EpsilonGreedyPolicy().init_state(["a", "b", "c"])
    assert EpsilonGreedyPolicy(epsilon=0.0).select(state, _FixedRng(0.0)) == ["a"]
    assert EpsilonGreedyPolicy(epsilon=0.5).select(state, _FixedRng(0.5)) == ["a"]
    assert EpsilonGreedyPolicy(epsilon=0.5).select(state, _FixedRng(0.4999)) == ["c"]


def test_epsilon_greedy_exploration_share() -> None:
    policy = EpsilonGreedyPolicy(epsilon=0.3)
    state = policy.init_state(["a", "b", "c"])
    state.extra["mean_loss"] = {"a": 0.5, "b": 0.1, "c": 0.9}
    rng = random.Random(11)
    picks = [policy.select(state, rng)[0] for _ in range(6000)]
    # P(b) = 0.7 + 0.1, P(a) = P(c) = 0.1; 4 standard errors is about 0.02
    assert picks.count("b") / 6000 == pytest.approx(0.8, abs=0.025)
    assert picks.count("a") / 6000 == pytest.approx(0.1, abs=0.02)


def test_epsilon_greedy_keeps_a_running_mean() -> None:
    policy = EpsilonGreedyPolicy()
    state = policy.update(policy.init_state(["a", "b"]), {"a": 0.25})
    assert state.extra == {"mean_loss": {"a": 0.25}, "pulls": {"a": 1}}
    state = policy.update(state, {"a": 0.75})
    assert state.extra == {"mean_loss": {"a": 0.5}, "pulls": {"a": 2}}
    state = policy.update(state, {"a": 1.0, "b": 0.5})
    assert state.extra["pulls"] == {"a": 3, "b": 1}
    assert state.extra["mean_loss"] == pytest.approx({"a": 2 / 3, "b": 0.5}, rel=1e-12)
    # with the draw known, only the chosen model learns
    state = policy.update(state, {"a": 0.0, "b": 0.0}, chosen=Draw(("b",)))
    assert state.extra["pulls"] == {"a": 3, "b": 2} and state.extra["mean_loss"]["b"] == 0.25


# --- Thompson sampling -------------------------------------------------------------------

def test_thompson_posterior_update() -> None:
    policy = ThompsonPolicy()
    state = policy.update(policy.init_state(["a", "b"]), {"a": 0.25})
    # Beta(1, 1) + (1 - 0.25 successes, 0.25 failures); b keeps the prior (absent)
    assert state.extra == {"alpha": {"a": 1.75}, "beta": {"a": 1.25}}
    state = policy.update(state, {"a": 1.0, "b": 0.5}, chosen=Draw(("b",)))
    assert state.extra == {"alpha": {"a": 1.75, "b": 1.5}, "beta": {"a": 1.25, "b": 1.5}}
    state = policy.update(state, {"a": 0.0})
    assert state.extra == {"alpha": {"a": 2.75, "b": 1.5}, "beta": {"a": 1.25, "b": 1.5}}


def test_thompson_discount_fades_evidence_toward_the_prior() -> None:
    policy = ThompsonPolicy(prior_alpha=1.0, prior_beta=2.0, discount=0.5)
    state = policy.update(policy.init_state(["a", "b"]), {"a": 0.5})
    assert state.extra == {"alpha": {"a": 1.5, "b": 1.0}, "beta": {"a": 2.5, "b": 2.0}}
    state = policy.update(state, {"b": 1.0})
    # a: 1 + 0.5 * (1.5 - 1), 2 + 0.5 * (2.5 - 2); b: the prior, then one failure
    assert state.extra == {"alpha": {"a": 1.25, "b": 1.0}, "beta": {"a": 2.25, "b": 3.0}}


def _beta_state() -> SelectionState:
    return _state(["a", "b"], extra={"alpha": {"a": 3.0, "b": 1.0}, "beta": {"a": 1.0, "b": 3.0}})


def test_thompson_select_takes_the_largest_posterior_draw() -> None:
    policy = ThompsonPolicy(prior_alpha=2.0, prior_beta=5.0)
    state = _state(["a", "b", "c"], extra={"alpha": {"a": 3.0, "b": 1.0}, "beta": {"a": 1.0, "b": 3.0}})
    posteriors = {"a": (3.0, 1.0), "b": (1.0, 3.0), "c": (2.0, 5.0)}  # c: the prior
    rng, mine = random.Random(5), random.Random(5)
    for _ in range(50):
        draws = {m: mine.betavariate(*posteriors[m]) for m in ("a", "b", "c")}
        assert policy.select(state, rng) == [max(draws, key=draws.__getitem__)]


def test_thompson_probabilities_are_500_seeded_draws() -> None:
    policy = ThompsonPolicy()
    state = _beta_state()
    rng, wins = random.Random(0), {"a": 0, "b": 0}
    for _ in range(500):
        a, b = rng.betavariate(3.0, 1.0), rng.betavariate(1.0, 3.0)
        wins["a" if a >= b else "b"] += 1
    assert policy.probabilities(state) == {"a": wins["a"] / 500, "b": wins["b"] / 500}
    # P(X > Y) for X ~ Beta(3, 1), Y ~ Beta(1, 3) is 1 - 3 B(3, 4) = 0.95
    assert policy.probabilities(state)["a"] == pytest.approx(0.95, abs=0.04)
    equal = policy.probabilities(policy.init_state(["a", "b"]))
    assert all(float(500 * p).is_integer() for p in equal.values()) and 0.0 < equal["a"] < 1.0
    assert equal["a"] + equal["b"] == 1.0
    assert policy.probabilities(policy.init_state([])) == {}

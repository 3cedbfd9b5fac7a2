"""The model-selection layer's "Done when" scenarios (issue 4), on real workers.

Each scenario deploys deterministic synthetic classifiers (``_selection_fixtures``)
into real worker processes and prints the numbers it measured (``pytest -s``).

How the long scenarios stay fast: the paper's protocol is predict, then feedback,
for every query in order. 20,000 such rounds over HTTP would take minutes on a
shared 2-core machine, so the degradation, ensemble and contexts scenarios first
have every model predict every input once through ``input_batch`` requests (large
batches through the real workers, which fills each model's prediction cache). The
degradation and ensemble scenarios then run the per-query predict/feedback loop on
the server's own event loop, calling the Engine directly
(``run_coroutine_threadsafe``): every prediction still comes from a worker and every
feedback joins the label with the cached predictions, as in Clipper; only the
per-query HTTP parsing is skipped. The contexts, bad-feedback, straggler and
persistence scenarios send every query and feedback over HTTP.
"""

from __future__ import annotations

import random
import signal
import statistics
import time
from typing import TYPE_CHECKING

import pytest
import requests

from _selection_fixtures import (
    CrashingClassifier, ResidueClassifier, SyntheticClassifier, predict_then_feedback,
    predict_then_feedback_through_failures, query, run_on_server_loop, true_label, warm,
)
from clipper_nb.kernel.client import Client
from clipper_nb.errors import BadInput, NotFound, Unavailable
from clipper_nb.frontend.server import Server

if TYPE_CHECKING:  # the fixture's type only; conftest is pytest's to import
    from conftest import ServeProcess

pytestmark = pytest.mark.slow

# The paper's Fig. 8 setup, with the rates of the pure policy tests (tests/test_selection.py).
RATES = [0.1, 0.175, 0.25, 0.325, 0.4]
STEPS, NOISE = 20_000, (5_000, 10_000)


def _deploy(client: Client, models: dict[str, object]) -> list[str]:
    for name, obj in models.items():
        client.deploy(obj, name, max_batch_size=1024)
    return list(models)


def _p99(values: list[float]) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[98]


# ----------------------------------------------------------------------------- degradation


def test_degradation_bandits_beat_the_best_static_model(server: Server, client: Client) -> None:
    """Paper Fig. 8: the best of 5 models returns noise for queries 5,000-10,000."""
    names = _deploy(client, {f"m{i}": SyntheticClassifier(i, r, NOISE if i == 0 else None)
                             for i, r in enumerate(RATES)})
    # A generous SLO: the warm-up batches must not miss deadlines (latency is not studied here).
    client.register_app("deg4", slo_ms=10_000, policy="exp4", models=names)
    client.register_app("deg3", slo_ms=10_000, policy="exp3", models=names)
    start = time.monotonic()
    warm(client, "deg4", range(STEPS))
    warm_s = time.monotonic() - start

    qs = list(range(STEPS))
    exp4 = run_on_server_loop(server, predict_then_feedback(server.engine, "deg4", qs))
    exp3 = run_on_server_loop(server, predict_then_feedback(server.engine, "deg3", qs))
    run_s = time.monotonic() - start - warm_s

    static = {m: round(sum(s.losses[m] for s in exp4)) for m in names}
    best_static = min(static.values())
    errors4 = sum(s.output != true_label(s.q) for s in exp4)
    errors3 = sum(s.output != true_label(s.q) for s in exp3)
    m0_share = {s.q + 1: s.weights["m0"] for s in exp4}
    dropped_at = next(s.q for s in exp4 if s.q >= NOISE[0] and s.weights["m0"] < 0.1)
    dropped3_at = next((s.q for s in exp3 if s.q >= NOISE[0] and s.weights["m0"] < 0.1), None)
    print(f"\n[degradation] {STEPS} queries, noise on m0 for {NOISE}; warm-up {warm_s:.1f}s, "
          f"both runs {run_s:.1f}s")
    print(f"[degradation] static errors per model: {static} (best static {best_static}, "
          f"{best_static / STEPS:.4f})")
    print(f"[degradation] exp4 errors {errors4} ({errors4 / STEPS:.4f}); exp3 errors {errors3} "
          f"({errors3 / STEPS:.4f})")
    print(f"[degradation] exp4 weight on m0: {m0_share[NOISE[0]]:.3f} at the failure, < 0.1 after "
          f"{dropped_at - NOISE[0] + 1} noisy queries, {m0_share[NOISE[1]]:.4f} when it heals, "
          f"{m0_share[STEPS]:.3f} at the end; exp3's < 0.1 after "
          f"{'never' if dropped3_at is None else dropped3_at - NOISE[0] + 1} noisy queries")

    assert static["m0"] > static["m1"], "the failure must make m0 worse than m1 overall"
    assert m0_share[NOISE[0]] > 0.5, "exp4 had learned that m0 is the best model"
    assert dropped_at - NOISE[0] < 1_000
    assert errors4 < best_static
    assert errors3 < best_static
    # The weights went to metrics as a time series, and the state answers over HTTP.
    weights = client.metrics()["apps"]["deg4"]["weights"]
    assert set(weights["default"]["weights"]) == set(names)
    assert client.selection("deg4")["updates"] == STEPS


# ----------------------------------------------------------------------------- hard failure

CRASH_SEEDS = (1, 2)


def test_hard_failure_bandits_move_weight_away_and_back(server: Server, client: Client) -> None:
    """Paper Fig. 8 with a hard failure (issue 16): the best of 5 models raises on every
    query from 5,000 to 10,000. A failed query counts as loss 1 for the chosen model at
    its feedback, so Exp3 and Exp4 move weight off it within a few hundred queries,
    back after it heals, and beat the best static model over the stream; before issue
    16 the crashing model gained weight and Exp3 failed 93% of the queries meanwhile.

    Each seed is its own stream of queries (the models' errors and the labels) and its
    own seed of the engine's draws, on the same deployed workers.
    """
    models = {"m0": CrashingClassifier(0, RATES[0], crash=NOISE, period=STEPS),
              **{f"m{i}": SyntheticClassifier(i, r) for i, r in enumerate(RATES) if i}}
    names = _deploy(client, models)
    for seed in CRASH_SEEDS:
        qs = list(range(seed * STEPS, (seed + 1) * STEPS))
        client.register_app(f"crash4-{seed}", slo_ms=10_000, policy="exp4", models=names)
        client.register_app(f"crash3-{seed}", slo_ms=10_000, policy="exp3", models=names)
        warm(client, f"crash4-{seed}", qs)
        static = {m: sum(obj.predict_one(q) != true_label(q) or (m == "m0" and NOISE[0] <= q % STEPS < NOISE[1])
                         for q in qs) for m, obj in models.items()}
        for policy in ("exp4", "exp3"):
            server.engine.queries._rng = random.Random(seed)
            runs = run_on_server_loop(server, predict_then_feedback_through_failures(
                server.engine, f"crash{policy[-1]}-{seed}", qs, "m0"), timeout=600)
            weight = [o.weight for o in runs]
            during = runs[NOISE[0]:NOISE[1]]
            failed = sum(o.failed for o in during) / len(during)
            bad = sum(o.bad for o in runs)
            dropped = next((i - NOISE[0] + 1 for i in range(*NOISE) if weight[i] < 0.1), None)
            back = next((i - NOISE[1] + 1 for i in range(NOISE[1], STEPS) if weight[i] > 0.5), None)
            print(f"\n[hard failure {policy} seed {seed}] failed queries while m0 crashes {failed:.3f}; "
                  f"m0 weight {weight[NOISE[0] - 1]:.3f} before, {weight[NOISE[0] + 499]:.2e} 500 queries in, "
                  f"< 0.1 after {dropped}, > 0.5 again {back} queries after it heals; errors or failures over "
                  f"the stream {bad / STEPS:.4f}, best static model {min(static.values()) / STEPS:.4f}")
            assert weight[NOISE[0] - 1] > 0.5, "m0 was the best model before it crashed"
            assert dropped is not None and dropped < 500
            assert weight[NOISE[1] - 1] < 0.01
            assert back is not None and back < 5_000
            assert bad < min(static.values())
            if policy == "exp3":
                assert failed < 0.15  # 0.93 before issue 16
            else:
                assert failed == 0  # the other four models answer


# ----------------------------------------------------------------------------- ensemble


ENSEMBLE_RATES = [0.2, 0.22, 0.24, 0.26, 0.28]
ENSEMBLE_STEPS = 2_000


def test_ensemble_beats_its_best_model_and_agreement_means_confidence(server: Server, client: Client) -> None:
    """Models err independently on different inputs; Exp4's weighted vote beats each of them.

    Two apps share the five models: with near-equal models a small learning rate
    (0.01) keeps the vote broad; the default (0.1) concentrates the weight on the
    best model within a few hundred rounds, so its gain is smaller but must be there.
    """
    names = _deploy(client, {f"e{i}": SyntheticClassifier(10 + i, r) for i, r in enumerate(ENSEMBLE_RATES)})
    client.register_app("ens", slo_ms=10_000, policy="exp4", models=names, eta=0.01)
    client.register_app("ens_default", slo_ms=10_000, policy="exp4", models=names)
    warm(client, "ens", range(ENSEMBLE_STEPS))
    qs = list(range(ENSEMBLE_STEPS))
    for app in ("ens", "ens_default"):
        steps = run_on_server_loop(server, predict_then_feedback(server.engine, app, qs))
        best_single = min(round(sum(s.losses[m] for s in steps)) for m in names)
        wrong = [s.output != true_label(s.q) for s in steps]
        agreed = [w for s, w in zip(steps, wrong) if s.confidence == 1.0]
        rest = [w for s, w in zip(steps, wrong) if s.confidence != 1.0]
        print(f"\n[ensemble {app}] exp4 error {sum(wrong) / len(steps):.4f}, best single model "
              f"{best_single / len(steps):.4f}; full agreement: {len(agreed)} answers, error "
              f"{sum(agreed) / len(agreed):.4f}; the rest: {len(rest)} answers, error {sum(rest) / len(rest):.4f}")
        assert all(len(s.models_used) == len(names) for s in steps)
        assert sum(wrong) < best_single
        assert len(agreed) > 100 and len(rest) > 100
        assert sum(agreed) / len(agreed) < sum(rest) / len(rest)


# ----------------------------------------------------------------------------- stragglers


def _timed_predictions(client: Client, app: str, qs: range) -> tuple[list[float], list[dict]]:
    latencies, answers = [], []
    for q in qs:
        t = time.perf_counter()
        answers.append(client.predict(app, query(q)))
        latencies.append(time.perf_counter() - t)
    return latencies, answers


def test_stragglers_answer_at_the_deadline_and_fill_the_cache_late(client: Client) -> None:
    """One of 4 ensemble models sleeps 100 ms per batch; the SLO is 20 ms.

    The p99 asserted is the server's own (the metrics histogram, ~15 % buckets):
    on the shared 2-core test machine the client-side latency also carries HTTP and
    scheduling delays of several ms, so it is printed, not asserted.
    """
    names = _deploy(client, {"fast0": SyntheticClassifier(20, 0.0), "fast1": SyntheticClassifier(21, 0.0),
                             "fast2": SyntheticClassifier(22, 0.0),
                             "slow": SyntheticClassifier(23, 0.0, sleep_s=0.1)})
    client.register_app("strag", slo_ms=20, policy="exp4", models=names)
    client.register_app("wait", slo_ms=20, policy="exp4", models=names, straggler_mitigation=False)
    # Warm the fast workers' first batch (imports, allocations) on an app without the slow model.
    client.register_app("fast", slo_ms=1_000, policy="exp4", models=names[:3])
    client.predict("fast", query(-1))

    # The slow model is idle, so it starts on this query and finishes after the answer...
    first = client.predict("strag", query(1_000_000))
    assert "slow" not in first.get("models_used", ()), first
    # ... and its late prediction lands in the cache: the repeat is answered by all four.
    time.sleep(0.3)
    again = client.predict("strag", query(1_000_000))
    assert sorted(again["models_used"]) == sorted(names) and "models_missing" not in again, again

    latencies, answers = _timed_predictions(client, "strag", range(200))
    p99 = _p99(latencies) * 1000
    server_p99 = client.metrics()["apps"]["strag"]["totals"]["p99_ms"]
    answered = [a for a in answers if not a["default"]]
    missing = sum("slow" in a.get("models_missing", ()) for a in answered)

    slow_latencies, slow_answers = _timed_predictions(client, "wait", range(10_000, 10_030))
    slow_p99 = _p99(slow_latencies) * 1000
    slow_server_p99 = client.metrics()["apps"]["wait"]["totals"]["p99_ms"]
    print(f"\n[stragglers] mitigation on: 200 queries, server p99 {server_p99:.1f} ms, client p99 {p99:.1f} ms, "
          f"client max {max(latencies) * 1000:.1f} ms; slow model missing in {missing} of {len(answered)} "
          f"answers, {len(answers) - len(answered)} default outputs")
    print(f"[stragglers] mitigation off: 30 queries, server p99 {slow_server_p99:.1f} ms, client p99 "
          f"{slow_p99:.1f} ms, client min {min(slow_latencies) * 1000:.1f} ms")

    assert server_p99 <= 20 + 5
    assert len(answered) >= 0.95 * len(answers)
    assert missing == len(answered)
    assert all(set(a["models_used"]) <= set(names) - {"slow"} for a in answered)
    assert slow_server_p99 > 100 and slow_p99 > 100
    assert all("models_missing" not in a and "slow" in a["models_used"] for a in slow_answers)


# ----------------------------------------------------------------------------- contexts


CONTEXT_STEPS = 1_000


def test_contexts_learn_each_groups_best_model(client: Client) -> None:
    """Group 0 is served best by "ga", group 1 by "gb"; overall they are equally good.

    Queries alternate between the groups; group 0 sends its context as ``"context"``
    (the Python client), group 1 as Clipper's ``"uid"`` (raw HTTP).
    """
    names = _deploy(client, {"ga": ResidueClassifier(30, {0: (0,), 1: (0, 1, 2, 3)}),
                             "gb": ResidueClassifier(31, {0: (0, 1, 2, 3), 1: (0,)})})
    client.register_app("ctx", slo_ms=10_000, policy="exp4", models=names)
    warm(client, "ctx", range(CONTEXT_STEPS), groups=lambda q: q % 2)
    session = requests.Session()
    errors = {0: 0, 1: 0}
    for q in range(CONTEXT_STEPS):
        group, x, label = q % 2, query(q, q % 2), true_label(q)
        if group == 0:
            answer = client.predict("ctx", x, context="g0")
            client.feedback("ctx", x, label, context="g0")
        else:
            r = session.post(f"{client.url}/ctx/predict", json={"input": x, "uid": "g1"})
            r.raise_for_status()
            answer = r.json()
            session.post(f"{client.url}/ctx/update", json={"input": x, "label": label, "uid": "g1"}).raise_for_status()
        if q >= CONTEXT_STEPS // 2:
            errors[group] += answer["output"] != label

    g0, g1 = client.selection("ctx", context="g0"), client.selection("ctx", context="g1")
    overall = client.selection("ctx")
    half = CONTEXT_STEPS // 4  # queries per group in the second half
    print(f"\n[contexts] weights g0 {g0['weights']}, g1 {g1['weights']}, app-wide {overall['weights']}")
    print(f"[contexts] error in the second half: g0 {errors[0] / half:.3f}, g1 {errors[1] / half:.3f} "
          f"(best model per group errs 0.1, the other 0.4)")
    assert g0["weights"]["ga"] > 0.9 and g1["weights"]["gb"] > 0.9
    assert max(overall["weights"].values()) < 0.7
    assert set(overall["contexts"]) == {"g0", "g1"}
    assert errors[0] / half < 0.15 and errors[1] / half < 0.15


# ----------------------------------------------------------------------------- bad feedback


def _state(client: Client, app: str, context: str | None = None) -> dict:
    s = client.selection(app, context=context)
    return {k: s[k] for k in ("weights", "probabilities", "counts", "cum_loss", "updates", "contexts")}


def test_bad_feedback_is_refused_and_changes_nothing(client: Client) -> None:
    names = _deploy(client, {"b0": SyntheticClassifier(40, 0.1), "b1": SyntheticClassifier(41, 0.3)})
    client.register_app("bad", slo_ms=1_000, policy="exp4", models=names)
    for q in range(20):  # some learning first, so "unchanged" is not trivially the initial state
        client.predict("bad", query(q), context="u1")
        client.feedback("bad", query(q), true_label(q), context="u1")
    before, before_u1 = _state(client, "bad"), _state(client, "bad", "u1")
    assert before["updates"] == 20

    with pytest.raises(NotFound) as e:
        client.feedback("no-such-app", query(1), true_label(1))
    print(f"\n[bad feedback] unknown app: {e.value.status} {e.value}")
    for label in (str(true_label(1)), [true_label(1)], {"class": 1}, True):
        with pytest.raises(BadInput) as e:
            client.feedback("bad", query(1), label, context="u1")
        print(f"[bad feedback] label {label!r}: {e.value.status} {e.value}")
    with pytest.raises(BadInput):
        client.feedback("bad", "not a row of floats", true_label(1))
    r = requests.post(f"{client.url}/bad/update", json={"input": query(1)})
    assert r.status_code == 400 and "label" in r.json()["error"]

    # Both models down: an input they predicted before is still joined from the cache...
    client.scale("b0", 0)
    client.scale("b1", 0)
    # ... but one never seen cannot be, and the feedback is refused with a 503.
    start = time.monotonic()
    with pytest.raises(Unavailable) as e:
        client.feedback("bad", query(999_999), true_label(999_999), context="u1")
    print(f"[bad feedback] unseen input, models down: {e.value.status} {e.value} "
          f"(after {time.monotonic() - start:.1f}s)")
    assert e.value.status == 503

    assert _state(client, "bad") == before
    assert _state(client, "bad", "u1") == before_u1
    cached = client.feedback("bad", query(3), true_label(3), context="u1")
    assert set(cached["losses"]) == set(names) and cached["updates"] == 21


# ----------------------------------------------------------------------------- persistence


def test_selection_state_survives_a_restart(serve: ServeProcess) -> None:
    client = serve.client()
    names = _deploy(client, {"p0": SyntheticClassifier(50, 0.1), "p1": SyntheticClassifier(51, 0.4)})
    client.register_app("keep", slo_ms=1_000, policy="exp4", models=names)
    for q in range(60):
        client.feedback("keep", query(q), true_label(q), context="alice" if q % 2 else None)
    before, before_alice = _state(client, "keep"), _state(client, "keep", "alice")
    assert before["weights"]["p0"] > 0.75

    serve.restart()  # graceful: the engine flushes the state on the way down
    client = serve.client()
    assert _state(client, "keep") == before
    assert _state(client, "keep", "alice") == before_alice

    # The 1 s flush loop also saves it without a graceful stop.
    for q in range(60, 100):
        client.feedback("keep", query(q), true_label(q), context="alice")
    later = _state(client, "keep", "alice")
    time.sleep(2.5)
    serve.stop(signal.SIGKILL)
    serve.start()
    client = serve.client()
    assert _state(client, "keep", "alice") == later
    print(f"\n[persistence] weights after restart {_state(client, 'keep')['weights']}, "
          f"alice {later['weights']} ({later['updates']} updates) after kill -9")

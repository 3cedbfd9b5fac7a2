"""Tests of clipper_nb.engine.metrics: pure logic, explicit clocks, no I/O."""

from __future__ import annotations

import json
import math
import tracemalloc

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from clipper_nb.engine.metrics import LATENCY_BOUNDS_S, Metrics, estimate_percentiles

BUCKET_RATIO = 10 ** (1 / 16) * 1.01  # one bucket's width, with slack for the 3-digit rounding
T0 = 1_000_000.0


def within_one_bucket(estimate: float, exact: float) -> bool:
    return exact / BUCKET_RATIO <= estimate <= exact * BUCKET_RATIO


def record(m: Metrics, latencies, now: float, app: str = "a", slo_s: float = 0.1, **kw) -> None:
    for x in latencies:
        m.record_query(app, float(x), slo_s=slo_s, default=kw.get("default", False),
                       error=kw.get("error", False), cache_hit=kw.get("cache_hit"), now=now)


def samples(text: bytes) -> dict[tuple[str, tuple], float]:
    """{(sample name, sorted labels): value} of a Prometheus exposition."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text.decode()) for s in family.samples}


# ---- percentiles ---------------------------------------------------------------

def test_bounds_are_log_spaced_from_a_tenth_of_a_millisecond_to_a_minute():
    assert LATENCY_BOUNDS_S[0] == 1e-4 and LATENCY_BOUNDS_S[-1] >= 60
    ratios = np.diff(np.log10(LATENCY_BOUNDS_S))
    assert 60 <= len(LATENCY_BOUNDS_S) <= 100 and np.allclose(ratios, 1 / 16, atol=0.003)


@pytest.mark.parametrize("dist", ["lognormal", "uniform", "bimodal"])
def test_percentiles_are_within_one_bucket_of_the_exact_ones(dist):
    rng = np.random.default_rng(7)
    x = {"lognormal": lambda: rng.lognormal(np.log(0.008), 0.8, 20_000),
         "uniform": lambda: rng.uniform(0.001, 0.1, 20_000),
         # 90 % fast, 10 % stragglers: a mean or a wrong rank would miss p50 or p95 by 100x
         "bimodal": lambda: np.r_[rng.uniform(0.002, 0.0022, 18_000), rng.uniform(0.5, 0.52, 2_000)]}[dist]()
    m = Metrics()
    record(m, x, now=T0 + 0.5)
    app = m.snapshot(now=T0 + 1)["apps"]["a"]
    for q, key in ((50, "p50_ms"), (95, "p95_ms"), (99, "p99_ms")):
        exact = np.percentile(x, q) * 1000
        assert within_one_bucket(app[key][0], exact), (key, app[key][0], exact)
        assert within_one_bucket(app["totals"][key], exact)


def test_estimate_percentiles_of_a_single_bucket_and_of_empty_rows():
    hist = np.zeros((3, len(LATENCY_BOUNDS_S) + 1))
    k = LATENCY_BOUNDS_S.index(0.01)
    hist[0, k] = 4  # four samples in (0.00866, 0.01]
    hist[2, -1] = 1  # overflow: reported as the last bound
    p = estimate_percentiles(hist, (0.5, 0.99))
    assert LATENCY_BOUNDS_S[k - 1] < p[0, 0] < p[1, 0] <= 0.01
    assert np.isnan(p[:, 1]).all()
    assert p[0, 2] == LATENCY_BOUNDS_S[-1]


# ---- per-second series -----------------------------------------------------------

def test_queries_fall_into_the_second_they_were_answered_in():
    m = Metrics()
    record(m, [0.001] * 2, now=T0)
    record(m, [0.001], now=T0 + 0.999)
    record(m, [0.1] * 5, now=T0 + 2.0)
    app = m.snapshot(now=T0 + 3.2)["apps"]["a"]
    assert app["t"] == [T0, T0 + 1, T0 + 2]
    assert app["qps"] == [3, 0, 5]
    assert within_one_bucket(app["p50_ms"][0], 1.0) and within_one_bucket(app["p50_ms"][2], 100.0)
    assert app["p50_ms"][1] is None and app["slo_attainment"][1] is None
    assert app["totals"]["queries"] == 8


def test_only_complete_seconds_are_reported_and_series_start_when_first_seen():
    m = Metrics()
    record(m, [0.001], now=T0 + 0.5)
    record(m, [0.001], now=T0 + 1.5)
    snap = m.snapshot(now=T0 + 1.9)
    assert snap["now"] == T0 + 1.9 and snap["resolution_s"] == 1
    assert snap["apps"]["a"]["t"] == [T0]  # second T0+1 is still open; nothing before T0


def test_since_returns_only_later_seconds_and_totals_keep_the_whole_window():
    m = Metrics()
    for s in range(10):
        record(m, [0.001] * (s + 1), now=T0 + s)
    full = m.snapshot(now=T0 + 10)["apps"]["a"]
    part = m.snapshot(since=T0 + 6, now=T0 + 10)["apps"]["a"]
    assert part["t"] == [T0 + 7, T0 + 8, T0 + 9] and part["qps"] == [8, 9, 10]
    assert m.snapshot(since=T0 + 6.5, now=T0 + 10)["apps"]["a"]["t"] == part["t"]
    assert m.snapshot(since=T0 + 9, now=T0 + 10)["apps"]["a"]["t"] == []
    assert part["totals"] == full["totals"] and full["totals"]["queries"] == 55
    assert all(len(v) == 3 for k, v in part.items() if isinstance(v, list))


def test_ring_wraps_after_the_window_without_growing():
    m = Metrics(window_s=600)
    record(m, [5.0] * 100, now=T0)  # slow, and soon older than the window
    a = m._apps["a"]
    sizes = (len(a.sec), len(a.queries), len(a.hist))
    for s in range(1, 1301):
        record(m, [0.002], now=T0 + s + 0.3)
    app = m.snapshot(now=T0 + 1301)["apps"]["a"]
    assert app["t"] == list(np.arange(T0 + 701, T0 + 1301))
    assert app["qps"] == [1] * 600  # each reused slot holds only its new second
    assert app["totals"]["queries"] == 600 and within_one_bucket(app["totals"]["p99_ms"], 2.0)
    assert (len(a.sec), len(a.queries), len(a.hist)) == sizes
    # A straggling record older than the window is counted since start, in no second.
    record(m, [0.002], now=T0 + 5)
    assert m.snapshot(now=T0 + 1301)["apps"]["a"]["qps"] == [1] * 600
    assert samples(m.prometheus_text())[("clipper_queries_total", (("app", "a"),))] == 1401


def test_recording_100k_queries_keeps_memory_bounded():
    m = Metrics()
    record(m, [0.003] * 1000, now=T0)  # allocate the app's rings
    a = m._apps["a"]
    sizes = (len(a.sec), len(a.queries), len(a.hist), len(a.cum_hist))
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for i in range(100_000):
        m.record_query("a", 0.001 + (i % 97) * 1e-4, slo_s=0.005, default=i % 11 == 0,
                       cache_hit=i % 3 == 0, now=T0 + i * 0.013)  # 1300 s: wraps twice
    grown = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    assert (len(a.sec), len(a.queries), len(a.hist), len(a.cum_hist)) == sizes
    assert grown < 100_000, grown  # ~Python ints in the slots, not per-query state


# ---- rates, nulls, JSON ------------------------------------------------------------

def test_slo_attainment_default_error_and_cache_rates():
    m = Metrics()
    record(m, [0.01] * 6, now=T0, slo_s=0.05, cache_hit=True)        # real, in time
    record(m, [0.01] * 2, now=T0, slo_s=0.05, default=True, cache_hit=False)
    record(m, [0.01], now=T0, slo_s=0.05, error=True)                # error: never within SLO
    record(m, [0.2], now=T0, slo_s=0.05)                             # late
    m.record_deadline_drop("a", "slow-model", now=T0)
    record(m, [0.01] * 4, now=T0 + 1, slo_s=0.05)                    # no cache consulted
    app = m.snapshot(now=T0 + 2)["apps"]["a"]
    assert app["slo_attainment"] == [0.8, 1.0]
    assert app["goodput"] == [6, 4]
    assert app["default_rate"] == [0.2, 0.0] and app["error_rate"] == [0.1, 0.0]
    assert app["cache_hit_rate"] == [0.75, None]
    assert app["deadline_drops"] == [1, 0]
    assert app["totals"] == {**app["totals"], "queries": 14, "defaults": 2, "errors": 1,
                             "within_slo": 12, "goodput": 10, "slo_attainment": 12 / 14}
    json.dumps(m.snapshot(now=T0 + 5), allow_nan=False)  # nulls, never NaN


def test_weights_series_keep_the_last_sample_of_each_second():
    m = Metrics()
    m.record_weights("a", "user-1", {"m1": 1.0, "m2": 1.0}, {"m1": 0.5, "m2": 0.5}, now=T0)
    m.record_weights("a", "user-1", {"m1": 2.0, "m2": 1.0}, {"m1": 0.6, "m2": 0.4}, now=T0 + 0.9)
    m.record_weights("a", "user-1", {"m1": 3.0, "m3": 1.0}, {"m1": 0.7, "m3": 0.3}, now=T0 + 3)
    m.record_model_loss("a", "m1", 0.25)
    m.record_model_loss("a", "m1", 0.5)
    app = m.snapshot(now=T0 + 4)["apps"]["a"]
    w = app["weights"]["user-1"]
    assert w["t"] == [T0, T0 + 3]
    assert w["weights"] == {"m1": [2.0, 3.0], "m2": [1.0, None], "m3": [None, 1.0]}
    assert w["probabilities"]["m1"] == [0.6, 0.7]
    assert m.snapshot(since=T0, now=T0 + 4)["apps"]["a"]["weights"]["user-1"]["t"] == [T0 + 3]
    assert app["cum_loss"] == {"m1": 0.75} and app["t"] == []  # weights alone make no queries


def test_contexts_per_app_are_bounded():
    m = Metrics(max_contexts=3)
    for c in range(10):
        m.record_weights("a", f"user-{c}", {"m": 1.0}, {"m": 1.0}, now=T0)
    assert list(m.snapshot(now=T0 + 1)["apps"]["a"]["weights"]) == ["user-7", "user-8", "user-9"]


# ---- models and replicas -------------------------------------------------------

def test_batches_caps_queue_and_cache_per_model_and_replica():
    m = Metrics()
    m.set_batch_cap("mlp", "r0", 8, now=T0 + 0.1)
    m.record_batch("mlp", "r0", 4, 0.002, now=T0 + 0.2)
    m.record_batch("mlp", "r0", 8, 0.004, now=T0 + 0.3)
    m.record_batch("mlp", "r1", 6, 0.100, now=T0 + 0.4)
    m.set_batch_cap("mlp", "r0", 9, now=T0 + 0.5)
    m.set_batch_cap("mlp", "r0", 10, now=T0 + 2.5)
    m.set_queue_length("mlp", 7)
    for hit in (True, True, True, False):
        m.record_cache("mlp", hit, now=T0)
    m.record_cache_eviction("mlp", 5)
    mod = m.snapshot(now=T0 + 4)["models"]["mlp"]
    assert mod["t"] == [T0, T0 + 1, T0 + 2, T0 + 3]
    assert mod["rows_per_s"] == [18, 0, 0, 0] and mod["batches_per_s"] == [3, 0, 0, 0]
    assert mod["mean_batch_size"] == [6.0, None, None, None]
    assert within_one_bucket(mod["batch_p99_ms"][0], 100.0) and mod["batch_p99_ms"][1] is None
    assert mod["queue_length"] == 7
    assert mod["cache"] == {"hits": 3, "misses": 1, "evictions": 5, "hit_rate": 0.75}
    r0, r1 = mod["replicas"]["r0"], mod["replicas"]["r1"]
    assert r0["batch_cap"] == [9.0, 9.0, 10.0, 10.0]  # last cap of each second, carried over gaps
    assert r0["mean_batch_size"] == [6.0, None, None, None] and r0["max_batch_size"] == [8.0, None, None, None]
    assert r0["batch_latency_ms"] == [3.0, None, None, None] and r0["current_cap"] == 10.0
    assert r1["batch_cap"] == [None] * 4 and r1["current_cap"] is None


def test_cap_series_is_filled_before_the_first_change_in_the_window():
    m = Metrics(window_s=10)
    m.set_batch_cap("mlp", "r0", 4, now=T0)
    m.set_batch_cap("mlp", "r0", 5, now=T0 + 15)  # the only change left in the window
    r0 = m.snapshot(now=T0 + 20)["models"]["mlp"]["replicas"]["r0"]
    assert r0["t"][0] == T0 + 10 and r0["batch_cap"] == [4.0] * 5 + [5.0] * 5


def test_forget_model_and_app():
    m = Metrics()
    record(m, [0.001], now=T0)
    m.record_deadline_drop("a", "m1", now=T0)
    m.record_model_loss("a", "m1", 1.0)
    m.record_batch("m1", "r0", 1, 0.001, now=T0)
    m.forget_model("m1")
    snap = m.snapshot(now=T0 + 1)
    assert snap["models"] == {} and snap["apps"]["a"]["cum_loss"] == {}
    assert b"m1" not in m.prometheus_text()
    m.forget_app("a")
    assert m.snapshot(now=T0 + 1)["apps"] == {} and b'app="a"' not in m.prometheus_text()


# ---- Prometheus ------------------------------------------------------------------

def test_prometheus_text_parses_and_holds_the_expected_samples():
    m = Metrics()
    record(m, [0.002] * 3, now=T0, slo_s=0.01)
    record(m, [0.5], now=T0, slo_s=0.01, default=True)
    record(m, [0.001], now=T0 - 100, slo_s=0.01, error=True)  # outside the gauge's 60 s
    m.record_deadline_drop("a", "m1", now=T0)
    m.record_batch("m1", "r0", 4, 0.003, now=T0)
    m.record_batch("m1", "r0", 6, 0.003, now=T0)
    m.set_batch_cap("m1", "r0", 12, now=T0)
    m.set_queue_length("m1", 2)
    m.record_cache("m1", True)
    m.record_cache("m1", False)
    m.record_cache_eviction("m1")
    m.record_weights("a", "", {"m1": 1.5}, {"m1": 1.0}, now=T0)
    s = samples(m.prometheus_text(now=T0 + 1))
    app, mod, rep = (("app", "a"),), (("model", "m1"),), (("model", "m1"), ("replica", "r0"))
    expected = {("clipper_queries_total", app): 5, ("clipper_default_outputs_total", app): 1,
                ("clipper_errors_total", app): 1, ("clipper_queries_within_slo_total", app): 3,
                ("clipper_slo_attainment", app): 0.75, ("clipper_query_latency_seconds_count", app): 5,
                ("clipper_deadline_drops_total", (("app", "a"), ("model", "m1"))): 1,
                ("clipper_batches_total", rep): 2, ("clipper_batch_rows_total", rep): 10,
                ("clipper_batch_cap", rep): 12, ("clipper_queue_length", mod): 2,
                ("clipper_batch_latency_seconds_count", mod): 2,
                ("clipper_cache_hits_total", mod): 1, ("clipper_cache_misses_total", mod): 1,
                ("clipper_cache_evictions_total", mod): 1,
                ("clipper_selection_weight", (("app", "a"), ("context", ""), ("model", "m1"))): 1.5}
    assert {k: s.get(k) for k in expected} == expected
    assert s[("clipper_query_latency_seconds_sum", app)] == pytest.approx(0.507)
    bucket = lambda le: s[("clipper_query_latency_seconds_bucket", (("app", "a"), ("le", le)))]
    assert (bucket("0.001"), bucket("0.00316"), bucket("0.316"), bucket("0.562"), bucket("+Inf")) == (1, 4, 4, 5, 5)
    assert s[("clipper_batch_latency_seconds_bucket", (("le", "0.00316"), ("model", "m1")))] == 2


def test_prometheus_slo_gauge_is_absent_without_recent_queries():
    m = Metrics()
    record(m, [0.001], now=T0)
    assert math.isclose(m.slo_attainment("a", now=T0 + 1), 1.0)
    assert ("clipper_slo_attainment", (("app", "a"),)) not in samples(m.prometheus_text(now=T0 + 120))


def test_replica_series_of_a_crash_looping_model_stay_bounded():
    from clipper_nb.engine.metrics import MAX_REPLICA_SERIES

    m = Metrics(window_s=60)
    t = 1_000_000.0
    for restart in range(3 * MAX_REPLICA_SERIES):  # each restart is a new replica name
        m.record_batch("loop", f"loop:1:0:{restart}", 1, 0.001, now=t + restart)
    replicas = m.snapshot(now=t + 3 * MAX_REPLICA_SERIES)["models"]["loop"]["replicas"]
    assert len(replicas) == MAX_REPLICA_SERIES
    assert f"loop:1:0:{3 * MAX_REPLICA_SERIES - 1}" in replicas and "loop:1:0:0" not in replicas  # stalest gone
    # a replica silent for a whole window is dropped when a new one appears
    m.record_batch("loop", "loop:2:0:999", 1, 0.001, now=t + 3 * MAX_REPLICA_SERIES + 61)
    assert list(m.snapshot(now=t + 3 * MAX_REPLICA_SERIES + 62)["models"]["loop"]["replicas"]) == ["loop:2:0:999"]


def test_model_events_are_counted_and_exported():
    m = Metrics()
    m.record_model_event("m", "splits")
    m.record_model_event("m", "splits", 2)
    m.record_model_event("m", "hung")
    text = m.prometheus_text().decode()
    assert 'clipper_model_events_total{event="splits",model="m"} 3.0' in text
    assert 'clipper_model_events_total{event="hung",model="m"} 1.0' in text

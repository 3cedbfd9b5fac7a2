"""The pure tick logic: a metrics snapshot in, the points to stream out (no I/O)."""

from __future__ import annotations

import math

import pytest

from clipper_nb.engine.metrics import Metrics
from clipper_nb.widgets.plots import FIGURES, PlotSet, series_columns
from clipper_nb.widgets.ticks import APP_CONTEXT, Cursor, replica_label, tick


def _app(ts, qps, att, p99, **extra):
    n = len(ts)
    base = {"t": ts, "qps": qps, "goodput": qps, "p50_ms": [1.0] * n, "p95_ms": [2.0] * n, "p99_ms": p99,
            "slo_attainment": att, "default_rate": [0.0] * n, "error_rate": [0.0] * n,
            "cache_hit_rate": [None] * n, "deadline_drops": [0] * n, "weights": {}}
    base.update(extra)
    return base


def _snapshot(now, apps=None, models=None):
    return {"now": now, "resolution_s": 1, "apps": apps or {}, "models": models or {}}


def test_first_tick_streams_every_complete_second_with_nan_for_gaps():
    snap = _snapshot(103.4, {"a": _app([100, 101, 102], [10, 0, 20], [1.0, None, 0.5], [5.0, None, 9.0])})
    t = tick(snap, "a", Cursor(), slo_ms=20, tz_offset_s=3600)
    lat = t.streams["latency"]
    assert lat["x"] == [(100 + 3600) * 1000.0, (101 + 3600) * 1000.0, (102 + 3600) * 1000.0]
    assert lat["p99"][0] == 5.0 and math.isnan(lat["p99"][1]) and lat["p99"][2] == 9.0
    assert lat["slo"] == [20.0, 20.0, 20.0]
    assert t.streams["throughput"]["qps"] == [10.0, 0.0, 20.0]
    miss = t.streams["misses"]["slo_miss"]
    assert miss[0] == 0.0 and math.isnan(miss[1]) and miss[2] == 0.5
    assert t.cursor.since == 102.0  # floor(now) - 1: the last second a snapshot can hold
    for key, cols in t.streams.items():
        assert set(cols) == set(series_columns(key))
        assert len({len(v) for v in cols.values()}) == 1


def test_a_second_tick_streams_only_new_seconds():
    first = tick(_snapshot(102.5, {"a": _app([100, 101], [1, 2], [1.0, 1.0], [1.0, 2.0])}), "a", Cursor())
    again = tick(_snapshot(102.9, {"a": _app([100, 101], [1, 2], [1.0, 1.0], [1.0, 2.0])}), "a", first.cursor)
    assert again.streams == {}
    # `since` only narrows what the server sends; a server that sends more is deduplicated
    later = tick(_snapshot(104.1, {"a": _app([101, 102, 103], [2, 3, 4], [1.0, 1.0, 1.0], [2.0, 3.0, 4.0])}),
                 "a", again.cursor)
    assert later.streams["latency"]["x"] == [102000.0, 103000.0]
    assert later.streams["latency"]["p99"] == [3.0, 4.0]


def test_header_numbers_average_the_last_seconds_weighted_by_queries():
    ts = list(range(100, 115))
    qps = [100] * 5 + [10] * 10
    att = [0.0] * 5 + [1.0] * 9 + [0.5]
    p99 = [50.0] * 14 + [None]
    t = tick(_snapshot(115.2, {"a": _app(ts, qps, att, p99)}), "a", Cursor(), slo_ms=25)
    n = t.numbers
    assert n["qps"] == 10.0
    assert n["p99_ms"] == 50.0  # the last known p99: the newest second had none
    assert n["slo_attainment"] == pytest.approx((9 * 10 + 5) / 100)  # last 10 s only
    assert n["seconds"] == 10 and n["slo_ms"] == 25


def test_no_data_yet_gives_empty_streams_and_empty_numbers():
    t = tick(_snapshot(50.0), "a", Cursor())
    assert t.streams == {} and t.numbers["qps"] is None and t.numbers["slo_attainment"] is None
    assert t.cursor.since == 49.0


def _models():
    rep = {"t": [100, 101], "batch_cap": [4.0, 5.0], "mean_batch_size": [None, 3.5]}
    return {"m1": {"t": [100, 101], "replicas": {"m1:1:0:1": rep, "m1:1:1:1": rep}},
            "other": {"t": [100, 101], "replicas": {"other:2:0:1": rep}}}


def test_batch_series_per_replica_of_the_apps_models_only():
    t = tick(_snapshot(102.0, {}, _models()), "a", Cursor(), models=["m1"])
    assert sorted(k for k in t.streams if k.startswith("batch/")) == ["batch/m1/m1:1:0:1", "batch/m1/m1:1:1:1"]
    b = t.streams["batch/m1/m1:1:0:1"]
    assert b["cap"] == [4.0, 5.0] and math.isnan(b["mean"][0]) and b["mean"][1] == 3.5
    every = tick(_snapshot(102.0, {}, _models()), "a", Cursor(), models=None)
    assert "batch/other/other:2:0:1" in every.streams


def test_weights_of_the_chosen_context_and_forgetting_a_context():
    weights = {APP_CONTEXT: {"t": [100, 101], "weights": {}, "probabilities": {"x": [0.5, 0.6], "y": [0.5, 0.4]}},
               "alice": {"t": [101], "weights": {}, "probabilities": {"x": [0.9], "y": [0.1]}}}
    snap = _snapshot(102.0, {"a": _app([100, 101], [1, 1], [1.0, 1.0], [1.0, 1.0], weights=weights)})
    t = tick(snap, "a", Cursor())
    assert t.streams["weights/x"]["p"] == [0.5, 0.6] and t.contexts == ["alice", APP_CONTEXT]
    alice = tick(snap, "a", t.cursor.forget("weights/"), context="alice")
    assert alice.streams["weights/x"]["p"] == [0.9]
    assert "latency" not in alice.streams  # only the forgotten series stream again
    assert alice.cursor.last_t["app"] == 101


def test_tick_reads_what_metrics_snapshot_really_returns():
    m = Metrics(window_s=60)
    for k in range(30):
        m.record_query("digits", 0.002 + k * 1e-4, slo_s=0.02, default=k % 10 == 0, now=1000 + (k + 0.5) / 10)
    m.record_batch("clf", "clf:1:0:1", 8, 0.004, now=1001.5)
    m.set_batch_cap("clf", "clf:1:0:1", 12, now=1001.5)
    m.record_weights("digits", APP_CONTEXT, {"clf": 1.0}, {"clf": 1.0}, now=1001.2)
    t = tick(m.snapshot(now=1003.2), "digits", Cursor(), slo_ms=20, models=["clf"])
    assert t.streams["throughput"]["qps"] == [10.0, 10.0, 10.0]
    assert t.streams["misses"]["default_rate"] == [0.1, 0.1, 0.1]
    assert t.streams["batch/clf/clf:1:0:1"]["cap"][-1] == 12.0
    assert t.streams["weights/clf"]["p"] == [1.0]
    assert t.numbers["qps"] == 10.0 and t.numbers["default_rate"] == pytest.approx(0.1)


def test_plotset_streams_into_sources_and_adds_dynamic_series():
    plots = PlotSet(history_s=2)
    snap = _snapshot(102.0, {"a": _app([99, 100, 101], [1, 2, 3], [1.0] * 3, [1.0] * 3)}, _models())
    t = tick(snap, "a", Cursor(), models=["m1"])
    done = plots.stream(t.streams)
    assert "batch/m1/m1:1:0:1" in done and len(plots.figures["batch"].renderers) == 4  # mean + cap, x2
    assert plots.sources["latency"].data["x"] == [100000.0, 101000.0]  # rolled over at history_s
    only = PlotSet(("weights",))
    assert only.stream(t.streams) == [] and only.source_for("latency") is None
    with pytest.raises(ValueError, match="unknown plot"):
        PlotSet(("nope",))
    assert set(FIGURES) == set(PlotSet().figures)


def test_replica_labels():
    assert replica_label("digits:3:0:1") == "digits #0 v3"
    assert replica_label("batch/digits/digits:3:1:2") == "digits #1 v3"
    assert replica_label("odd") == "odd"

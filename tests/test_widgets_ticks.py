"""The pure tick logic: a metrics snapshot in, the points to stream out (no I/O).

One implementation (``clipper_nb.charts.series``) serves the notebook widgets and,
through ``api/dashboard/ticks``, the standalone page; the cursor travels as JSON.
"""

from __future__ import annotations

import json
import math

import pytest

from clipper_nb.charts.figures import FIGURES, PlotSet, series_columns
from clipper_nb.charts.series import (APP_CONTEXT, Cursor, public_replica_name, public_snapshot, replica_label,
                                      tick)
from clipper_nb.engine.metrics import Metrics


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


# ---------------------------------------------------------------------- the cursor


def _one_of_each(ts, rep_ts=None, w_ts=None):
    """A snapshot with app seconds ``ts``, one replica and one weight series."""
    rep_ts = ts if rep_ts is None else rep_ts
    w_ts = ts if w_ts is None else w_ts
    weights = {APP_CONTEXT: {"t": w_ts, "weights": {}, "probabilities": {"x": [0.5] * len(w_ts)}}}
    rep = {"t": rep_ts, "batch_cap": [4.0] * len(rep_ts), "mean_batch_size": [2.0] * len(rep_ts)}
    n = len(ts)
    return _snapshot(max(ts) + 1.5, {"a": _app(ts, [1] * n, [1.0] * n, [1.0] * n, weights=weights)},
                     {"m": {"t": rep_ts, "replicas": {"m:1:0:1": rep}}})


@pytest.mark.parametrize("now, since", [(103.0, 102.0), (103.4, 102.0), (103.99, 102.0), (104.0, 103.0)])
def test_since_is_the_last_second_a_snapshot_can_hold(now, since):
    assert tick(_snapshot(now), "a", Cursor()).cursor.since == since
    assert tick(_snapshot(now), "a", Cursor(since=7.0)).cursor.since == since  # the snapshot's now wins


def test_since_is_kept_when_the_snapshot_has_no_clock():
    assert tick({"apps": {}, "models": {}}, "a", Cursor(since=41.0)).cursor.since == 41.0
    assert tick({}, "a", Cursor()).cursor.since is None


def test_last_t_holds_the_newest_second_of_each_series_streamed():
    t = tick(_one_of_each([100, 101, 102], rep_ts=[100, 101], w_ts=[101]), "a", Cursor(), models=["m"])
    assert t.cursor.last_t == {"app": 102, "batch/m/m:1:0:1": 101, "weights/x": 101}


def test_each_series_resumes_after_its_own_last_second():
    cursor = Cursor(since=None, last_t={"app": 101, "batch/m/m:1:0:1": 99, "weights/x": 102})
    before = dict(cursor.last_t)
    t = tick(_one_of_each([99, 100, 101, 102]), "a", cursor, models=["m"])
    assert t.streams["latency"]["x"] == [102000.0]  # after the app's 101
    assert t.streams["batch/m/m:1:0:1"]["x"] == [100000.0, 101000.0, 102000.0]  # after the replica's own 99
    assert "weights/x" not in t.streams  # nothing after 102
    assert t.cursor.last_t == {"app": 102, "batch/m/m:1:0:1": 102, "weights/x": 102}
    assert cursor.last_t == before  # the old cursor is not changed


def test_a_series_not_in_the_cursor_streams_from_its_first_second():
    t = tick(_one_of_each([100, 101]), "a", Cursor(last_t={"app": 101}), models=["m"])
    assert "latency" not in t.streams and t.streams["weights/x"]["x"] == [100000.0, 101000.0]
    assert t.streams["batch/m/m:1:0:1"]["x"] == [100000.0, 101000.0]


def test_a_series_without_new_seconds_keeps_its_last_t():
    first = tick(_one_of_each([100, 101]), "a", Cursor(), models=["m"])
    # the replica is gone from this snapshot, the app has a new second
    snap = _one_of_each([101, 102])
    snap["models"] = {}
    again = tick(snap, "a", first.cursor, models=["m"])
    assert again.cursor.last_t == {"app": 102, "batch/m/m:1:0:1": 101, "weights/x": 102}


def test_recent_holds_the_window_of_complete_seconds_across_ticks():
    ts = [100, 101, 102, 103]
    qps, att, p99 = [10, 20, 30, 40], [1.0, 0.5, 0.0, 1.0], [1.0, 2.0, None, 4.0]
    first = tick(_snapshot(104.5, {"a": _app(ts[:2], qps[:2], att[:2], p99[:2])}), "a", Cursor(), window_s=3)
    assert first.cursor.recent == ((100, 10, 10.0, 0.0, 1.0), (101, 20, 10.0, 0.0, 2.0))
    second = tick(_snapshot(104.5, {"a": _app(ts, qps, att, p99)}), "a", first.cursor, window_s=3)
    rec = second.cursor.recent
    assert [r[0] for r in rec] == [101, 102, 103]  # t > newest - window_s: 100 fell out
    assert rec[1][:4] == (102, 30, 0.0, 0.0) and math.isnan(rec[1][4])
    assert second.numbers["seconds"] == 3.0 and second.numbers["qps"] == 40.0 and second.numbers["p99_ms"] == 4.0
    assert second.numbers["slo_attainment"] == pytest.approx((10 + 0 + 40) / 90)
    # no new second: the window stays as it was, and so do the numbers
    third = tick(_snapshot(104.9, {"a": _app(ts, qps, att, p99)}), "a", second.cursor, window_s=3)
    assert third.cursor.recent is second.cursor.recent and third.numbers == second.numbers


def test_recent_counts_defaults_per_query():
    a = _app([100, 101], [10, 30], [1.0, 1.0], [1.0, 1.0], default_rate=[0.5, 0.1])
    t = tick(_snapshot(102.0, {"a": a}), "a", Cursor())
    assert [r[3] for r in t.cursor.recent] == [5.0, 3.0]
    assert t.numbers["default_rate"] == pytest.approx(8 / 40)


def test_forget_drops_only_the_prefix_and_asks_for_a_full_snapshot():
    c = Cursor(since=50.0, last_t={"app": 49, "weights/x": 48, "weights/y": 47, "batch/weights/r": 3},
               recent=((49, 1, 1.0, 0.0, 2.0),))
    f = c.forget("weights/")
    assert f.since is None and f.last_t == {"app": 49, "batch/weights/r": 3} and f.recent == c.recent
    assert c.last_t["weights/x"] == 48  # the original is unchanged


def test_cursor_round_trips_through_json():
    t = tick(_one_of_each([100, 101, 102]), "a", Cursor(), models=["m"])
    t = tick(_snapshot(105.0, {"a": _app([103, 104], [5, 0], [1.0, None], [3.0, None])}), "a", t.cursor)
    c = t.cursor
    assert math.isnan(c.recent[-1][4])  # a second without queries has no p99
    text = json.dumps(c.to_json(), allow_nan=False)  # strict JSON: NaN is written as null
    back = Cursor.from_json(text)
    assert back.to_json() == c.to_json() and back.since == c.since and back.last_t == c.last_t
    assert back.recent[:-1] == c.recent[:-1] and back.recent[-1][:4] == c.recent[-1][:4]
    assert math.isnan(back.recent[-1][4])
    assert Cursor.from_json(json.loads(text)).to_json() == c.to_json()  # a dict does as well
    plain = Cursor(since=3.0, last_t={"app": 2}, recent=((2, 4, 4.0, 0.0, 1.5),))
    assert Cursor.from_json(json.dumps(plain.to_json())) == plain
    assert Cursor.from_json({}) == Cursor() and Cursor.from_json("{}") == Cursor()


def test_the_next_tick_is_the_same_from_a_cursor_that_went_through_json():
    first = tick(_one_of_each([100, 101]), "a", Cursor(), models=["m"])
    again = Cursor.from_json(json.dumps(first.cursor.to_json()))
    snap = _one_of_each([100, 101, 102, 103])
    a, b = tick(snap, "a", first.cursor, models=["m"]), tick(snap, "a", again, models=["m"])
    assert a.streams == b.streams and a.numbers == b.numbers and a.cursor.to_json() == b.cursor.to_json()


@pytest.mark.parametrize("bad", [
    "[]", "not json", '{"since": "1"}', '{"since": true}', '{"since": NaN}', '{"last_t": []}',
    '{"last_t": {"app": 1.5}}', '{"last_t": {"app": "1"}}', '{"last_t": {"app": false}}', '{"recent": {}}',
    '{"recent": [[1, 2, 3, 4]]}', '{"recent": [[1.5, 2, 3, 4, 5]]}', '{"recent": [[1, 2, "3", 4, 5]]}',
    '{"other": 1}',
])
def test_a_malformed_cursor_is_refused(bad):
    with pytest.raises(ValueError):
        Cursor.from_json(bad)


def test_a_cursor_from_a_browser_is_bounded():
    with pytest.raises(ValueError):
        Cursor.from_json({"last_t": {f"s{i}": i for i in range(5000)}})
    with pytest.raises(ValueError):
        Cursor.from_json({"last_t": {"x" * 1000: 1}})
    with pytest.raises(ValueError):
        Cursor.from_json({"recent": [[i, 1, 1.0, 0.0, 1.0] for i in range(4000)]})


def test_batch_series_are_named_by_the_public_replica_name():
    assert public_replica_name("digits:3:0:7-9f2c0aa1d3e4b5c6") == "digits:3:0:7"
    assert public_replica_name("my-model:3:0:7-ab") == "my-model:3:0:7"
    assert public_replica_name("my-model:3:0:7") == "my-model:3:0:7"  # no secret: unchanged
    assert public_replica_name("r0") == "r0"
    rep = {"t": [100], "batch_cap": [4.0], "mean_batch_size": [2.0]}
    snap = _snapshot(101.5, {}, {"m": {"t": [100], "replicas": {"m:1:0:7-0123456789abcdef": rep}}})
    t = tick(snap, "a", Cursor(), models=["m"])
    assert list(t.streams) == ["batch/m/m:1:0:7"] and "0123456789abcdef" not in json.dumps(t.cursor.to_json())
    public = public_snapshot(snap)
    assert list(public["models"]["m"]["replicas"]) == ["m:1:0:7"] and public["now"] == snap["now"]
    assert "0123456789abcdef" in str(snap)  # the input is not changed

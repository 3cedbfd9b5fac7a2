"""Tests that pin the ticks core's arithmetic (see .ci/mutate.py).

Bounds on a cursor from a browser, written out as literals: at most 4096 series, keys
of at most 512 characters, at most 3600 recent rows of exactly 5 fields.

Mutants judged equivalent (no name the system can make tells them apart):
* series.py:259 ``split("/", 2)`` -> ``3`` in replica_label: a key is ``batch/<model>/<rep>``
  and model names, versions and so replica names hold no ``/`` (store.NAME_RE), so the
  third field is the last either way.
* series.py:260 ``rsplit(":", 3)`` -> ``4``: a replica name is ``model:version:index:serial``
  with no ``:`` inside its fields (store.NAME_RE), so it splits into 4 parts either way.
"""

from __future__ import annotations

import math

import pytest

from clipper_nb.charts.series import Cursor, tick


def _app(ts, qps, att=None, p99=None, dflt=None):
    n = len(ts)
    return {"t": ts, "qps": qps, "goodput": qps, "p50_ms": [1.0] * n, "p99_ms": p99 or [1.0] * n,
            "slo_attainment": att or [1.0] * n, "default_rate": dflt or [0.0] * n, "error_rate": [0.0] * n,
            "cache_hit_rate": [None] * n, "weights": {}}


def _snap(now, app=None, models=None):
    return {"now": now, "apps": {"a": app} if app else {}, "models": models or {}}


# ---------------------------------------------------------------- cursor bounds


def test_a_cursor_may_name_exactly_4096_series_but_not_4097():
    ok = {f"s{i}": i for i in range(4096)}
    assert dict(Cursor.from_json({"last_t": ok}).last_t) == ok
    with pytest.raises(ValueError, match="at most 4096 series"):
        Cursor.from_json({"last_t": {f"s{i}": i for i in range(4097)}})


def test_a_series_key_may_have_exactly_512_characters_but_not_513():
    key = "k" * 512
    assert dict(Cursor.from_json({"last_t": {key: 7}}).last_t) == {key: 7}
    with pytest.raises(ValueError, match="series keys"):
        Cursor.from_json({"last_t": {"k" * 513: 7}})


def test_a_cursor_may_hold_exactly_3600_recent_rows_but_not_3601():
    rows = [[i, 1, 1.0, 0.0, None] for i in range(3600)]
    back = Cursor.from_json({"recent": rows})
    assert len(back.recent) == 3600 and back.recent[-1][:4] == (3599, 1, 1.0, 0.0) and math.isnan(back.recent[-1][4])
    with pytest.raises(ValueError, match="at most 3600 rows"):
        Cursor.from_json({"recent": rows + [[3600, 1, 1.0, 0.0, None]]})


@pytest.mark.parametrize("row", [7, None, [1, 1, 1.0, 0.0], [1, 1, 1.0, 0.0, 1.0, 2.0], []])
def test_a_recent_row_is_a_list_of_exactly_five_fields(row):
    with pytest.raises(ValueError, match=r"recent rows are \[t, queries"):
        Cursor.from_json({"recent": [row]})


def test_a_five_field_row_in_a_tuple_is_read():
    assert Cursor.from_json({"recent": [(5, 2, 1.0, 0.5, 3.0)]}).recent == ((5, 2, 1.0, 0.5, 3.0),)


# ---------------------------------------------------------------- cursor position


def test_a_second_exactly_at_the_cursor_is_not_streamed_again_and_the_next_one_is():
    cur = Cursor(last_t={"app": 101})
    t = tick(_snap(103.5, _app([100, 101, 102], [1, 2, 3])), "a", cur)
    assert t.streams["latency"]["x"] == [102000.0]
    assert t.cursor.last_t["app"] == 102
    same = tick(_snap(103.5, _app([100, 101], [1, 2])), "a", cur)
    assert same.streams == {} and same.cursor.last_t["app"] == 101


def test_batch_and_weight_series_resume_after_their_own_last_second():
    rep = {"t": [10, 11, 12], "batch_cap": [1.0, 2.0, 3.0], "mean_batch_size": [1.0, 1.5, 2.0]}
    app = _app([10, 11, 12], [1, 1, 1])
    app["weights"] = {"default": {"t": [10, 11, 12], "probabilities": {"m": [0.1, 0.2, 0.3]}}}
    cur = Cursor(last_t={"batch/m/m:1:0:1": 11, "weights/m": 10, "app": 12})
    t = tick(_snap(13.2, app, {"m": {"replicas": {"m:1:0:1": rep}}}), "a", cur)
    assert t.streams["batch/m/m:1:0:1"] == {"x": [12000.0], "cap": [3.0], "mean": [2.0]}
    assert t.streams["weights/m"] == {"x": [11000.0, 12000.0], "p": [0.2, 0.3]}
    assert "latency" not in t.streams
    assert t.cursor.last_t == {"batch/m/m:1:0:1": 12, "weights/m": 12, "app": 12}


# ---------------------------------------------------------------- header window and numbers


def test_the_header_window_keeps_seconds_after_newest_minus_window():
    ts = list(range(100, 112))  # 12 seconds, newest 111
    t = tick(_snap(112.5, _app(ts, [1] * 12)), "a", Cursor(), window_s=10)
    assert [r[0] for r in t.cursor.recent] == list(range(102, 112))  # 101 = 111 - 10 is out
    assert t.numbers["seconds"] == 10.0
    one = tick(_snap(112.5, _app(ts, [1] * 12)), "a", Cursor(), window_s=1)
    assert [r[0] for r in one.cursor.recent] == [111]


def test_a_second_without_a_qps_counts_as_no_queries():
    app = _app([100, 101], [4, None], att=[0.5, None], p99=[3.0, None], dflt=[0.25, None])
    t = tick(_snap(102.5, app), "a", Cursor(), slo_ms=10)
    assert t.cursor.recent[0] == (100, 4, 2.0, 1.0, 3.0)
    t1, q1, ok1, d1, p1 = t.cursor.recent[1]
    assert (t1, q1, ok1, d1) == (101, 0, 0.0, 0.0) and math.isnan(p1)
    n = t.numbers
    assert n["qps"] == 0.0  # the newest second had none
    assert n["p99_ms"] == 3.0 and n["slo_ms"] == 10
    assert n["slo_attainment"] == 0.5 and n["default_rate"] == 0.25  # 2 of 4, 1 of 4
    assert n["seconds"] == 2.0


def test_numbers_with_no_queries_in_the_window_are_unknown():
    t = tick(_snap(101.5, _app([100], [None])), "a", Cursor())
    assert t.cursor.recent[0][:4] == (100, 0, 0.0, 0.0)
    assert t.numbers["qps"] == 0.0 and t.numbers["slo_attainment"] is None and t.numbers["default_rate"] is None

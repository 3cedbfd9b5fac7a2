"""The dashboard header both the page and the widget show (clipper_nb.charts.header)."""

from __future__ import annotations

import re

import pytest

from clipper_nb.charts.header import CELLS, header_html, placement


@pytest.mark.parametrize("rows, says", [
    ([], None),
    ([{"backend": "process", "device": "cpu", "node": None}], "process · cpu"),
    ([{"backend": "process", "device": "cpu"}, {"backend": "process", "device": "cpu"}], "process · cpu"),
    ([{"backend": "ray", "node": "n1", "device": "cuda"}], "ray · 1 node · cuda"),
    ([{"backend": "ray", "node": "n1", "device": "cpu"}, {"backend": "ray", "node": "n2", "device": "cuda"},
      {"backend": "ray", "node": "n2", "device": "cuda"}], "ray · 2 nodes · cpu+cuda"),
    ([{"backend": "ray", "node": "n1"}, {"backend": "process", "device": "cpu"}], "process+ray · 1 node · auto+cpu"),
    ([{}], "process · auto"),
])
def test_placement_names_backends_nodes_and_devices(rows, says):
    assert placement(rows) == says


def _cells(page: str) -> dict[str, str]:
    return dict(re.findall(r"<span class='cnb-(\w+)'[^>]*><span[^>]*>[^<]*</span> <b>([^<]*)</b>", page))


def test_the_header_shows_every_number_with_its_unit_and_a_dash_for_the_unknown():
    numbers = {"qps": 1234.4, "p99_ms": 12.345, "slo_ms": 20.0, "slo_attainment": 0.9876, "replicas_up": 1,
               "replicas": 2, "placement": "ray · 2 nodes · cuda", "policy": "exp4"}
    page = header_html("digits", numbers)
    assert _cells(page) == {"qps": "1234", "p99": "12.35 ms", "slo": "20 ms", "attained": "98.8 %",
                            "replicas": "1/2", "placement": "ray · 2 nodes · cuda", "policy": "exp4"}
    assert "p99 at server" in page and "data-app='digits'" in page
    empty = _cells(header_html("idle", {"p99_ms": float("nan")}))
    assert empty == {k: "–" for k, _ in CELLS}


def test_the_header_escapes_what_it_shows():
    page = header_html("<a>", {"policy": "<script>", "placement": "a&b"})
    assert "<script>" not in page and "&lt;script&gt;" in page and "a&amp;b" in page and "&lt;a&gt;" in page

"""What notebook 02-adaptive-batching must show on its final table (row labels are the table's index).

Loaded by ``tests/test_notebooks.py``; margins are wide on purpose: they check the
paper's finding, not this machine's speed (two shared cores, a Python frontend).
"""

from __future__ import annotations

from nbchecks import cell as _cell, number as _number, numbers as _numbers, unit as _unit  # noqa: F401


def check(t: dict) -> None:
    # Ratios of per-row goodput, as "median x (min-max, n runs)".
    for row in ("AIMD vs no batching, linear SVM: peak goodput (×)",
                "delayed batching 2 ms vs none, linear SVM: peak goodput (×)",
                "AIMD vs no batching, 10 ms-per-call model, per row (×)",
                "fixed batch of 8 vs no batching, 10 ms-per-call model, per row (×)"):
        assert _unit(_cell(t, row)) == "x" and "3 runs" in _cell(t, row), _cell(t, row)
    # Batching off serves at most ~98 rows/s of the 10 ms model; AIMD and a fixed 8 carry several times that.
    assert _number(_cell(t, "AIMD vs no batching, 10 ms-per-call model, per row (×)")) >= 3
    assert _number(_cell(t, "fixed batch of 8 vs no batching, 10 ms-per-call model, per row (×)")) >= 2
    # The SVM's batching gain is bounded by the per-query frontend cost here, but batching still helps.
    assert _number(_cell(t, "AIMD vs no batching, linear SVM: peak goodput (×)")) >= 1.0
    assert _number(_cell(t, "delayed batching 2 ms vs none, linear SVM: peak goodput (×)")) > 0
    # How much the delay fills batches is shown, not judged; both means are batches (>= 1 row).
    assert all(v >= 1 for v in _numbers(_cell(t, "mean batch at saturation, no delay / 2 ms delay")))
    frontend, worker = _numbers(_cell(t, "CPU per query, AIMD: frontend + load generator / worker (ms)"))
    assert frontend > 0 and worker >= 0
    at_100, at_25 = _numbers(_cell(t, "AIMD batch cap, SLO 100 ms -> 25 ms"))
    assert at_25 < at_100, "tightening the SLO should shrink the batch cap"

"""What notebook 02-adaptive-batching must show on its final table (row labels are the table's index).

Loaded by ``tests/test_notebooks.py``; margins are wide on purpose: they check the
paper's finding, not this machine's speed.
"""

from __future__ import annotations

from nbchecks import cell as _cell, number as _number, numbers as _numbers  # noqa: F401


def check(t: dict) -> None:
    # Batching off serves at most 100 rows/s of the 10 ms model; AIMD carries hundreds more.
    assert _number(_cell(t, "AIMD vs no batching, 10 ms-per-call model (× goodput)")) >= 3
    assert _number(_cell(t, "fixed batch of 8 vs no batching, 10 ms-per-call model (×)")) >= 2
    assert _number(_cell(t, "AIMD vs no batching, linear SVM (× goodput)")) >= 1.5
    assert _number(_cell(t, "delayed batching 2 ms vs none, linear SVM (× goodput)")) > 0
    # How much the delay fills batches depends on the arrival pattern: shown, not judged.
    assert len(_numbers(_cell(t, "mean batch without / with the 2 ms delay"))) == 2
    at_100, at_25 = _numbers(_cell(t, "AIMD batch cap, SLO 100 ms -> 25 ms"))
    assert at_25 < at_100, "tightening the SLO should shrink the batch cap"

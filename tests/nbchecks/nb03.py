"""What notebook 03-prediction-cache must show on its final table (row labels are the table's index).

Loaded by ``tests/test_notebooks.py``; margins are wide on purpose: they check the
paper's finding, not this machine's speed.
"""

from __future__ import annotations

from nbchecks import cell as _cell, number as _number, numbers as _numbers  # noqa: F401


def check(t: dict) -> None:
    assert _number(_cell(t, "rows computed for 16 identical concurrent queries")) == 1
    cached, recomputed = _numbers(_cell(t, "model evaluations per model for 600 feedbacks, cached / not"))
    assert cached == 0 and recomputed == 600, (cached, recomputed)
    assert _number(_cell(t, "cache hit rate, Zipf(1.2) over 2,000 inputs")) > 0.5
    assert _number(_cell(t, "feedback, predictions in the cache (updates/s)")) > 0

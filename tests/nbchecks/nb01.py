"""What notebook 01-quickstart must show on its final table (row labels are the table's index).

Loaded by ``tests/test_notebooks.py``; margins are wide on purpose: they check the
paper's finding, not this machine's speed.
"""

from __future__ import annotations

from nbchecks import cell as _cell, number as _number, numbers as _numbers  # noqa: F401


def check(t: dict) -> None:
    assert _number(_cell(t, "p99 latency at 50 q/s")) > 0
    v1, v2, back = _numbers(_cell(t, "served accuracy v1 / v2 / after rollback"))
    assert v1 > 0.9 and v2 < v1 and back == v1, (v1, v2, back)  # the rollback serves version 1 again

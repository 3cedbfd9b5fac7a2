"""What notebook 07-torch-gpu must show on its final table (row labels are the table's index).

Loaded by ``tests/test_notebooks.py``; margins are wide on purpose: they check the
paper's finding, not this machine's speed.
"""

from __future__ import annotations

from nbchecks import cell as _cell, number as _number, numbers as _numbers  # noqa: F401


def check(t: dict) -> None:
    assert all(d == "cpu" or d.startswith("cuda") for d in _cell(t, "device the replicas run on").split(", "))
    assert _number(_cell(t, "AIMD vs batching off (× goodput)")) >= 1.5
    assert _number(_cell(t, "2 replicas vs 1, AIMD (× goodput)")) > 0

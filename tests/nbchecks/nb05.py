"""What notebook 05-stragglers must show on its final table (row labels are the table's index).

Loaded by ``tests/test_notebooks.py``; margins are wide on purpose: they check the
paper's finding, not this machine's speed.
"""

from __future__ import annotations

from nbchecks import cell as _cell, number as _number, numbers as _numbers  # noqa: F401


def check(t: dict) -> None:
    mitigated = _number(_cell(t, "ensemble p99 with straggler mitigation (ms)"))
    waiting = _number(_cell(t, "ensemble p99 waiting for every model (ms)"))
    assert mitigated < waiting, (mitigated, waiting)
    # A model that missed the deadline counts as disagreeing: its answers are never fully confident.
    assert _number(_cell(t, "highest confidence of an answer missing a model")) <= 0.75

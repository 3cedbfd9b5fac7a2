"""What notebook 05-stragglers must show on its final table (row labels are the table's index).

Loaded by ``tests/test_notebooks.py``; margins are wide on purpose: they check the
paper's finding, not this machine's speed (2 shared cores, 16 member processes).
"""

from __future__ import annotations

from nbchecks import cell as _cell, number as _number, numbers as _numbers  # noqa: F401


def check(t: dict) -> None:
    mitigated = _number(_cell(t, "ensemble p99 with straggler mitigation, 4 models"))
    waiting = _number(_cell(t, "ensemble p99 waiting for every model, 4 models"))
    # The finding: the mitigated tail stays near the deadline, the waiting tail does not.
    assert mitigated < waiting, (mitigated, waiting)
    # The single model's p99 is measured, not an injected constant: it is a positive latency.
    assert _number(_cell(t, "p99 of one model alone (no deadline)")) > 0
    within_m = _number(_cell(t, "answers within the 20 ms SLO, 4 models, mitigation"))
    within_w = _number(_cell(t, "answers within the 20 ms SLO, 4 models, waiting"))
    assert within_m > within_w, (within_m, within_w)
    assert _number(_cell(t, "goodput, mitigation over waiting, 4 models")) > 1.0
    # Real classifiers: both settings answer far better than chance (10 classes).
    for row in ("accuracy, 4 models, mitigation", "accuracy, 4 models, waiting"):
        assert _number(_cell(t, row)) > 30, row
    assert 0 < _number(_cell(t, "share of the ensemble missing, 16 models, mitigation")) < 90
    # Waiting for more models: a query waits for the slowest of more members.
    assert _number(_cell(t, "mean latency waiting for every model, 16 models over 2 models")) > 1.0
    # The simulation keeps the mitigated p99 near the 20 ms SLO at 16 models.
    assert _number(_cell(t, "simulated p99 with mitigation, 16 models")) < 40
    # 3 % of calls straggle, but a straggle is long: far more than 3 % of the busy time.
    assert _number(_cell(t, "a member's busy time spent straggling (3 % of calls straggle)")) > 6
    # A model that missed the deadline counts as disagreeing: its answers are never fully confident.
    assert _number(_cell(t, "highest confidence of an answer missing a model, 4 models")) <= 0.75

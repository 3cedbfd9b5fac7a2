"""What notebook 04-model-selection must show on its final table (row labels are the table's index).

Loaded by ``tests/test_notebooks.py``; margins are wide on purpose: they check the
paper's finding, not this machine's speed.
"""

from __future__ import annotations

from nbchecks import cell as _cell, number as _number, numbers as _numbers  # noqa: F401


def check(t: dict) -> None:
    exp4 = _number(_cell(t, "Exp4 error or failure, best model crashing for 200 of 700 queries"))
    exp3 = _number(_cell(t, "Exp3 error or failure, same run (live; replay over 20 seeds)"))
    broken = _number(_cell(t, "formerly best model alone (m0)"))
    best = _number(_cell(t, "best single model in hindsight (m1), same run"))
    assert exp4 < broken and exp3 < broken, (exp4, exp3, broken)
    assert best < broken, (best, broken)
    # Exp3 does not beat the best model in hindsight by much in this scenario (the
    # notebook says so): the replay's median lies within a few points of it.
    for diff in _numbers(_cell(t, "Exp3 minus best single model (replay median, γ = 0 / 0.1 / 0.3)")):
        assert -0.05 < diff < 0.08, diff
    # Both move weight off the crashing model within 150 of its 200 failing queries ...
    drop4, drop3 = _numbers(_cell(t, "weight on m0 < 0.1 after, Exp4 / Exp3 (failing queries)"))
    assert drop4 < 150 and drop3 < 150, (drop4, drop3)
    # ... and back once it heals: Exp4 (deterministic) within the run; Exp3, whose
    # recovery hangs on rare draws of m0, at least on its way (0-5 % of seeds need
    # more than the 350 queries left).
    assert _numbers(_cell(t, "weight on m0 > 0.5 again, Exp4 / Exp3 (queries after it heals)"))[0] < 350
    at_heal, at_end = _numbers(_cell(t, "Exp3 weight on m0 when it heals / at the end"))
    assert at_end > max(10 * at_heal, 0.1), (at_heal, at_end)
    # The floor: a lower floor (or none) makes the healed model's return slower (replay, deterministic).
    floors = _cell(t, "Exp4 recovery with floor e^-5 / e^-20 / none (queries after it heals, replay)")
    high, default, none = _numbers(floors.replace("e^-5", "").replace("e^-20", ""))
    assert high < default < none, floors
    # Exp4 evaluates every model per query, Exp3 one; Exp4's median latency is not lower.
    evals3, evals4 = _numbers(_cell(t, "model evaluations per query, Exp3 / Exp4"))
    assert evals3 == 1.0 and evals4 == 5.0, (evals3, evals4)
    assert _number(_cell(t, "p50 latency, Exp4 / Exp3")) > 1.0
    # Agreement is confidence, for real (correlated) classifiers too.
    all5, four, few, overall = _numbers(_cell(t, "error when all 5 agree / 4 / 3 or fewer / overall, real classifiers"))
    assert all5 < overall < few and all5 < four, (all5, four, few, overall)
    all5, _four, few, _overall = _numbers(_cell(t, "error when all 5 agree / 4 / 3 or fewer / overall, synthetic models"))
    assert all5 < few

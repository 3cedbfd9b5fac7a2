"""What notebook 04-model-selection must show on its final table (row labels are the table's index).

Loaded by ``tests/test_notebooks.py``; margins are wide on purpose: they check the
paper's finding, not this machine's speed.
"""

from __future__ import annotations

from nbchecks import cell as _cell, number as _number, numbers as _numbers  # noqa: F401


def check(t: dict) -> None:
    exp4 = _number(_cell(t, "Exp4 error or failure, best model crashing for 200 of 700 queries"))
    exp3 = _number(_cell(t, "Exp3 error or failure, same run"))
    broken = _number(_cell(t, "formerly best model alone (m0)"))
    assert exp4 < broken and exp3 < broken, (exp4, exp3, broken)
    # Both move weight off the crashing model within 150 of its 200 failing queries ...
    drop4, drop3 = _numbers(_cell(t, "weight on m0 < 0.1 after, Exp4 / Exp3 (failing queries)"))
    assert drop4 < 150 and drop3 < 150, (drop4, drop3)
    # ... and back once it heals: Exp4 (deterministic) within the run; Exp3, whose
    # recovery hangs on rare draws of m0, at least on its way (0-5 % of seeds need
    # more than the 350 queries left).
    assert _numbers(_cell(t, "weight on m0 > 0.5 again, Exp4 / Exp3 (queries after it heals)"))[0] < 350
    at_heal, at_end = _numbers(_cell(t, "Exp3 weight on m0 when it heals / at the end"))
    assert at_end > max(10 * at_heal, 0.1), (at_heal, at_end)
    all_agree, few_agree, _overall = _numbers(_cell(t, "error when all 5 models agree / 3 or fewer / overall"))
    assert all_agree < few_agree

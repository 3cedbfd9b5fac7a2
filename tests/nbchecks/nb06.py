"""What notebook 06-personalization must show on its final table (row labels are the table's index).

Loaded by ``tests/test_notebooks.py``; margins are wide on purpose: they check the
paper's finding, not this machine's speed.
"""

from __future__ import annotations

from nbchecks import cell as _cell, number as _number, numbers as _numbers  # noqa: F401


def check(t: dict) -> None:
    # Medians over 3 runs ("0.100 (0.078-0.122, 3 runs)"): per-user contexts beat one global state.
    personal = _number(_cell(t, "error with a context per user (second half)"))
    assert personal < _number(_cell(t, "error without contexts (second half)"))
    assert personal < 0.2, personal
    # Each user's own state learns their dialect within a handful of feedbacks (η = 0.3, 60 feedbacks).
    until = _number(_cell(t, "feedbacks until a user's weight on their dialect's model > 0.5"))
    assert 1 <= until <= 30, until
    assert str(_cell(t, "every user's weights on their own dialect's model")).startswith("yes")

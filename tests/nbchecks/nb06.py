"""What notebook 06-personalization must show on its final table (row labels are the table's index).

Loaded by ``tests/test_notebooks.py``; margins are wide on purpose: they check the
paper's finding, not this machine's speed.
"""

from __future__ import annotations

from nbchecks import cell as _cell, number as _number, numbers as _numbers  # noqa: F401


def check(t: dict) -> None:
    personal = _number(_cell(t, "error with a context per user (second half)"))
    assert personal < _number(_cell(t, "error without contexts (second half)"))
    assert _cell(t, "every user's weights on their own dialect's model") == "yes"

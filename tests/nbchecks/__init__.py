"""Per-notebook checks of the teaching notebooks' final tables (``nbNN.py``, one per notebook).

Each ``nbNN.py`` defines ``check(table)``; ``table`` is ``{"columns", "index", "rows"}``
read back from the notebook's kernel. The helpers here read its cells.
"""

from __future__ import annotations

import re
from typing import Any

#: Column names every notebook's final ``summary`` table uses (``notebooks/_nbhelpers.py``).
OURS, PAPER, SETUP = "clipper-nb (measured)", "paper", "setup (ours vs the paper's)"
_NUMBER = r"[-+]?[0-9][0-9,]*\.?[0-9]*|[-+]?\.[0-9]+"


def cell(table: dict, row: str, column: str = OURS) -> Any:
    return table["rows"][table["index"].index(row)][table["columns"].index(column)]


def number(value: Any) -> float:
    """The leading number of a table cell such as ``12.3`` or ``"12.3x"``."""
    if isinstance(value, (int, float)):
        return float(value)
    match = re.match(rf"\s*~?\s*({_NUMBER})", str(value))
    assert match, f"no number in {value!r}"
    return float(match.group(1).replace(",", ""))


def numbers(value: Any) -> list[float]:
    """Every number in a cell such as ``"0.973 / 0.767 / 0.973"`` or ``"42 -> 16"``."""
    return [float(v) for v in re.findall(r"[-+]?[0-9]*\.?[0-9]+", str(value))]


def unit(value: Any) -> str | None:
    """The kind of a cell: the word right after its leading number (``x``, ``ms``, ``%``,
    ``rows/s`` ... or ``""``), or None for a cell that starts with no number (a finding in words)."""
    if isinstance(value, (int, float)):
        return ""
    match = re.match(rf"\s*[~<>≥≤=]*\s*(?:{_NUMBER})(?:\s*[-–]\s*(?:{_NUMBER}))?\s*(×|%|[A-Za-z][A-Za-z/]*)?", str(value))
    if not match:
        return None
    found = match.group(1) or ""
    return "x" if found == "×" else found

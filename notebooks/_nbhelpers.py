"""Helpers shared by the teaching notebooks in this folder: ``from _nbhelpers import ...``.

A notebook's kernel starts in the notebook's folder (JupyterLab does this, and so does
``tests/test_notebooks.py``), so this module is importable from every notebook here.

Only code that runs in the notebook's kernel belongs here. A model the notebooks
deploy must not use anything from this module: cloudpickle pickles functions of an
importable module by reference, and a worker process cannot import ``_nbhelpers``.
(That is why ``true_label`` in notebooks 04 and 06 stays in the notebooks.)
"""

from __future__ import annotations

from typing import Any, Mapping

#: The columns of every notebook's final ``summary`` table (``tests/test_notebooks.py`` reads them).
OURS, PAPER = "clipper-nb (measured)", "paper"


def summary_table(ours: Mapping[str, Any], paper: Mapping[str, str]) -> Any:
    """A notebook's final table: one row per finding, our measured value next to the paper's.

    ``ours`` and ``paper`` map the same row labels to a value; the result is a pandas
    DataFrame of objects with the columns ``OURS`` and ``PAPER``.
    """
    import pandas as pd

    return pd.DataFrame(dtype=object, data={OURS: dict(ours), PAPER: dict(paper)})


def clipper_load(app: str, options: str) -> Any:
    """``%clipper load APP OPTIONS --wait`` for a function or a loop; returns the LoadResult.

    The same line magic, through IPython (the same progress line; ``--input NAME``
    still names a variable of the notebook). The notebooks use it where the magic
    would be indented: jupytext keeps an indented ``r = %clipper load ...`` commented
    out when it turns the notebook's .py source back into a notebook.
    """
    from IPython import get_ipython

    return get_ipython().run_line_magic("clipper", f"load {app} {options} --wait")


def load_stats(result: Any) -> dict:
    """Goodput, p99 latency and the share of rows within the SLO of a ``%clipper load`` result."""
    return {"goodput (rows/s)": round(result.goodput), "p99 (ms)": round(result.p99_ms, 1),
            "within SLO": f"{result.slo_attainment:.0%}"}

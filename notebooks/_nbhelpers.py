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


#: What differs from the paper's setup, per row (the third column of a final table).
SETUP = "setup (ours vs the paper's)"


def summary_table(ours: Mapping[str, Any], paper: Mapping[str, str], setup: Mapping[str, str] | None = None) -> Any:
    """A notebook's final table: one row per finding, our measured value next to the paper's.

    ``ours`` and ``paper`` map the same row labels to a value of the same kind (the
    same unit after the leading number: ``x``, ``ms``, ``%`` ...; ``tests/test_notebooks.py``
    checks it); ``setup`` says, per row, how our measurement differs from the paper's
    ("same" where it does not). The result is a pandas DataFrame of objects with the
    columns ``OURS``, ``PAPER`` and, with ``setup``, ``SETUP``.
    """
    import pandas as pd

    data = {OURS: dict(ours), PAPER: dict(paper)}
    if setup is not None:
        data[SETUP] = dict(setup)
    return pd.DataFrame(dtype=object, data=data)


def fresh_names(client: Any, *bases: str) -> dict[str, str]:
    """Names for the applications and models a notebook creates, that nothing on the server has yet.

    The server the kernel finds may be a user's own, with their apps and models on it:
    deploying under a name that exists adds a version to *their* model, linking joins
    *their* app, and a notebook's clean-up would delete them. So a notebook names what it
    creates with this, and removes only those names.

    Returns ``{base: name}`` in the order given. Every name gets the same suffix: none when
    all the bases are free (as an application or as a model), else the first of ``-2``,
    ``-3``, ... that frees them all (then one line says so). Call it once, before creating
    anything; ``APP, MODEL = fresh_names(c, "quickstart", "quickstart-clf").values()``.
    """
    if len(set(bases)) != len(bases):
        raise ValueError(f"fresh_names() of repeated names: {bases}")
    taken = {str(name) for name in client.apps()["name"]} | {str(name) for name in client.models()["name"]}
    suffix, k = "", 1
    while any(base + suffix in taken for base in bases):
        k += 1
        suffix = f"-{k}"
    if suffix:
        clash = ", ".join(base for base in bases if base in taken)
        print(f"{clash}: already on this server (not this notebook's): this notebook's apps and models "
              f"get the suffix {suffix!r} and leave those alone")
    return {base: base + suffix for base in bases}


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


def machine() -> str:
    """One line that says what the numbers were measured on (cores, CPU, memory, Python)."""
    import os
    import platform

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    try:
        memory = f", {os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB"
    except (ValueError, OSError, AttributeError):
        memory = ""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{cores} CPU cores ({cpu}){memory}, {platform.system()}, Python {platform.python_version()}"


def spread(values: Any, fmt: str = "{:.2f}", unit: str = "") -> str:
    """Repeated measurements as ``median unit (min-max, n runs)``, e.g. ``3.1x (2.8-3.4, 3 runs)``.

    The median leads, so a table cell still starts with the number a reader compares.
    """
    import statistics

    values = [float(v) for v in values]
    if not values:
        raise ValueError("spread() of no measurements")
    middle = fmt.format(statistics.median(values)) + unit
    if len(values) == 1:
        return f"{middle} (1 run)"
    return f"{middle} ({fmt.format(min(values))}-{fmt.format(max(values))}, {len(values)} runs)"


def show_static(fig: Any) -> None:
    """Show a matplotlib figure as a PNG image: unlike a live widget, it stays in a saved notebook."""
    from IPython.display import Image, display
    import io

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    display(Image(data=buffer.getvalue(), format="png"))


def figure(width: float = 7.0, height: float = 3.2, ncols: int = 1) -> tuple[Any, Any]:
    """A matplotlib figure (Agg, no window) and its axes, for ``show_static``."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt.subplots(1, ncols, figsize=(width, height), squeeze=ncols == 1)


class Exercises:
    """A notebook's exercises, each with a check a student runs on their answer.

    ``exercises.add(key, question, check, reference)``: ``check(answer)`` returns
    ``(ok, explanation)``; ``reference`` is the reference answer (a value, or a function
    that computes it from what the notebook measured; it must not need a deployed
    model, because a notebook cleans up before it ends). ``exercises.check(key, answer)``
    prints whether an answer holds and why; ``verify_references()`` runs every reference
    through its check (``tests/test_notebooks.py`` asserts they all hold).
    """

    def __init__(self) -> None:
        self._items: dict[str, tuple[str, Any, Any]] = {}

    def add(self, key: str, question: str, check: Any, reference: Any) -> None:
        self._items[key] = (question, check, reference)

    def check(self, key: str, answer: Any) -> bool:
        question, check, _ = self._items[key]
        ok, why = check(answer)
        print(f"{'right' if ok else 'not yet'} ({key}): {why}")
        return bool(ok)

    def verify_references(self) -> dict[str, bool]:
        results = {}
        for key, (_, check, reference) in self._items.items():
            answer = reference() if callable(reference) else reference
            results[key] = bool(check(answer)[0])
        return results

    def _repr_markdown_(self) -> str:
        lines = [f"**{key}.** {question}" for key, (question, _, _) in self._items.items()]
        return "\n\n".join(lines) + "\n\nCheck an answer with `exercises.check(KEY, answer)`."


def within(low: float, high: float, what: str) -> Any:
    """An exercise's check (:class:`Exercises`): the answer is a number between ``low`` and
    ``high``; the explanation says too low or too high, not where the range lies."""

    def check(answer: Any) -> tuple[bool, str]:
        try:
            value = float(answer)
        except (TypeError, ValueError):
            return False, f"give a number ({what})"
        if low <= value <= high:
            return True, f"{what}: {value:g} holds"
        return False, f"{what}: {value:g} is too {'low' if value < low else 'high'}"

    return check

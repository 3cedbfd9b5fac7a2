"""The teaching notebooks' sources and the committed notebooks agree (fast: no kernel, no server).

Each notebook's source is ``notebooks/NN-name.py`` in jupytext's percent format; the
committed ``notebooks/NN-name.ipynb`` is generated from it, without outputs::

    jupytext --to ipynb --update notebooks/[0-9]*.py

These tests read the ``.py`` with jupytext and the ``.ipynb`` with nbformat and compare
their cells (type and source), so editing either file alone fails here. They also
check that the committed notebooks carry no outputs and that the sources are Python
that IPython compiles (a notebook cell may ``await`` at the top level).
"""

from __future__ import annotations

import ast
import difflib
import os
import re

import jupytext
import nbformat
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOKS_DIR = os.path.join(REPO, "notebooks")
SOURCE_NAME = re.compile(r"\d\d-[a-z0-9-]+")
NOTEBOOKS = sorted(f[:-3] for f in os.listdir(NOTEBOOKS_DIR) if f.endswith(".py") and SOURCE_NAME.fullmatch(f[:-3]))
REGENERATE = "jupytext --to ipynb --update notebooks/{name}.py"
# A magic whose value is assigned on an indented line (`    r = %clipper load ...`): jupytext
# comments it out in the .py and does not uncomment it when it writes the .ipynb.
INDENTED_MAGIC_ASSIGNMENT = re.compile(r"^[ \t]+#\s*[\w.\[\]'\", ]+=\s*%{1,2}[A-Za-z]", re.MULTILINE)


def _cells(nb: nbformat.NotebookNode) -> list[tuple[str, str]]:
    return [(cell.cell_type, cell.source) for cell in nb.cells]


def _read_pair(name: str) -> tuple[nbformat.NotebookNode, nbformat.NotebookNode]:
    source = jupytext.read(os.path.join(NOTEBOOKS_DIR, f"{name}.py"), fmt="py:percent")
    committed = nbformat.read(os.path.join(NOTEBOOKS_DIR, f"{name}.ipynb"), as_version=4)
    return source, committed


def _first_difference(source: list[tuple[str, str]], committed: list[tuple[str, str]]) -> str:
    for i, (a, b) in enumerate(zip(source, committed)):
        if a != b:
            diff = difflib.unified_diff(b[1].splitlines(), a[1].splitlines(), f".ipynb cell {i} ({b[0]})",
                                        f".py cell {i} ({a[0]})", lineterm="", n=1)
            return "\n".join(list(diff)[:40]) or f"cell {i}: {b[0]} in the .ipynb, {a[0]} in the .py"
    return f"{len(source)} cells in the .py, {len(committed)} in the .ipynb"


def test_every_notebook_has_its_source_and_the_reverse() -> None:
    ipynbs = sorted(f[:-6] for f in os.listdir(NOTEBOOKS_DIR) if f.endswith(".ipynb"))
    assert NOTEBOOKS, "no notebook sources found"
    assert ipynbs == NOTEBOOKS, "every notebooks/NN-name.ipynb is generated from notebooks/NN-name.py"


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_committed_notebook_is_generated_from_its_source(name: str) -> None:
    source, committed = _read_pair(name)
    a, b = _cells(source), _cells(committed)
    assert a == b, (f"notebooks/{name}.ipynb and notebooks/{name}.py differ; after editing the .py run "
                    f"`{REGENERATE.format(name=name)}`:\n{_first_difference(a, b)}")


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_committed_notebook_has_no_outputs(name: str) -> None:
    _, nb = _read_pair(name)
    nbformat.validate(nb)
    assert nb.metadata.get("kernelspec", {}).get("name") == "python3", f"{name}.ipynb has no python3 kernelspec"
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            assert not cell.outputs and cell.execution_count is None, (
                f"{name}.ipynb is saved with outputs (cell {i}): run `{REGENERATE.format(name=name)}` "
                "on a clean copy, or clear the outputs")


@pytest.mark.parametrize("name", [*NOTEBOOKS, *sorted(f[:-3] for f in os.listdir(NOTEBOOKS_DIR) if re.fullmatch(r"_[a-z0-9_]+\.py", f))])
def test_source_compiles_as_ipython_would(name: str) -> None:
    path = os.path.join(NOTEBOOKS_DIR, f"{name}.py")
    with open(path) as f:
        text = f.read()
    # Jupytext comments magics out in the .py, so the file is Python; IPython allows top-level await.
    compile(text, path, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT, dont_inherit=True)
    bad = INDENTED_MAGIC_ASSIGNMENT.search(text)
    assert bad is None, (f"{name}.py line {text.count(chr(10), 0, bad.start()) + 1}: an indented magic assignment "
                         f"does not survive jupytext ({bad.group().strip()!r}); use "
                         "_nbhelpers.clipper_load(...) or get_ipython().run_line_magic(...)")

"""A small AST mutation tester for clipper-nb's pure cores.

    python .ci/mutate.py                      # every core in CORES, 2 processes
    python .ci/mutate.py selection -j 2 -v    # one core, list the survivors

Each mutant changes one thing in one module (an arithmetic or comparison operator, a
number, ``and``/``or``, a ``not``, ``min``/``max``, ``True``/``False``, ``+=``/``-=``)
and runs that core's tests against it in a fresh interpreter, from a private copy of
the package that shadows the installed one. A mutant is killed when the tests fail
or time out. The score is killed / all; equivalent mutants count as survivors.

Written by hand (a page of ``ast``) rather than taken from mutmut: each core runs
against only the fast test files that pin it (no server, no conftest; 1-5 s per mutant),
with no mutation state kept in the tree. Annotations, docstrings, strings and log calls are not
mutated (they are not mechanism).
"""

from __future__ import annotations

import argparse
import ast
import concurrent.futures
import copy
import dataclasses
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

#: core name -> (modules, the tests that pin them)
CORES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "selection": (("clipper_nb/selection/policies.py",), ("tests/test_selection.py", "tests/test_selection_pinned.py")),
    "cache": (("clipper_nb/abstraction/cache.py",), ("tests/test_cache.py", "tests/test_cache_pinned.py")),
    "codec": (("clipper_nb/wire/codec.py",), ("tests/test_codec.py", "tests/test_codec_pinned.py")),
    "batching": (("clipper_nb/abstraction/batching.py",),
                 ("tests/test_batching.py", "tests/test_batching_sim.py", "tests/test_batching_pinned.py")),
    "ticks": (("clipper_nb/charts/series.py", "clipper_nb/charts/header.py"),
              ("tests/test_widgets_ticks.py", "tests/test_charts_header.py", "tests/test_ticks_pinned.py")),
}

_BINOPS = {ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.Div, ast.Div: ast.Mult,
           ast.FloorDiv: ast.Div, ast.Pow: ast.Mult, ast.Mod: ast.FloorDiv}
_CMPOPS = {ast.Lt: ast.LtE, ast.LtE: ast.Lt, ast.Gt: ast.GtE, ast.GtE: ast.Gt, ast.Eq: ast.NotEq,
           ast.NotEq: ast.Eq, ast.Is: ast.IsNot, ast.IsNot: ast.Is, ast.In: ast.NotIn, ast.NotIn: ast.In}
_LOG_NAMES = {"log", "logger", "_log", "logging", "warnings"}


@dataclasses.dataclass(frozen=True)
class Mutant:
    path: str
    index: int
    line: int
    what: str


class _Mutator(ast.NodeTransformer):
    """Walks a module in a fixed order, counting the places it could mutate; with
    ``target`` set it applies the ``target``-th change and leaves the rest alone."""

    def __init__(self, target: int | None = None) -> None:
        self.target = target
        self.sites: list[tuple[int, str]] = []

    def _site(self, node: ast.AST, what: str) -> bool:
        """Record a place; True when it is the one to change."""
        self.sites.append((getattr(node, "lineno", 0), what))
        return len(self.sites) - 1 == self.target

    # -- what is not mechanism ------------------------------------------------------
    def visit_FunctionDef(self, node):  # no annotations, no docstring
        node.args.defaults = [self.visit(d) for d in node.args.defaults]
        node.args.kw_defaults = [d if d is None else self.visit(d) for d in node.args.kw_defaults]
        node.body = [self.visit(s) for s in _without_docstring(node.body)] or [ast.Pass()]
        return node

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_ClassDef(self, node):
        node.body = [self.visit(s) for s in _without_docstring(node.body)] or [ast.Pass()]
        return node

    def visit_AnnAssign(self, node):
        if node.value is not None:
            node.value = self.visit(node.value)
        return node

    def visit_Expr(self, node):
        if isinstance(node.value, ast.Constant):
            return node  # a bare string
        return self.generic_visit(node)

    def visit_Raise(self, node):
        return node  # which error, and its words, are not arithmetic

    def visit_Assert(self, node):
        return node

    def visit_Call(self, node):
        func = node.func
        if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) and func.value.id in _LOG_NAMES:
            return node
        self.generic_visit(node)
        if isinstance(func, ast.Name) and func.id in ("min", "max") and len(node.args) + len(node.keywords) > 1:
            other = "max" if func.id == "min" else "min"
            if self._site(node, f"{func.id} -> {other}"):
                node.func = ast.Name(id=other, ctx=ast.Load())
        return node

    # -- the mutations --------------------------------------------------------------
    def visit_BinOp(self, node):  # and ``x op= y``: the same operators
        self.generic_visit(node)
        new, eq = _BINOPS.get(type(node.op)), "=" if isinstance(node, ast.AugAssign) else ""
        if new and self._site(node, f"{type(node.op).__name__}{eq} -> {new.__name__}{eq}"):
            node.op = new()
        return node

    visit_AugAssign = visit_BinOp

    def visit_Compare(self, node):
        self.generic_visit(node)
        for i, op in enumerate(node.ops):
            new = _CMPOPS.get(type(op))
            if new and self._site(node, f"{type(op).__name__} -> {new.__name__}"):
                node.ops[i] = new()
        return node

    def visit_BoolOp(self, node):
        self.generic_visit(node)
        other = ast.Or if isinstance(node.op, ast.And) else ast.And
        if self._site(node, f"{type(node.op).__name__} -> {other.__name__}"):
            node.op = other()
        return node

    def visit_UnaryOp(self, node):
        self.generic_visit(node)
        if isinstance(node.op, ast.Not) and self._site(node, "not x -> x"):
            return node.operand
        if isinstance(node.op, ast.USub) and self._site(node, "-x -> x"):
            return node.operand
        return node

    def visit_Constant(self, node):
        v = node.value
        if isinstance(v, bool):
            if self._site(node, f"{v} -> {not v}"):
                return ast.copy_location(ast.Constant(value=not v), node)
        elif isinstance(v, (int, float)) and not isinstance(v, complex):
            if self._site(node, f"{v!r} -> {v + 1!r}"):
                return ast.copy_location(ast.Constant(value=v + 1), node)
        return node


def _without_docstring(body: list[ast.stmt]) -> list[ast.stmt]:
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
            and isinstance(body[0].value.value, str):
        return body[1:]
    return body


def mutants_of(path: str) -> tuple[ast.Module, list[Mutant]]:
    tree = ast.parse((ROOT / path).read_text(), path)
    walker = _Mutator()
    walker.visit(copy.deepcopy(tree))
    return tree, [Mutant(path, i, line, what) for i, (line, what) in enumerate(walker.sites)]


def mutated_source(tree: ast.Module, index: int) -> str:
    new = _Mutator(index).visit(copy.deepcopy(tree))
    return ast.unparse(ast.fix_missing_locations(new))


def _run_tests(workdir: Path, tests: tuple[str, ...], timeout_s: float) -> str:
    """'killed', 'survived' or 'timeout' (counted as killed)."""
    env = dict(os.environ, PYTHONPATH=str(workdir), PYTHONDONTWRITEBYTECODE="1")
    # Run from the copy: `python -m` puts the working directory first on sys.path.
    # The pure cores' tests need no server fixtures: no conftest (it imports Jupyter's parts).
    cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "--no-header", "--noconftest",
           "--rootdir", str(ROOT), *(str(ROOT / t) for t in tests)]
    try:
        done = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return "timeout"
    return "survived" if done.returncode == 0 else "killed"


class _Slot:
    """A private copy of the package for one process at a time."""

    def __init__(self, base: Path, n: int) -> None:
        self.dir = base / f"slot{n}"
        shutil.copytree(ROOT / "clipper_nb", self.dir / "clipper_nb",
                        ignore=shutil.ignore_patterns("__pycache__"))
        where = subprocess.run([sys.executable, "-c", "import clipper_nb; print(clipper_nb.__file__)"],
                               cwd=self.dir, capture_output=True, text=True, check=True).stdout.strip()
        if not where.startswith(str(self.dir)):
            raise SystemExit(f"the copy does not shadow the installed package: {where}")

    def run(self, path: str, source: str, original: str, tests, timeout_s) -> str:
        target = self.dir / path
        target.write_text(source)
        try:
            return _run_tests(self.dir, tests, timeout_s)
        finally:
            target.write_text(original)


def run_core(name: str, jobs: int, base: Path, verbose: bool) -> tuple[int, int, list[Mutant]]:
    modules, tests = CORES[name]
    slots = [_Slot(base / name, n) for n in range(jobs)]
    t0 = time.monotonic()
    if _run_tests(slots[0].dir, tests, 600) != "survived":
        raise SystemExit(f"{name}: the tests fail before any mutation")
    timeout_s = max(10.0, 4 * (time.monotonic() - t0))
    work = []
    for path in modules:
        tree, found = mutants_of(path)
        original = (ROOT / path).read_text()
        work += [(m, mutated_source(tree, m.index), original) for m in found]
    free = list(slots)
    survivors: list[Mutant] = []
    with concurrent.futures.ThreadPoolExecutor(jobs) as pool:
        def one(item):
            slot = free.pop()
            try:
                return item[0], slot.run(item[0].path, item[1], item[2], tests, timeout_s)
            finally:
                free.append(slot)
        for mutant, outcome in pool.map(one, work):
            if outcome == "survived":
                survivors.append(mutant)
    killed = len(work) - len(survivors)
    print(f"{name}: {killed}/{len(work)} killed ({100 * killed / max(1, len(work)):.1f} %)", flush=True)
    if verbose:
        for m in survivors:
            print(f"  survived {m.path}:{m.line}  {m.what}")
    return killed, len(work), survivors


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("cores", nargs="*", default=list(CORES), help=f"of {', '.join(CORES)}")
    ap.add_argument("-j", "--jobs", type=int, default=2)
    ap.add_argument("-v", "--verbose", action="store_true", help="list the surviving mutants")
    ap.add_argument("--min-score", type=float, default=90.0, help="exit 1 below this percentage")
    args = ap.parse_args(argv)
    base = Path(tempfile.mkdtemp(prefix="clipper-mutate-"))
    try:
        total = killed = 0
        for name in args.cores:
            k, n, _ = run_core(name, args.jobs, base, args.verbose)
            killed, total = killed + k, total + n
    finally:
        shutil.rmtree(base, ignore_errors=True)
    score = 100 * killed / max(1, total)
    print(f"all: {killed}/{total} killed ({score:.1f} %)")
    return 0 if score >= args.min_score else 1


if __name__ == "__main__":
    sys.exit(main())

"""The shape of the code, enforced: layers point one way, rooms fit one reading, one public surface.

* ``lint-imports`` checks the import-linter contracts in pyproject.toml (Clipper's
  layers as packages: kernel -> HTTP -> frontend -> engine -> {selection, abstraction}
  -> wire <- containers).
* No class over 300 lines, no function over 60 (measured on the AST).
* No import of our own modules inside a function, except the few deliberate late
  bindings listed below with their reason: an import hidden in a function is how a
  cycle between layers hides from the contract.
* ``clipper_nb.__all__`` and ``clipper_nb.errors.__all__`` name exactly what they export.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SOURCES = [ROOT / "clipper_nb", ROOT / "server_ext", ROOT / "widgets"]
MAX_CLASS_LINES = 300
MAX_FUNCTION_LINES = 60

#: (file relative to the root, module imported) -> why the import must be late.
LATE_IMPORTS = {
    ("clipper_nb/__init__.py", "clipper_nb.kernel.magics"):
        "IPython's %load_ext hook: a worker or a plain client must not import IPython",
    ("clipper_nb/__init__.py", "clipper_nb.server_ext"):
        "Jupyter's extension hook: only the Jupyter server pays for jupyter_server",
    ("clipper_nb/kernel/client.py", "clipper_nb.widgets"):
        "Client.dashboard(): the widgets are an optional layer above the client (ipywidgets, bokeh)",
    **{("clipper_nb/cli.py", m): "each subcommand pays only for its own imports (serve: tornado; demo: torch)"
       for m in ("clipper_nb.frontend.server", "clipper_nb.demo", "clipper_nb.kernel.loadgen",
                 "clipper_nb.kernel.client")},
    ("clipper_nb/containers/forkserver.py", "clipper_nb.containers.worker"):
        "the fork server's child runs the worker: imported once in the parent, then forked",
}


def _python_files() -> list[Path]:
    return sorted(p for base in SOURCES for p in base.rglob("*.py"))


def _resolve(path: Path, node: ast.ImportFrom | ast.Import) -> list[str]:
    rel = path.relative_to(ROOT).with_suffix("")
    package = list(rel.parts[:-1]) if rel.name != "__init__" else list(rel.parts[:-1])
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    if node.level:
        base = package[: len(package) - (node.level - 1)] if node.level > 1 else package
        module = ".".join([*base, *([node.module] if node.module else [])])
    else:
        module = node.module or ""
    return [module]


def test_import_contracts_hold():
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    lint = Path(sys.executable).with_name("lint-imports")
    done = subprocess.run([str(lint), "--no-cache"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "0 broken" in done.stdout and "kept" in done.stdout


def test_no_class_or_function_too_long_to_read():
    too_long = []
    for path in _python_files():
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            limit = {ast.ClassDef: MAX_CLASS_LINES, ast.FunctionDef: MAX_FUNCTION_LINES,
                     ast.AsyncFunctionDef: MAX_FUNCTION_LINES}.get(type(node))
            if limit is None:
                continue
            first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
            lines = node.end_lineno - first + 1
            if lines > limit:
                too_long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name}: {lines} lines (max {limit})")
    assert not too_long, "\n".join(too_long)


def test_no_late_imports_of_our_own_modules():
    found = []
    for path in _python_files():
        tree = ast.parse(path.read_text(), str(path))
        for fn in ast.walk(tree):
            if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(fn):
                if not isinstance(node, (ast.Import, ast.ImportFrom)):
                    continue
                for module in _resolve(path, node):
                    ours = module.split(".")[0] in ("clipper_nb", "server_ext", "widgets")
                    if ours and (str(path.relative_to(ROOT)), module) not in LATE_IMPORTS:
                        found.append(f"{path.relative_to(ROOT)}:{node.lineno} imports {module} inside {fn.name}()")
    assert not found, "\n".join(found)


def test_the_test_helpers_see_the_real_tree():
    # Guards the three tests above against passing vacuously on an empty or moved tree.
    files = {str(p.relative_to(ROOT)) for p in _python_files()}
    for expected in ("clipper_nb/engine/facade.py", "clipper_nb/abstraction/backend.py",
                     "clipper_nb/selection/policies.py", "clipper_nb/containers/worker.py",
                     "clipper_nb/frontend/api.py", "clipper_nb/kernel/client.py", "server_ext/app.py"):
        assert expected in files


@pytest.mark.parametrize("module", ["clipper_nb", "clipper_nb.errors"])
def test_public_surface_is_exactly_all(module):
    import importlib

    mod = importlib.import_module(module)
    for name in mod.__all__:
        assert getattr(mod, name) is not None, name
    public = {n for n, v in vars(mod).items() if not n.startswith("_") and not isinstance(v, types.ModuleType)}
    if module == "clipper_nb.errors":
        # every exception class defined there is exported, and nothing else is public
        defined = {n for n, v in vars(mod).items() if isinstance(v, type) and v.__module__ == module}
        assert defined == set(mod.__all__)
    else:
        assert set(mod.__all__) == (public | set(mod._LAZY) | {"__version__"}) - {"annotations", "Any"}


def test_errors_form_one_hierarchy():
    from clipper_nb import errors

    for name in errors.__all__:
        cls = getattr(errors, name)
        if name in ("ReplicaLost", "DeadlineMissed"):
            assert not issubclass(cls, errors.ClipperError)  # internal signals never reach a caller
            continue
        assert issubclass(cls, errors.ClipperError)
        assert cls.__doc__, f"{name} has no docstring"
        assert (400 <= cls.status < 500) == issubclass(cls, errors.UserError), name


def test_every_package_is_shipped_in_the_wheel():
    import tomllib

    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    shipped = set(config["packages"])
    found = {".".join(("clipper_nb", *p.parent.relative_to(ROOT / "clipper_nb").parts))
             for p in (ROOT / "clipper_nb").rglob("__init__.py")}
    found |= {f"clipper_nb.{name}" for name in config["package-dir"] if name != "clipper_nb"
              for name in [name.split(".", 1)[1]]}
    assert found == shipped, f"pyproject.toml [tool.setuptools] packages misses {found - shipped}"


def test_an_error_shows_its_cause_in_its_text():
    from clipper_nb.errors import ModelError, NotFound

    e = NotFound("no application named 'digit'", "known applications: digits; register one with POST /api/apps")
    assert str(e) == "no application named 'digit' (known applications: digits; register one with POST /api/apps)"
    assert e.message == "no application named 'digit'"  # the JSON body keeps them apart
    assert str(ModelError("the model failed", "Traceback ...\n  File x\nValueError: bad row")) == \
        "the model failed (ValueError: bad row)"
    assert str(NotFound("no model named 'm'")) == "no model named 'm'"
    assert str(NotFound("gone (why)", "why")) == "gone (why)"


def test_code_and_notebook_sources_pass_the_linter():
    ruff = Path(sys.executable).with_name("ruff")
    done = subprocess.run([str(ruff), "check", "clipper_nb", "server_ext", "widgets", "tests", "benchmarks",
                           "notebooks"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]

"""``%clipper`` magics in a real IPython InteractiveShell against the in-process server."""

from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest
from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell

from clipper_nb.kernel import discovery
from conftest import TOKEN, client_of


@pytest.fixture(scope="module")
def iris():
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    X, y = load_iris(return_X_y=True)
    return X, y, LogisticRegression(max_iter=500).fit(X, y)


@pytest.fixture(scope="module", autouse=True)
def _no_global_shell_afterwards():
    """The InteractiveShell singleton must not outlive this module (other tests check get_ipython())."""
    yield
    InteractiveShell.clear_instance()


@pytest.fixture
def shell(server, capsys):
    """An InteractiveShell with ``%load_ext clipper_nb``, connected to ``server``."""
    ip = InteractiveShell.instance()
    ip.run_line_magic("load_ext", "clipper_nb")
    ip.run_line_magic("clipper", f"connect {server.url} --token {TOKEN}")
    assert "connected to" in capsys.readouterr().out
    yield ip
    magics = ip.magics_manager.registry["ClipperMagics"]
    magics.client = None
    discovery.forget()


def magic(ip, line: str):
    return ip.run_line_magic("clipper", line)


def test_deploy_prints_endpoint_and_a_curl_line_that_works(shell, server, iris, capsys):
    X, y, lr = iris
    shell.user_ns.update(X=X, y=y, clf=lr)
    magic(shell, "deploy clf --app iris --slo 1500ms")  # generous: the machine is shared
    out = capsys.readouterr().out
    assert "deployed clf version 1 (sklearn): 1/1 replicas up" in out
    assert f"endpoint: POST {server.url}/iris/predict" in out
    (curl,) = [line for line in out.splitlines() if line.startswith("curl ")]
    assert "'{\"input\": [0.0, 0.0, 0.0, 0.0]}'" in curl
    assert "Authorization" not in curl  # this server's query API is public: no token needed
    answer = json.loads(subprocess.run(["bash", "-c", curl + " -s"], capture_output=True, text=True,
                                       timeout=30).stdout)
    assert answer["default"] is False, answer
    assert answer["output"] == int(lr.predict(np.zeros((1, 4)))[0])

    assert magic(shell, "query iris X[0]")["output"] == lr.predict(X[:1])[0]
    rows = magic(shell, "query iris X[:3] --batch")
    assert [r["output"] for r in rows] == lr.predict(X[:3]).tolist()
    apps = magic(shell, "apps")
    assert apps.loc[apps.name == "iris", "slo_ms"].item() == 1500
    assert magic(shell, "models")["name"].tolist() == ["clf"]
    magic(shell, "slo iris 2.5s")
    assert "iris: SLO 2500 ms" in capsys.readouterr().out
    assert client_of(server).app("iris")["slo_ms"] == 2500
    assert isinstance(magic(shell, "feedback iris X[0] y[0]"), dict)

    result = magic(shell, "load iris --qps 40 --duration 1s --wait")
    assert result.requests > 10 and result.errors == 0 and result.defaults == 0
    assert "load iris: done" in capsys.readouterr().out
    magic(shell, "undeploy clf")
    assert magic(shell, "models").empty
    assert TOKEN not in capsys.readouterr().out


def test_scale_rollback_undeploy(shell, server, capsys):
    # Functions defined in the notebook (cheap workers: no scikit-learn to import).
    shell.run_cell("def one(batch):\n    return [1.0 for _ in batch]\n"
                   "def two(batch):\n    return [2.0 for _ in batch]\n")
    magic(shell, "deploy one --name const --app c --slo 2s")
    magic(shell, "scale const 2")
    assert "const: 2/2 replicas up" in capsys.readouterr().out
    status = magic(shell, "status")
    assert (status["model"] == "const").sum() == 2
    magic(shell, "deploy two --name const --app c")
    assert "deployed const version 2" in capsys.readouterr().out
    assert magic(shell, "query c [0]")["output"] == 2.0
    magic(shell, "rollback const 1")
    assert "const: serving version 1" in capsys.readouterr().out
    assert magic(shell, "query c [0]")["output"] == 1.0
    magic(shell, "undeploy const")
    assert "const: undeployed" in capsys.readouterr().out
    with pytest.raises(UsageError, match="const"):
        magic(shell, "scale const 1")


def test_cell_magic_deploys_the_last_function_of_the_cell(shell, capsys):
    cell = (
        "def helper(row):\n"
        "    return float(sum(row))\n"
        "\n"
        "def doubled_sum(batch):\n"
        "    return [2 * helper(row) for row in batch]\n"
    )
    result = shell.run_cell(f"%%clipper deploy --app sums\n{cell}")
    assert result.success, result.error_in_exec
    out = capsys.readouterr().out
    assert "deployed doubled_sum version 1 (callable)" in out and "/sums/predict" in out
    assert callable(shell.user_ns["doubled_sum"])  # the cell ran in the notebook too
    assert magic(shell, "query sums [1.0, 2.5]")["output"] == 7.0
    with pytest.raises(UsageError, match="defines no function"):
        shell.run_cell_magic("clipper", "deploy --app sums", "x = 1\n")
    magic(shell, "undeploy doubled_sum")


@pytest.mark.parametrize("line, message", [
    ("", "needs a command"),
    ("frobnicate", "unknown %clipper command 'frobnicate'"),
    ("deploy", "name what to deploy"),
    ("deploy not_defined --app a", "no variable 'not_defined'"),
    ("deploy clf --replicas two", "invalid int value"),
    ("deploy thing --app a", "cannot deploy an object of type object"),
    ("slo iris fast", "cannot read latency 'fast'"),
    ("query no-such-app [1, 2]", "no-such-app"),
    ("query iris 1/0", "ZeroDivisionError"),
    ("scale clf 1", "clf"),
    ("load iris --duration 2h", "--duration must be between"),
    ("stop", "no server started by %clipper start"),
    ("connect http://127.0.0.1:9 --token nope", "cannot reach"),
])
def test_user_errors_are_one_line_usage_errors(shell, line, message, capsys):
    shell.user_ns.update(clf=object(), thing=object())
    with pytest.raises(UsageError) as err:
        magic(shell, line)
    text = str(err.value)
    assert message in text and "\n" not in text and "nope" not in text
    # Through run_cell, as in a notebook: one line, no traceback.
    shell.run_cell(f"%clipper {line}")
    shown = capsys.readouterr()
    assert "Traceback" not in shown.out + shown.err
    assert "UsageError" in shown.out + shown.err


def test_wrong_token_is_named_but_never_shown(shell, server, capsys):
    with pytest.raises(UsageError, match="token") as err:
        magic(shell, f"connect {server.url} --token not-the-right-one")
    assert "not-the-right-one" not in str(err.value)
    with pytest.raises(UsageError, match="only deploy works as a cell magic"):
        shell.run_cell_magic("clipper", "apps", "x = 1\n")


def test_help_documents_every_command(shell):
    doc = shell.find_line_magic("clipper").__doc__
    for command in ("deploy", "apps", "models", "status", "query", "feedback", "slo", "scale", "rollback",
                    "undeploy", "load", "dashboard", "connect", "start"):
        assert f"%clipper {command}" in doc, command
    for option in ("--app", "--slo", "--replicas", "--device", "--method", "--batch-size", "--default", "--qps",
                   "--duration", "--token", "--state-dir"):
        assert option in doc, option


def test_dashboard_widget_or_a_clear_message(shell, server):
    try:
        from clipper_nb.widgets import Dashboard
    except ImportError:  # an installation without the widgets: one clear line
        with pytest.raises(UsageError, match="clipper_nb.widgets.Dashboard"):
            magic(shell, "dashboard iris")
        return
    client_of(server).register_app("dash", slo_ms=50)
    widget = magic(shell, "dashboard dash")
    try:
        assert isinstance(widget, Dashboard)
    finally:
        widget.close()

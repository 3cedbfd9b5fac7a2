"""Configuration declared once: every ClipperNB knob is reachable, and means the same, from
``clipper-nb serve`` (flags, ``--ClipperNB.*``, a config file) and from Jupyter.

``jupyter server --help-all`` prints its help before it looks for extensions, so no
extension's options appear there (jupyter_server has no hook for it); the extension's
own launcher, ``python -m clipper_nb.server_ext --help-all``, is where Jupyter lists them,
as ``jupyter lab --help-all`` does for JupyterLab's.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
import requests
from traitlets import Bool

from _jupyter_fixtures import JupyterServer
from clipper_nb.config import ClipperNB
from clipper_nb.frontend.serve import ServeApp
from conftest import ServeProcess, wait_until, worker_pids

KNOBS = set(ClipperNB.class_traits(config=True))


def _help_knobs(*cmd: str) -> set[str]:
    done = subprocess.run([sys.executable, *cmd, "--help-all"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return set(re.findall(r"^--ClipperNB\.(\w+)=", done.stdout, re.MULTILINE))


def test_serve_and_jupyter_list_the_same_knobs():
    serve = _help_knobs("-m", "clipper_nb.cli", "serve")
    jupyter = _help_knobs("-m", "clipper_nb.server_ext")
    assert serve == jupyter == KNOBS
    assert len(KNOBS) >= 12


def _serve_app(argv: list[str]) -> ServeApp:
    app = ServeApp()
    app.initialize(argv)
    return app


def test_every_knob_has_a_short_form_and_a_help_text():
    for name, trait in ClipperNB.class_traits(config=True).items():
        flag = name.replace("_", "-")
        assert trait.help, name
        if isinstance(trait, Bool):
            assert {flag, f"no-{flag}"} <= set(ServeApp.flags), name
        else:
            assert ServeApp.aliases[flag] == f"ClipperNB.{name}"


def test_short_flags_and_long_options_set_the_knobs(tmp_path):
    app = _serve_app(["--port", "0", "--state-dir", str(tmp_path), "--cache-mb=4", "--no-fork-server",
                      "--public-predict", "--log-level", "warning", "--ClipperNB.max_contexts=7",
                      "--worker-env", "OMP_NUM_THREADS=1", "--token=-starts-with-a-dash"])
    knobs = app.knobs
    assert (knobs.state_dir, knobs.cache_bytes, knobs.fork_server, knobs.public_predict) == (str(tmp_path), 4 << 20,
                                                                                             False, True)
    assert knobs.max_contexts == 7 and knobs.worker_env == {"OMP_NUM_THREADS": "1"}
    assert (app.port, app.log_level, app.token) == (0, 30, "-starts-with-a-dash")


def test_the_command_line_wins_over_the_config_file(tmp_path):
    conf = tmp_path / "clipper_nb_config.py"
    conf.write_text("c.ClipperNB.default_slo_ms = 41\nc.ClipperNB.batch_delay_ms = 9\nc.ServeApp.port = 4321\n")
    app = _serve_app([f"--config={conf}", "--batch-delay-ms=1"])
    assert (app.knobs.default_slo_ms, app.knobs.batch_delay_ms, app.port) == (41, 1, 4321)


def test_token_comes_from_the_flag_the_environment_or_a_file(tmp_path, monkeypatch):
    secret = tmp_path / "token"
    secret.write_text("from-a-file\n")
    monkeypatch.delenv("CLIPPER_NB_TOKEN", raising=False)
    assert _serve_app([f"--token-file={secret}"])._token() == "from-a-file"
    monkeypatch.setenv("CLIPPER_NB_TOKEN", "from-env")
    assert _serve_app([f"--token-file={secret}"])._token() == "from-env"
    assert "CLIPPER_NB_TOKEN" not in os.environ  # the workers must not inherit it
    assert _serve_app(["--token", "flag"])._token() == "flag"


@pytest.mark.parametrize("arg, message", [
    ("--cache-mb=-1", "'cache_mb' trait"), ("--default-slo-ms=0", "'default_slo_ms'"),
    ("--log-level=loud", "'loud'"), ("--config=/no/such.py", "no such file"),
], ids=["cache", "slo", "log", "config"])
def test_bad_settings_stop_serve_with_a_message(arg, message):
    done = subprocess.run([sys.executable, "-m", "clipper_nb.cli", "serve", arg], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode != 0 and message in done.stderr, done.stderr


def test_a_misspelt_knob_is_refused_not_ignored(tmp_path):
    from clipper_nb.frontend.server import Server

    with pytest.raises(TypeError, match="cache_bytes"):
        Server(state_dir=str(tmp_path), port=0, cache_bytes=1 << 20)


def _default_slo_of_a_new_app(url: str, headers: dict) -> float:
    # Straight to the management API: the Python client always sends an slo_ms of its own.
    r = requests.post(f"{url}/api/apps", json={"name": "no-slo"}, headers=headers, timeout=30)
    assert r.status_code < 300, r.text
    return r.json()["slo_ms"]


@pytest.mark.parametrize("how", ["option", "config_file"])
def test_a_served_app_gets_the_configured_default_slo(tmp_path, how):
    if how == "option":
        extra, expected = ["--ClipperNB.default_slo_ms=37"], 37
    else:
        conf = tmp_path / "serve_config.py"
        conf.write_text("c.ClipperNB.default_slo_ms = 41\n")
        extra, expected = [f"--config={conf}"], 41
    serve = ServeProcess(state_dir=str(tmp_path / "state"), extra_args=extra).start()
    try:
        assert _default_slo_of_a_new_app(serve.url, {"Authorization": f"token {serve.token}"}) == expected
    finally:
        serve.stop()
    wait_until(lambda: not worker_pids(str(tmp_path), include_fork_server=True), timeout=15, message="workers to exit")


def test_jupyter_server_command_line_reaches_the_extension(tmp_path):
    """``jupyter server --ClipperNB.default_slo_ms=37``: the same option, the same meaning."""
    root = tmp_path / "home" / "root"
    root.mkdir(parents=True)
    jp = JupyterServer(str(root), str(tmp_path / "state"), extra_args=["--ClipperNB.default_slo_ms=37"]).start()
    try:
        assert _default_slo_of_a_new_app(jp.clipper_url, jp.headers) == 37
    finally:
        assert jp.stop() == 0, jp.log()

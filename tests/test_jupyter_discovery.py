"""clipper_nb.kernel.discovery: how a kernel finds its server (no Jupyter needed here)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from _jupyter_fixtures import process_alive
from clipper_nb.kernel import discovery
from clipper_nb.kernel.client import Client, connect
from conftest import wait_until, worker_pids


@pytest.fixture(autouse=True)
def clean(monkeypatch, tmp_path):
    for var in ("CLIPPER_NB_URL", "CLIPPER_NB_TOKEN", "JUPYTERHUB_API_TOKEN", discovery.ENV_JUPYTER_INFO):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path / "runtime"))
    discovery.forget()
    yield
    discovery.forget()


def write_info(path, **fields) -> str:
    info = {"port": 8888, "base_url": "/", "hostname": "127.0.0.1", "secure": False, "sock": "", "token": "tok",
            "pid": os.getpid(), **fields}
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(info, f)
    return str(path)


@pytest.mark.parametrize("fields, url", [
    ({"hostname": "0.0.0.0", "base_url": "/a/b/"}, "http://127.0.0.1:8888/a/b/clipper"),
    ({"hostname": "localhost"}, "http://127.0.0.1:8888/clipper"),
    ({"hostname": "::", "port": 9}, "http://[::1]:9/clipper"),
    ({"hostname": "10.1.2.3", "secure": True, "base_url": "/user/ana"}, "https://10.1.2.3:8888/user/ana/clipper"),
    ({"sock": "/tmp/jupyter.sock"}, None),
])
def test_url_from_server_info(fields, url):
    info = {"port": 8888, "base_url": "/", "hostname": "127.0.0.1", "secure": False, "sock": "", **fields}
    assert discovery.url_from_server_info(info) == url


def test_exported_runtime_file_is_found_and_connect_uses_it(tmp_path, monkeypatch):
    path = write_info(tmp_path / "runtime" / "jpserver-1.json", base_url="/jp/", port=8123)
    monkeypatch.setenv(discovery.ENV_JUPYTER_INFO, path)
    found = discovery.discover()
    assert found == {"url": "http://127.0.0.1:8123/jp/clipper", "token": "tok", "source": path}
    client = connect()
    assert client.url == found["url"] and client._token == "tok"
    assert "tok" not in repr(client)


def test_stale_or_missing_runtime_files_are_ignored(tmp_path, monkeypatch):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    path = write_info(tmp_path / "runtime" / "jpserver-x.json", pid=int(dead))
    monkeypatch.setenv(discovery.ENV_JUPYTER_INFO, path)
    assert discovery.discover() is None  # its server is gone
    monkeypatch.setenv(discovery.ENV_JUPYTER_INFO, str(tmp_path / "nope.json"))
    assert discovery.discover() is None


def test_ancestor_runtime_file_needs_the_extension_to_answer(tmp_path, server):
    # The runtime file of our parent process, pointing at a server without the extension
    # (clipper-nb serve answers 404 under /clipper): not taken.
    write_info(tmp_path / "runtime" / f"jpserver-{os.getppid()}.json", port=server.port, pid=os.getppid())
    assert discovery.discover() is None


def test_what_this_session_started_comes_first(tmp_path, monkeypatch):
    monkeypatch.setenv(discovery.ENV_JUPYTER_INFO, write_info(tmp_path / "runtime" / "jpserver-2.json"))
    discovery.remember("http://127.0.0.1:4000/", "mine")
    assert discovery.discover() == {"url": "http://127.0.0.1:4000", "token": "mine", "source": "this session"}
    discovery.forget("http://127.0.0.1:5000")  # another server: still remembered
    assert discovery.discover()["token"] == "mine"
    discovery.forget("http://127.0.0.1:4000")
    assert discovery.discover()["token"] == "tok"


def test_embedded_server_stops_with_its_workers(tmp_path):
    state = str(tmp_path / "emb")
    srv = discovery.EmbeddedServer(state_dir=state).start()
    try:
        assert srv.running() and srv.token not in repr(srv)
        with open(f"/proc/{srv.proc.pid}/cmdline", "rb") as f:
            assert srv.token.encode() not in f.read()  # never on the command line
        ns = {"__name__": "__main__"}  # as in a notebook: pickled by value
        exec("def plus(batch):\n    return [float(r[0]) + 1 for r in batch]\n", ns)
        client = Client(srv.url, token=srv.token)
        client.deploy(ns["plus"], "plus", app="p", slo_ms=2000)
        assert client.predict("p", [1.0])["output"] == 2.0
        assert len(worker_pids(state)) == 1
        for pid in worker_pids(state):  # the token stays out of the workers' environment
            with open(f"/proc/{pid}/environ", "rb") as f:
                assert srv.token.encode() not in f.read()
    finally:
        srv.stop()
    assert not srv.running()
    wait_until(lambda: not worker_pids(state, include_fork_server=True), timeout=15, message="workers to exit")


def test_embedded_server_dies_with_a_killed_parent(tmp_path):
    """kill -9 of the kernel that ran %clipper start: no atexit, PR_SET_PDEATHSIG stops serve."""
    script = ("import sys, time\n"
              "from clipper_nb.kernel.discovery import EmbeddedServer\n"
              "s = EmbeddedServer(state_dir=sys.argv[1]).start()\n"
              "print(s.proc.pid, flush=True)\n"
              "time.sleep(300)\n")
    parent = subprocess.Popen([sys.executable, "-c", script, str(tmp_path / "emb")], stdout=subprocess.PIPE,
                              text=True)
    try:
        serve_pid = int(parent.stdout.readline())
        assert process_alive(serve_pid)
    finally:
        parent.kill()
        parent.wait()
    wait_until(lambda: not process_alive(serve_pid), timeout=30, message="clipper-nb serve to exit")


def test_jupyterhub_token_stands_in_for_a_missing_server_token(tmp_path, monkeypatch):
    monkeypatch.setenv(discovery.ENV_JUPYTER_INFO, write_info(tmp_path / "runtime" / "jpserver-3.json", token=""))
    assert discovery.discover()["token"] is None
    monkeypatch.setenv("JUPYTERHUB_API_TOKEN", "hub-token")
    assert discovery.discover()["token"] == "hub-token"

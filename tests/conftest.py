"""Shared fixtures: a real ``clipper-nb serve`` subprocess and an in-process server.

Both take a free port on 127.0.0.1 and a fresh state directory, and both check at
teardown that no worker process they started is left running.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field

import pytest
import requests

from clipper_nb.kernel.client import Client
from clipper_nb.frontend.server import Server
from clipper_nb.wire.ports import free_port

TOKEN = "test-token-not-secret"


def worker_pids(marker: str, include_fork_server: bool = False) -> list[int]:
    """Pids of live worker processes whose command line contains ``marker``.

    Workers forked by the fork server share its command line (``clipper_nb.containers.forkserver
    --tag STATE_DIR``) and are told apart by their process name, ``clipper-worker``.
    """
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        name = stat[stat.index("(") + 1:stat.rindex(")")]
        state = stat.rsplit(")", 1)[1].split()[0]
        if marker not in cmd or state == "Z":
            continue
        forked = "clipper_nb.containers.forkserver" in cmd
        if "clipper_nb.containers.worker" in cmd or (forked and (name == "clipper-worker" or include_fork_server)):
            pids.append(int(entry))
    return pids


def wait_until(predicate, timeout: float = 10.0, interval: float = 0.05, message: str = "condition"):
    end = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {timeout}s waiting for {message}")
        time.sleep(interval)


@dataclass
class ServeProcess:
    """A ``clipper-nb serve`` subprocess on a free port."""

    state_dir: str
    public_predict: bool = True
    extra_args: list[str] = field(default_factory=list)
    port: int = 0
    proc: subprocess.Popen | None = None
    log_path: str = ""
    #: where the server's output goes (default: the state directory)
    log_dir: str = ""

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def token(self) -> str:
        return TOKEN

    def client(self) -> Client:
        return Client(self.url, token=TOKEN)

    def start(self, port: int | None = None) -> "ServeProcess":
        """Start on ``port`` (a free one by default) and wait until every model is back."""
        self.port = port or free_port()
        self.log_path = os.path.join(self.log_dir or self.state_dir, f"serve-{self.port}.log")
        cmd = [sys.executable, "-m", "clipper_nb.cli", "serve", "--port", str(self.port), "--state-dir",
               self.state_dir, "--token", TOKEN, *self.extra_args]
        if self.public_predict:
            cmd.append("--public-predict")
        os.makedirs(self.state_dir, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        wait_until(self._up, timeout=60, message=f"clipper-nb serve on port {self.port}")
        self.client().wait_ready(120)
        return self

    def _up(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"clipper-nb serve exited with {self.proc.returncode}:\n{self.log()}")
        try:
            return requests.get(f"{self.url}/api/health", headers={"Authorization": f"token {TOKEN}"},
                                timeout=1).status_code == 200
        except requests.ConnectionError:
            return False

    def log(self) -> str:
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read()[-5000:]
        except OSError:
            return ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> None:
        """Stop the server (SIGTERM: graceful; SIGKILL: the workers must notice on their own)."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def restart(self) -> "ServeProcess":
        self.stop()
        return self.start()


@pytest.fixture
def serve(tmp_path):
    """A running ``clipper-nb serve --public-predict`` with token ``TOKEN``."""
    server = ServeProcess(state_dir=str(tmp_path / "state")).start()
    try:
        yield server
    finally:
        server.stop()
        wait_until(lambda: not worker_pids(str(tmp_path), include_fork_server=True), timeout=15, message="workers to exit")


@pytest.fixture
def server(tmp_path):
    """An in-process server on a background thread (faster to start; same HTTP API)."""
    srv = Server(state_dir=str(tmp_path / "state"), port=0, token=TOKEN, public_predict=True).start_in_thread()
    try:
        yield srv
    finally:
        srv.stop_thread()
        wait_until(lambda: not worker_pids(str(tmp_path), include_fork_server=True), timeout=15, message="workers to exit")


def client_of(server: Server) -> Client:
    """A client of an in-process :class:`Server` (the frontend does not import the kernel side)."""
    return Client(server.url, token=server.token)


@pytest.fixture
def client(server) -> Client:
    return client_of(server)

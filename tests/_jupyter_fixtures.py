"""A real ``jupyter server`` subprocess and a real kernel started by it.

The server runs with its own config, data and runtime dirs (nothing of the machine's
Jupyter setup leaks in, nothing of ours leaks out); the clipper_nb extension is
enabled by the packaged ``jupyter-config`` JSON through ``JUPYTER_CONFIG_PATH``, so
these tests also prove the file that pip installs. Kernels are created through the
server's sessions API, so they are the server's children with its environment, as
in JupyterLab; the test drives them over ZeroMQ with jupyter_client.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field

import requests

from clipper_nb.wire.ports import free_port
from conftest import wait_until

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
JUPYTER_TOKEN = "jupyter-test-token-not-secret"
BASE_URL = "/jp/"
XSRF = "0123456789abcdef0123456789abcdef"
# Extensions this test does not need; not loading them saves seconds per start.
_OFF = ("jupyterlab", "jupyter_lsp", "notebook_shim", "jupyter_server_terminals", "nbclassic", "notebook")


@dataclass
class JupyterServer:
    """``python -m jupyter_server`` on a free loopback port with the clipper_nb extension."""

    root: str
    state_dir: str
    port: int = 0
    proc: subprocess.Popen | None = None
    env: dict = field(default_factory=dict)
    #: more command-line options (``--ClipperNB.default_slo_ms=37``, ...)
    extra_args: list[str] = field(default_factory=list)
    #: Jupyter's token; "" runs token-less (``--IdentityProvider.token=``), as in many containers
    token: str = JUPYTER_TOKEN

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{BASE_URL}"

    @property
    def clipper_url(self) -> str:
        return self.url + "clipper"

    @property
    def headers(self) -> dict:
        if self.token:
            return {"Authorization": f"token {self.token}"}
        # Token-less: Jupyter checks XSRF on POSTs; a cookie and a header that match pass it.
        return {"X-XSRFToken": XSRF, "Cookie": f"_xsrf={XSRF}"}

    @property
    def log_path(self) -> str:
        return os.path.join(self.root, "..", "jupyter-server.log")

    def start(self) -> "JupyterServer":
        home = os.path.dirname(self.root)
        config_dir = os.path.join(home, "jupyter-config")
        os.makedirs(config_dir, exist_ok=True)
        with open(os.path.join(config_dir, "jupyter_server_config.json"), "w") as f:
            json.dump({"ServerApp": {"jpserver_extensions": {name: False for name in _OFF}}}, f)
        self.env = {**os.environ,
                    "JUPYTER_CONFIG_PATH": os.path.join(REPO, "jupyter-config"),
                    "JUPYTER_CONFIG_DIR": config_dir,
                    "JUPYTER_DATA_DIR": os.path.join(home, "jupyter-data"),
                    "JUPYTER_RUNTIME_DIR": os.path.join(home, "jupyter-runtime"),
                    "IPYTHONDIR": os.path.join(home, "ipython")}
        for var in ("CLIPPER_NB_URL", "CLIPPER_NB_TOKEN", "CLIPPER_NB_JUPYTER_INFO"):
            self.env.pop(var, None)
        self.port = free_port()
        cmd = [sys.executable, "-m", "jupyter_server", "--allow-root", "--no-browser", "--ServerApp.ip=127.0.0.1",
               f"--port={self.port}", "--ServerApp.port_retries=0", f"--ServerApp.base_url={BASE_URL}",
               f"--IdentityProvider.token={self.token}", f"--ServerApp.root_dir={self.root}",
               f"--ClipperNB.state_dir={self.state_dir}", *self.extra_args]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=self.env, cwd=self.root,
                                         start_new_session=True)
        wait_until(self._up, timeout=120, interval=0.2, message=f"jupyter server on port {self.port}")
        return self

    def _up(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"jupyter server exited with {self.proc.returncode}:\n{self.log()}")
        try:
            return requests.get(self.clipper_url + "/api/health", headers=self.headers, timeout=2).status_code == 200
        except requests.RequestException:
            return False

    def wait_ready(self, timeout: float = 120) -> None:
        """Until the extension has restored every model (after a restart)."""
        wait_until(lambda: requests.get(self.clipper_url + "/api/health", headers=self.headers, timeout=5)
                   .json().get("ready"), timeout=timeout, interval=0.2, message="clipper_nb to restore its models")

    def log(self) -> str:
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read()[-6000:]
        except OSError:
            return ""

    def stop(self, timeout: float = 60) -> int | None:
        """SIGTERM, as a service manager stops Jupyter; returns the exit code."""
        proc, self.proc = self.proc, None
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                raise AssertionError(f"jupyter server ignored SIGTERM for {timeout}s:\n{self.log()}") from None
        return proc.returncode

    def new_kernel(self) -> "Kernel":
        """A kernel for notebook ``nb.ipynb`` in the root dir (cwd = root), as JupyterLab opens one."""
        r = requests.post(self.url + "api/sessions", headers=self.headers, timeout=60,
                          json={"path": "nb.ipynb", "type": "notebook", "name": "nb.ipynb",
                                "kernel": {"name": "python3"}})
        r.raise_for_status()
        kernel_id = r.json()["kernel"]["id"]
        connection_file = os.path.join(self.env["JUPYTER_RUNTIME_DIR"], f"kernel-{kernel_id}.json")
        wait_until(lambda: os.path.exists(connection_file), timeout=60, message="the kernel's connection file")
        return Kernel(connection_file)


class Kernel:
    """Runs cells in a kernel over ZeroMQ and collects their text output."""

    def __init__(self, connection_file: str) -> None:
        from jupyter_client import BlockingKernelClient

        self.client = BlockingKernelClient(connection_file=connection_file)
        self.client.load_connection_file()
        # No heartbeat channel: on a loaded machine a kernel busy importing misses
        # one-second heartbeats and jupyter_client would call it dead.
        self.client.start_channels(hb=False)
        self._wait_ready(timeout=120)
        self.outputs: list[str] = []

    def _wait_ready(self, timeout: float) -> None:
        """Until the kernel answers kernel_info and its IOPub reaches us."""
        from queue import Empty

        end = time.monotonic() + timeout
        while time.monotonic() < end:
            self.client.kernel_info()
            try:
                msg = self.client.get_shell_msg(timeout=2)
            except Empty:
                continue
            if msg["msg_type"] != "kernel_info_reply":
                continue
            try:
                self.client.get_iopub_msg(timeout=1)
            except Empty:
                continue  # IOPub not subscribed yet: ask again
            while True:  # drain what is left before the first cell
                try:
                    self.client.get_iopub_msg(timeout=0.2)
                except Empty:
                    return
        raise AssertionError(f"the kernel did not answer within {timeout}s")

    def run(self, code: str, timeout: float = 180) -> str:
        """Execute one cell; return its output text; fail with the kernel's error."""
        chunks: list[str] = []

        def hook(msg: dict) -> None:
            content = msg["content"]
            kind = msg["header"]["msg_type"]
            if kind == "stream":
                chunks.append(content["text"])
            elif kind in ("execute_result", "display_data", "update_display_data"):
                chunks.append(content["data"].get("text/plain", "") + "\n")
            elif kind == "error":
                chunks.append(f"{content['ename']}: {content['evalue']}\n" + "\n".join(content["traceback"]))

        reply = self.client.execute_interactive(code, timeout=timeout, output_hook=hook, allow_stdin=False)
        text = "".join(chunks)
        self.outputs.append(text)
        assert reply["content"]["status"] == "ok", f"cell failed:\n{code}\n---\n{text}"
        return text

    def close(self) -> None:
        self.client.stop_channels()


def process_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def pids_with(marker: str, needle: str) -> list[int]:
    """Pids whose command line holds both ``needle`` and ``marker`` (e.g. a serve process)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if needle in cmd and marker in cmd and process_alive(int(entry)):
                found.append(int(entry))
    return found


def wait_gone(pids: list[int], timeout: float = 30) -> None:
    wait_until(lambda: not any(process_alive(p) for p in pids), timeout=timeout, message=f"processes {pids} to exit")


def plain_kernel_folder(tmp_path, monkeypatch) -> str:
    """A folder for a notebook run in a plain kernel (nbclient), holding copies of the
    notebooks' helper modules (``notebooks/_*.py``), with the kernel's runtime and IPython
    directories private to the test. Returns the folder."""
    import re
    import shutil

    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path / "runtime"))
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))
    folder = tmp_path / "notebooks"
    folder.mkdir()
    notebooks = os.path.join(REPO, "notebooks")
    for helper in os.listdir(notebooks):
        if re.fullmatch(r"_[a-z0-9_]+\.py", helper):
            shutil.copy(os.path.join(notebooks, helper), folder)
    return str(folder)

"""Finding a clipper-nb frontend from a kernel with no user input, or starting one.

:func:`discover` (called by :func:`clipper_nb.connect` when neither a URL nor
``$CLIPPER_NB_URL`` is given) looks, in order, at:

1. the server this process connected to or started itself (``%clipper connect``,
   ``%clipper start``), remembered by :func:`remember`;
2. the Jupyter server that started this kernel. Its ``clipper_nb`` extension exports
   ``CLIPPER_NB_JUPYTER_INFO`` = the path of the server's runtime file
   ``<runtime_dir>/jpserver-<pid>.json`` (written by jupyter_server, mode 0600, holding
   ``port``, ``base_url``, ``token``, ``secure``, ``pid``...). Kernels inherit the
   server's environment, so the variable tells a kernel which server is its own even
   when the runtime dir was configured; the token stays in the 0600 file and never
   in an environment variable that ``!env`` would print;
3. failing that (a kernel started with a cleaned environment), the runtime files of
   this process's ancestors (``jpserver-<ppid>.json``...) in ``jupyter_runtime_dir()``,
   kept only if ``{base_url}clipper/`` answers there (the extension is enabled).

:class:`EmbeddedServer` is ``%clipper start``: a ``clipper-nb serve`` subprocess on a
free loopback port with a generated token, which stops (and its workers with it) when
the process that started it exits, even by ``kill -9``.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from typing import Any

import requests
from jupyter_core.paths import jupyter_runtime_dir

from clipper_nb.errors import ClipperError
from clipper_nb.wire.ports import free_port

log = logging.getLogger("clipper_nb.kernel.discovery")

#: Exported by the Jupyter extension into the server's environment (and so its kernels').
ENV_JUPYTER_INFO = "CLIPPER_NB_JUPYTER_INFO"
#: Where the APIs sit under a Jupyter server's base_url.
JUPYTER_PREFIX = "clipper"
_WILDCARDS = {"", "0.0.0.0", "*", "localhost"}
_ANCESTORS = 4

_remembered: dict[str, Any] | None = None
_embedded: "EmbeddedServer | None" = None


def remember(url: str, token: str | None) -> None:
    """Make ``url`` what :func:`discover` answers first in this process."""
    global _remembered
    _remembered = {"url": url.rstrip("/"), "token": token, "source": "this session"}


def forget(url: str | None = None) -> None:
    """Forget the remembered server (only if it is ``url``, when given)."""
    global _remembered
    if _remembered is not None and (url is None or _remembered["url"] == url.rstrip("/")):
        _remembered = None


def start_embedded(state_dir: str | None = None, port: int | None = None,
                   public_predict: bool = False) -> "EmbeddedServer":
    """Start a ``clipper-nb serve`` owned by this process and make :func:`discover` answer it.

    What ``%clipper start`` does, and what :func:`clipper_nb.connect` does when there is
    no server to find (a plain kernel, VS Code, nbconvert): the user sees one line.
    """
    global _embedded
    server = EmbeddedServer(state_dir=state_dir, port=port, public_predict=public_predict).start()
    _embedded = server
    remember(server.url, server.token)
    return server


def embedded() -> "EmbeddedServer | None":
    """The server :func:`start_embedded` started in this process, while it runs."""
    return _embedded if _embedded is not None and _embedded.running() else None


def discover() -> dict[str, Any] | None:
    """``{"url", "token", "source"}`` of the frontend this process should use, or None."""
    if _remembered is not None:
        return dict(_remembered)
    exported = os.environ.get(ENV_JUPYTER_INFO)
    if exported:
        found = _from_runtime_file(exported)
        if found is not None:
            return found
    return _from_ancestors()


def url_from_server_info(info: dict) -> str | None:
    """``http://127.0.0.1:8888/<base_url>/clipper`` from a ``jpserver-<pid>.json`` dict."""
    if info.get("sock") or not info.get("port"):
        return None  # a Unix-socket server: our HTTP client cannot reach it
    host = str(info.get("hostname") or "")
    if host in _WILDCARDS:
        host = "127.0.0.1"  # the kernel runs on the server's machine
    elif host == "::":
        host = "[::1]"
    elif ":" in host and not host.startswith("["):
        host = f"[{host}]"
    scheme = "https" if info.get("secure") else "http"
    base = "/" + str(info.get("base_url") or "/").strip("/")
    return f"{scheme}://{host}:{info['port']}{base.rstrip('/')}/{JUPYTER_PREFIX}"


def _read_info(path: str) -> dict | None:
    try:
        with open(path) as f:
            info = json.load(f)
    except (OSError, ValueError):
        return None
    if not isinstance(info, dict) or not _alive(info.get("pid")):
        return None  # a stale file left by a server that crashed
    return info


def _from_runtime_file(path: str) -> dict[str, Any] | None:
    info = _read_info(path)
    url = url_from_server_info(info) if info else None
    if url is None:
        return None
    # Under JupyterHub the server has no token of its own; the hub's API token, which
    # the single-user server passes on to its kernels, is accepted in its place.
    token = info.get("token") or os.environ.get("JUPYTERHUB_API_TOKEN") or None  # type: ignore[union-attr]
    return {"url": url, "token": token, "source": path}


def _from_ancestors() -> dict[str, Any] | None:
    runtime_dir = jupyter_runtime_dir()
    pid = os.getppid()
    for _ in range(_ANCESTORS):
        if pid <= 1:
            break
        found = _from_runtime_file(os.path.join(runtime_dir, f"jpserver-{pid}.json"))
        if found is not None and _has_extension(found):
            return found
        pid = _parent_of(pid)
    return None


def _has_extension(found: dict) -> bool:
    """True when the server answers under ``clipper/`` (anything but a 404)."""
    headers = {"Authorization": f"token {found['token']}"} if found.get("token") else {}
    try:
        r = requests.get(f"{found['url']}/api/health", headers=headers, timeout=2)
    except requests.RequestException:
        return False
    return r.status_code != 404


def _parent_of(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return 0


def _alive(pid: Any) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# ====================================================================== %clipper start

# Run in the child before the server starts: ask Linux for SIGTERM when our parent
# (the kernel) dies, so `kill -9` of the kernel still stops the server and, through
# its graceful shutdown, every worker. Done in the child's own interpreter rather than
# with preexec_fn, which is unsafe in a multi-threaded parent such as a kernel.
_BOOTSTRAP = """\
import ctypes, os, signal, sys
if sys.platform.startswith("linux"):
    try:
        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
if os.getppid() != int(os.environ.pop("CLIPPER_NB_PARENT_PID", os.getppid())):
    sys.exit(0)  # the parent died before prctl took effect
# The token came in the environment (not argv, which `ps` shows); keep it out of the
# environment of the workers this server starts.
token = os.environ.pop("CLIPPER_NB_TOKEN")
from clipper_nb.cli import main
sys.exit(main(sys.argv[1:] + ["--token=" + token]))  # "=": a token may start with "-"
"""


class EmbeddedServer:
    """A ``clipper-nb serve`` subprocess owned by this process (``%clipper start``).

    >>> srv = EmbeddedServer().start()        # doctest: +SKIP
    >>> clipper_nb.connect(srv.url, srv.token)  # doctest: +SKIP

    The token is generated here and handed over in the child's environment, never on
    its command line (which any local user can read in ``ps``). With no ``state_dir``
    a temporary one is used and deleted on :meth:`stop`.
    """

    def __init__(self, state_dir: str | None = None, port: int | None = None, public_predict: bool = False,
                 python: str = sys.executable) -> None:
        self._temporary = state_dir is None
        self.state_dir = os.path.abspath(state_dir) if state_dir else tempfile.mkdtemp(prefix="clipper-nb-")
        self.port = port
        self.public_predict = public_predict
        self.python = python
        self.token = secrets.token_urlsafe(24)
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> str:
        return os.path.join(self.state_dir, "serve.log")

    def __repr__(self) -> str:  # never the token
        return f"<EmbeddedServer {self.url} state_dir={self.state_dir!r}>"

    def start(self, timeout: float = 60.0) -> "EmbeddedServer":
        """Start the server and return once it answers; raise ``ClipperError`` if it fails."""
        self.port = self.port or free_port()
        os.makedirs(self.state_dir, exist_ok=True)
        cmd = [self.python, "-c", _BOOTSTRAP, "serve", "--port", str(self.port), "--state-dir", self.state_dir,
               "--log-level", "warning"]
        if self.public_predict:
            cmd.append("--public-predict")
        env = {**os.environ, "CLIPPER_NB_TOKEN": self.token, "CLIPPER_NB_PARENT_PID": str(os.getpid())}
        with open(self.log_path, "ab") as log_file:
            # A session of its own: interrupting the kernel (SIGINT to its process group)
            # must not stop the server.
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT,
                                         env=env, start_new_session=True)
        atexit.register(self.stop)
        end = time.monotonic() + timeout
        while not self._answers():
            if self.proc.poll() is not None:
                code, tail = self.proc.returncode, _tail(self.log_path)
                self.stop()
                raise ClipperError(f"clipper-nb serve exited with code {code}", tail)
            if time.monotonic() > end:
                self.stop()
                raise ClipperError(f"clipper-nb serve did not answer within {timeout:.0f}s", _tail(self.log_path))
            time.sleep(0.1)
        return self

    def _answers(self) -> bool:
        try:
            return requests.get(f"{self.url}/api/health", headers={"Authorization": f"token {self.token}"},
                                timeout=1).status_code == 200
        except requests.RequestException:
            return False

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM (the server stops its workers), then SIGKILL after ``timeout``."""
        proc, self.proc = self.proc, None
        atexit.unregister(self.stop)
        forget(self.url)
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self._temporary:
            shutil.rmtree(self.state_dir, ignore_errors=True)


def _tail(path: str, limit: int = 1500) -> str:
    try:
        with open(path, errors="replace") as f:
            return f.read()[-limit:].strip() or "(no output)"
    except OSError:
        return "(no log)"

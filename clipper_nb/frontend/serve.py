"""``clipper-nb serve``: a standalone frontend as a traitlets ``Application``.

The knobs are :class:`~clipper_nb.config.ClipperNB`'s, read the way Jupyter reads
them, so one setting is written the same way on the command line, in a config file and
in a Jupyter config::

    clipper-nb serve --ClipperNB.default_slo_ms=50      # or the short alias --default-slo-ms=50
    clipper-nb serve --config=clipper_nb_config.py      # c.ClipperNB.default_slo_ms = 50
    clipper-nb serve --help-all                         # every knob with its help and default

Settings of this command alone (address, token, log level) are traits of
:class:`ServeApp` (``c.ServeApp.port = 1337``).

The token comes from ``$CLIPPER_NB_TOKEN`` or ``--token-file`` (a file only its owner
reads), or ``--token`` (which every local user sees in ``ps``: a warning says so); with
none, one is generated and printed once. An empty one is an error, never "no
authentication". Log lines never show it.
"""

from __future__ import annotations

import asyncio
import errno
import gc
import logging
import os
import resource
import signal
import stat
import sys
from typing import Any

from traitlets import Bool, CaselessStrEnum, Integer, Unicode, Union, validate
from traitlets.config import Application, catch_config_error

from clipper_nb.config import ClipperNB
from clipper_nb.errors import ClipperError
from clipper_nb.frontend.server import Server, loop_factory

__all__ = ["ServeApp"]

#: Where a token comes from when ``--token`` is not given (and, when neither is, one is generated).
ENV_TOKEN = "CLIPPER_NB_TOKEN"

_LEVELS = ["debug", "info", "warning", "warn", "error", "critical"]


def _knob_aliases() -> dict[str, str]:
    """``--cache-mb`` for ``--ClipperNB.cache_mb``: every valued knob, named from the trait itself."""
    return {name.replace("_", "-"): f"ClipperNB.{name}"
            for name, trait in ClipperNB.class_traits(config=True).items() if not isinstance(trait, Bool)}


def _knob_flags() -> dict[str, tuple[dict, str]]:
    """``--public-predict`` / ``--no-public-predict`` for each on/off knob."""
    flags: dict[str, tuple[dict, str]] = {}
    for name, trait in ClipperNB.class_traits(config=True).items():
        if isinstance(trait, Bool):
            flag = name.replace("_", "-")
            flags[flag] = ({"ClipperNB": {name: True}}, trait.help)
            flags[f"no-{flag}"] = ({"ClipperNB": {name: False}}, f"The opposite of --{flag}.")
    return flags


class ServeApp(Application):
    """Run one clipper-nb frontend: the query, management and metrics APIs on one port."""

    name = "clipper-nb-serve"
    description = ("Run a standalone clipper-nb frontend: the Clipper query API, the management API "
                   "and the metrics API, behind a token, on one port.")
    examples = """\
CLIPPER_NB_TOKEN=$(cat ~/.clipper-token) clipper-nb serve --port 1337 --state-dir ./clipper-state
clipper-nb serve --token-file ~/.clipper-token --public-predict     # a file only you can read (chmod 600)
clipper-nb serve --port 1337 --state-dir ./clipper-state --public-predict     # generates and prints a token
clipper-nb serve --ClipperNB.batch_delay_ms=0 --ClipperNB.worker_env OMP_NUM_THREADS=1
clipper-nb serve --config=clipper_nb_config.py     # c.ClipperNB.default_slo_ms = 50
"""
    classes = [ClipperNB]
    aliases = {"host": "ServeApp.host", "port": "ServeApp.port", "token": "ServeApp.token",
               "token-file": "ServeApp.token_file", "config": "ServeApp.config_file",
               "log-level": "ServeApp.log_level", **_knob_aliases()}
    flags = {**Application.flags, **_knob_flags()}

    host = Unicode("127.0.0.1", help="Address to bind (default: loopback only; 0.0.0.0 for every interface).").tag(
        config=True)
    port = Integer(1337, min=0, max=65535, help="TCP port to listen on (0: any free port).").tag(config=True)
    token = Unicode(
        None, allow_none=True,
        help=f"Management token. Prefer ${ENV_TOKEN} or token_file: a command line is visible in `ps`. "
             "Generated and printed once when none is given.",
    ).tag(config=True)
    token_file = Unicode("", help="Read the management token from this file (e.g. a mounted secret).").tag(config=True)
    config_file = Unicode("", help="A Python config file to load (c.ClipperNB.default_slo_ms = 50, ...).").tag(
        config=True)
    log_level = Union([Integer(), CaselessStrEnum(_LEVELS)], default_value=logging.INFO,
                      help=f"Log level: {', '.join(_LEVELS)} or a number.").tag(config=True)

    #: the knobs as configured (command line over config file over defaults), set by initialize()
    knobs: ClipperNB

    @validate("log_level")
    def _log_level_number(self, proposal: Any) -> int:
        # Application turns names into numbers with getattr(logging, NAME): give it one.
        value = proposal.value
        if isinstance(value, int):
            return value
        return logging.WARNING if value.upper() == "WARN" else logging.getLevelName(value.upper())

    @catch_config_error
    def initialize(self, argv: Any = None) -> None:
        self.parse_command_line(argv)
        if self.config_file:
            self._load_config_file(self.config_file)
        self.knobs = ClipperNB(parent=self)

    def _load_config_file(self, path: str) -> None:
        if not os.path.isfile(path):
            self.log.critical("config file %s: no such file", path)
            self.exit(2)
        self.load_config_file(os.path.basename(path), path=os.path.dirname(os.path.abspath(path)))
        self.update_config(self.cli_config)  # the command line wins over the file

    def _token(self) -> str | None:
        """The flag's, else ``$CLIPPER_NB_TOKEN``'s, else the token file's; None: generate one."""
        # Taken out of the environment either way: the workers this server starts inherit it.
        from_env = os.environ.pop(ENV_TOKEN, None)
        if self.token is not None:
            token = self._nonempty(self.token, "--token")
            if any(token in arg for arg in sys.argv):
                self.log.warning("the token is on the command line, where every local user can read it (ps): "
                                 "pass it in $%s or --token-file instead", ENV_TOKEN)
            return token
        if from_env is not None:
            return self._nonempty(from_env, f"${ENV_TOKEN}")
        if self.token_file:
            return self._nonempty(self._read_token_file(), f"token file {self.token_file}")
        return None

    def _nonempty(self, token: str, where: str) -> str:
        token = token.strip()
        if not token:
            self.log.critical("%s is empty: an empty token would turn authentication off. "
                              "Give a token, or none at all to have one generated.", where)
            self.exit(2)
        return token

    def _read_token_file(self) -> str:
        try:
            with open(self.token_file) as f:
                mode = os.fstat(f.fileno()).st_mode
                token = f.read()
        except OSError as e:
            self.log.critical("cannot read the token file: %s", e)
            self.exit(2)
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            self.log.warning("token file %s is readable by other users: chmod 600 it", self.token_file)
        return token

    def start(self) -> None:
        logging.basicConfig(level=self.log_level, format="%(asctime)s %(name)s %(message)s")
        token = self._token()
        _raise_open_file_limit()
        server = Server(host=self.host, port=self.port, token=token, **self.knobs.trait_values(config=True))
        redact = _Redact(server.token)
        for handler in [*logging.getLogger().handlers, *self.log.handlers]:
            handler.addFilter(redact)
        try:
            if sys.version_info >= (3, 11):
                with asyncio.Runner(loop_factory=loop_factory(server.config.event_loop)) as runner:
                    runner.run(self._serve(server, announce_token=not token))
            else:  # no loop factory before 3.11: the standard loop
                asyncio.run(self._serve(server, announce_token=not token))
        except OSError as e:
            if e.errno != errno.EADDRINUSE:
                raise
            self.log.critical("cannot listen on %s:%s: the port is in use (another clipper-nb serve?): "
                              "stop it, or pick another --port", self.host, self.port)
            self.exit(1)
        except ClipperError as e:  # e.g. another server holds the state directory
            self.log.critical("%s", e)
            self.exit(1)

    async def _serve(self, server: Server, announce_token: bool) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, lambda: asyncio.ensure_future(server.stop()))
        await server.start(wait_ready=False)
        # What is loaded by now (modules, the engine) lives as long as the process: out of
        # the garbage collector's sight, a full collection no longer walks it. Without this
        # each one took ~45 ms, about twice a second under load (p99 at 64 in flight: 57 ms
        # -> 13 ms). This process is the server's own; a kernel's embedded one is not frozen.
        gc.freeze()
        print(f"clipper-nb serving on {server.url} (state in {server.config.state_path})", flush=True)
        if announce_token:  # generated: the only place it is ever shown
            print(f"management token: {server.token}", flush=True)
        print(f"query API: {'open to anonymous callers' if server.public_predict else 'needs the token'}",
              flush=True)
        await server.wait_stopped()


class _Redact(logging.Filter):
    """Replaces the token wherever a log line would show it."""

    def __init__(self, secret: str) -> None:
        super().__init__()
        self.secret = secret

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if self.secret in message:
            record.msg, record.args = message.replace(self.secret, "REDACTED"), None
        return True


def _raise_open_file_limit(target: int = 65536) -> None:
    """Room for many connections (``max_connections`` stays below the limit): the soft
    open-file limit up to the hard one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = target if hard == resource.RLIM_INFINITY else min(target, hard)
    if soft != resource.RLIM_INFINITY and soft < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
        except (ValueError, OSError):
            pass

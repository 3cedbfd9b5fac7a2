"""``ClipperNBExtension``: the Jupyter server extension that hosts the clipper-nb frontend.

It runs one :class:`~clipper_nb.engine.Engine` on the Jupyter server's event loop and
mounts the query, management and metrics APIs under ``{base_url}clipper/`` behind
Jupyter's own authentication (see :mod:`clipper_nb.server_ext.handlers`). Its knobs
are :class:`~clipper_nb.config.ClipperNB`'s, the same ones ``clipper-nb serve`` reads::

    c.ClipperNB.state_dir = "/data/clipper"      # jupyter_server_config.py
    c.ClipperNB.public_predict = True

or ``jupyter lab --ClipperNB.default_slo_ms=50``. ``state_dir`` defaults to
``<jupyter data dir>/clipper_nb`` here. Only ``export_to_kernels`` belongs to the
extension itself (``c.ClipperNBExtension.export_to_kernels``).

Discovery: at load time the extension exports ``CLIPPER_NB_JUPYTER_INFO`` (the path
of the server's ``jpserver-<pid>.json`` runtime file) into the server's environment,
which every kernel the server starts inherits; :mod:`clipper_nb.kernel.discovery` reads the
URL and token from that file. The token itself is never put in an environment
variable, so ``!env`` in a notebook cannot print it.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from jupyter_core.paths import jupyter_data_dir
from jupyter_server.extension.application import ExtensionApp
from traitlets import Bool

from clipper_nb.config import ClipperNB
from clipper_nb.engine.facade import Engine
from clipper_nb.errors import Unavailable
from clipper_nb.kernel.discovery import ENV_JUPYTER_INFO

from .handlers import URL_PREFIX, make_handlers


class ClipperNBExtension(ExtensionApp):
    """Serve models deployed from notebooks from inside the Jupyter server."""

    name = "clipper_nb"
    description = "Clipper prediction serving inside the Jupyter server"
    load_other_extensions = True
    # Listed in the help of the extension launched on its own (python -m clipper_nb.server_ext
    # --help-all); the server's own `jupyter server --help-all` lists no extension's classes.
    classes = [*ExtensionApp.classes, ClipperNB]

    export_to_kernels = Bool(
        True,
        help=f"Export {ENV_JUPYTER_INFO} (the path of this server's runtime file) to the kernels it starts, "
             "so `%%clipper` and clipper_nb.connect() find this server with no user input.",
    ).tag(config=True)

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.knobs: ClipperNB | None = None  # read once the server's config has reached us
        self.engine: Engine | None = None
        self._starting: asyncio.Future | None = None
        self._stopped = False
        self._exported: str | None = None

    @property
    def default_state_dir(self) -> str:
        """``state_dir`` when the config sets none (asked by :class:`ClipperNB`, our child)."""
        return os.path.join(jupyter_data_dir(), "clipper_nb")

    # ------------------------------------------------------------------ wiring
    def initialize_settings(self) -> None:
        # The server's config (files and command line) has reached self.config by now.
        self.knobs = ClipperNB(parent=self)
        if self.export_to_kernels:
            # Kernels get {**os.environ, ...} at start (jupyter_server's SessionManager),
            # so this reaches every kernel this server starts from now on.
            self._exported = self.serverapp.info_file
            os.environ[ENV_JUPYTER_INFO] = self._exported
        self.log.info("clipper_nb | state in %s; query API %s", self.knobs.state_path,
                      "open to anonymous callers" if self.knobs.public_predict else "needs Jupyter credentials")

    def initialize_handlers(self) -> None:
        assert self.knobs is not None  # initialize_settings ran first
        self.handlers.extend(make_handlers(public_predict=self.knobs.public_predict))

    @property
    def url_prefix(self) -> str:
        """Where the APIs are mounted, e.g. ``/user/ana/clipper/``."""
        return self.serverapp.base_url.rstrip("/") + "/" + URL_PREFIX

    # ------------------------------------------------------------------ lifecycle
    async def _start_jupyter_server_extension(self, serverapp: Any) -> None:
        """Start the Engine as soon as the server's loop runs, so restored apps serve
        without anyone asking. Failures are logged; requests then answer 503."""
        try:
            await self.ensure_engine()
        except Unavailable as e:
            self.log.error("clipper_nb | %s: %s", e.message, e.cause)

    async def ensure_engine(self) -> Engine:
        """The running Engine, started on first call (idempotent, concurrency-safe)."""
        if self.engine is not None:
            return self.engine
        if self._stopped:
            raise Unavailable("the clipper_nb extension has stopped", "the Jupyter server is shutting down")
        if self._starting is None:
            self._starting = asyncio.ensure_future(self._start_engine())
        return await asyncio.shield(self._starting)

    async def _start_engine(self) -> Engine:
        loop = asyncio.get_running_loop()
        try:
            # Engine() opens SQLite and creates folders: blocking, so not on the server's loop.
            engine = await loop.run_in_executor(None, Engine, self.knobs)
            # wait=False: replicas of restored models come back in the background while
            # the server (and every notebook on it) keeps answering.
            await engine.start(wait=False)
        except Exception as e:  # noqa: BLE001 - reported to every request as a 503
            raise Unavailable("the clipper_nb engine could not start",
                              f"{type(e).__name__}: {e} (state_dir={self.knobs.state_dir})") from e
        if self._stopped:  # shutdown began while we were starting
            await engine.stop()
            raise Unavailable("the clipper_nb extension has stopped")
        self.engine = engine
        self.log.info("clipper_nb | engine started (%d apps, %d models)", len(engine.apps), len(engine.models))
        return engine

    async def stop_extension(self) -> None:
        """Stop every worker and flush state (Jupyter calls this on shutdown, SIGTERM included)."""
        self._stopped = True
        if self._exported is not None and os.environ.get(ENV_JUPYTER_INFO) == self._exported:
            del os.environ[ENV_JUPYTER_INFO]
            self._exported = None
        if self.engine is None and self._starting is not None:
            try:
                await asyncio.shield(self._starting)
            except Exception:  # noqa: BLE001 - a failed start left nothing to stop
                pass
        engine, self.engine = self.engine, None
        if engine is not None:
            n = len(engine.worker_pids())
            await engine.stop()
            self.log.info("clipper_nb | stopped %d worker(s)", n)

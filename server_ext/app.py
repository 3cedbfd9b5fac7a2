"""``ClipperNB``: the Jupyter server extension that hosts the clipper-nb frontend.

It runs one :class:`~clipper_nb.engine.Engine` on the Jupyter server's event loop and
mounts the query, management and metrics APIs under ``{base_url}clipper/`` behind
Jupyter's own authentication (see :mod:`clipper_nb.server_ext.handlers`). Configure it
like any Jupyter application::

    c.ClipperNB.state_dir = "/data/clipper"      # jupyter_server_config.py
    c.ClipperNB.public_predict = True

or ``jupyter lab --ClipperNB.default_slo_ms=50``.

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
from traitlets import Bool, Dict, Float, Integer, Unicode, default

from clipper_nb.kernel.discovery import ENV_JUPYTER_INFO
from clipper_nb.engine.facade import Engine, EngineConfig
from clipper_nb.errors import Unavailable

from .handlers import URL_PREFIX, make_handlers


class ClipperNB(ExtensionApp):
    """Serve models deployed from notebooks from inside the Jupyter server."""

    name = "clipper_nb"
    description = "Clipper prediction serving inside the Jupyter server"
    load_other_extensions = True

    state_dir = Unicode(
        help="Directory of every app, model version and selection weight (SQLite + artifacts). "
             "Restarting Jupyter brings back everything stored here. "
             "Default: <jupyter data dir>/clipper_nb.",
    ).tag(config=True)

    @default("state_dir")
    def _default_state_dir(self) -> str:
        return os.path.join(jupyter_data_dir(), "clipper_nb")

    public_predict = Bool(
        False,
        help="Let anonymous callers use the query API ({base_url}clipper/<app>/predict and /update). "
             "The management and metrics APIs always need Jupyter credentials.",
    ).tag(config=True)

    default_slo_ms = Float(100.0, help="Latency objective (ms) of applications registered without one.").tag(
        config=True)
    cache_mb = Float(32.0, help="Prediction cache size per model version, in MiB.").tag(config=True)
    batch_delay_ms = Float(
        2.0, help="Delayed batching: how long a replica waits for more queries when its batch is not full (ms).",
    ).tag(config=True)
    max_batch_rows = Integer(10_000, help="Largest fixed batch size a model may be deployed with.").tag(config=True)
    start_timeout_s = Float(120.0, help="How long a worker may take to load its model before the deploy fails.").tag(
        config=True)
    heartbeat_timeout_s = Float(5.0, help="A worker silent for this long is declared dead and restarted.").tag(
        config=True)
    fork_server = Bool(
        True, help="Start workers by forking a pre-warmed interpreter (Linux): replicas start and restart "
        "in milliseconds instead of re-importing numpy, scikit-learn or torch each time.",
    ).tag(config=True)
    hang_timeout_s = Float(60.0, help="A batch running longer than this marks its worker as hung.").tag(config=True)
    worker_env = Dict(
        key_trait=Unicode(), value_trait=Unicode(),
        help="Extra environment variables for worker processes (e.g. CUDA_VISIBLE_DEVICES, OMP_NUM_THREADS).",
    ).tag(config=True)
    export_to_kernels = Bool(
        True,
        help=f"Export {ENV_JUPYTER_INFO} (the path of this server's runtime file) to the kernels it starts, "
             "so `%%clipper` and clipper_nb.connect() find this server with no user input.",
    ).tag(config=True)

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.engine: Engine | None = None
        self._starting: asyncio.Future | None = None
        self._stopped = False
        self._exported: str | None = None

    # ------------------------------------------------------------------ wiring
    def initialize_settings(self) -> None:
        if self.export_to_kernels:
            # Kernels get {**os.environ, ...} at start (jupyter_server's SessionManager),
            # so this reaches every kernel this server starts from now on.
            self._exported = self.serverapp.info_file
            os.environ[ENV_JUPYTER_INFO] = self._exported
        self.log.info("clipper_nb | state in %s; query API %s", self.state_dir,
                      "open to anonymous callers" if self.public_predict else "needs Jupyter credentials")

    def initialize_handlers(self) -> None:
        self.handlers.extend(make_handlers(public_predict=self.public_predict))

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

    def _engine_config(self) -> EngineConfig:
        return EngineConfig(
            state_dir=self.state_dir, default_slo_ms=self.default_slo_ms,
            cache_bytes=int(self.cache_mb * (1 << 20)), batch_delay_ms=self.batch_delay_ms,
            max_batch_rows=self.max_batch_rows, start_timeout_s=self.start_timeout_s,
            heartbeat_timeout_s=self.heartbeat_timeout_s, hang_timeout_s=self.hang_timeout_s,
            worker_env=dict(self.worker_env), fork_server=self.fork_server,
        )

    async def _start_engine(self) -> Engine:
        loop = asyncio.get_running_loop()
        try:
            # Engine() opens SQLite and creates folders: blocking, so not on the server's loop.
            engine = await loop.run_in_executor(None, Engine, self._engine_config())
            # wait=False: replicas of restored models come back in the background while
            # the server (and every notebook on it) keeps answering.
            await engine.start(wait=False)
        except Exception as e:  # noqa: BLE001 - reported to every request as a 503
            raise Unavailable("the clipper_nb engine could not start",
                              f"{type(e).__name__}: {e} (state_dir={self.state_dir})") from e
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

"""Every serving knob, declared once: :class:`ClipperNB`.

The Jupyter extension and ``clipper-nb serve`` both read this one traitlets
``Configurable``, so a knob is set the same way everywhere::

    c.ClipperNB.default_slo_ms = 50             # jupyter_server_config.py or a serve config file
    jupyter lab --ClipperNB.batch_delay_ms=0
    clipper-nb serve --ClipperNB.cache_mb=64    # or the short alias --cache-mb=64

``clipper-nb serve --help-all`` and ``jupyter server --help-all`` list the same knobs.
Each default is written here and nowhere else.
"""

from __future__ import annotations

import os
from typing import Any

from traitlets import Bool, Dict, Enum, Float, Integer, Unicode, default
from traitlets.config import Configurable

__all__ = ["ClipperNB", "DEFAULT_BATCH_DELAY_MS", "DEFAULT_CACHE_BYTES", "DEFAULT_CACHE_MB", "DEFAULT_HANG_FACTOR",
           "DEFAULT_HANG_TIMEOUT_S", "DEFAULT_HEARTBEAT_TIMEOUT_S", "DEFAULT_MAX_BATCH_ROWS", "DEFAULT_MAX_CONNECTIONS",
           "DEFAULT_MAX_CONTEXTS", "DEFAULT_MAX_QUERY_MB", "DEFAULT_SLO_MS", "DEFAULT_SLOW_REQUEST_MS",
           "DEFAULT_START_TIMEOUT_S", "DEFAULT_WORKER_MESSAGE_MB", "check_knobs"]

# The defaults lower layers need too (dataclass fields, keyword defaults, the widgets):
# written once here, used by the traits below and imported there.

#: Latency objective of an application registered without one (ms).
DEFAULT_SLO_MS = 100.0
#: Prediction cache per model version (MiB), and the same in bytes.
DEFAULT_CACHE_MB = 32.0
DEFAULT_CACHE_BYTES = int(DEFAULT_CACHE_MB * (1 << 20))
#: Delayed batching's wait for a fuller batch (ms).
DEFAULT_BATCH_DELAY_MS = 2.0
#: Most rows in one input_batch request.
DEFAULT_MAX_BATCH_ROWS = 10_000
#: Selection contexts kept per application.
DEFAULT_MAX_CONTEXTS = 10_000
#: Worker start, heartbeat and hang timeouts (s).
DEFAULT_START_TIMEOUT_S = 120.0
DEFAULT_HEARTBEAT_TIMEOUT_S = 5.0
DEFAULT_HANG_TIMEOUT_S = 60.0
#: A batch this many times longer than its recent peers marks its replica hung.
DEFAULT_HANG_FACTOR = 10.0
#: Requests slower than this are logged with access_log off (ms).
DEFAULT_SLOW_REQUEST_MS = 1000.0
#: Largest message from a worker, and largest query body (MiB).
DEFAULT_WORKER_MESSAGE_MB = 256.0
DEFAULT_MAX_QUERY_MB = 8.0
#: Most open HTTP connections of the standalone server.
DEFAULT_MAX_CONNECTIONS = 4096

#: Ends the help of the knobs only the standalone server reads (server_ext reads none of them).
SERVE_ONLY = (" Read by clipper-nb serve (and clipper_nb.Server) only; under Jupyter, Jupyter's own server "
              "settings apply.")


class ClipperNB(Configurable):
    """Knobs of one clipper-nb frontend (engine, batching, replicas, HTTP exposure).

    >>> ClipperNB(state_dir="/tmp/s", cache_mb=0).cache_bytes
    0

    A host reads them with ``ClipperNB(parent=app)`` so that ``c.ClipperNB.*`` in the
    host's config reaches them; host-only settings (address, token) stay on the host.
    """

    state_dir = Unicode(
        "clipper-state",
        help="Directory of every app, model version and selection weight (SQLite + artifacts). "
             "Restarting the server brings back everything stored here. The Jupyter extension "
             "defaults to <jupyter data dir>/clipper_nb.",
    ).tag(config=True)

    @default("state_dir")
    def _default_state_dir(self) -> str:
        # Used only when nobody set state_dir: a host (the Jupyter extension) may offer
        # its own default through its ``default_state_dir``.
        return getattr(self.parent, "default_state_dir", None) or "clipper-state"

    public_predict = Bool(
        False,
        help="Let anonymous callers use the query API (<prefix><app>/predict and /update). "
             "The management and metrics APIs always need credentials.",
    ).tag(config=True)
    default_slo_ms = Float(
        DEFAULT_SLO_MS, min=0.1, max=600_000, help="Latency objective (ms) of applications registered without one.",
    ).tag(config=True)
    cache_mb = Float(
        DEFAULT_CACHE_MB, min=0.0, help="Prediction cache size per model version, in MiB (0 turns the cache off).",
    ).tag(config=True)
    batch_delay_ms = Float(
        DEFAULT_BATCH_DELAY_MS, min=0.0, max=1000.0,
        help="Delayed batching: how long a replica waits for more queries when its batch is not full (ms).",
    ).tag(config=True)
    max_batch_rows = Integer(
        DEFAULT_MAX_BATCH_ROWS, min=1,
        help="Most rows in one input_batch request, and the largest fixed batch size a model may use.",
    ).tag(config=True)
    max_contexts = Integer(
        DEFAULT_MAX_CONTEXTS, min=1,
        help="Selection contexts kept per application (least recently updated evicted first).",
    ).tag(config=True)
    start_timeout_s = Float(
        DEFAULT_START_TIMEOUT_S, min=0.0, help="How long a worker may take to load its model before the deploy fails.",
    ).tag(config=True)
    heartbeat_timeout_s = Float(
        DEFAULT_HEARTBEAT_TIMEOUT_S, min=0.0, help="A worker silent for this long is declared dead and restarted.",
    ).tag(config=True)
    hang_timeout_s = Float(
        DEFAULT_HANG_TIMEOUT_S, min=0.0, help="A batch running longer than this marks its worker as hung.",
    ).tag(config=True)
    hang_factor = Float(
        DEFAULT_HANG_FACTOR, min=0.0,
        help="A batch running this many times longer than the model's recent batches took (scaled to its "
             "size; never under 1 s) marks its replica hung: the replica is replaced and its queries are "
             "retried one by one or answered with the default output. 0: only hang_timeout_s applies.",
    ).tag(config=True)
    access_log = Bool(
        False, help="Log every request. Off: only errors (4xx/5xx) and requests slower than slow_request_ms "
        "are logged, so a busy server's log stays readable (and off the hot path)." + SERVE_ONLY,
    ).tag(config=True)
    slow_request_ms = Float(
        DEFAULT_SLOW_REQUEST_MS,
        help="Requests slower than this are logged even with access_log off (ms)." + SERVE_ONLY,
    ).tag(config=True)
    event_loop = Enum(
        ["auto", "uvloop", "asyncio"], "auto",
        help="The server's event loop: 'uvloop' (libuv, less time per request; installed with clipper-nb on "
             "Linux and macOS), 'asyncio' (the standard library's), or 'auto': uvloop when it is installed."
             + SERVE_ONLY,
    ).tag(config=True)
    shutdown_grace_s = Float(
        10.0, help="On SIGTERM, how long the server keeps answering the requests already in flight (it "
        "accepts no new connections meanwhile) before it closes them and stops the workers." + SERVE_ONLY,
    ).tag(config=True)
    fork_server = Bool(
        True, help="Start workers by forking a pre-warmed interpreter (Linux): replicas start and restart "
        "in milliseconds instead of re-importing numpy, scikit-learn or torch each time.",
    ).tag(config=True)
    worker_env = Dict(
        key_trait=Unicode(), value_trait=Unicode(),
        help="Extra environment variables for worker processes (e.g. CUDA_VISIBLE_DEVICES, OMP_NUM_THREADS).",
    ).tag(config=True)
    worker_memory_mb = Float(
        0.0, min=0.0,
        help="Most memory one worker may map, in MiB (its address-space limit, RLIMIT_AS); a batch that needs "
             "more is answered with an error and the replica keeps serving. 0: no limit. Leave headroom: "
             "numpy and torch map more address space than they touch.",
    ).tag(config=True)
    worker_message_mb = Float(
        DEFAULT_WORKER_MESSAGE_MB, min=1.0,
        help="Largest message the frontend accepts from a worker, in MiB (a batch's outputs); a peer sending "
             "a bigger one is disconnected.",
    ).tag(config=True)
    max_query_mb = Float(
        DEFAULT_MAX_QUERY_MB, min=0.01,
        help="Largest query or feedback body, in MiB: refused from its Content-Length before it is read. "
             "Deploys (after authentication) may be larger.",
    ).tag(config=True)
    max_connections = Integer(
        DEFAULT_MAX_CONNECTIONS, min=16,
        help="Most open HTTP connections (also kept below the open-file limit); when full, the connection that "
             "has waited longest for its request to arrive is closed to admit a new one." + SERVE_ONLY,
    ).tag(config=True)
    default_backend = Unicode(
        "process",
        help="Replica backend of models deployed without backend=...: 'process' (worker processes on this "
             "machine) or 'ray' (Ray actors on the cluster named by ray_address; needs pip install "
             "\"clipper-nb[ray]\"). A model deployed with backend=... keeps its own.",
    ).tag(config=True)
    ray_address = Unicode(
        "",
        help="The Ray cluster of the 'ray' backend: 'auto' (the cluster this machine joined with "
             "`ray start`), 'ray://host:10001' (Ray Client), or empty: a local Ray started on demand. "
             "Ray is only contacted when a model first asks for the 'ray' backend.",
    ).tag(config=True)
    ray_num_cpus = Float(
        1.0, min=0.0,
        help="CPUs each Ray replica asks the cluster for (fractions allowed, e.g. 0.5 on small machines); "
             "a deploy's resources={'CPU': n} overrides it. device='cuda' also asks for one GPU.",
    ).tag(config=True)

    @property
    def cache_bytes(self) -> int:
        """``cache_mb`` in bytes: what each model version's cache may hold."""
        return int(self.cache_mb * (1 << 20))

    @property
    def state_path(self) -> str:
        return os.path.abspath(self.state_dir)


def check_knobs(names: Any) -> None:
    """Refuse names that are not knobs (a typo, or ``cache_bytes``: set ``cache_mb``).

    Traitlets only warns about an unknown keyword and drops it; a server started with a
    misspelt knob must not run with the default instead.
    """
    unknown = sorted(set(names) - set(ClipperNB.class_trait_names(config=True)))
    if unknown:
        raise TypeError(f"not a ClipperNB knob: {', '.join(unknown)} "
                        f"(the knobs: {', '.join(sorted(ClipperNB.class_trait_names(config=True)))})")

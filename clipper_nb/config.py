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

__all__ = ["ClipperNB", "DEFAULT_SLO_MS", "check_knobs"]

#: Latency objective of an application registered without one (ms).
DEFAULT_SLO_MS = 100.0


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
        32.0, min=0.0, help="Prediction cache size per model version, in MiB (0 turns the cache off).",
    ).tag(config=True)
    batch_delay_ms = Float(
        2.0, min=0.0, max=1000.0,
        help="Delayed batching: how long a replica waits for more queries when its batch is not full (ms).",
    ).tag(config=True)
    max_batch_rows = Integer(
        10_000, min=1, help="Most rows in one input_batch request, and the largest fixed batch size a model may use.",
    ).tag(config=True)
    max_contexts = Integer(
        10_000, min=1, help="Selection contexts kept per application (least recently updated evicted first).",
    ).tag(config=True)
    start_timeout_s = Float(
        120.0, min=0.0, help="How long a worker may take to load its model before the deploy fails.",
    ).tag(config=True)
    heartbeat_timeout_s = Float(
        5.0, min=0.0, help="A worker silent for this long is declared dead and restarted.",
    ).tag(config=True)
    hang_timeout_s = Float(
        60.0, min=0.0, help="A batch running longer than this marks its worker as hung.",
    ).tag(config=True)
    hang_factor = Float(
        10.0, min=0.0,
        help="A batch running this many times longer than the model's recent batches took (scaled to its "
             "size; never under 1 s) marks its replica hung: the replica is replaced and its queries are "
             "retried one by one or answered with the default output. 0: only hang_timeout_s applies.",
    ).tag(config=True)
    access_log = Bool(
        False, help="Log every request. Off: only errors (4xx/5xx) and requests slower than slow_request_ms "
        "are logged, so a busy server's log stays readable (and off the hot path).",
    ).tag(config=True)
    slow_request_ms = Float(
        1000.0, help="Requests slower than this are logged even with access_log off (ms).",
    ).tag(config=True)
    event_loop = Enum(
        ["auto", "uvloop", "asyncio"], "auto",
        help="The server's event loop: 'uvloop' (libuv, less time per request; installed with clipper-nb on "
             "Linux and macOS), 'asyncio' (the standard library's), or 'auto': uvloop when it is installed.",
    ).tag(config=True)
    shutdown_grace_s = Float(
        10.0, help="On SIGTERM, how long the server keeps answering the requests already in flight (it "
        "accepts no new connections meanwhile) before it closes them and stops the workers.",
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
        256.0, min=1.0,
        help="Largest message the frontend accepts from a worker, in MiB (a batch's outputs); a peer sending "
             "a bigger one is disconnected.",
    ).tag(config=True)
    max_query_mb = Float(
        8.0, min=0.01,
        help="Largest query or feedback body, in MiB: refused from its Content-Length before it is read. "
             "Deploys (after authentication) may be larger.",
    ).tag(config=True)
    max_connections = Integer(
        4096, min=16,
        help="Most open HTTP connections (also kept below the open-file limit); when full, the connection that "
             "has waited longest for its request to arrive is closed to admit a new one.",
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

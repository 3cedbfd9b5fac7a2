"""Metrics for the serving engine: counters, latency histograms, per-second series.

The engine calls ``record_*`` on its asyncio thread for every query and batch, so
recording is a handful of list increments (a couple of microseconds) and never
grows memory: each application, model and replica owns fixed rings of
``window_s + 1`` one-second slots, and latencies fall into fixed log-spaced
buckets (:data:`LATENCY_BOUNDS_S`: 0.1 ms .. 65 s, 16 per decade, ~15 % wide)
from which percentiles are interpolated. Two readers sit on top:

* :meth:`Metrics.snapshot` — the JSON time series behind ``/api/metrics`` and the
  widgets, at 1 s resolution over the window;
* :meth:`Metrics.prometheus_text` — ``/metrics`` in Prometheus text format, the
  ``clipper_*`` families, cumulative since start.

Time is passed in as ``now`` (seconds); when omitted it is wall time
(``time.time()``), so that ``since=T`` sent by a client is wall-clock too. Only
*complete* seconds are reported (up to ``floor(now) - 1``): a client that polls
with ``since`` = the last ``t`` it received never misses the tail of a second.
One Metrics belongs to one event loop; it takes no locks.

Example::

    m = Metrics()
    m.record_query("digits", 0.004, slo_s=0.02, default=False, now=1000.2)
    m.snapshot(now=1001.0)["apps"]["digits"]["qps"]   # [1]
"""

from __future__ import annotations

import math
import time
from array import array
from bisect import bisect_left
from collections import OrderedDict, deque
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

__all__ = ["LATENCY_BOUNDS_S", "Metrics", "estimate_percentiles"]

_PER_DECADE = 16
#: Upper bounds (seconds) of the latency buckets; one more bucket takes overflow.
#: Rounded to 3 significant digits so that Prometheus ``le`` labels stay readable.
LATENCY_BOUNDS_S: tuple[float, ...] = tuple(float(f"{1e-4 * 10 ** (k / _PER_DECADE):.3g}") for k in range(94))
_NB = len(LATENCY_BOUNDS_S) + 1
# Interpolation range of each bucket. The overflow bucket collapses onto the last
# bound: nothing tells how far past it a latency went.
_LOWER = np.array((LATENCY_BOUNDS_S[0] / 10 ** (1 / _PER_DECADE),) + LATENCY_BOUNDS_S)
_UPPER = np.array(LATENCY_BOUNDS_S + (LATENCY_BOUNDS_S[-1],))
# Prometheus gets every 4th bound (4 per decade, 24 buckets): plenty for
# histogram_quantile(), without 95 series per application.
_PROM_BOUNDS = range(0, len(LATENCY_BOUNDS_S), 4)
_SLO_GAUGE_S = 60
_ZEROS = array("q", [0] * _NB)
_QS = (0.5, 0.95, 0.99)


def estimate_percentiles(hist: Any, qs: Sequence[float]) -> np.ndarray:
    """Percentiles (seconds) of latency histograms, shape ``(len(qs), rows)``.

    ``hist`` is one histogram of ``_NB`` counts or a 2-D array of them; rows
    without samples give NaN. Inside the bucket that holds the rank the value is
    interpolated geometrically, matching the log spacing, so an estimate is
    always within one bucket (~15 %) of the exact percentile.
    """
    h = np.atleast_2d(np.asarray(hist, dtype=np.float64))
    out = np.full((len(qs), h.shape[0]), np.nan)
    n = h.sum(axis=1)
    rows = np.nonzero(n > 0)[0]
    if rows.size == 0:
        return out
    pdf = h[rows] / n[rows, None]
    cdf = pdf.cumsum(axis=1)
    cdf[:, -1] = 1.0  # no rounding shortfall at the top
    r = np.arange(rows.size)
    # Row r's CDF shifted into [r, r + 1] makes one sorted array, so a single
    # searchsorted finds the rank's bucket in every row at once.
    flat = (cdf + r[:, None]).ravel()
    for j, q in enumerate(qs):
        k = np.clip(np.searchsorted(flat, r + q) - r * _NB, 0, _NB - 1)
        below = cdf[r, k] - pdf[r, k]
        frac = np.clip((q - below) / np.maximum(pdf[r, k], 1e-300), 0.0, 1.0)
        out[j, rows] = _LOWER[k] * (_UPPER[k] / _LOWER[k]) ** frac
    return out


class _Ring:
    """Per-second columns in a ring of fixed size; slot ``i`` holds second ``sec[i]``."""

    columns: tuple[str, ...] = ()

    def __init__(self, size: int) -> None:
        self.size = size
        self.sec = [-1] * size
        self.first_seen: int | None = None
        for name in self.columns:
            setattr(self, name, [0] * size)

    def slot(self, sec: int) -> int:
        """Slot of second ``sec``, cleared when the ring wraps onto it; -1 when
        ``sec`` is older than the window (its slot already holds a later second)."""
        i = sec % self.size
        if self.sec[i] != sec:
            if self.sec[i] > sec:
                return -1
            self.sec[i] = sec
            self.clear(i)
            if self.first_seen is None or sec < self.first_seen:
                self.first_seen = sec
        return i

    def clear(self, i: int) -> None:
        for name in self.columns:
            getattr(self, name)[i] = 0

    def view(self, ts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(slot indices, mask of slots that really hold that second) for seconds ``ts``."""
        idx = ts % self.size
        return idx, np.asarray(self.sec)[idx] == ts

    def column(self, name: str, idx: np.ndarray, valid: np.ndarray, empty: float = 0.0) -> np.ndarray:
        return np.where(valid, np.asarray(getattr(self, name), dtype=np.float64)[idx], empty)


class _HistRing(_Ring):
    """A ring that also keeps one latency histogram per second.

    The histograms share one flat int64 array (row ``i`` at ``i * _NB``): an
    increment costs about what a list's does, and a snapshot reads all of them
    through numpy without converting 600 x 95 Python ints.
    """

    def __init__(self, size: int) -> None:
        self.hist = array("q", _ZEROS) * size
        self.cum_hist = [0] * _NB  # since start, for Prometheus
        self.latency_sum = 0.0
        super().__init__(size)

    def clear(self, i: int) -> None:
        super().clear(i)
        self.hist[i * _NB:(i + 1) * _NB] = _ZEROS  # same length: never reallocates

    def hist_rows(self, idx: np.ndarray, valid: np.ndarray) -> np.ndarray:
        return np.frombuffer(self.hist, dtype=np.int64).reshape(self.size, _NB)[idx] * valid[:, None]


class _App(_HistRing):
    """Everything recorded for one application; ``n_*`` count since start."""

    columns = ("queries", "defaults", "errors", "within", "good", "hits", "lookups", "drops")

    def __init__(self, size: int) -> None:
        super().__init__(size)
        self.n_queries = self.n_defaults = self.n_errors = self.n_within = 0
        self.drops_by_model: dict[str, int] = {}
        self.cum_loss: dict[str, float] = {}
        # context -> samples (second, weights, probabilities), one per second at most
        self.weights: OrderedDict[str, deque[tuple[int, dict[str, float], dict[str, float]]]] = OrderedDict()


class _Replica(_Ring):
    """One replica's batches and AIMD cap; ``n_*`` count since start."""

    columns = ("batches", "rows", "max_size", "lat_sum", "cap_start", "cap")

    def __init__(self, size: int) -> None:
        self.current_cap = math.nan
        super().__init__(size)
        self.n_batches = self.n_rows = 0
        self.last_seen = -1  # the last second anything was recorded for this replica

    def clear(self, i: int) -> None:
        super().clear(i)
        # The cap in force as the second begins: it fills the seconds in which
        # the cap did not change, which nobody recorded.
        self.cap_start[i] = self.cap[i] = self.current_cap


class _Model(_HistRing):
    """Everything recorded for one model (all versions) and its replicas."""

    columns = ("rows", "batches")

    def __init__(self, size: int) -> None:
        super().__init__(size)
        self.replicas: dict[str, _Replica] = {}
        self.queue_length = self.hits = self.misses = self.evictions = 0
        #: the abstraction layer's fault and late-work events ("splits", "hung", "late_computed", ...)
        self.events: dict[str, int] = {}


def _json(values: np.ndarray, digits: int = 4) -> list[float | None]:
    """NaN -> None, rounded, as plain Python floats (JSON-safe)."""
    return [None if v != v else v for v in np.round(values, digits).tolist()]


def _counts(values: np.ndarray) -> list[int]:
    return values.astype(np.int64).tolist()


def _ratio(num: np.ndarray, den: np.ndarray) -> list[float | None]:
    with np.errstate(invalid="ignore", divide="ignore"):
        return _json(np.where(den > 0, num / den, np.nan))


#: Replica series kept per model (live replicas and the recently replaced ones).
MAX_REPLICA_SERIES = 32


def _prune_replicas(replicas: dict[str, _Replica], oldest: int) -> None:
    """Make room for a new replica's series: a replaced replica (a restart has a new name)
    keeps its series while the window still shows it (seen since ``oldest``), and a
    crash-looping model cannot grow them past ``MAX_REPLICA_SERIES``: the stalest go first."""
    for name in [n for n, r in replicas.items() if r.last_seen < oldest]:
        del replicas[name]
    while len(replicas) >= MAX_REPLICA_SERIES:
        del replicas[min(replicas, key=lambda n: replicas[n].last_seen)]


class Metrics:
    """The engine's metrics over a sliding window of ``window_s`` seconds.

    ``max_contexts`` bounds how many selection contexts per application keep a
    weight series (the least recently updated is dropped): contexts can be per
    user, and an unbounded number of them would defeat the fixed footprint.
    """

    def __init__(self, window_s: int = 600, *, max_contexts: int = 64) -> None:
        if window_s < 1:
            raise ValueError(f"window_s must be at least 1 second, got {window_s}")
        self.window_s = int(window_s)
        # One spare slot: the full window of complete seconds survives while the
        # current, partial second is being written.
        self._size = self.window_s + 1
        self.max_contexts = max_contexts
        self._apps: dict[str, _App] = {}
        self._models: dict[str, _Model] = {}
        self._prom_now: float | None = None  # read by the collector during a scrape
        self._registry = CollectorRegistry(auto_describe=False)
        self._registry.register(_PromCollector(self))

    def _app(self, app: str) -> _App:
        a = self._apps.get(app)
        if a is None:
            a = self._apps[app] = _App(self._size)
        return a

    def _model(self, model: str) -> _Model:
        m = self._models.get(model)
        if m is None:
            m = self._models[model] = _Model(self._size)
        return m

    def _replica(self, model: str, replica: str, sec: int) -> tuple[_Model, _Replica]:
        m = self._model(model)
        m.slot(sec)  # the model is seen from here on, even before its first batch
        r = m.replicas.get(replica)
        if r is None:
            _prune_replicas(m.replicas, sec - self.window_s)
            r = m.replicas[replica] = _Replica(self._size)
        r.last_seen = sec
        return m, r

    # ---- per application -----------------------------------------------------

    def record_query(self, app: str, latency_s: float, *, slo_s: float, default: bool, error: bool = False,
                     cache_hit: bool | None = None, now: float | None = None) -> None:
        """Count one answered query of ``app`` and its end-to-end latency.

        It is *within SLO* when answered without error by the deadline (default
        outputs included: they are answers in time), and *goodput* when it is
        also a real prediction (DESIGN §7). ``cache_hit`` is None when the cache
        was not consulted.
        """
        a = self._apps.get(app) or self._app(app)
        k = bisect_left(LATENCY_BOUNDS_S, latency_s)
        ok = not error and latency_s <= slo_s
        a.n_queries += 1
        a.n_defaults += default
        a.n_errors += error
        a.n_within += ok
        a.cum_hist[k] += 1
        a.latency_sum += latency_s
        i = a.slot(int(time.time() if now is None else now))
        if i < 0:
            return  # older than the window: counted since start, in no second
        a.queries[i] += 1
        a.hist[i * _NB + k] += 1
        if default:
            a.defaults[i] += 1
        if error:
            a.errors[i] += 1
        if ok:
            a.within[i] += 1
            if not default:
                a.good[i] += 1
        if cache_hit is not None:
            a.lookups[i] += 1
            if cache_hit:
                a.hits[i] += 1

    def record_deadline_drop(self, app: str, model: str, now: float | None = None) -> None:
        """Count a query answered with the default output at dispatch because
        ``model`` could not meet its deadline. The query itself is counted by the
        engine's :meth:`record_query`."""
        a = self._app(app)
        a.drops_by_model[model] = a.drops_by_model.get(model, 0) + 1
        i = a.slot(int(time.time() if now is None else now))
        if i >= 0:
            a.drops[i] += 1

    # ---- per model / replica -------------------------------------------------

    def record_batch(self, model: str, replica: str, size: int, latency_s: float, now: float | None = None) -> None:
        """Count one batch of ``size`` rows that ``replica`` processed in ``latency_s``."""
        sec = int(time.time() if now is None else now)
        m, r = self._replica(model, replica, sec)
        k = bisect_left(LATENCY_BOUNDS_S, latency_s)
        m.cum_hist[k] += 1
        m.latency_sum += latency_s
        r.n_batches += 1
        r.n_rows += size
        i = m.slot(sec)
        if i >= 0:
            m.rows[i] += size
            m.batches[i] += 1
            m.hist[i * _NB + k] += 1
        i = r.slot(sec)
        if i >= 0:
            r.batches[i] += 1
            r.rows[i] += size
            r.lat_sum[i] += latency_s
            r.max_size[i] = max(r.max_size[i], size)

    def set_queue_length(self, model: str, n: int) -> None:
        """Current number of queries waiting in ``model``'s queue."""
        self._model(model).queue_length = int(n)

    def set_batch_cap(self, model: str, replica: str, cap: float, now: float | None = None) -> None:
        """Current AIMD batch-size cap of ``replica``; the last value of a second wins."""
        sec = int(time.time() if now is None else now)
        _, r = self._replica(model, replica, sec)
        i = r.slot(sec)  # before current_cap changes: the slot starts with the old cap
        r.current_cap = float(cap)
        if i >= 0:
            r.cap[i] = r.current_cap

    def record_cache(self, model: str, hit: bool, now: float | None = None) -> None:
        """Count one prediction-cache lookup for ``model`` (cumulative only; the
        per-second hit rate is the application's, from :meth:`record_query`)."""
        m = self._model(model)
        if hit:
            m.hits += 1
        else:
            m.misses += 1

    def record_cache_eviction(self, model: str, n: int = 1) -> None:
        """Count ``n`` cache entries of ``model`` evicted by CLOCK."""
        self._model(model).evictions += n

    def record_model_event(self, model: str, event: str, n: int = 1) -> None:
        """Count ``n`` of ``event`` for ``model``: a batch split to isolate a failing input,
        a hung or lost replica, a refused input, late work computed for the cache, ..."""
        events = self._model(model).events
        events[event] = events.get(event, 0) + n

    # ---- selection layer -----------------------------------------------------

    def record_weights(self, app: str, context: str, weights: dict[str, float],
                       probabilities: dict[str, float], now: float | None = None) -> None:
        """Sample the selection state of (app, context); the last sample of a second wins."""
        sec = int(time.time() if now is None else now)
        a = self._app(app)
        samples = a.weights.get(context)
        if samples is None:
            if len(a.weights) >= self.max_contexts:
                a.weights.popitem(last=False)
            samples = a.weights[context] = deque(maxlen=self._size)
        a.weights.move_to_end(context)
        sample = (sec, dict(weights), dict(probabilities))  # copies: the policy mutates its own
        if samples and samples[-1][0] == sec:
            samples[-1] = sample
        elif not samples or samples[-1][0] < sec:
            samples.append(sample)

    def record_model_loss(self, app: str, model: str, loss: float) -> None:
        """Add a feedback ``loss`` to ``model``'s cumulative loss within ``app``."""
        a = self._app(app)
        a.cum_loss[model] = a.cum_loss.get(model, 0.0) + float(loss)

    def forget_model(self, model: str) -> None:
        """Drop everything about ``model`` (after undeploy)."""
        self._models.pop(model, None)
        for a in self._apps.values():
            a.cum_loss.pop(model, None)
            a.drops_by_model.pop(model, None)

    def forget_app(self, app: str) -> None:
        """Drop everything about ``app`` (after it is deleted)."""
        self._apps.pop(app, None)

    # ---- reading -------------------------------------------------------------

    def snapshot(self, since: float | None = None, now: float | None = None) -> dict[str, Any]:
        """JSON-safe series at 1 s resolution for the complete seconds ``t > since``.

        Counts are 0 and rates/percentiles null in seconds without data; each
        series starts at the first second its app/model/replica was seen.
        ``totals`` always cover the whole window, whatever ``since`` is.
        """
        now = time.time() if now is None else now
        now_s, cut = int(now), -math.inf if since is None else since
        return {"now": now, "resolution_s": 1,
                "apps": {n: self._app_snapshot(a, cut, now_s) for n, a in self._apps.items()},
                "models": {n: self._model_snapshot(m, cut, now_s) for n, m in self._models.items()}}

    def _axis(self, ring: _Ring, now_s: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Complete seconds of the window since ``ring`` was first seen, their slots, validity."""
        if ring.first_seen is None:
            ts = np.arange(0)
        else:
            ts = np.arange(max(now_s - self.window_s, ring.first_seen), now_s)
        return (ts, *ring.view(ts))

    def _app_snapshot(self, a: _App, cut: float, now_s: int) -> dict[str, Any]:
        ts, idx, valid = self._axis(a, now_s)
        col = {name: a.column(name, idx, valid) for name in a.columns}
        hist = a.hist_rows(idx, valid)
        n = int(col["queries"].sum())
        p = _json(estimate_percentiles(hist.sum(axis=0), _QS)[:, 0] * 1000)
        totals = {"queries": n, **{k: int(col[c].sum()) for k, c in (
                      ("defaults", "defaults"), ("errors", "errors"), ("within_slo", "within"), ("goodput", "good"))},
                  "p50_ms": p[0], "p95_ms": p[1], "p99_ms": p[2],
                  "slo_attainment": float(col["within"].sum()) / n if n else None}
        keep = ts > cut
        col = {name: c[keep] for name, c in col.items()}
        q = col["queries"]
        p50, p95, p99 = estimate_percentiles(hist[keep], _QS) * 1000
        return {"t": ts[keep].tolist(), "qps": _counts(q), "goodput": _counts(col["good"]),
                "p50_ms": _json(p50), "p95_ms": _json(p95), "p99_ms": _json(p99),
                "slo_attainment": _ratio(col["within"], q), "default_rate": _ratio(col["defaults"], q),
                "error_rate": _ratio(col["errors"], q), "cache_hit_rate": _ratio(col["hits"], col["lookups"]),
                "deadline_drops": _counts(col["drops"]), "totals": totals,
                "weights": {ctx: self._weights_snapshot(w, cut, now_s) for ctx, w in a.weights.items()},
                "cum_loss": dict(a.cum_loss)}

    def _weights_snapshot(self, samples: Iterable[tuple[int, dict[str, float], dict[str, float]]],
                          cut: float, now_s: int) -> dict[str, Any]:
        # Own t axis: only sampled seconds (a step plot of a state, not a count).
        rows = [x for x in samples if max(now_s - self.window_s - 1, cut) < x[0] < now_s]
        models = list(dict.fromkeys(m for _, w, p in rows for m in (*w, *p)))
        return {"t": [sec for sec, _, _ in rows],
                "weights": {m: [w.get(m) for _, w, _ in rows] for m in models},
                "probabilities": {m: [p.get(m) for _, _, p in rows] for m in models}}

    def _model_snapshot(self, m: _Model, cut: float, now_s: int) -> dict[str, Any]:
        ts, idx, valid = self._axis(m, now_s)
        keep = ts > cut
        ts, idx, valid = ts[keep], idx[keep], valid[keep]
        rows, batches = m.column("rows", idx, valid), m.column("batches", idx, valid)
        (p99,) = estimate_percentiles(m.hist_rows(idx, valid), (0.99,)) * 1000
        lookups = m.hits + m.misses
        return {"t": ts.tolist(), "queue_length": m.queue_length,
                "rows_per_s": _counts(rows), "batches_per_s": _counts(batches),
                "mean_batch_size": _ratio(rows, batches), "batch_p99_ms": _json(p99),
                "cache": {"hits": m.hits, "misses": m.misses, "evictions": m.evictions,
                          "hit_rate": m.hits / lookups if lookups else None},
                "replicas": {n: self._replica_snapshot(r, cut, now_s) for n, r in m.replicas.items()}}

    def _replica_snapshot(self, r: _Replica, cut: float, now_s: int) -> dict[str, Any]:
        ts, idx, valid = self._axis(r, now_s)
        batches = r.column("batches", idx, valid)
        cap = r.column("cap", idx, valid, empty=math.nan)
        if valid.any():
            # A second nobody touched kept the previous second's last cap; those
            # before the first touched second had the cap that second began with.
            last = np.maximum.accumulate(np.where(valid, np.arange(ts.size), -1))
            cap = np.where(last >= 0, cap[np.maximum(last, 0)], r.cap_start[idx[np.argmax(valid)]])
        else:
            cap[:] = r.current_cap  # unchanged over the whole window
        keep, some = ts > cut, batches > 0

        def per_batch(values: np.ndarray) -> list[float | None]:
            return _json(np.where(some, values / np.where(some, batches, 1.0), np.nan)[keep])

        return {"t": ts[keep].tolist(), "batch_cap": _json(cap[keep]),
                "mean_batch_size": per_batch(r.column("rows", idx, valid)),
                "max_batch_size": _json(np.where(some, r.column("max_size", idx, valid), np.nan)[keep]),
                "batch_latency_ms": per_batch(r.column("lat_sum", idx, valid) * 1000),
                "current_cap": None if math.isnan(r.current_cap) else r.current_cap}

    def slo_attainment(self, app: str, last_s: int = _SLO_GAUGE_S, now: float | None = None) -> float | None:
        """Fraction of ``app``'s queries within SLO over the last ``last_s`` complete seconds."""
        a = self._apps.get(app)
        if a is None:
            return None
        now_s = int(time.time() if now is None else now)
        n = within = 0
        for sec in range(now_s - min(last_s, self.window_s), now_s):
            i = sec % a.size
            if a.sec[i] == sec:
                n += a.queries[i]
                within += a.within[i]
        return within / n if n else None

    def prometheus_text(self, now: float | None = None) -> bytes:
        """The ``clipper_*`` metrics in Prometheus text exposition format.

        ``now`` only places the 60 s window of ``clipper_slo_attainment``.
        """
        self._prom_now = now
        return generate_latest(self._registry)


def _family(cls: Callable[..., Metric], name: str, doc: str, labels: list[str],
            samples: Iterable[tuple[list[str], float]]) -> Metric:
    family = cls(name, doc, labels=labels)
    for values, value in samples:
        family.add_metric(values, value)
    return family


def _histogram(name: str, doc: str, label: str, rings: Iterable[tuple[str, _HistRing]]) -> Metric:
    family = HistogramMetricFamily(name, doc, labels=[label])
    for key, ring in rings:
        cum = np.cumsum(ring.cum_hist).tolist()
        buckets = [(floatToGoString(LATENCY_BOUNDS_S[k]), cum[k]) for k in _PROM_BOUNDS] + [("+Inf", cum[-1])]
        family.add_metric([key], buckets, sum_value=ring.latency_sum)
    return family


class _PromCollector(Collector):
    """Builds the ``clipper_*`` families from a Metrics' state at scrape time."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        m, C, G = self.metrics, CounterMetricFamily, GaugeMetricFamily
        apps, models = list(m._apps.items()), list(m._models.items())
        replicas = [(n, rn, r) for n, mod in models for rn, r in mod.replicas.items()]
        latest = [(n, ctx, s[-1]) for n, a in apps for ctx, s in a.weights.items() if s]
        slo = [([n], x) for n, _ in apps if (x := m.slo_attainment(n, now=m._prom_now)) is not None]
        for attr, name, doc in (("n_queries", "queries", "Queries answered."),
                                ("n_defaults", "default_outputs", "Queries answered with the default output."),
                                ("n_errors", "errors", "Queries answered with an error."),
                                ("n_within", "queries_within_slo", "Queries answered without error within the SLO.")):
            yield _family(C, f"clipper_{name}", doc, ["app"], (([n], getattr(a, attr)) for n, a in apps))
        yield _histogram("clipper_query_latency_seconds", "End-to-end query latency.", "app", apps)
        yield _family(G, "clipper_slo_attainment", f"Fraction of queries within SLO over the last {_SLO_GAUGE_S} s.",
                      ["app"], slo)
        yield _family(C, "clipper_deadline_drops", "Queries answered with the default output at dispatch because "
                      "the model could not meet the deadline.", ["app", "model"],
                      (([n, mod], x) for n, a in apps for mod, x in a.drops_by_model.items()))
        yield _family(G, "clipper_selection_weight", "Selection policy weight of a model.", ["app", "context", "model"],
                      (([n, ctx, mod], x) for n, ctx, (_, w, _) in latest for mod, x in w.items()))
        yield _family(G, "clipper_selection_probability", "Probability that the policy picks a model.",
                      ["app", "context", "model"],
                      (([n, ctx, mod], x) for n, ctx, (_, _, p) in latest for mod, x in p.items()))
        yield _family(C, "clipper_model_loss", "Cumulative feedback loss of a model.", ["app", "model"],
                      (([n, mod], x) for n, a in apps for mod, x in a.cum_loss.items()))
        yield _family(C, "clipper_batches", "Batches processed.", ["model", "replica"],
                      (([n, rn], r.n_batches) for n, rn, r in replicas))
        yield _family(C, "clipper_batch_rows", "Rows processed in batches.", ["model", "replica"],
                      (([n, rn], r.n_rows) for n, rn, r in replicas))
        yield _family(G, "clipper_batch_cap", "AIMD batch-size cap.", ["model", "replica"],
                      (([n, rn], r.current_cap) for n, rn, r in replicas if not math.isnan(r.current_cap)))
        yield _histogram("clipper_batch_latency_seconds", "Batch processing latency.", "model", models)
        yield _family(G, "clipper_queue_length", "Queries waiting in the model's queue.", ["model"],
                      (([n], mod.queue_length) for n, mod in models))
        yield _family(C, "clipper_model_events", "Fault isolation and late work: batch splits, lost and hung "
                      "replicas, refused inputs, late queries computed for the cache.", ["model", "event"],
                      (([n, ev], x) for n, mod in models for ev, x in mod.events.items()))
        for attr in ("hits", "misses", "evictions"):
            yield _family(C, f"clipper_cache_{attr}", f"Prediction cache {attr}.", ["model"],
                          (([n], getattr(mod, attr)) for n, mod in models))

"""Kernel-side helpers of notebook 02 (adaptive batching): open-loop sweeps, CPU per query,
batch sizes per run, and a pure-Python AIMD simulation for the exercises.

Nothing here is deployed: the models stay in the notebook (a worker cannot import this).
"""

from __future__ import annotations

import math
import random
import time
from typing import Any

from _nbhelpers import clipper_load


# ------------------------------------------------------------------ processes and CPU time


def processes(c: Any) -> dict[str, Any]:
    """psutil processes: ``kernel`` (this one: the load generator), ``frontend`` (the
    clipper-nb server: Jupyter's, or the one this kernel started) and one per model
    replica (the worker), found from the replicas' pids in ``c.status()``."""
    import psutil

    found: dict[str, Any] = {"kernel": psutil.Process()}
    for row in c.status().itertuples():
        try:
            worker = psutil.Process(int(row.pid))
        except (psutil.Error, TypeError, ValueError):
            continue
        found[f"worker:{row.model}"] = worker
        parent = worker.parent()
        while parent is not None and "forkserver" in " ".join(parent.cmdline()):
            parent = parent.parent()  # replicas are forked by a fork server the frontend started
        if parent is not None:
            found.setdefault("frontend", parent)
    return found


def cpu_seconds(procs: dict[str, Any]) -> dict[str, float]:
    out = {}
    for name, p in procs.items():
        try:
            t = p.cpu_times()
            out[name] = t.user + t.system
        except Exception:  # noqa: BLE001 - a process that went away counts as 0
            out[name] = 0.0
    return out


# ------------------------------------------------------------------ open-loop runs


def machine_busy() -> float:
    """CPU seconds the whole machine has spent not idle (every process, ours or not)."""
    import psutil

    t = psutil.cpu_times()
    return sum(t) - t.idle - getattr(t, "iowait", 0.0)


def run_open(app: str, qps: float, duration_s: float, procs: dict[str, Any], input_name: str = "rows") -> dict:
    """``%clipper load APP --qps R --duration D --input rows --wait``, single-row queries:
    goodput counts each row on its own. Adds the CPU milliseconds per query the
    frontend, this app's worker and the load generator (this kernel) spent, how busy
    the frontend was (% of one core) and how many cores the whole machine kept busy."""
    from IPython.utils.capture import capture_output

    cpu0, busy0, t0 = cpu_seconds(procs), machine_busy(), time.time()
    with capture_output():   # dozens of progress lines would bury the tables
        r = clipper_load(app, f"--qps {qps:g} --duration {duration_s:g}s --input {input_name}")
    t1, busy1, cpu1 = time.time(), machine_busy(), cpu_seconds(procs)
    n, wall = max(1, r.requests), max(1e-6, t1 - t0)
    ms = {k: 1e3 * (cpu1[k] - cpu0[k]) / n for k in cpu0}
    return {"app": app, "offered (q/s)": qps, "answered (q/s)": round(r.qps), "goodput (rows/s)": round(r.goodput),
            "within SLO": round(r.slo_attainment, 3), "p99 (ms)": round(r.p99_ms, 1),
            "frontend CPU ms/q": round(ms.get("frontend", math.nan), 3),
            "worker CPU ms/q": round(ms.get(f"worker:{app}", math.nan), 3),
            "load generator CPU ms/q": round(ms["kernel"], 3),
            "frontend busy (% of a core)": round(100 * (cpu1.get("frontend", 0) - cpu0.get("frontend", 0)) / wall),
            "machine busy (cores)": round((busy1 - busy0) / wall, 2), "t0": t0, "t1": t1}


def attach_batches(c: Any, runs: list[dict]) -> None:
    """Give each run its mean batch size from the server's per-second metrics: each
    complete second is attributed to the run it overlaps most (call ~1.1 s after the last
    run: the metrics count complete seconds)."""
    models = c.metrics()["models"]
    for run in runs:
        run.setdefault("mean batch", math.nan)
    by_app: dict[str, list[dict]] = {}
    for run in runs:
        by_app.setdefault(run["app"], []).append(run)
    for app, app_runs in by_app.items():
        m = models.get(app)
        if not m:
            continue
        totals = {id(r): [0.0, 0.0] for r in app_runs}
        for sec, rows, batches in zip(m["t"], m["rows_per_s"], m["batches_per_s"]):
            overlap = [(min(sec + 1, r["t1"]) - max(sec, r["t0"]), r) for r in app_runs]
            best, run = max(overlap, key=lambda x: x[0])
            if best > 0.3:
                totals[id(run)][0] += rows or 0
                totals[id(run)][1] += batches or 0
        for run in app_runs:
            rows, batches = totals[id(run)]
            run["mean batch"] = round(rows / batches, 1) if batches else math.nan


def batch_points(c: Any, model: str) -> list[tuple[float, float]]:
    """(mean batch size, mean batch latency in ms) of every second a replica of ``model``
    ran batches in: the live latency-vs-batch-size curve."""
    points = []
    for rep in c.metrics()["models"].get(model, {}).get("replicas", {}).values():
        for size, lat in zip(rep["mean_batch_size"], rep["batch_latency_ms"]):
            if size and lat:
                points.append((size, lat))
    return points


# ------------------------------------------------------------------ AIMD, simulated


def aimd_caps(fixed_s: float, per_row_s: float, slo_s: float, batches: int = 400, seed: int = 1,
              noise: float = 0.1) -> list[int]:
    """The real ``AIMDController`` stepped against a model whose batch of n rows takes
    ``fixed_s + per_row_s x n`` (lognormal noise), always given a full batch (saturation):
    the cap after each batch."""
    import numpy as np

    from clipper_nb.abstraction.batching import AIMDController, objective_for_slo

    rng = np.random.default_rng(seed)
    ctl = AIMDController(objective_for_slo(slo_s, 0.002))
    caps = []
    for _ in range(batches):
        size = ctl.limit()
        ctl.observe(size, (fixed_s + per_row_s * size) * rng.lognormal(0, noise))
        caps.append(ctl.limit())
    return caps


def best_batch(fixed_s: float, per_row_s: float, slo_s: float) -> int:
    """The largest batch whose noise-free time fits AIMD's objective (half the SLO)."""
    from clipper_nb.abstraction.batching import objective_for_slo

    return max(1, math.floor((objective_for_slo(slo_s, 0.002) - fixed_s) / per_row_s + 1e-9))


def settled_cap(caps: list[int]) -> float:
    """The median cap over the second half of a run (after the climb)."""
    import statistics

    return float(statistics.median(caps[len(caps) // 2:]))


def simulate_goodput(fixed_s: float, per_row_s: float, rate: float, slo_s: float, max_batch: int | None = None,
                     seconds: float = 3.0, seed: int = 0) -> float:
    """One replica, Poisson single-row queries at ``rate``, batches of at most ``max_batch``
    (None: the real AIMD controller), queries that cannot finish in time dropped: rows per
    second answered within the SLO. A toy (no frontend, no RPC), for the exercises."""
    from clipper_nb.abstraction.batching import AIMDController, objective_for_slo

    rng = random.Random(seed)
    ctl = AIMDController(objective_for_slo(slo_s, 0.0), max_cap=max_batch or 4096)
    arrivals, t = [], 0.0
    while (t := t + rng.expovariate(rate)) < seconds:
        arrivals.append(t)
    now, i, good = 0.0, 0, 0
    queue: list[float] = []
    while i < len(arrivals) or queue:
        while i < len(arrivals) and arrivals[i] <= now:
            queue.append(arrivals[i])
            i += 1
        if not queue:
            now = arrivals[i]
            continue
        size = min(ctl.limit(), len(queue))
        took = fixed_s + per_row_s * size
        batch = []
        while queue and len(batch) < size:
            a = queue.pop(0)
            if now + took <= a + slo_s:
                batch.append(a)   # else: dropped, it cannot make its deadline
        if not batch:
            continue
        took = fixed_s + per_row_s * len(batch)
        now += took
        ctl.observe(len(batch), took)
        good += len(batch)
    return good / seconds


def passes(apps: list[str], rates: list[float], n_passes: int, duration_s: float, procs: dict[str, Any],
           stop_below: float = 0.5) -> list[dict]:
    """``n_passes`` open-loop sweeps over ``rates``, the apps interleaved at each rate (in a
    rotating order), so that a busy moment of a shared machine hits every variant alike.
    An app leaves a pass once its goodput falls below ``stop_below`` x the offered load."""
    for app in apps:
        run_open(app, 50, 0.3, procs)   # warm-up: a fresh replica's first batches are slow
    runs = []
    for p in range(n_passes):
        alive = list(apps)
        for rate in rates:
            k = p % len(alive)
            for app in alive[k:] + alive[:k]:
                run = run_open(app, rate, duration_s, procs)
                run["pass"] = p + 1
                runs.append(run)
                if run["goodput (rows/s)"] < stop_below * rate:
                    alive.remove(app)
                time.sleep(0.1)
            if not alive:
                break
    return runs

"""Helpers for notebook 05-stragglers (kernel side only: nothing here is deployed).

* :func:`closed_loop`: a closed-loop load of single queries, keeping every answer
  (latency, output, models missing, confidence), so that one run gives SLO attainment,
  goodput, accuracy and the share of the ensemble that missed the deadline;
* :func:`straggle_stats`: what a per-call straggle probability means for the share of
  time a replica is slow (a pure-Python computation of the latency model);
* :func:`simulate_ensemble`: a small discrete-event simulation of N single-replica
  models answering one closed-loop client stream, with and without the deadline.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import numpy as np


def closed_loop(url: str, headers: dict, app: str, X: Any, y: Any, *, concurrency: int = 4,
                duration_s: float = 1.0, slo_ms: float = 20.0, seed: int = 0) -> dict:
    """``concurrency`` threads each send one query at a time to ``app`` for ``duration_s``.

    Each query is a row of ``X`` (its label in ``y``); returns the run's measurements:
    ``p50_ms``/``p99_ms`` (client-side latency), ``slo_attainment`` (share of queries
    answered with a real prediction within ``slo_ms``), ``goodput`` (such answers per
    second), ``accuracy`` (share of queries answered with the right label; a default
    answer counts as wrong), ``missing`` (mean share of the ensemble missing from an
    answer), ``defaults``, ``queries`` and the raw ``answers``.
    """
    import requests

    X = np.asarray(X)
    y = np.asarray(y)
    rows = X.tolist()
    target = f"{url}/{app}/predict"
    records: list[tuple[float, Any, int, float | None, bool, int]] = []
    lock = threading.Lock()
    stop = time.perf_counter() + duration_s

    def worker(k: int) -> None:
        s = requests.Session()
        s.headers.update(headers)
        rng = np.random.default_rng(seed * 1000 + k)
        local = []
        while time.perf_counter() < stop:
            i = int(rng.integers(len(rows)))
            t0 = time.perf_counter()
            r = s.post(target, json={"input": rows[i]}, timeout=30)
            ms = (time.perf_counter() - t0) * 1000
            a = r.json()
            local.append((ms, a.get("output"), int(y[i]), a.get("confidence"), bool(a.get("default")),
                          tuple(a.get("models_missing", ()))))
        with lock:
            records.extend(local)

    t_start = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(k,)) for k in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t_start
    lat = np.array([r[0] for r in records])
    good = [(not r[4]) and r[0] <= slo_ms for r in records]
    right = [(not r[4]) and r[1] == r[2] for r in records]
    return {"queries": len(records), "p50_ms": float(np.percentile(lat, 50)),
            "p99_ms": float(np.percentile(lat, 99)), "slo_attainment": float(np.mean(good)),
            "goodput": sum(good) / elapsed, "accuracy": float(np.mean(right)),
            "defaults": sum(r[4] for r in records), "answers": records}


#: The fields of one kept answer (a row of ``closed_loop(...)["answers"]``).
ANSWER_FIELDS = ("latency_ms", "output", "label", "confidence", "default", "models_missing")


def member_stats(log: str) -> dict | None:
    """The last statistics line a member printed (calls, slow calls, busy and slow ms)."""
    import json

    for line in reversed(log.strip().splitlines()):
        if line.startswith("{") and '"calls"' in line:
            return json.loads(line)
    return None




# ----------------------------------------------------------------------- the latency model
#: The members' latency per call (one call = one batch): usually ``FAST_MS`` (lognormal,
#: median 2 ms); with probability ``p_slow`` the call straggles for a Pareto time of at
#: least ``SLOW_MIN_MS`` (shape ``SLOW_ALPHA``: heavy-tailed), capped at ``SLOW_CAP_MS``.
FAST_MS, FAST_SIGMA = 2.0, 0.5
SLOW_MIN_MS, SLOW_ALPHA, SLOW_CAP_MS = 20.0, 2.0, 250.0


def call_ms(rng: Any, p_slow: float) -> tuple[float, bool]:
    """One call's service time in ms and whether it straggled (``rng``: ``random.Random``)."""
    if rng.random() < p_slow:
        return min(SLOW_MIN_MS * rng.paretovariate(SLOW_ALPHA), SLOW_CAP_MS), True
    return FAST_MS * rng.lognormvariate(0.0, FAST_SIGMA), False


def straggle_stats(p_slow: float, calls: int = 200_000, seed: int = 0) -> dict:
    """What a per-call straggle probability means for a replica that is kept busy:
    the share of calls that straggle and the share of its busy time spent in them
    (Monte Carlo over ``calls`` calls of :func:`call_ms`)."""
    import random

    rng = random.Random(seed)
    total = slow_total = 0.0
    slow_calls = 0
    for _ in range(calls):
        ms, slow = call_ms(rng, p_slow)
        total += ms
        if slow:
            slow_total += ms
            slow_calls += 1
    return {"calls slow": slow_calls / calls, "busy time slow": slow_total / total,
            "mean call (ms)": total / calls}


def simulate_ensemble(n_models: int, *, p_slow: float = 0.02, deadline_ms: float = 15.0,
                      mitigate: bool = True, clients: int = 4, queries: int = 3000,
                      overhead_ms: float = 3.0, slo_ms: float = 20.0, seed: int = 0) -> dict:
    """A discrete-event simulation of the live setup: ``clients`` closed-loop clients send
    each query to ``n_models`` single-replica models; each replica runs whatever has queued
    as one batch whose time is one :func:`call_ms` draw (a query already past its deadline
    is dropped at dispatch when ``mitigate``). With ``mitigate`` the answer leaves at the
    deadline with the models that replied (the default output when none did); otherwise
    when the last model replied. ``overhead_ms`` (HTTP, JSON, the client) is added to every
    answer's latency. Returns p50/p99 latency (ms), SLO attainment (answers with at least
    one model's prediction within ``slo_ms``), the mean share of the ensemble missing from
    an answer, the number of default answers and the goodput (good answers per second)."""
    import heapq
    import random

    rng = random.Random(seed)
    queue: list[list[int]] = [[] for _ in range(n_models)]
    busy = [False] * n_models
    replies: dict[int, int] = {}
    start: dict[int, float] = {}
    done: set[int] = set()
    events: list[tuple[float, int, int, Any]] = []  # (time, order, kind, payload)
    order = 0
    latencies: list[float] = []
    missing: list[float] = []
    defaults = 0
    qid = 0

    def push(t: float, kind: int, payload: Any) -> None:
        nonlocal order
        order += 1
        heapq.heappush(events, (t, order, kind, payload))

    def issue(t: float) -> None:
        nonlocal qid
        q = qid
        qid += 1
        start[q] = t
        replies[q] = 0
        if mitigate:
            push(t + deadline_ms, 2, q)
        for m in range(n_models):
            queue[m].append(q)
            if not busy[m]:
                dispatch(t, m)

    def dispatch(t: float, m: int) -> None:
        batch = [q for q in queue[m] if not (mitigate and t > start[q] + deadline_ms)]
        queue[m].clear()
        if not batch:
            busy[m] = False
            return
        busy[m] = True
        push(t + call_ms(rng, p_slow)[0], 1, (m, batch))

    def finish(t: float, q: int) -> None:
        nonlocal defaults
        done.add(q)
        got = replies[q]
        if got == 0:
            defaults += 1
        latencies.append(t - start[q] + overhead_ms)
        missing.append(1 - got / n_models)
        if qid < queries:
            push(t + overhead_ms, 0, None)

    for _ in range(clients):
        push(0.0, 0, None)
    while events and len(latencies) < queries:
        t, _, kind, payload = heapq.heappop(events)
        if kind == 0:
            issue(t)
        elif kind == 1:
            m, batch = payload
            for q in batch:
                if q in done:
                    continue
                replies[q] += 1
                if replies[q] == n_models:
                    finish(t, q)
            dispatch(t, m)
        elif payload not in done:
            finish(t, payload)
    lat = np.array(latencies)
    good = [m < 1 and lat_ms <= slo_ms for m, lat_ms in zip(missing, latencies)]
    return {"p50_ms": float(np.percentile(lat, 50)), "p99_ms": float(np.percentile(lat, 99)),
            "slo_attainment": float(np.mean(good)), "missing": float(np.mean(missing)),
            "defaults": defaults, "goodput": 1000 * sum(good) / max(t, 1e-9)}

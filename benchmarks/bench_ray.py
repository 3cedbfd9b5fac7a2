"""Benchmark of the Ray backend against the process backend, side by side in one run.

Run by hand (it is not a test; it needs ``pip install "clipper-nb[ray]"``)::

    python benchmarks/bench_ray.py                 # about 2 minutes on 2 cores
    python benchmarks/bench_ray.py --reps 5 --duration 3 --json out.json

One ``clipper-nb serve`` subprocess (the system under test) serves each workload twice,
as model and app ``<workload>-process`` and ``<workload>-ray`` (``deploy(...,
backend=...)``, one replica each, AIMD, cache off). The server's Ray is the one it
starts on demand (``ray_address`` empty: a local Ray on this machine, so the
comparison is of the backends, not of a network). Both variants of a workload are
measured interleaved at the same load by the load generator in its own process
(``_loadproc.py``), each figure the median of the repetitions:

* ``sleep``: 5 ms + 0.02 ms per row (the paper's per-batch overhead), ``c=2 x8``, SLO 20 ms;
* ``torch``: MLP 784-1024-1024-10 on CPU, one intra-op thread, ``c=8``, SLO 20 ms.

Then the **added cost per batch**, measured in this process without HTTP: a replica of
a no-op model on each backend runs batches of 784-float rows; the cost is the round
trip minus the replica's own ``compute_ms`` (what AIMD steers on), median over the
batches. 8 rows (50 kB) travel inline in Ray's RPC, 64 rows (400 kB) through its object
store. The report gives Ray / process ratios of goodput, p99 and that cost.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import asdict
from typing import Any

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _workloads  # noqa: E402 - after the path is set: benchmarks/ is not a package
from _harness import Config, LoadProcess, Row, ServeProcess, measure  # noqa: E402
from _report import format_ratios, format_table, num  # noqa: E402

from clipper_nb.abstraction.backend import ReplicaSpec  # noqa: E402
from clipper_nb.containers.process_backend import ProcessBackend  # noqa: E402
from clipper_nb.containers.ray_backend import RayBackend  # noqa: E402
from clipper_nb.wire import artifact, predict  # noqa: E402

SLO_MS = 20.0
BACKENDS = ("process", "ray")
#: workload -> (closed-loop concurrency, rows per request)
LOADS = {"sleep": (2, 8), "torch": (8, None)}
#: batch sizes of the per-batch cost measurement, and batches timed at each
COST_SIZES = (8, 64)
COST_BATCHES = 150


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def warm_up(client: Any, app: str, timeout_s: float = 20.0) -> None:
    """Query ``app`` until two real answers in a row (first calls pay lazy initialisation)."""
    end, real = time.monotonic() + timeout_s, 0
    while real < 2 and time.monotonic() < end:
        answer = client.predict(app, [0.5] * _workloads.FEATURES)
        real = real + 1 if not answer.get("default") else 0
        if not real:
            time.sleep(0.2)


def serve_rows(serve: ServeProcess, load: LoadProcess, reps: int, duration_s: float) -> list[Row]:
    """Each workload on both backends, deployed, measured interleaved, undeployed."""
    client = serve.client()
    rows: list[Row] = []
    for workload, (concurrency, batch) in LOADS.items():
        obj = _workloads.build(workload).obj
        for backend in BACKENDS:
            name = f"{workload}-{backend}"
            started = time.monotonic()
            client.deploy(obj, name, app=name, slo_ms=SLO_MS, device="cpu", backend=backend, timeout=300)
            client.update_app(name, cache=False)
            warm_up(client, name)
            log(f"deployed {name} in {time.monotonic() - started:.1f} s")
        assert serve.proc is not None
        configs = [Config(url=serve.url, app=f"{workload}-{b}", section=workload, workload=workload, variant=b,
                          server_pids=[serve.proc.pid], worker_pids=_pids(serve, f"{workload}-{b}"),
                          concurrency=concurrency, batch_size=batch, slo_ms=SLO_MS, distinct=512)
                   for b in BACKENDS]
        for row in measure(load, configs, reps, duration_s):
            log(f"{row.workload:6s} {row.variant:8s} goodput {row.goodput:7.0f} rows/s  p99 {num(row.p99_ms, 6, 1)} ms")
            rows.append(row)
        for backend in BACKENDS:
            client.undeploy(f"{workload}-{backend}")
            client.delete_app(f"{workload}-{backend}")
    return rows


def _pids(serve: ServeProcess, model: str) -> list[int]:
    """Worker pids (process replicas only: a Ray actor's pid is on its node, not in status)."""
    return [r["pid"] for r in serve.status()["replicas"] if r["model"] == model and r.get("pid")]


# ---------------------------------------------------------------- added cost per batch


async def batch_costs(state_dir: str) -> dict[str, dict[int, dict[str, float]]]:
    """Round trip minus the replica's compute time, per backend and batch size (us)."""
    payload, meta = artifact.package(_workloads.noop_model)
    model_dir = predict.write_dir(os.path.join(state_dir, "noop"), payload, meta)
    spec = ReplicaSpec(model="noop", version="1", index=0, artifact_dir=model_dir,
                       log_dir=os.path.join(state_dir, "logs"), device="cpu", python=sys.executable, cwd=None,
                       threads=1)
    rng = np.random.default_rng(7)
    out: dict[str, dict[int, dict[str, float]]] = {}
    for name, backend in (("process", ProcessBackend(tag=state_dir)), ("ray", RayBackend(num_cpus=0.5))):
        started = time.monotonic()
        await backend.start()
        replica = await backend.start_replica(spec, lambda handle, cause: None)
        log(f"{name}: backend and replica up in {time.monotonic() - started:.1f} s")
        try:
            out[name] = {n: await _time_batches(replica, list(rng.random((n, _workloads.FEATURES))))
                         for n in COST_SIZES}
        finally:
            await replica.stop()
            await backend.close()
    return out


async def _time_batches(replica: Any, rows: list) -> dict[str, float]:
    for _ in range(10):  # warm-up: first calls pay lazy set-up on both sides
        await replica.run_batch(rows)
    trips, extra = [], []
    for _ in range(COST_BATCHES):
        start = time.perf_counter()
        _, meta = await replica.run_batch(rows)
        trip = (time.perf_counter() - start) * 1e6
        trips.append(trip)
        extra.append(trip - meta["compute_ms"] * 1000)
    return {"round_trip_us": statistics.median(trips), "added_us": statistics.median(extra),
            "added_p90_us": float(np.percentile(extra, 90))}


# ---------------------------------------------------------------- report


def ratios(rows: list[Row], costs: dict[str, dict[int, dict[str, float]]]) -> list[dict[str, Any]]:
    out = []
    by = {(r.workload, r.variant): r for r in rows}
    for workload in LOADS:
        p, r = by[(workload, "process")], by[(workload, "ray")]
        g = r.goodput / p.goodput if p.goodput else None
        out.append({"name": f"{workload}: goodput ray / process ({p.load})", "value": g, "target": "report",
                    "ok": None, "detail": f"{r.goodput:.0f} vs {p.goodput:.0f} rows/s"})
        q = r.p99_ms / p.p99_ms if r.p99_ms and p.p99_ms else None
        out.append({"name": f"{workload}: p99 ray / process ({p.load})", "value": q, "target": "report", "ok": None,
                    "detail": f"{num(r.p99_ms, 0, 1)} vs {num(p.p99_ms, 0, 1)} ms"})
        cpu = (r.server_cpu_us_per_row / p.server_cpu_us_per_row
               if r.server_cpu_us_per_row and p.server_cpu_us_per_row else None)
        out.append({"name": f"{workload}: frontend CPU per row ray / process", "value": cpu, "target": "report",
                    "ok": None, "detail": f"{num(r.server_cpu_us_per_row, 0, 0)} vs "
                                          f"{num(p.server_cpu_us_per_row, 0, 0)} us/row"})
    for n in COST_SIZES:
        p, r = costs["process"][n], costs["ray"][n]
        out.append({"name": f"added cost per batch of {n} rows, ray / process", "value": r["added_us"] / p["added_us"],
                    "target": "report", "ok": None,
                    "detail": f"{r['added_us']:.0f} vs {p['added_us']:.0f} us (p90 {r['added_p90_us']:.0f} vs "
                              f"{p['added_p90_us']:.0f}); round trip {r['round_trip_us']:.0f} vs "
                              f"{p['round_trip_us']:.0f} us"})
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3, help="repetitions per configuration (default 3)")
    parser.add_argument("--duration", type=float, default=1.5, help="seconds per repetition (default 1.5)")
    parser.add_argument("--json", help="also write the rows, costs and ratios to this file")
    args = parser.parse_args(argv)
    started, load_before = time.monotonic(), os.getloadavg()[0]
    state = tempfile.mkdtemp(prefix="clipper-bench-ray-")
    serve = ServeProcess(os.path.join(state, "state"), env={"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"})
    load = None
    try:
        serve.start()
        load = LoadProcess()
        rows = serve_rows(serve, load, args.reps, args.duration)
        load.stop()
        serve.stop()  # its Ray goes with it, before this process starts its own
        costs = asyncio.run(batch_costs(os.path.join(state, "costs")))
    finally:
        if load is not None:
            load.stop()
        serve.stop()
        shutil.rmtree(state, ignore_errors=True)
    found = ratios(rows, costs)
    print(f"clipper-nb Ray vs process backend ({args.reps} x {args.duration:g} s per row, medians; SLO {SLO_MS:g} ms; "
          f"one replica each, local Ray; {time.monotonic() - started:.0f} s; {os.cpu_count()} cores, load average "
          f"{load_before:.1f} before the run, {os.getloadavg()[0]:.1f} at its end)\n")
    print(format_table(rows, {}))
    print("\nadded cost per batch (round trip - replica compute_ms, median of "
          f"{COST_BATCHES} batches of 784-float rows, no HTTP):")
    for backend, sizes in costs.items():
        print(f"  {backend:8s} " + "  ".join(f"b{n}: {c['added_us']:.0f} us (round trip {c['round_trip_us']:.0f})"
                                            for n, c in sizes.items()))
    print("\nratios:\n" + format_ratios(found))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"rows": [asdict(r) for r in rows], "costs": costs, "ratios": found}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Benchmark of the Open Inference Protocol (KServe V2) binary tensors against Clipper JSON.

Run by hand (it is not a test)::

    python benchmarks/bench_v2.py                 # about 1 minute on 2 cores
    python benchmarks/bench_v2.py --duration 5 --reps 5 --concurrency 8 --json out.json

Side by side in one run, as ratios (DESIGN.md §7): rows per second of 64-row requests
to the torch MLP 784-1024-1024-10 (``_workloads.py``) deployed on a real ``clipper-nb
serve`` subprocess, sent

* as V2 binary tensors: ``POST /v2/models/mlp/infer``, one FP32 input ``[64, 784]`` after
  the JSON header (``Inference-Header-Content-Length``), the output asked back as binary;
* as Clipper JSON: ``POST /mlp/predict`` with ``{"input_batch": [[784 floats] x 64]}``,
  the same rows (6 decimals, as a client would print them);

against the model's in-process batched limit (the module called in this process on
ready-made batches of 64, one thread: the worker runs with ``OMP_NUM_THREADS=1`` too).
Both protocols reach the same application (``input_type="float32"``, cache off, a
1000 ms SLO so that rows/s measures capacity, not deadline drops), and every row of a
V2 request is one Clipper query as in ``input_batch``: what differs is the edge (body
size, parsing, encoding). The load generator is one process of its own, the same
aiohttp closed loop for both (N requests in flight); configurations are measured
interleaved, each figure the median of the repetitions. ``fe us``/``wk us``: CPU time per
row of the frontend process and of the worker, steadier than throughput on a shared
machine.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import orjson

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _workloads
from _harness import ServeProcess, cpu_seconds

APP = "mlp"
SLO_MS = 1000.0
HEADER = "Inference-Header-Content-Length"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ====================================================================== request bodies


def make_rows(seed: int, batches: int, rows: int) -> list[np.ndarray]:
    """``batches`` batches of ``rows`` x 784 floats with 6 decimals (float32: what the app takes)."""
    rng = np.random.default_rng(seed)
    return [np.round(rng.random((rows, _workloads.FEATURES)), 6).astype(np.float32) for _ in range(batches)]


def v2_body(batch: np.ndarray) -> tuple[bytes, dict[str, str]]:
    raw = batch.tobytes()
    head = orjson.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": list(batch.shape),
                                     "parameters": {"binary_data_size": len(raw)}}],
                         "outputs": [{"name": "output", "parameters": {"binary_data": True}}]})
    return head + raw, {HEADER: str(len(head)), "Content-Type": "application/octet-stream"}


def clipper_body(batch: np.ndarray) -> tuple[bytes, dict[str, str]]:
    # float32 -> float64 -> shortest repr: the 6-decimal numbers a client prints
    return orjson.dumps({"input_batch": batch.astype(np.float64)}, option=orjson.OPT_SERIALIZE_NUMPY), \
        {"Content-Type": "application/json"}


def decode_answer(kind: str, body: bytes, headers: Any) -> tuple[np.ndarray, int]:
    """The outputs and the number of default rows of one answer."""
    if kind == "v2":
        n = int(headers[HEADER])
        head = orjson.loads(body[:n])
        out = head["outputs"][0]
        return np.frombuffer(body[n:], dtype=np.float32).reshape(out["shape"]), head["parameters"]["default_rows"]
    rows = orjson.loads(body)["batch_predictions"]
    return np.array([r["output"] for r in rows], dtype=np.float32), sum(1 for r in rows if r["default"])


# ====================================================================== the load process


def run_load(kind: str, url: str, seed: int, batches: int, rows: int, concurrency: int,
             duration_s: float) -> dict[str, Any]:
    """A closed loop of ``concurrency`` requests in flight for ``duration_s`` (in the load process)."""
    make = v2_body if kind == "v2" else clipper_body
    bodies = [make(b) for b in make_rows(seed, batches, rows)]
    return asyncio.run(_closed_loop(kind, url, bodies, rows, concurrency, duration_s))


async def _closed_loop(kind: str, url: str, bodies: list, rows: int, concurrency: int,
                       duration_s: float) -> dict[str, Any]:
    import aiohttp

    latencies: list[float] = []
    counts = {"rows": 0, "defaults": 0, "errors": 0}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as session:
        start = time.perf_counter()
        end = start + duration_s

        async def worker(k: int) -> None:
            i = k
            while time.perf_counter() < end:
                body, headers = bodies[i % len(bodies)]
                t0 = time.perf_counter()
                async with session.post(url, data=body, headers=headers) as r:
                    payload, status, got = await r.read(), r.status, r.headers
                if status != 200:
                    counts["errors"] += 1
                    continue
                _, defaults = decode_answer(kind, payload, got)
                latencies.append((time.perf_counter() - t0) * 1000)
                counts["rows"] += rows
                counts["defaults"] += defaults
                i += concurrency

        await asyncio.gather(*(worker(k) for k in range(concurrency)))
        elapsed = time.perf_counter() - start
    lat = np.array(latencies) if latencies else np.array([np.nan])
    return {**counts, "elapsed_s": elapsed, "rows_per_s": counts["rows"] / elapsed,
            "p50_ms": float(np.percentile(lat, 50)), "p99_ms": float(np.percentile(lat, 99))}


# ====================================================================== the run


@dataclass
class Line:
    """One configuration: medians over the repetitions."""

    name: str
    rows_per_s: float
    p50_ms: float
    p99_ms: float
    default_rate: float
    errors: int
    fe_us_per_row: float | None
    wk_us_per_row: float | None
    reps: list[float] = field(default_factory=list)


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.tmp = tempfile.mkdtemp(prefix="bench-v2-")
        self.serve = ServeProcess(os.path.join(self.tmp, "state"), env={"OMP_NUM_THREADS": "1"})
        self.pool = concurrent.futures.ProcessPoolExecutor(1)  # the load generator, kept for the run
        self.pool.submit(int).result()  # fork it now, before this process imports torch
        self.seeds = iter(range(1000, 100000))

    def url(self, kind: str) -> str:
        return f"{self.serve.url}/v2/models/{APP}/infer" if kind == "v2" else f"{self.serve.url}/{APP}/predict"

    def setup(self, workload: _workloads.Workload) -> None:
        self.serve.start()
        client = self.serve.client()
        client.register_app(APP, input_type="float32", slo_ms=SLO_MS, cache=False)
        client.deploy(workload.obj, APP, app=APP)
        log(f"serving on {self.serve.url}; worker pid(s) {self.serve.pids()[1:]}")

    def check_answers(self, workload: _workloads.Workload) -> None:
        """Both protocols give the model's own answers for the same rows."""
        import requests

        batch = make_rows(1, 1, self.args.rows)[0]
        expected = workload.predict(batch.astype(np.float64))
        for kind, make in (("v2", v2_body), ("clipper", clipper_body)):
            body, headers = make(batch)
            r = requests.post(self.url(kind), data=body, headers=headers, timeout=60)
            r.raise_for_status()
            out, defaults = decode_answer(kind, r.content, r.headers)
            assert defaults == 0 and np.allclose(out, expected, rtol=1e-4, atol=1e-5), kind
        log("V2 and Clipper JSON answers equal the model's in-process answers")

    def once(self, kind: str, duration_s: float) -> tuple[dict, float | None, float | None]:
        pids = self.serve.pids()
        fe0, wk0 = cpu_seconds(pids[:1]), cpu_seconds(pids[1:])
        res = self.pool.submit(run_load, kind, self.url(kind), next(self.seeds), self.args.distinct,
                               self.args.rows, self.args.concurrency, duration_s).result()
        fe, wk = cpu_seconds(pids[:1]) - fe0, cpu_seconds(pids[1:]) - wk0
        if not res["rows"]:
            return res, None, None
        return res, fe / res["rows"] * 1e6, wk / res["rows"] * 1e6

    def measure(self) -> list[Line]:
        kinds = ("v2", "clipper")
        for kind in kinds:  # warm up: connections, lazy init, AIMD's first steps
            self.once(kind, 1.0)
        runs: dict[str, list] = {k: [] for k in kinds}
        for rep in range(self.args.reps):
            for kind in kinds:
                runs[kind].append(self.once(kind, self.args.duration))
                log(f"rep {rep + 1} {kind}: {runs[kind][-1][0]['rows_per_s']:.0f} rows/s")
        return [_line(k, runs[k]) for k in kinds]

    def close(self) -> None:
        self.pool.shutdown()
        self.serve.stop()


def _median(values: list) -> Any:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def _line(kind: str, runs: list) -> Line:
    results = [r for r, _, _ in runs]
    name = "V2 binary FP32" if kind == "v2" else "Clipper input_batch JSON"
    return Line(name=name, rows_per_s=_median([r["rows_per_s"] for r in results]),
                p50_ms=_median([r["p50_ms"] for r in results]), p99_ms=_median([r["p99_ms"] for r in results]),
                default_rate=_median([r["defaults"] / r["rows"] if r["rows"] else 0.0 for r in results]),
                errors=sum(r["errors"] for r in results), fe_us_per_row=_median([fe for _, fe, _ in runs]),
                wk_us_per_row=_median([wk for _, _, wk in runs]), reps=[round(r["rows_per_s"]) for r in results])


def report(args: argparse.Namespace, lines: list[Line], limit: dict[int, float], took_s: float,
           load: tuple[float, float]) -> str:
    rows = args.rows
    out = [(f"clipper-nb V2 benchmark: torch MLP 784-1024-1024-10, {rows}-row requests, c={args.concurrency} "
           f"({args.concurrency * rows} rows in flight), {args.reps} x {args.duration:g} s, medians; "
           f"{took_s:.0f} s; {os.cpu_count()} cores, load average {load[0]:.1f} before, {load[1]:.1f} after"), ""]
    head = f"{'protocol':26s} {'rows/s':>7s} {'p50 ms':>7s} {'p99 ms':>7s} {'dflt %':>6s} {'err':>4s} " \
           f"{'fe us':>6s} {'wk us':>6s}  rows/s of each rep"
    out += [head, "-" * len(head)]
    for x in lines:
        out.append(f"{x.name:26s} {x.rows_per_s:7.0f} {x.p50_ms:7.1f} {x.p99_ms:7.1f} {100 * x.default_rate:6.1f} "
                   f"{x.errors:4d} {x.fe_us_per_row or 0:6.0f} {x.wk_us_per_row or 0:6.0f}  {x.reps}")
    best = limit[rows]
    out += ["", "in-process batched limit (one thread), rows/s: "
            + "  ".join(f"b{n}: {v:,.0f}" for n, v in sorted(limit.items())), "", "ratios:"]
    v2, js = lines
    out.append(f"  V2 binary / in-process limit (b{rows})            {v2.rows_per_s / best:5.2f}")
    out.append(f"  Clipper JSON / in-process limit (b{rows})         {js.rows_per_s / best:5.2f}")
    out.append(f"  V2 binary / Clipper JSON, rows/s                 {v2.rows_per_s / js.rows_per_s:5.2f}")
    if v2.fe_us_per_row and js.fe_us_per_row:
        out.append(f"  V2 binary / Clipper JSON, frontend CPU per row   {v2.fe_us_per_row / js.fe_us_per_row:5.2f}"
                   f"   ({v2.fe_us_per_row:.0f} vs {js.fe_us_per_row:.0f} us)")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--duration", type=float, default=4.0, help="seconds per repetition (default 4)")
    p.add_argument("--reps", type=int, default=3, help="repetitions per protocol (default 3)")
    p.add_argument("--concurrency", type=int, default=4, help="requests in flight (default 4)")
    p.add_argument("--rows", type=int, default=64, help="rows per request (default 64)")
    p.add_argument("--distinct", type=int, default=8, help="distinct request bodies per repetition (default 8)")
    p.add_argument("--json", help="also write the lines and limits to this file")
    args = p.parse_args(argv)
    started, load0 = time.monotonic(), os.getloadavg()[0]
    bench = Bench(args)
    try:
        workload = _workloads.build("torch")
        limit = _workloads.compute_limit(workload.predict, sorted({args.rows, 4 * args.rows}), budget_s=1.0)
        log("in-process limit: " + ", ".join(f"b{n} {v:,.0f} rows/s" for n, v in limit.items()))
        bench.setup(workload)
        bench.check_answers(workload)
        lines = bench.measure()
    finally:
        bench.close()
    print(report(args, lines, limit, time.monotonic() - started, (load0, os.getloadavg()[0])))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"lines": [asdict(x) for x in lines], "limit": limit, "args": vars(args)}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())

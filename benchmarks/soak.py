"""Soak: a steady load on a real ``clipper-nb serve`` for minutes; memory must stay flat.

Starts ``clipper-nb serve`` on a free loopback port with its own state directory,
deploys a small function model on two replicas, and drives it with an open-loop
Poisson load (``clipper_nb.kernel.loadgen``, in this process) at ``--qps`` for
``--minutes``, with a fraction of cache-missing inputs so batches really run. Every
``--every`` seconds it samples the resident memory (VmRSS) of the frontend and of each
worker, and prints a table; at the end it fits a line through each process's samples
after the warm-up and reports the growth per minute. Optionally it first sends
``--fuzz N`` malformed requests (the same kinds as tests/test_fuzz.py) and counts 5xx.

    python benchmarks/soak.py --minutes 10 --qps 200          # the issue's 10-minute soak
    python benchmarks/soak.py --minutes 1 --qps 100 --fuzz 10000

Bounded in count and time, loopback only; it stops the server and its workers at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np
import requests

from clipper_nb.kernel.client import Client
from clipper_nb.kernel.loadgen import run_load
from clipper_nb.wire.ports import free_port

TOKEN = "soak-token-not-secret"


def rss_mb(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def children(pid: int) -> list[int]:
    """Every descendant of ``pid`` (workers, fork servers)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        try:
            with open(f"/proc/{p}/task/{p}/children") as f:
                kids = [int(x) for x in f.read().split()]
        except OSError:
            kids = []
        out.extend(kids)
        todo.extend(kids)
    return out


def start_serve(state: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {**os.environ, "CLIPPER_NB_TOKEN": TOKEN}
    proc = subprocess.Popen([sys.executable, "-m", "clipper_nb.cli", "serve", "--port", str(port), "--state-dir",
                             state, "--public-predict", "--log-level", "warning"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    Client(url, token=TOKEN, retry_s=60).wait_ready(120)
    return proc, url


def fuzz(url: str, n: int, seed: int = 0) -> dict[int, int]:
    """``n`` malformed requests; returns {status: count}."""
    rng = random.Random(seed)
    junk = [b"", b"{", b"[]", b"null", b'{"input": "x"}', b'{"input": [[]]}', b'{"input": {"a": 1}}',
            b'{"input_batch": 3}', b'{"input": [1e999]}', b'{"input": [' + b"[" * 2000 + b"]" * 2000 + b"]}",
            b'{"input": [1, 2], "context": 3.5}', b'{"label": []}', b"\xff\xfe"]
    counts: dict[int, int] = {}
    session = requests.Session()
    for _ in range(n):
        path = rng.choice(["soak/predict", "soak/update", "api/apps", "api/apps/soak", "v2/models/soak/infer"])
        method = "PATCH" if path == "api/apps/soak" else "POST"
        r = session.request(method, f"{url}/{path}", data=rng.choice(junk), timeout=30,
                            headers={"Authorization": f"token {TOKEN}", "Content-Type": "application/json"})
        counts[r.status_code] = counts.get(r.status_code, 0) + 1
    return counts


def slope_mb_per_min(samples: list[tuple[float, float]]) -> float:
    t = np.array([s[0] for s in samples]) / 60.0
    m = np.array([s[1] for s in samples])
    ok = ~np.isnan(m)
    return float(np.polyfit(t[ok], m[ok], 1)[0]) if ok.sum() >= 2 else float("nan")


def double(batch):
    return [2.0 * sum(row) for row in batch]


async def soak(url: str, proc: subprocess.Popen, minutes: float, qps: float, every: float) -> dict[int, list]:
    rng = np.random.default_rng(0)
    inputs = rng.random((5000, 8)).round(4).tolist()  # mostly cache misses
    series: dict[int, list] = {}
    load = asyncio.ensure_future(run_load(url, "soak", inputs, qps=qps, duration_s=minutes * 60, slo_ms=100,
                                          token=TOKEN, timeout_s=10))
    start = time.monotonic()
    print(f"{'t (s)':>6} {'frontend MB':>12} {'workers MB':>24}")
    while not load.done():
        await asyncio.sleep(every)
        t = time.monotonic() - start
        pids = [proc.pid, *children(proc.pid)]
        for pid in pids:
            series.setdefault(pid, []).append((t, rss_mb(pid)))
        print(f"{t:6.0f} {rss_mb(proc.pid):12.1f} {' '.join(f'{rss_mb(p):7.1f}' for p in pids[1:]):>24}", flush=True)
    result = load.result()
    print(f"load: {result.summary_line()}")
    return series


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--qps", type=float, default=200.0)
    ap.add_argument("--every", type=float, default=10.0, help="seconds between memory samples")
    ap.add_argument("--fuzz", type=int, default=0, help="malformed requests to send first")
    args = ap.parse_args(argv)
    state = tempfile.mkdtemp(prefix="clipper-soak-")
    proc, url = start_serve(state)
    try:
        Client(url, token=TOKEN).deploy(double, "soak-model", app="soak", replicas=2, slo_ms=100)
        if args.fuzz:
            counts = fuzz(url, args.fuzz)
            print(f"fuzz: {args.fuzz} malformed requests -> {dict(sorted(counts.items()))}; "
                  f"5xx: {sum(n for s, n in counts.items() if s >= 500)}")
        series = asyncio.run(soak(url, proc, args.minutes, args.qps, args.every))
        warm = args.minutes * 60 * 0.2  # the first fifth is warm-up (caches filling, allocator pools)
        for pid, samples in series.items():
            kept = [s for s in samples if s[0] >= warm]
            who = "frontend" if pid == proc.pid else f"pid {pid}"
            print(f"{who}: {kept[0][1] if kept else float('nan'):.1f} -> {kept[-1][1] if kept else float('nan'):.1f} MB, "
                  f"slope {slope_mb_per_min(kept):+.2f} MB/min after warm-up")
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
    return 0


if __name__ == "__main__":
    sys.exit(main())

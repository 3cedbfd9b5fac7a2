"""Benchmark of clipper-nb's model abstraction layer: batching, delayed batching, cache.

Run by hand (it is not a test)::

    python benchmarks/bench_batching.py --quick          # about 4 minutes on 2 cores
    python benchmarks/bench_batching.py                  # the full sweep, longer
    python benchmarks/bench_batching.py --quick --only noop,sleep --json out.json

Everything is measured side by side in one run, as ratios (DESIGN.md §7): a real
``clipper-nb serve`` subprocess, the bare Tornado floor (``bare_tornado.py``) and the
models' in-process compute limit, driven by ``clipper_nb.loadgen`` in a process of
its own. Each figure is the median of repeated short runs. See README.md here for
how to read the table.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _workloads  # noqa: E402 - after the path is set: benchmarks/ is not a package
from _harness import SEEDS, BareTornado, LoadProcess, Row, ServeProcess, measure, pin  # noqa: E402

SLO_MS = 20.0
SECTIONS = ("pinning", "noop", "sleep", "sklearn", "torch", "delay", "slo")
SERVER_CORE, LOAD_CORE = {0}, {1}


@dataclass(frozen=True)
class Plan:
    """How much to measure: ``--quick`` or the full run."""

    reps: int
    duration_s: float
    concurrencies: tuple[int, ...]          # closed-loop levels for noop, sklearn and torch
    sleep_sweep: tuple[int, ...]            # fixed batch sizes tried on the sleep model
    model_sweep: tuple[int, ...]            # fixed batch sizes tried on the other models
    sleep_loads: tuple[tuple[int, int | None], ...]  # (concurrency, rows per request)
    delay_load_fractions: tuple[float, ...]  # open-loop rates, as fractions of closed-loop capacity
    slo_phase_s: float
    distinct: int                           # inputs per repetition where the cache is on


QUICK = Plan(reps=3, duration_s=2.0, concurrencies=(16,), sleep_sweep=(16, 64, 128), model_sweep=(32,),
             sleep_loads=((16, None), (8, 16)), delay_load_fractions=(0.6,), slo_phase_s=6.0, distinct=4096)
FULL = Plan(reps=3, duration_s=5.0, concurrencies=(4, 16, 64), sleep_sweep=(4, 8, 16, 32, 64, 128, 256),
            model_sweep=(8, 32, 128), sleep_loads=((4, None), (16, None), (8, 16), (16, 16)),
            delay_load_fractions=(0.3, 0.6, 0.9), slo_phase_s=10.0, distinct=12288)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class Bench:
    """One run: the processes, the deployed variants, the rows measured so far."""

    def __init__(self, plan: Plan, pin_mode: str) -> None:
        self.plan = plan
        self.pin_mode = pin_mode
        self.pinned = pin_mode == "on"
        self.rows: list[Row] = []
        self.ratios: list[dict[str, Any]] = []
        self.compute: dict[str, dict[int, float]] = {}
        self.slo_trace: dict[str, Any] = {}
        self.state_dir = tempfile.mkdtemp(prefix="clipper-bench-")
        # One intra-op thread per worker (inherited from the server): a replica is one
        # core, as in Clipper; two torch threads would fight the frontend for core 0.
        self.serve = ServeProcess(os.path.join(self.state_dir, "state"),
                                  env={"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"})
        self.bare = BareTornado()
        self.load: LoadProcess | None = None
        self.workloads: dict[str, _workloads.Workload] = {}

    # ------------------------------------------------------------------ processes
    def __enter__(self) -> "Bench":
        self.serve.start()
        self.bare.start()
        self.load = LoadProcess()
        self.client = self.serve.client()
        self.apply_pinning()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.load is not None:
            self.load.stop()
        self.bare.stop()
        self.serve.stop()
        shutil.rmtree(self.state_dir, ignore_errors=True)

    def apply_pinning(self) -> None:
        """Server, workers and the bare reference on core 0, load generator on core 1 (or none)."""
        assert self.load is not None
        pin(self.serve.pids() + self.bare.pids(), SERVER_CORE if self.pinned else None)
        pin([self.load.pid], LOAD_CORE if self.pinned else None)

    # ------------------------------------------------------------------ deploying
    def workload(self, name: str) -> _workloads.Workload:
        if name not in self.workloads:
            self.workloads[name] = _workloads.build(name)
        return self.workloads[name]

    def deploy(self, workload: str, variants: dict[str, dict[str, Any]], cache: bool) -> None:
        """Deploy each variant as model and app ``<workload>-<variant>`` (20 ms SLO)."""
        w = self.workload(workload)
        for variant, options in variants.items():
            name = f"{workload}-{variant}"
            self.client.deploy(w.obj, name, app=name, slo_ms=SLO_MS, device="cpu", **options)
            if not cache:  # the batching rows measure batching, not the prediction cache
                self.client.update_app(name, cache=False)
        self.apply_pinning()

    def undeploy(self, workload: str, variants: list[str]) -> None:
        for variant in variants:
            self.client.undeploy(f"{workload}-{variant}")
            self.client.delete_app(f"{workload}-{variant}")

    def worker_pids(self, app: str) -> list[int]:
        return [r["pid"] for r in self.serve.status()["replicas"] if r["model"] == app and r.get("pid")]

    # ------------------------------------------------------------------ measuring
    def run(self, section: str, workload: str, variant: str, *, bare: bool = False,
            app: str | None = None, distinct: int | None = None, record: bool = True, **load: Any) -> Row:
        assert self.load is not None
        app = app or f"{workload}-{variant}"
        target = self.bare if bare else self.serve
        row = measure(self.load, target.url, app, section=section, workload=workload, variant=variant,
                      reps=self.plan.reps, duration_s=self.plan.duration_s,
                      server_pids=[target.proc.pid],  # type: ignore[union-attr]
                      worker_pids=[] if bare else self.worker_pids(app), slo_ms=SLO_MS,
                      distinct=distinct or self.plan.distinct, **load)
        if record:
            self.rows.append(row)
        log(f"{section:8s} {workload:8s} {variant:12s} {row.load:10s} {row.rows_per_s:9.1f} rows/s "
            f"p99 {row.p99_ms or float('nan'):7.1f} ms  goodput {row.goodput:8.1f}  fe {row.server_cpu_us_per_row or 0:6.0f} us/row")
        return row

    def ratio(self, name: str, value: float | None, target: str, ok: bool | None, detail: str = "") -> None:
        self.ratios.append({"name": name, "value": value, "target": target, "ok": ok, "detail": detail})

    # ------------------------------------------------------------------ sections
    def section_pinning(self) -> None:
        """Bare floor and no-op clipper-nb with and without taskset-style pinning; keep the better."""
        self.deploy("noop", {"aimd": {}}, cache=True)
        results = {}
        for pinned in (True, False):
            self.pinned = pinned
            self.apply_pinning()
            tag = "pinned" if pinned else "unpinned"
            bare = self.run("pinning", "bare", tag, bare=True, app="bare", concurrency=16, record=False)
            noop = self.run("pinning", "noop", tag, app="noop-aimd", concurrency=16, record=False)
            results[pinned] = (bare, noop)
        score = {p: b.rows_per_s + n.rows_per_s for p, (b, n) in results.items()}
        self.pinned = score[True] >= score[False] if self.pin_mode == "auto" else self.pin_mode == "on"
        self.apply_pinning()
        gain = score[True] / score[False] if score[False] else None
        self.ratio("pinning gain (bare + no-op rows/s, pinned / unpinned)", gain, "measure and choose", None,
                   f"using {'pinned' if self.pinned else 'unpinned'} (--pin {self.pin_mode})")
        for pinned, (bare, noop) in results.items():
            bare.variant, noop.variant = f"floor ({'pin' if pinned else 'nopin'})", f"aimd ({'pin' if pinned else 'nopin'})"
            bare.workload = "bare"
            self.rows.extend([bare, noop])

    def section_noop(self) -> None:
        plan = self.plan
        variants = {"off": {"max_batch_size": 1}, **{f"b{n}": {"batch_size": n} for n in plan.model_sweep}}
        self.deploy("noop", variants, cache=True)
        if not any(r.workload == "noop" and r.variant == "aimd" for r in self.rows):
            self.deploy("noop", {"aimd": {}}, cache=True)
        self.compute["noop"] = _workloads.compute_limit(self.workload("noop").predict, [1, 32])
        for c in plan.concurrencies:
            bare = self.run("noop", "bare", "floor", bare=True, app="bare", concurrency=c)
            aimd = self.run("noop", "noop", "aimd", concurrency=c)
            hits = self.run("noop", "noop", "aimd cache-hit", app="noop-aimd", distinct=1, concurrency=c)
            for v in variants:
                self.run("noop", "noop", v, concurrency=c)
            if c == 16 or c == plan.concurrencies[0]:
                r = aimd.rows_per_s / bare.rows_per_s
                self.ratio(f"no-op / bare Tornado floor (c={c})", r, ">= 0.70", r >= 0.70,
                           f"{aimd.rows_per_s:.0f} vs {bare.rows_per_s:.0f} rows/s; frontend CPU "
                           f"{aimd.server_cpu_us_per_row or 0:.0f} vs {bare.server_cpu_us_per_row or 0:.0f} us/row")
                r = hits.rows_per_s / bare.rows_per_s
                self.ratio(f"no-op cache hits / bare Tornado floor (c={c})", r, ">= 0.80", r >= 0.80,
                           f"{hits.rows_per_s:.0f} vs {bare.rows_per_s:.0f} rows/s")
        self.undeploy("noop", list(variants) + ["aimd"])

    def section_sleep(self) -> None:
        plan = self.plan
        variants = {"off": {"max_batch_size": 1}, **{f"b{n}": {"batch_size": n} for n in plan.sleep_sweep},
                    "aimd": {}}
        self.deploy("sleep", variants, cache=False)
        self.compute["sleep"] = _workloads.compute_limit(_workloads.sleep_model, [1, *plan.sleep_sweep],
                                                         budget_s=0.15)
        for c, rows in plan.sleep_loads:
            load = {"concurrency": c, "batch_size": rows}
            measured = {v: self.run("sleep", "sleep", v, **load) for v in variants}
            aimd, off = measured["aimd"], measured["off"]
            fixed_ok = [r for v, r in measured.items() if v.startswith("b") and r.p99_ms is not None
                        and r.p99_ms <= SLO_MS]
            best = max(fixed_ok, key=lambda r: r.rows_per_s, default=None)
            shape = aimd.load
            if best is not None:
                r = aimd.rows_per_s / best.rows_per_s
                self.ratio(f"sleep AIMD / best fixed size within SLO ({shape})", r, ">= 0.90", r >= 0.90,
                           f"best fixed: {best.variant} {best.rows_per_s:.0f} rows/s p99 {best.p99_ms:.1f} ms")
            else:
                self.ratio(f"sleep AIMD / best fixed size within SLO ({shape})", None, ">= 0.90", None,
                           "no fixed size met the SLO at p99")
            self.ratio(f"sleep AIMD p99 ({shape}), ms", aimd.p99_ms, f"<= {SLO_MS:g}",
                       aimd.p99_ms is not None and aimd.p99_ms <= SLO_MS, f"SLO attainment {_pct(aimd.slo_attainment)}")
            r = aimd.rows_per_s / off.rows_per_s if off.rows_per_s else None
            self.ratio(f"sleep AIMD / batching off ({shape})", r, ">= 10", r is not None and r >= 10,
                       f"{aimd.rows_per_s:.0f} vs {off.rows_per_s:.0f} rows/s; goodput {aimd.goodput:.0f} vs {off.goodput:.0f}")
        self.undeploy("sleep", list(variants))

    def section_model(self, workload: str) -> None:
        plan = self.plan
        variants = {"off": {"max_batch_size": 1}, **{f"b{n}": {"batch_size": n} for n in plan.model_sweep},
                    "aimd": {}}
        self.deploy(workload, variants, cache=False)
        self.compute[workload] = _workloads.compute_limit(self.workload(workload).predict, [1, *plan.model_sweep])
        for c in plan.concurrencies:
            for v in variants:
                self.run(workload, workload, v, concurrency=c)
        self.undeploy(workload, list(variants))

    def section_delay(self) -> None:
        """Delayed batching (2 ms, the default) against none, at moderate open-loop load."""
        variants = {"aimd": {}, "aimd-d0": {"batch_delay_ms": 0}}
        self.deploy("sklearn", variants, cache=False)
        capacity = self.run("delay", "sklearn", "aimd", concurrency=16, record=False).rows_per_s
        for fraction in self.plan.delay_load_fractions:
            qps = round(capacity * fraction)
            d2 = self.run("delay", "sklearn", "aimd", qps=qps, note=f"{fraction:.0%} of capacity")
            d0 = self.run("delay", "sklearn", "aimd-d0", qps=qps, note=f"{fraction:.0%} of capacity")
            d2.variant, d0.variant = "delay 2 ms", "delay 0"
            gain = d2.goodput / d0.goodput if d0.goodput else None
            cpu = (d0.server_cpu_us_per_row / d2.server_cpu_us_per_row
                   if d0.server_cpu_us_per_row and d2.server_cpu_us_per_row else None)
            self.ratio(f"delayed batching gain, goodput 2 ms / 0 ms (sklearn, qps={qps})", gain, "report", None,
                       f"p99 {d2.p99_ms or 0:.1f} vs {d0.p99_ms or 0:.1f} ms; frontend CPU/row 0 ms / 2 ms = "
                       f"{cpu or 0:.2f}x")
        self.undeploy("sklearn", list(variants))

    def section_slo(self) -> None:
        """Change the SLO at run time (20 -> 50 -> 10 ms); time AIMD's settling and attainment."""
        assert self.load is not None
        self.deploy("sleep", {"slo": {}}, cache=False)
        c, rows = self.plan.sleep_loads[-1]
        phase = self.plan.slo_phase_s
        slos = [20.0, 50.0, 10.0]
        start_at = time.time() + 1.0
        schedule = [[i * phase, s] for i, s in enumerate(slos)]
        caps: list[tuple[float, float]] = []
        answer: dict[str, Any] = {}

        def drive() -> None:
            answer.update(self.load.call(  # type: ignore[union-attr]
                cmd="series", url=self.serve.url, app="sleep-slo", features=784, distinct=1024,
                seed=next(SEEDS), concurrency=c, batch_size=rows, start_at=start_at,
                total_s=phase * len(slos), window_s=0.5, schedule=schedule))

        loader = threading.Thread(target=drive, daemon=True)
        loader.start()
        changed = 0
        while loader.is_alive():
            t = time.time() - start_at
            if changed < len(slos) and t >= changed * phase:
                self.client.set_slo("sleep-slo", slos[changed])
                changed += 1
            caps.extend((t, r["batch_cap"]) for r in self.serve.status()["replicas"]
                        if r["model"] == "sleep-slo" and r.get("batch_cap") is not None)
            time.sleep(0.1)
        loader.join()
        windows = answer.get("windows", [])
        self.slo_trace = {"phase_s": phase, "slos_ms": slos, "load": f"c={c}" + (f" x{rows}" if rows else ""),
                          "caps": caps, "windows": [{k: w[k] for k in ("t", "slo_ms", "rows_per_s", "p99_ms",
                                                                       "slo_attainment", "goodput")}
                                                    for w in windows]}
        for i, slo in enumerate(slos):
            lo, hi = i * phase, (i + 1) * phase
            settle, final = _settle_time([(t - lo, cap) for t, cap in caps if lo <= t < hi])
            att = [(w["t"] - lo, w["slo_attainment"] or 0.0, w["goodput"], w["rows_per_s"])
                   for w in windows if lo <= w["t"] < hi]
            recovered = _recovery_time(att, 0.9)
            steady = [a for t, a, _, _ in att if t >= phase / 2]
            good = [g / r if r else 0.0 for t, _, g, r in att if t >= phase / 2]
            self.ratio(f"SLO -> {slo:g} ms: AIMD settle time, s", settle, "<= 5", settle is not None and settle <= 5,
                       f"cap settles at {final:.0f}" if final is not None else "no cap seen")
            self.ratio(f"SLO -> {slo:g} ms: attainment >= 90% after, s", recovered, "recovers", recovered is not None,
                       f"steady attainment {_pct(_median(steady))}, goodput share {_pct(_median(good))}")
        self.undeploy("sleep", ["slo"])


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def _settle_time(caps: list[tuple[float, float]]) -> tuple[float | None, float | None]:
    """When the cap entered, for good, the band around where it ends up.

    The final cap is the median of the phase's last fifth; the band is +-15% of it
    (at least +-4 rows, one AIMD step), since AIMD keeps probing around its level.
    """
    if not caps:
        return None, None
    tail = [cap for t, cap in caps if t >= 0.8 * caps[-1][0]] or [caps[-1][1]]
    final = statistics.median(tail)
    band = max(4.0, 0.15 * final)
    settle = 0.0
    for t, cap in caps:
        if abs(cap - final) > band:
            settle = None
        elif settle is None:
            settle = t
    return settle, final


def _recovery_time(windows: list[tuple[float, float, float, float]], level: float) -> float | None:
    """Start of the first window from which attainment stays >= ``level`` for the phase."""
    since = None
    for t, attainment, _, _ in windows:
        if attainment < level:
            since = None
        elif since is None:
            since = t
    return since


# ---------------------------------------------------------------------- report


def format_table(rows: list[Row], compute: dict[str, dict[int, float]]) -> str:
    head = (f"{'section':8s} {'model':7s} {'variant':16s} {'load':9s} {'rows/s':>8s} {'p50 ms':>7s} "
            f"{'p99 ms':>7s} {'SLO %':>6s} {'goodput':>8s} {'dflt %':>6s} {'fe us':>6s} {'wk us':>6s} "
            f"{'vs ref':>7s}  reps (rows/s)")
    lines = [head, "-" * len(head)]
    floors = {r.load: r.rows_per_s for r in rows if r.workload == "bare" and r.variant == "floor"}
    for r in rows:
        ref = ""
        if r.workload == "noop" and floors.get(r.load):
            ref = f"{r.rows_per_s / floors[r.load]:.0%}F"
        elif r.workload in compute and compute[r.workload]:
            ref = f"{r.rows_per_s / max(compute[r.workload].values()):.0%}C"
        lines.append(
            f"{r.section:8s} {r.workload:7s} {r.variant:16s} {r.load:9s} {r.rows_per_s:8.0f} "
            f"{_num(r.p50_ms, 7, 1)} {_num(r.p99_ms, 7, 1)} {_num(None if r.slo_attainment is None else 100 * r.slo_attainment, 6, 1)} "
            f"{r.goodput:8.0f} {100 * r.default_rate:6.1f} {_num(r.server_cpu_us_per_row, 6, 0)} "
            f"{_num(r.worker_cpu_us_per_row, 6, 0)} {ref:>7s}  {r.reps}{'  ' + r.note if r.note else ''}")
    return "\n".join(lines)


def _num(x: float | None, width: int, digits: int) -> str:
    return f"{'-':>{width}s}" if x is None else f"{x:{width}.{digits}f}"


def format_ratios(ratios: list[dict[str, Any]]) -> str:
    lines = []
    for r in ratios:
        v = r["value"]
        value = "-" if v is None else (f"{v:.2f}" if isinstance(v, float) else str(v))
        verdict = {True: "MET", False: "MISSED", None: ""}[r["ok"]]
        lines.append(f"  {r['name']:62s} {value:>8s}  target {r['target']:10s} {verdict:6s} {r['detail']}")
    return "\n".join(lines)


def format_compute(compute: dict[str, dict[int, float]]) -> str:
    return "\n".join(f"  {w:8s} " + "  ".join(f"b{n}: {v:,.0f}" for n, v in sizes.items())
                     for w, sizes in compute.items())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 x 2 s per configuration, a short sweep (~4 min)")
    parser.add_argument("--only", help=f"comma-separated sections to run, of: {', '.join(SECTIONS)}")
    parser.add_argument("--pin", choices=("auto", "on", "off"), default="auto",
                        help="server on core 0 and load generator on core 1: measured and chosen (auto), "
                             "or forced")
    parser.add_argument("--reps", type=int, help="repetitions per configuration (overrides the plan)")
    parser.add_argument("--duration", type=float, help="seconds per repetition (overrides the plan)")
    parser.add_argument("--json", help="also write every row, ratio and trace to this file")
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else FULL
    if args.reps or args.duration:
        plan = Plan(**{**asdict(plan), "reps": args.reps or plan.reps, "duration_s": args.duration or plan.duration_s})
    sections = args.only.split(",") if args.only else list(SECTIONS)
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown section(s) {', '.join(sorted(unknown))}; choose from {', '.join(SECTIONS)}")
    if "pinning" not in sections and args.pin == "auto":
        args.pin = "on"
    started = time.time()
    with Bench(plan, args.pin) as bench:
        for section in SECTIONS:
            if section not in sections:
                continue
            log(f"--- {section}")
            if section in ("sklearn", "torch"):
                bench.section_model(section)
            else:
                getattr(bench, f"section_{section}")()
        elapsed = time.time() - started
        print(f"\nclipper-nb batching benchmark ({'quick' if args.quick else 'full'}: {plan.reps} x "
              f"{plan.duration_s:g} s per row, medians; SLO {SLO_MS:g} ms; "
              f"{'pinned: server core 0, load core 1' if bench.pinned else 'unpinned'}; {elapsed:.0f} s)\n")
        print(format_table(bench.rows, bench.compute))
        print("\ncompute limit, in-process rows/s by batch size (C in 'vs ref'; F = bare Tornado floor):")
        print(format_compute(bench.compute))
        print("\nratios and targets:")
        print(format_ratios(bench.ratios))
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"plan": asdict(plan), "pinned": bench.pinned, "elapsed_s": elapsed,
                           "rows": [asdict(r) for r in bench.rows], "ratios": bench.ratios,
                           "compute": bench.compute, "slo_trace": bench.slo_trace}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())

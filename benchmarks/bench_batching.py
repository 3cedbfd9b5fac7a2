"""Benchmark of clipper-nb's model abstraction layer: batching, delayed batching, cache.

Run by hand (it is not a test)::

    python benchmarks/bench_batching.py --quick          # about 4 minutes on 2 cores
    python benchmarks/bench_batching.py                  # the full sweep, longer
    python benchmarks/bench_batching.py --quick --only noop,sleep --json out.json

Everything is measured side by side in one run, as ratios (DESIGN.md §7): a real
``clipper-nb serve`` subprocess, the bare Tornado floor (``bare_tornado.py``) and the
models' in-process compute limit, driven by ``clipper_nb.kernel.loadgen`` in a process of
its own. Each figure is the median of repeated short runs. See README.md here for
how to read the table.
"""

from __future__ import annotations

import argparse
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
from _harness import SEEDS, BareTornado, Config, LoadProcess, Row, ServeProcess, measure, pin  # noqa: E402
from _report import format_compute, format_ratios, format_table, num, pct  # noqa: E402

SLO_MS = 20.0          # the sleep, sklearn and torch apps: the paper's setting
NOOP_SLO_MS = 1000.0   # the no-op and floor rows measure throughput (see README.md)
SECTIONS = ("pinning", "noop", "sleep", "sklearn", "torch", "delay", "slo")
SERVER_CORE, LOAD_CORE = {0}, {1}


@dataclass(frozen=True)
class Plan:
    """How much to measure: ``--quick`` or the full run."""

    reps: int
    duration_s: float
    noop_concurrencies: tuple[int, ...]     # closed-loop levels for the no-op and the floor
    model_concurrencies: tuple[int, ...]    # closed-loop levels for sklearn and torch
    model_sweep: tuple[int, ...]            # fixed batch sizes tried on noop, sklearn, torch
    sleep_loads: tuple[tuple[int, int | None], ...]  # (concurrency, rows per request); first: targets
    sleep_sweep: tuple[int, ...]            # fixed batch sizes tried on the sleep model
    delay_fractions: tuple[float, ...]      # open-loop rates, as fractions of closed-loop capacity
    slo_phase_s: float
    distinct: int                           # inputs per repetition where the cache is on


QUICK = Plan(reps=3, duration_s=1.5, noop_concurrencies=(16,), model_concurrencies=(8,), model_sweep=(32,),
             sleep_loads=((2, 8),), sleep_sweep=(4, 8, 16), delay_fractions=(0.6,), slo_phase_s=5.0,
             distinct=4096)
FULL = Plan(reps=3, duration_s=5.0, noop_concurrencies=(4, 16, 64), model_concurrencies=(4, 16, 64),
            model_sweep=(8, 32, 128), sleep_loads=((2, 8), (4, 8), (2, 16), (8, None), (16, None)),
            sleep_sweep=(4, 8, 16, 32, 64), delay_fractions=(0.3, 0.6, 0.9), slo_phase_s=10.0, distinct=12288)
#: Inputs per repetition where the cache is off: only encoding time depends on it.
FEW_INPUTS = 512


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def answered(row: Row) -> float:
    """Real predictions per second, in or out of the SLO (rows less default outputs)."""
    return row.rows_per_s * (1.0 - row.default_rate)


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
        self.deployed: set[str] = set()

    # ------------------------------------------------------------------ processes
    def __enter__(self) -> "Bench":
        try:
            self.serve.start()
            self.bare.start()
            self.load = LoadProcess()
            self.client = self.serve.client()
            self.apply_pinning()
        except BaseException:
            self.__exit__()
            raise
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

    def deploy(self, workload: str, variants: dict[str, dict[str, Any]], *, slo_ms: float = SLO_MS,
               cache: bool = False) -> None:
        """Deploy each variant as model and app ``<workload>-<variant>``.

        The cache is off unless asked for: the batching rows measure batching, and a
        repeated input would skip the model.
        """
        w = self.workload(workload)
        for variant, options in variants.items():
            name = f"{workload}-{variant}"
            self.client.deploy(w.obj, name, app=name, slo_ms=slo_ms, device="cpu", **options)
            self.deployed.add(name)
            if not cache:
                self.client.update_app(name, cache=False)
            self.warm_up(name)
        self.apply_pinning()

    def warm_up(self, app: str, timeout_s: float = 10.0) -> None:
        """Query ``app`` until two real answers in a row: a model's first call pays lazy
        initialisation, and after one slow batch the replica drops queries as too late
        for up to a second before it measures again; neither is ours to measure."""
        end, real = time.monotonic() + timeout_s, 0
        while real < 2 and time.monotonic() < end:
            answer = self.client.predict(app, [0.5] * _workloads.FEATURES)
            real = real + 1 if not answer.get("default") else 0
            if not real:
                time.sleep(0.2)

    def undeploy(self, workload: str, variants: list[str]) -> None:
        for variant in variants:
            self.client.undeploy(f"{workload}-{variant}")
            self.client.delete_app(f"{workload}-{variant}")
            self.deployed.discard(f"{workload}-{variant}")

    def worker_pids(self, app: str) -> list[int]:
        return [r["pid"] for r in self.serve.status()["replicas"] if r["model"] == app and r.get("pid")]

    # ------------------------------------------------------------------ measuring
    def config(self, section: str, workload: str, variant: str, *, bare: bool = False, app: str | None = None,
               distinct: int = FEW_INPUTS, slo_ms: float = SLO_MS, **load: Any) -> Config:
        """A configuration against the server (app ``<workload>-<variant>`` by default) or the floor."""
        app = app or f"{workload}-{variant}"
        target = self.bare if bare else self.serve
        assert target.proc is not None
        return Config(url=target.url, app=app, section=section, workload=workload, variant=variant,
                      server_pids=[target.proc.pid], worker_pids=[] if bare else self.worker_pids(app),
                      slo_ms=slo_ms, distinct=distinct, **load)

    def measure(self, configs: list[Config], record: bool = True) -> list[Row]:
        """Measure ``configs`` side by side (interleaved repetitions); log and keep the rows."""
        assert self.load is not None
        rows = measure(self.load, configs, self.plan.reps, self.plan.duration_s)
        for row in rows:
            log(f"{row.section:8s} {row.workload:7s} {row.variant:16s} {row.load:9s} {row.rows_per_s:8.0f} rows/s  "
                f"goodput {row.goodput:8.0f}  p99 {num(row.p99_ms, 7, 1)} ms  "
                f"frontend {num(row.server_cpu_us_per_row, 5, 0)} us/row")
        if record:
            self.rows.extend(rows)
        return rows

    def ratio(self, name: str, value: float | None, target: str, ok: bool | None, detail: str = "") -> None:
        self.ratios.append({"name": name, "value": value, "target": target, "ok": ok, "detail": detail})

    # ------------------------------------------------------------------ sections
    def section_pinning(self) -> None:
        """Floor and no-op at c=16, pinned and not, interleaved; keep the better (or what --pin says)."""
        self.deploy("noop", {"aimd": {}}, slo_ms=NOOP_SLO_MS, cache=True)
        configs = []
        for pinned in (True, False):
            tag = "pin" if pinned else "nopin"

            def setup(pinned: bool = pinned) -> None:
                self.pinned = pinned
                self.apply_pinning()

            kw = {"slo_ms": NOOP_SLO_MS, "distinct": self.plan.distinct, "concurrency": 16}
            pair = [self.config("pinning", "bare", f"floor ({tag})", bare=True, app="bare", **kw),
                    self.config("pinning", "noop", f"aimd ({tag})", app="noop-aimd", **kw)]
            for cfg in pair:
                cfg.setup = setup
            configs += pair
        pin_bare, pin_noop, free_bare, free_noop = self.measure(configs)
        score = {True: pin_bare.goodput + pin_noop.goodput, False: free_bare.goodput + free_noop.goodput}
        self.pinned = score[True] >= score[False] if self.pin_mode == "auto" else self.pin_mode == "on"
        self.apply_pinning()
        gain = score[True] / score[False] if score[False] else None
        self.ratio("pinning: (floor + no-op goodput) pinned / unpinned", gain, "choose", None,
                   f"using {'pinned' if self.pinned else 'unpinned'} (--pin {self.pin_mode})")

    def section_noop(self) -> None:
        plan = self.plan
        variants = {"off": {"max_batch_size": 1}, **{f"b{n}": {"batch_size": n} for n in plan.model_sweep}}
        self.deploy("noop", variants, slo_ms=NOOP_SLO_MS, cache=True)
        if "noop-aimd" not in self.deployed:
            self.deploy("noop", {"aimd": {}}, slo_ms=NOOP_SLO_MS, cache=True)
        self.compute["noop"] = _workloads.compute_limit(self.workload("noop").predict, [1, 32], budget_s=0.1)
        # the cache is on (the default): fresh inputs for every request, except for the hits
        kw = {"slo_ms": NOOP_SLO_MS, "distinct": plan.distinct}
        for c in plan.noop_concurrencies:
            bare, aimd, hits, *_ = self.measure([
                self.config("noop", "bare", "floor", bare=True, app="bare", concurrency=c, **kw),
                self.config("noop", "noop", "aimd", concurrency=c, **kw),
                self.config("noop", "noop", "aimd cache-hit", app="noop-aimd", concurrency=c,
                            **{**kw, "distinct": 1}),
                *(self.config("noop", "noop", v, concurrency=c, **kw) for v in variants)])
            r = aimd.goodput / bare.goodput if bare.goodput else None
            self.ratio(f"no-op / bare Tornado floor, goodput (c={c})", r, ">= 0.70", r is not None and r >= 0.70,
                       f"{aimd.goodput:.0f} vs {bare.goodput:.0f} rows/s; frontend CPU "
                       f"{num(aimd.server_cpu_us_per_row, 0, 0)} vs {num(bare.server_cpu_us_per_row, 0, 0)} us/row")
            r = hits.goodput / bare.goodput if bare.goodput else None
            self.ratio(f"no-op cache hits / bare Tornado floor (c={c})", r, ">= 0.80", r is not None and r >= 0.80,
                       f"{hits.goodput:.0f} vs {bare.goodput:.0f} rows/s; frontend CPU "
                       f"{num(hits.server_cpu_us_per_row, 0, 0)} us/row")
        self.undeploy("noop", [*variants, "aimd"])

    def section_sleep(self) -> None:
        plan = self.plan
        variants = {"off": {"max_batch_size": 1}, **{f"b{n}": {"batch_size": n} for n in plan.sleep_sweep},
                    "aimd": {}}
        self.deploy("sleep", variants)
        self.compute["sleep"] = _workloads.compute_limit(_workloads.sleep_model, [1, *plan.sleep_sweep],
                                                         budget_s=0.1)
        for c, rows in plan.sleep_loads:
            measured = self.measure([self.config("sleep", "sleep", v, concurrency=c, batch_size=rows)
                                     for v in variants])
            self._sleep_ratios(dict(zip(variants, measured)))
        self.undeploy("sleep", list(variants))

    def _sleep_ratios(self, measured: dict[str, Row]) -> None:
        aimd, off = measured["aimd"], measured["off"]
        shape = aimd.load
        within = [r for v, r in measured.items() if v.startswith("b") and r.p99_ms is not None
                  and r.p99_ms <= SLO_MS]
        best = max(within, key=lambda r: r.goodput, default=None)
        if best is not None:
            r = aimd.goodput / best.goodput if best.goodput else None
            self.ratio(f"sleep AIMD / best fixed size within SLO, goodput ({shape})", r, ">= 0.90",
                       r is not None and r >= 0.90, f"best fixed: {best.variant}, {best.goodput:.0f} rows/s, "
                       f"p99 {best.p99_ms:.1f} ms")
        else:
            fastest = max((r for v, r in measured.items() if v.startswith("b")), key=lambda r: r.goodput)
            self.ratio(f"sleep AIMD / best fixed size within SLO, goodput ({shape})", None, ">= 0.90", None,
                       f"no fixed size met the SLO at p99 (best goodput: {fastest.variant}, "
                       f"{fastest.goodput:.0f} rows/s, p99 {num(fastest.p99_ms, 0, 1)} ms)")
        self.ratio(f"sleep AIMD p99 ({shape}), ms", aimd.p99_ms, f"<= {SLO_MS:g}",
                   aimd.p99_ms is not None and aimd.p99_ms <= SLO_MS,
                   f"SLO attainment {pct(aimd.slo_attainment)}, defaults {pct(aimd.default_rate)}")
        # Off cannot keep up (5 ms a row): it answers defaults for most rows, so its
        # goodput is near 0 and the honest divisor is what it can compute at best.
        cap_off = self.compute["sleep"].get(1)
        r = aimd.goodput / max(off.goodput, 1e-9)
        r_cap = aimd.goodput / cap_off if cap_off else None
        self.ratio(f"sleep AIMD / batching off, goodput ({shape})", r if off.goodput else None, ">= 10",
                   r >= 10 if off.goodput else None,
                   f"{aimd.goodput:.0f} vs {off.goodput:.0f} rows/s; vs off's compute limit "
                   f"({cap_off or 0:.0f} rows/s): {num(r_cap, 0, 1)}x")

    def section_model(self, workload: str) -> None:
        plan = self.plan
        variants = {"off": {"max_batch_size": 1}, **{f"b{n}": {"batch_size": n} for n in plan.model_sweep},
                    "aimd": {}}
        self.deploy(workload, variants)
        self.compute[workload] = _workloads.compute_limit(self.workload(workload).predict, [1, *plan.model_sweep])
        for c in plan.model_concurrencies:
            self.measure([self.config(workload, workload, v, concurrency=c) for v in variants])
        self.undeploy(workload, list(variants))

    def section_delay(self) -> None:
        """Delayed batching (2 ms, the default) against none, at moderate open-loop load."""
        variants = {"aimd": {}, "aimd-d0": {"batch_delay_ms": 0}}
        self.deploy("sklearn", variants)
        closed = [r for r in self.rows if r.workload == "sklearn" and r.variant == "aimd"]
        if not closed:
            closed = self.measure([self.config("delay", "sklearn", "aimd", concurrency=16)], record=False)
        capacity = max(answered(r) for r in closed)
        for fraction in self.plan.delay_fractions:
            qps = max(10, round(capacity * fraction))
            note = f"{fraction:.0%} of closed-loop capacity"
            d2, d0 = self.measure([self.config("delay", "sklearn", "aimd", qps=qps, note=note),
                                   self.config("delay", "sklearn", "aimd-d0", qps=qps, note=note)])
            d2.variant, d0.variant = "aimd delay 2ms", "aimd delay 0"
            gain = d2.goodput / d0.goodput if d0.goodput else None
            cpu = (d0.server_cpu_us_per_row / d2.server_cpu_us_per_row
                   if d0.server_cpu_us_per_row and d2.server_cpu_us_per_row else None)
            self.ratio(f"delayed batching: goodput 2 ms / 0 ms (sklearn, qps={qps})", gain, "report", None,
                       f"p99 {num(d2.p99_ms, 0, 1)} vs {num(d0.p99_ms, 0, 1)} ms; frontend CPU per row "
                       f"0 ms / 2 ms: {num(cpu, 0, 2)}x")
        self.undeploy("sklearn", list(variants))

    def section_slo(self) -> None:
        """Change the SLO at run time (20 -> 50 -> 10 ms); time AIMD's settling and attainment."""
        assert self.load is not None
        self.deploy("sleep", {"slo": {}})
        c, rows = self.plan.sleep_loads[0]
        phase = self.plan.slo_phase_s
        slos = [20.0, 50.0, 10.0]
        start_at = time.time() + 1.0
        caps: list[tuple[float, float]] = []
        answer: dict[str, Any] = {}

        def drive() -> None:
            answer.update(self.load.call(  # type: ignore[union-attr]
                cmd="series", url=self.serve.url, app="sleep-slo", features=784, distinct=1024,
                seed=next(SEEDS), concurrency=c, batch_size=rows, start_at=start_at,
                total_s=phase * len(slos), window_s=0.5,
                schedule=[[i * phase, s] for i, s in enumerate(slos)]))

        loader = threading.Thread(target=drive, daemon=True)
        loader.start()
        changed = 0
        while loader.is_alive():  # the load runs; watch the cap at ~10 Hz, change the SLO on time
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
                          "caps": caps, "windows": [{k: w[k] for k in ("t", "slo_ms", "rows", "rows_per_s", "p99_ms",
                                                                       "slo_attainment", "goodput")}
                                                    for w in windows]}
        for i, slo in enumerate(slos):
            lo, hi = i * phase, (i + 1) * phase
            settle, final = _settle_time([(t - lo, cap) for t, cap in caps if lo <= t < hi])
            att = [(w["t"] - lo, w["slo_attainment"] or 0.0, w["rows"]) for w in windows if lo <= w["t"] < hi]
            recovered = _recovery_time(att, 0.9, phase)
            late = [w for w in windows if lo + phase / 2 <= w["t"] < hi]
            steady_att = _median([w["slo_attainment"] or 0.0 for w in late])
            steady_good = _median([w["goodput"] for w in late])
            self.ratio(f"SLO -> {slo:g} ms: AIMD settle time, s", settle, "<= 5", settle is not None and settle <= 5,
                       f"cap settles at {final:.0f}" if final is not None else "no cap seen")
            self.ratio(f"SLO -> {slo:g} ms: attainment >= 90% after, s", recovered, "recovers",
                       recovered is not None, f"second half: attainment {pct(steady_att)}, "
                       f"goodput {num(steady_good, 0, 0)} rows/s")
        self.undeploy("sleep", ["slo"])


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


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


def _recovery_time(windows: list[tuple[float, float, int]], level: float, phase_s: float,
                   hold_s: float = 1.0) -> float | None:
    """Offset of the first (offset, attainment, rows) window that meets ``level`` and from
    which the attainment over the rest of the phase (all its rows) does too, provided at
    least ``hold_s`` of the phase is left to show that it holds.

    Over the rest of the phase, not window by window: a window can be a fraction of a
    second with a few dozen requests, and one of them must not undo a recovery.
    """
    for i, (t, attainment, _) in enumerate(windows):
        if phase_s - t < hold_s:
            break
        rest = windows[i:]
        rows = sum(n for _, _, n in rest)
        if attainment >= level and rows and sum(a * n for _, a, n in rest) / rows >= level:
            return t
    return None


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
    started, load_before = time.time(), os.getloadavg()[0]
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
              f"{plan.duration_s:g} s per row, medians; SLO {SLO_MS:g} ms, no-op {NOOP_SLO_MS:g} ms; "
              f"{'pinned: server core 0, load core 1' if bench.pinned else 'unpinned'}; {elapsed:.0f} s; "
              f"{os.cpu_count()} cores, load average {load_before:.1f} before the run, "
              f"{os.getloadavg()[0]:.1f} at its end)\n")
        print(format_table(bench.rows, bench.compute))
        print("\ncompute limit, in-process rows/s by batch size (C in 'vs ref'; F = bare Tornado floor):")
        print(format_compute(bench.compute))
        print("\nratios and targets:")
        print(format_ratios(bench.ratios))
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"plan": asdict(plan), "pinned": bench.pinned, "elapsed_s": elapsed,
                           "load_average_before": load_before,
                           "rows": [asdict(r) for r in bench.rows], "ratios": bench.ratios,
                           "compute": bench.compute, "slo_trace": bench.slo_trace}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The benchmark's report: the table, the compute limits and the ratios, as text."""

from __future__ import annotations

from typing import Any

from _harness import Row


def pct(x: float | None) -> str:
    """A share as a percentage, ``-`` when unknown."""
    return "-" if x is None else f"{100 * x:.1f}%"


def format_table(rows: list[Row], compute: dict[str, dict[int, float]]) -> str:
    """One line per row; README.md explains the columns."""
    head = (f"{'section':8s} {'model':7s} {'variant':16s} {'load':9s} {'rows/s':>7s} {'p50 ms':>7s} "
            f"{'p99 ms':>7s} {'SLO':>5s} {'att %':>6s} {'goodput':>7s} {'dflt %':>6s} {'fe us':>5s} "
            f"{'wk us':>5s} {'vs ref':>6s}  goodput of each rep")
    lines = [head, "-" * len(head)]
    floors = {r.load: r.goodput for r in rows if r.workload == "bare" and r.variant.startswith("floor")}
    for r in rows:
        ref = ""
        if r.workload == "noop" and floors.get(r.load):
            ref = f"{r.goodput / floors[r.load]:.0%}F"
        elif r.workload in compute and compute[r.workload]:
            ref = f"{r.goodput / max(compute[r.workload].values()):.0%}C"
        att = None if r.slo_attainment is None else 100 * r.slo_attainment
        lines.append(
            f"{r.section:8s} {r.workload:7s} {r.variant:16s} {r.load:9s} {r.rows_per_s:7.0f} "
            f"{num(r.p50_ms, 7, 1)} {num(r.p99_ms, 7, 1)} {num(r.slo_ms, 5, 0)} {num(att, 6, 1)} "
            f"{r.goodput:7.0f} {100 * r.default_rate:6.1f} {num(r.server_cpu_us_per_row, 5, 0)} "
            f"{num(r.worker_cpu_us_per_row, 5, 0)} {ref:>6s}  {r.reps}{'  ' + r.note if r.note else ''}")
    return "\n".join(lines)


def num(x: float | None, width: int, digits: int) -> str:
    """A number right-aligned in ``width``, ``-`` when unknown."""
    return f"{'-':>{width}s}" if x is None else f"{x:{width}.{digits}f}"


def format_ratios(ratios: list[dict[str, Any]]) -> str:
    """One line per ratio: value, target, verdict (never asserted) and the figures behind it."""
    lines = []
    for r in ratios:
        v = r["value"]
        value = "-" if v is None else (f"{v:.2f}" if isinstance(v, float) else str(v))
        verdict = {True: "MET", False: "MISSED", None: ""}[r["ok"]]
        lines.append(f"  {r['name']:62s} {value:>7s}  {r['target']:9s} {verdict:6s} {r['detail']}")
    return "\n".join(lines)


def format_compute(compute: dict[str, dict[int, float]]) -> str:
    """Reference (b): in-process rows/s of each model by batch size."""
    return "\n".join(f"  {w:8s} " + "  ".join(f"b{n}: {v:,.0f}" for n, v in sizes.items())
                     for w, sizes in compute.items())

"""Kernel-side helpers of notebook 07-torch-gpu: where the CPU time goes while a model serves.

Only the notebook's kernel runs this module (a deployed model must not import it).
CPU time is read from Linux's ``/proc``: ``/proc/<pid>/stat`` gives a process's user +
system CPU seconds (all its threads), ``/proc/stat`` the machine's busy time over all
cores. Dividing a difference of CPU seconds by the wall seconds between two readings
gives *cores in use*: 1.0 is one core kept busy the whole time. On a system without
``/proc`` every reading is NaN and the notebook says the CPU was not measured.
"""

from __future__ import annotations

import math
import os
import time
from typing import Any, Callable, Mapping

_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds that process ``pid`` (every thread of it) has used; NaN if unknown."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return math.nan
    # Fields after the name: state is [0], utime [11], stime [12] (man 5 proc: fields 14, 15).
    return (int(fields[11]) + int(fields[12])) / _TICK


def machine_busy_seconds() -> float:
    """CPU seconds the whole machine has been busy (every core, every process); NaN if unknown."""
    try:
        with open("/proc/stat") as f:
            values = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return math.nan
    idle = values[3] + (values[4] if len(values) > 4 else 0)   # idle + iowait
    return (sum(values[:8]) - idle) / _TICK


def _parent(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def frontend_pid(replica_pid: int) -> int | None:
    """The process that serves the queries (the Jupyter server, or ``clipper-nb serve``).

    A replica is a worker process forked by clipper-nb's fork server (or started by the
    frontend itself): walk up its parents past those to the frontend that started them.
    """
    pid = _parent(replica_pid)
    while pid and "clipper_nb.containers" in _cmdline(pid):
        pid = _parent(pid)
    return pid or None


def serving_processes(status: Any, model: str) -> dict[str, int]:
    """``{label: pid}`` of the processes that serve ``model``: the frontend, each replica
    of the model (from ``c.status()``) and this kernel, which runs the load generator."""
    rows = status[(status["model"] == model) & status["pid"].notna()].sort_values("replica")
    pids = {f"replica {int(r.replica)}": int(r.pid) for r in rows.itertuples()}
    front = frontend_pid(next(iter(pids.values()))) if pids else None
    return {"frontend": front or -1, **pids, "load generator (this kernel)": os.getpid()}


def measure_cpu(run: Callable[[], Any], processes: Mapping[str, int]) -> tuple[Any, dict[str, float]]:
    """Run ``run()`` and return its result and the cores each process used meanwhile.

    The dict also has ``"whole machine"`` (every process, ours and anyone else's) and
    ``"everything else"`` (the machine minus the processes listed).
    """
    before = {label: cpu_seconds(pid) for label, pid in processes.items()}
    busy0, t0 = machine_busy_seconds(), time.monotonic()
    result = run()
    wall = time.monotonic() - t0
    cores = {label: (cpu_seconds(pid) - before[label]) / wall for label, pid in processes.items()}
    cores["whole machine"] = (machine_busy_seconds() - busy0) / wall
    cores["everything else"] = max(0.0, cores["whole machine"] - sum(v for k, v in cores.items()
                                                                   if k != "whole machine"))
    return result, cores


def batches(metrics: Mapping[str, Any], model: str, t0: float, t1: float) -> dict[str, float]:
    """Mean batch size, batches per second and mean time per batch of ``model`` over
    the complete seconds in ``[t0, t1]``, from ``c.metrics()`` (one series per replica)."""
    m = metrics["models"].get(model, {})
    ts = m.get("t", [])
    keep = [i for i, t in enumerate(ts) if t0 <= t <= t1]
    rows = sum(m["rows_per_s"][i] for i in keep)
    count = sum(m["batches_per_s"][i] for i in keep)
    per_second = [ms for replica in m.get("replicas", {}).values()
                  for t, ms in zip(replica["t"], replica["batch_latency_ms"]) if t0 <= t <= t1 and ms is not None]
    return {"mean batch (rows)": rows / count if count else math.nan,
            "batches/s": count / max(1, len(keep)),
            "time per batch (ms)": sum(per_second) / len(per_second) if per_second else math.nan}

"""Processes the benchmark drives, and how one measurement is taken.

* :class:`ServeProcess` — a real ``clipper-nb serve`` subprocess (the system under test);
* :class:`BareTornado` — reference (a), ``bare_tornado.py`` in its own process;
* :class:`LoadProcess` — ``_loadproc.py``, the load generator in its own process;
* :func:`pin` — CPU affinity of whole processes (every thread, like ``taskset -a -p``),
  so one server can be measured pinned and unpinned in the same run;
* :func:`measure` — repeated short runs of several configurations, interleaved,
  each reduced to medians, with the server's CPU time per row (a figure that other
  load on the machine disturbs far less than throughput does).
"""

from __future__ import annotations

import itertools
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import requests

from clipper_nb.kernel.client import Client
from clipper_nb.wire.ports import free_port

HERE = os.path.dirname(os.path.abspath(__file__))
_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pids: Iterable[int]) -> float:
    """User + system CPU time of processes (all their threads); gone ones count 0."""
    total = 0.0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / _TICK
    return total


def pin(pids: Iterable[int], cores: set[int] | None) -> None:
    """Set the CPU affinity of every thread of ``pids`` (None: all cores)."""
    cores = cores or set(range(os.cpu_count() or 1))
    for pid in pids:
        try:
            tids = [int(t) for t in os.listdir(f"/proc/{pid}/task")]
        except OSError:
            continue
        for tid in tids:
            try:
                os.sched_setaffinity(tid, cores)
            except OSError:
                pass  # the thread just ended


def _wait_http(url: str, proc: subprocess.Popen, what: str, timeout: float = 60.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with code {proc.returncode}")
        try:
            requests.get(url, timeout=1)
            return
        except requests.RequestException:
            time.sleep(0.1)
    raise RuntimeError(f"{what} did not answer at {url} within {timeout:.0f} s")


def _stop(proc: subprocess.Popen | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@dataclass
class ServeProcess:
    """``python -m clipper_nb.cli serve --public-predict`` on a free port."""

    state_dir: str
    token: str = "bench-token"
    env: dict[str, str] = field(default_factory=dict)
    port: int = 0
    proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "ServeProcess":
        self.port = free_port()
        os.makedirs(self.state_dir, exist_ok=True)
        log = open(os.path.join(self.state_dir, "serve.log"), "ab")
        cmd = [sys.executable, "-m", "clipper_nb.cli", "serve", "--public-predict", "--port", str(self.port),
               "--state-dir", self.state_dir, f"--token={self.token}", "--log-level", "warning"]
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **self.env})
        log.close()
        _wait_http(f"{self.url}/api/health", self.proc, "clipper-nb serve")
        return self

    def client(self) -> Client:
        return Client(self.url, token=self.token, timeout=60)

    def pids(self) -> list[int]:
        """The server and its live worker processes."""
        assert self.proc is not None
        return [self.proc.pid] + [r["pid"] for r in self.status()["replicas"] if r.get("pid")]

    def status(self) -> dict[str, Any]:
        """``GET /api/status``: one row per replica, with its AIMD ``batch_cap``."""
        return requests.get(f"{self.url}/api/status", headers={"Authorization": f"token {self.token}"},
                            timeout=10).json()

    def stop(self) -> None:
        _stop(self.proc)
        self.proc = None


@dataclass
class BareTornado:
    """Reference (a): ``bare_tornado.py`` on a free port."""

    port: int = 0
    proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "BareTornado":
        self.port = free_port()
        self.proc = subprocess.Popen([sys.executable, os.path.join(HERE, "bare_tornado.py"), "--port",
                                      str(self.port)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        _wait_http(self.url, self.proc, "the bare Tornado reference")
        return self

    def pids(self) -> list[int]:
        assert self.proc is not None
        return [self.proc.pid]

    def stop(self) -> None:
        _stop(self.proc)
        self.proc = None


class LoadProcess:
    """The load generator in a process of its own (``_loadproc.py``), kept for the run."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen([sys.executable, os.path.join(HERE, "_loadproc.py")],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def call(self, **cmd: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the load generator exited (code {self.proc.poll()})")
        answer = json.loads(line)
        if "error" in answer:
            raise RuntimeError(f"the load generator failed: {answer['error']}")
        return answer

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write('{"cmd": "quit"}\n')  # type: ignore[union-attr]
                self.proc.stdin.flush()  # type: ignore[union-attr]
                self.proc.wait(10)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()


@dataclass
class Row:
    """One line of the table: medians over the repetitions of one configuration."""

    section: str
    workload: str
    variant: str
    load: str
    rows_per_s: float
    p50_ms: float | None
    p99_ms: float | None
    slo_attainment: float | None
    goodput: float
    default_rate: float
    errors: int
    server_cpu_us_per_row: float | None
    worker_cpu_us_per_row: float | None = None
    slo_ms: float | None = None
    reps: list[float] = field(default_factory=list)  # goodput of each repetition
    note: str = ""


#: Input seeds handed out across the whole run: every repetition gets inputs of its own.
SEEDS = itertools.count(1000)


def _median(values: list[Any]) -> Any:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


@dataclass
class Config:
    """One configuration to measure: where to send load, of what shape, and what to call it.

    ``setup`` runs before each of its repetitions (the pinning check re-pins there).
    ``distinct`` is how many different inputs a repetition cycles through; 1 repeats
    one input (the cache-hit case).
    """

    url: str
    app: str
    section: str
    workload: str
    variant: str
    server_pids: list[int]
    worker_pids: list[int] = field(default_factory=list)
    concurrency: int | None = None
    qps: float | None = None
    batch_size: int | None = None
    slo_ms: float | None = None
    distinct: int = 4096
    note: str = ""
    setup: Callable[[], None] | None = None

    @property
    def shape(self) -> str:
        shape = f"c={self.concurrency}" if self.concurrency is not None else f"qps={self.qps:g}"
        return shape + (f" x{self.batch_size}" if self.batch_size else "")


def _run_once(load: LoadProcess, cfg: Config, duration_s: float) -> tuple[dict[str, Any], float | None, float | None]:
    """One repetition: the load generator's result and the CPU per row of frontend and workers."""
    if cfg.setup is not None:
        cfg.setup()
    before_fe, before_wk = cpu_seconds(cfg.server_pids), cpu_seconds(cfg.worker_pids)
    # fresh inputs for every repetition, so none hits cache entries an earlier one left
    res = load.call(cmd="run", url=cfg.url, app=cfg.app, features=784, distinct=cfg.distinct,
                    seed=next(SEEDS), concurrency=cfg.concurrency, qps=cfg.qps, duration_s=duration_s,
                    batch_size=cfg.batch_size, slo_ms=cfg.slo_ms)["result"]
    used_fe, used_wk = cpu_seconds(cfg.server_pids) - before_fe, cpu_seconds(cfg.worker_pids) - before_wk
    if not res["rows"]:
        return res, None, None
    return res, used_fe / res["rows"] * 1e6, (used_wk / res["rows"] * 1e6 if cfg.worker_pids else None)


def measure(load: LoadProcess, configs: list[Config], reps: int, duration_s: float) -> list[Row]:
    """Measure ``configs`` ``reps`` times each, interleaved, and reduce each to medians.

    Interleaved (every config once, then again): on a shared machine the load from
    others drifts over minutes, and configurations to be compared should see the
    same drift rather than one getting the quiet minute.
    """
    runs: list[list[tuple[dict[str, Any], float | None, float | None]]] = [[] for _ in configs]
    for _ in range(reps):
        for cfg, done in zip(configs, runs):
            done.append(_run_once(load, cfg, duration_s))
    return [_row(cfg, done) for cfg, done in zip(configs, runs)]


def _row(cfg: Config, runs: list[tuple[dict[str, Any], float | None, float | None]]) -> Row:
    results = [r for r, _, _ in runs]
    return Row(section=cfg.section, workload=cfg.workload, variant=cfg.variant, load=cfg.shape,
               rows_per_s=_median([r["rows_per_s"] for r in results]),
               p50_ms=_median([r["p50_ms"] for r in results]), p99_ms=_median([r["p99_ms"] for r in results]),
               slo_attainment=_median([r["slo_attainment"] for r in results]),
               goodput=_median([r["goodput"] for r in results]),
               default_rate=_median([r["defaults"] / r["rows"] if r["rows"] else 0.0 for r in results]),
               errors=sum(r["errors"] for r in results),
               server_cpu_us_per_row=_median([fe for _, fe, _ in runs]),
               worker_cpu_us_per_row=_median([wk for _, _, wk in runs]),
               slo_ms=cfg.slo_ms, reps=[round(r["goodput"], 1) for r in results], note=cfg.note)

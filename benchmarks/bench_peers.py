"""clipper-nb against its peers, MLServer and Ray Serve, and the bare Tornado floor.

Run by hand (it is not a test)::

    python benchmarks/bench_peers.py                        # 16 in flight, 4 workloads x 4 servers
    python benchmarks/bench_peers.py --connections 64 --json peers64.json
    python benchmarks/bench_peers.py --duration 3 --only noop,floor,clipper

Every server answers the same single-row queries (784 floats, 6 decimals, JSON)
for the same four models (``_workloads.py``, exported once as arrays by
``_peer_models.py``), one after another in one run, each pinned with all its
processes to core 0 (``taskset -a -c 0``, then every thread of the process tree
re-pinned). The load generator is wrk, pinned to core 1, closed loop with
``--connections`` requests in flight; its Lua script (``_peer_wrk.py``) counts the
good answers (HTTP 200, not a default output) and those within the SLO. The
servers:

* **floor**: ``_peer_floor.py``, a bare Tornado handler, stdlib ``json``, the model
  called inline on the one row (no queue, no batching, no second process);
* **clipper**: ``python -m clipper_nb.cli serve --public-predict``, each model deployed
  with ``clipper_nb.kernel.client.Client``, one replica, AIMD (the default), the
  app's SLO ``--slo-ms`` and its cache off; a default output is not a good answer;
* **mlserver**: MLServer with a custom runtime (``_peer_mlserver.py``), adaptive
  batching ``max_batch_size 64`` / ``max_batch_time 2 ms``, its default one parallel
  inference worker, V2 JSON requests with the same 784 floats;
* **ray**: Ray Serve (``_peer_ray.py``), one replica per model, ``@serve.batch``
  ``max_batch_size 64`` / ``batch_wait_timeout_s 2 ms``, ``RAY_SERVE_THROUGHPUT_OPTIMIZED=1``.

MLServer and Ray Serve run in virtualenvs of their own, made on first use under
``~/.cache/clipper-nb-bench/venvs`` (``--venvs``). See README.md here for the table.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any, Callable

import numpy as np
import requests

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _peer_models  # noqa: E402 - after the path is set: benchmarks/ is not a package
import _peer_wrk  # noqa: E402
import _workloads  # noqa: E402
from _harness import ServeProcess, cpu_seconds, pin  # noqa: E402

from clipper_nb.wire.ports import free_port  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
WORKLOADS = ("noop", "sklearn", "torch", "sleep")
SERVERS = ("floor", "clipper", "mlserver", "ray")
LABELS = {
    "floor": "bare Tornado handler, stdlib json, model inline (the floor)",
    "clipper": "clipper-nb (AIMD)",
    "mlserver": "MLServer (adaptive batching max 64 / 2 ms)",
    "ray": "Ray Serve (`@serve.batch` max 64 / 2 ms wait, throughput-optimized)",
}
WORKLOAD_LABELS = {"noop": "no-op", "sklearn": "sklearn LR", "torch": "torch MLP", "sleep": "sleep"}
SERVER_CORE, LOAD_CORE = 0, 1
#: A real answer: Clipper's shape (floor, clipper-nb, our Ray deployment) or a V2 response.
CLIPPER_GOOD = '"default"%s*:%s*false'
V2_GOOD = '"outputs"'
TORCH_PIN = "torch==2.13.0"  # the CPU wheel; a plain ``torch`` would pull a multi-GB CUDA build
VENV_PACKAGES = {
    # MLServer 1.7's inference workers call asyncio.get_event_loop(), which uvloop 0.22+ refuses
    "mlserver": ["mlserver", "mlserver-sklearn", "uvloop<0.22", "numpy", "scikit-learn", TORCH_PIN],
    "ray": ["ray[serve]", "numpy", "scikit-learn", TORCH_PIN],
}
VENV_CHECK = {"mlserver": "import mlserver, mlserver_sklearn, sklearn, torch, uvloop; "
                          "assert tuple(map(int, uvloop.__version__.split('.')[:2])) < (0, 22)",
              "ray": "import ray.serve, sklearn, torch"}
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------- processes
def _children_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    return children


def process_tree(root: int) -> list[int]:
    """``root`` and all its live descendants."""
    children, out, todo = _children_map(), [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


def _start_time(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _pids_with_marker(marker: str) -> list[int]:
    """Live processes whose command line holds ``marker`` (a temp dir this run made)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    if marker.encode() in f.read():
                        found.append(int(entry))
            except OSError:
                pass
    return found


class Proc:
    """A server process started by this run in a session of its own, pinned to core 0.

    Every pid of its tree seen so far is remembered (with its start time, against
    pid reuse), so that processes that left the tree (daemons re-parented to init)
    are still ended at :meth:`stop`; so is any process whose command line holds
    ``marker``, a temp dir that only this run's processes name.
    """

    def __init__(self, name: str, cmd: list[str], env: dict[str, str], cwd: str | None = None,
                 log_path: str | None = None, stdin: bool = False, stdout_pipe: bool = False,
                 marker: str | None = None) -> None:
        self.name = name
        self.marker = marker
        self.known: dict[int, str | None] = {}
        out = open(log_path, "ab") if log_path else subprocess.DEVNULL
        try:
            self.proc = subprocess.Popen(["taskset", "-a", "-c", str(SERVER_CORE)] + cmd, cwd=cwd,
                                         env={**os.environ, **env}, start_new_session=True,
                                         stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
                                         stdout=subprocess.PIPE if stdout_pipe else out,
                                         stderr=out, text=stdout_pipe or stdin)
        finally:
            if log_path:
                out.close()  # type: ignore[union-attr]
        self.remember()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def remember(self) -> list[int]:
        pids = process_tree(self.pid) if self.proc.poll() is None else []
        for pid in pids:
            self.known.setdefault(pid, _start_time(pid))
        return pids

    def pin(self) -> list[int]:
        """Every thread of every process of the tree on core 0; returns the pids."""
        pids = self.remember()
        pin(pids, {SERVER_CORE})
        return pids

    def cpu(self) -> float:
        return cpu_seconds(self.remember())

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, grace_s: float = 20.0) -> None:
        self.remember()
        if self.proc.stdin is not None:
            try:
                self.proc.stdin.close()  # the Ray driver shuts down when its stdin closes
                self.proc.wait(grace_s)
            except (OSError, subprocess.TimeoutExpired):
                pass
        if self.proc.poll() is None:
            try:
                os.killpg(self.pid, signal.SIGTERM)
            except OSError:
                pass
            try:
                self.proc.wait(grace_s)
            except subprocess.TimeoutExpired:
                pass
        self._kill_leftovers()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            pass

    def _kill_leftovers(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            left = [pid for pid, start in self.known.items() if start is not None and _start_time(pid) == start]
            if self.marker:
                left += [pid for pid in _pids_with_marker(self.marker) if pid not in left]
            left = [pid for pid in left if pid != os.getpid()]
            if not left:
                return
            if sig == signal.SIGKILL:
                log(f"{self.name}: killing {len(left)} leftover process(es)")
            try:
                os.killpg(self.pid, sig)
            except OSError:
                pass
            for pid in left:
                try:
                    os.kill(pid, sig)
                except OSError:
                    pass
            end = time.monotonic() + 5
            while time.monotonic() < end and any(_start_time(p) is not None for p in left):
                time.sleep(0.1)


def wait_until(check: Callable[[], bool], timeout_s: float, what: str, alive: Callable[[], bool]) -> None:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if not alive():
            raise RuntimeError(f"{what}: the process exited")
        try:
            if check():
                return
        except requests.RequestException:
            pass
        time.sleep(0.25)
    raise RuntimeError(f"{what}: not ready within {timeout_s:.0f} s")


# ---------------------------------------------------------------------- venvs, wrk
def ensure_wrk() -> None:
    if shutil.which("wrk"):
        return
    log("wrk is missing: apt-get install -y wrk")
    subprocess.run(["apt-get", "install", "-y", "wrk"], check=False, timeout=600,
                   stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    if not shutil.which("wrk"):
        subprocess.run(["apt-get", "update"], check=False, timeout=600, stdout=subprocess.DEVNULL)
        subprocess.run(["apt-get", "install", "-y", "wrk"], check=True, timeout=600, stdout=subprocess.DEVNULL)


def ensure_venv(root: str, name: str) -> str:
    """The virtualenv ``root/name`` with the peer's packages (made on first use); returns its bin dir."""
    venv = os.path.join(root, name)
    python = os.path.join(venv, "bin", "python")
    if os.path.exists(python) and subprocess.run([python, "-c", VENV_CHECK[name]], capture_output=True,
                                                 timeout=300).returncode == 0:
        return os.path.join(venv, "bin")
    log(f"making the {name} virtualenv in {venv} (pip install {' '.join(VENV_PACKAGES[name])}; minutes)")
    os.makedirs(root, exist_ok=True)
    subprocess.run([sys.executable, "-m", "venv", venv], check=True, timeout=300)
    with open(os.path.join(root, f"{name}-pip.log"), "ab") as out:
        subprocess.run([python, "-m", "pip", "install", *VENV_PACKAGES[name]], check=True, timeout=3600,
                       stdout=out, stderr=subprocess.STDOUT)
    subprocess.run([python, "-c", VENV_CHECK[name]], check=True, timeout=300)
    return os.path.join(venv, "bin")


# ---------------------------------------------------------------------- servers
class Server:
    """A server under comparison: start it, where to send a workload's queries, stop it."""

    name = ""
    good = CLIPPER_GOOD
    v2 = False

    def __init__(self, bench: "Bench") -> None:
        self.bench = bench
        self.procs: list[Proc] = []
        self.url = ""

    def start(self, workloads: list[str]) -> None:
        raise NotImplementedError

    def prepare(self, workload: str) -> None:
        """Before a workload's cell (clipper-nb deploys it here)."""

    def finish(self, workload: str) -> None:
        """After a workload's cell (clipper-nb undeploys it here)."""

    def path(self, workload: str) -> str:
        raise NotImplementedError

    def server_counts(self, workload: str) -> dict | None:
        """What the server itself counted for the workload's app so far (queries, and those
        answered with a real prediction within the SLO), or None when it does not say."""
        return None

    def pin(self) -> None:
        for p in self.procs:
            p.pin()

    def cpu(self) -> float:
        return sum(p.cpu() for p in self.procs)

    def alive(self) -> bool:
        return all(p.alive() for p in self.procs)

    def stop(self) -> None:
        for p in reversed(self.procs):
            p.stop()


class FloorServer(Server):
    name = "floor"

    def start(self, workloads: list[str]) -> None:
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        self.procs.append(Proc("floor", [sys.executable, os.path.join(HERE, "_peer_floor.py"), "--port", str(port),
                                         "--model-dir", self.bench.model_dir, "--workloads", ",".join(workloads)],
                               ONE_THREAD, log_path=os.path.join(self.bench.tmp, "floor.log")))
        wait_until(lambda: requests.get(self.url, timeout=1).status_code > 0, 120, "floor", self.alive)

    def path(self, workload: str) -> str:
        return f"/{workload}/predict"


class ClipperServer(Server):
    """clipper-nb through ``_harness.ServeProcess``; each workload deployed for its cell only."""

    name = "clipper"

    def start(self, workloads: list[str]) -> None:
        self.known: dict[int, str | None] = {}
        self.serve = ServeProcess(os.path.join(self.bench.tmp, "clipper-state"), env=dict(ONE_THREAD))
        try:
            self.serve.start()
        except BaseException:
            self.serve.stop()
            raise
        assert self.serve.proc is not None
        self.root = self.serve.proc.pid
        self.url = self.serve.url
        self.client = self.serve.client()
        self.pin()

    def tree(self) -> list[int]:
        pids = process_tree(self.root) if self.serve.proc is not None and self.serve.proc.poll() is None else []
        for pid in pids:
            self.known.setdefault(pid, _start_time(pid))
        return pids

    def pin(self) -> None:
        pin(self.tree(), {SERVER_CORE})

    def cpu(self) -> float:
        return cpu_seconds(self.tree())

    def alive(self) -> bool:
        return self.serve.proc is not None and self.serve.proc.poll() is None

    def prepare(self, workload: str) -> None:
        w = _workloads.build(workload)
        self.client.deploy(w.obj, workload, app=workload, replicas=1, slo_ms=self.bench.slo_ms, device="cpu")
        self.client.update_app(workload, cache=False)
        self.pin()  # the new worker

    def finish(self, workload: str) -> None:
        try:
            self.client.undeploy(workload)
            self.client.delete_app(workload)
        except Exception as exc:  # noqa: BLE001 - the next cell can live with a leftover model
            log(f"clipper: undeploying {workload} failed: {exc}")

    def path(self, workload: str) -> str:
        return f"/{workload}/predict"

    def server_counts(self, workload: str) -> dict | None:
        totals = self.client.metrics()["apps"][workload]["totals"]
        return {"queries": totals["queries"], "good": totals["goodput"]}

    def stop(self) -> None:
        if not hasattr(self, "root"):  # start() failed, and stopped what it had started
            return
        self.tree()
        self.serve.stop()
        for sig in (signal.SIGTERM, signal.SIGKILL):
            left = [p for p, s in self.known.items() if s is not None and _start_time(p) == s]
            for pid in left:
                try:
                    os.kill(pid, sig)
                except OSError:
                    pass
            if left:
                time.sleep(1)


class MLServerServer(Server):
    name = "mlserver"
    good = V2_GOOD
    v2 = True

    def start(self, workloads: list[str]) -> None:
        bin_dir = ensure_venv(self.bench.venvs, "mlserver")
        repo = os.path.join(self.bench.tmp, "mlserver-repo")
        os.makedirs(repo, exist_ok=True)
        shutil.copy(os.path.join(HERE, "_peer_mlserver.py"), os.path.join(repo, "runtime.py"))
        shutil.copy(os.path.join(HERE, "_peer_models.py"), os.path.join(repo, "_peer_models.py"))
        port, grpc, metrics = free_port(), free_port(), free_port()
        with open(os.path.join(repo, "settings.json"), "w") as f:
            json.dump({"http_port": port, "grpc_port": grpc, "metrics_port": metrics, "host": "127.0.0.1",
                       "debug": False}, f)
        for w in workloads:
            os.makedirs(os.path.join(repo, w), exist_ok=True)
            with open(os.path.join(repo, w, "model-settings.json"), "w") as f:
                json.dump({"name": w, "implementation": "runtime.PeerRuntime",
                           "max_batch_size": 64, "max_batch_time": 0.002,
                           "parameters": {"extra": {"workload": w, "model_dir": self.bench.model_dir}}}, f)
        self.url = f"http://127.0.0.1:{port}"
        self.procs.append(Proc("mlserver", [os.path.join(bin_dir, "mlserver"), "start", repo],
                               {**ONE_THREAD, "PYTHONPATH": repo}, cwd=repo,
                               log_path=os.path.join(self.bench.tmp, "mlserver.log"), marker=repo))
        for w in workloads:
            wait_until(lambda w=w: requests.get(f"{self.url}/v2/models/{w}/ready", timeout=2).status_code == 200,
                       300, f"mlserver model {w}", self.alive)
        self.pin()

    def path(self, workload: str) -> str:
        return f"/v2/models/{workload}/infer"


class RayServer(Server):
    name = "ray"

    def start(self, workloads: list[str]) -> None:
        bin_dir = ensure_venv(self.bench.venvs, "ray")
        code = tempfile.mkdtemp(prefix="peer-ray-code-", dir=self.bench.tmp)
        shutil.copy(os.path.join(HERE, "_peer_ray.py"), code)
        shutil.copy(os.path.join(HERE, "_peer_models.py"), code)
        temp = tempfile.mkdtemp(prefix="rpb", dir="/tmp")  # short: Ray's socket paths are length-limited
        self.ray_temp = temp
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        env = {**ONE_THREAD, "PYTHONPATH": code, "RAY_USAGE_STATS_ENABLED": "0",
               "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1" if self.bench.ray_throughput else "0"}
        proc = Proc("ray", [os.path.join(bin_dir, "python"), os.path.join(code, "_peer_ray.py"), "--port", str(port),
                            "--model-dir", self.bench.model_dir, "--workloads", ",".join(workloads),
                            "--temp-dir", temp, "--max-life-s", "3600"],
                    env, stdin=True, stdout_pipe=True, marker=temp, log_path=os.path.join(self.bench.tmp, "ray.log"))
        self.procs.append(proc)
        lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=lambda: [lines.put(ln) for ln in proc.proc.stdout], daemon=True).start()
        end = time.monotonic() + 300
        while time.monotonic() < end:
            proc.pin()  # Ray's daemons and workers appear while it starts: pin them as they come
            try:
                if lines.get(timeout=0.5).strip() == "READY":
                    break
            except queue.Empty:
                if not proc.alive():
                    raise RuntimeError("the Ray Serve driver exited while starting") from None
        else:
            raise RuntimeError("Ray Serve not ready within 300 s")
        self.pin()

    def path(self, workload: str) -> str:
        return f"/{workload}"

    def stop(self) -> None:
        super().stop()
        shutil.rmtree(getattr(self, "ray_temp", ""), ignore_errors=True)


SERVER_CLASSES = {"floor": FloorServer, "clipper": ClipperServer, "mlserver": MLServerServer, "ray": RayServer}


# ---------------------------------------------------------------------- the run
class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.connections = args.connections
        self.threads = args.wrk_threads or args.connections
        self.duration_s = args.duration
        self.warmup_s = args.warmup
        self.slo_ms = args.slo_ms
        self.venvs = os.path.expanduser(args.venvs)
        self.ray_throughput = not args.no_ray_throughput
        self.tmp = tempfile.mkdtemp(prefix="clipper-peers-")
        self.model_dir = os.path.join(self.tmp, "models")
        self.results: dict[str, dict[str, dict[str, Any]]] = {}
        rng = np.random.default_rng(7)
        rows = rng.random((16, _peer_models.FEATURES)).round(6)
        self.clipper_bodies = [json.dumps({"input": r.tolist()}) for r in rows]
        self.v2_bodies = [json.dumps({"inputs": [{"name": "input", "shape": [1, _peer_models.FEATURES],
                                                  "datatype": "FP64", "data": r.tolist()}]}) for r in rows]

    def close(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)

    def warm_up(self, server: Server, workload: str, timeout_s: float = 60.0) -> None:
        """Until two good answers in a row: first calls pay lazy initialisation."""
        body = (self.v2_bodies if server.v2 else self.clipper_bodies)[0]
        pattern = re.compile(server.good.replace("%s", r"\s"))
        end, good = time.monotonic() + timeout_s, 0
        while good < 2 and time.monotonic() < end:
            try:
                r = requests.post(server.url + server.path(workload), data=body, timeout=10,
                                  headers={"Content-Type": "application/json"})
                good = good + 1 if r.status_code == 200 and pattern.search(r.text) else 0
            except requests.RequestException:
                good = 0
            if not good:
                time.sleep(0.2)
        if good < 2:
            raise RuntimeError(f"{server.name}/{workload}: no good answer within {timeout_s:.0f} s")

    def cell(self, server: Server, workload: str) -> dict[str, Any]:
        script = os.path.join(self.tmp, f"{server.name}-{workload}.lua")
        _peer_wrk.write_script(script, server.path(workload), self.v2_bodies if server.v2 else self.clipper_bodies,
                               server.good, self.slo_ms, exact=self.threads == self.connections)
        self.warm_up(server, workload)
        server.pin()
        if self.warmup_s > 0:
            _peer_wrk.run(server.url, script, self.connections, self.threads, self.warmup_s, LOAD_CORE)
        server.pin()
        cpu0, counted0 = server.cpu(), server.server_counts(workload)
        stats = _peer_wrk.run(server.url, script, self.connections, self.threads, self.duration_s, LOAD_CORE)
        used = server.cpu() - cpu0
        counted1 = server.server_counts(workload)
        if counted0 is not None and counted1 is not None and counted1["queries"] > counted0["queries"]:
            # The SLO as the server judged it (its clock starts when a request's headers are
            # read) beside the client's (wrk's, from sending to the last byte received).
            queries = counted1["queries"] - counted0["queries"]
            stats["server_attainment"] = (counted1["good"] - counted0["good"]) / queries
        if stats["requests"]:
            stats["client_attainment"] = stats["goodput"] * stats["duration_us"] / 1e6 / stats["requests"]
        stats["server_cpu_us_per_req"] = used / stats["requests"] * 1e6 if stats["requests"] else None
        stats["server_cpu_share"] = used / (stats["duration_us"] / 1e6) if stats["duration_us"] else None
        return stats

    def log_tail(self, name: str, lines: int = 15) -> None:
        """The end of a server's log, to stderr (the temp dir goes at the end of the run)."""
        path = os.path.join(self.tmp, f"{name}.log")
        if os.path.exists(path):
            with open(path, errors="replace") as f:
                tail = f.read().splitlines()[-lines:]
            log(f"{name}: last lines of its log:\n    " + "\n    ".join(tail))

    def run_server(self, name: str, workloads: list[str]) -> None:
        server = SERVER_CLASSES[name](self)
        self.results.setdefault(name, {})
        log(f"{name}: starting")
        try:
            server.start(workloads)
            for workload in workloads:
                try:
                    server.prepare(workload)
                    stats = self.cell(server, workload)
                    self.results[name][workload] = stats
                    log(f"{name:8s} {workload:7s} goodput {stats['goodput']:7.0f}/s  good {stats['good_per_s']:7.0f}/s  "
                        f"req {stats['req_per_s']:7.0f}/s  p50 {stats['p50_us'] / 1000:6.1f} ms  "
                        f"p99 {stats['p99_us'] / 1000:6.1f} ms  bad {stats['bad']}  "
                        f"errors {stats['http_errors'] + stats['socket_errors'] + stats['timeouts']}  "
                        f"cpu {stats['server_cpu_share'] or 0:.2f} core"
                        + (f"  SLO attainment server {stats['server_attainment']:.1%} / client "
                           f"{stats['client_attainment']:.1%}" if "server_attainment" in stats else ""))
                except Exception as exc:  # noqa: BLE001 - one failed cell does not end the run
                    log(f"{name} {workload}: FAILED: {exc}")
                    self.log_tail(name)
                    self.results[name][workload] = {"error": str(exc)}
                finally:
                    server.finish(workload)
        except Exception as exc:  # noqa: BLE001 - one server that cannot start does not end the run
            log(f"{name}: FAILED: {exc}")
            self.log_tail(name)
            for workload in workloads:
                self.results[name].setdefault(workload, {"error": str(exc)})
        finally:
            log(f"{name}: stopping")
            server.stop()


def combine_rounds(rounds: list[dict[str, dict[str, dict[str, Any]]]]) -> dict[str, dict[str, dict[str, Any]]]:
    """Per cell, the round with the median goodput (the lower one of an even count), with every round's goodput."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for server in {s for r in rounds for s in r}:
        for workload in {w for r in rounds for w in r.get(server, {})}:
            cells = [r[server][workload] for r in rounds if workload in r.get(server, {})]
            ok = sorted((c for c in cells if "error" not in c), key=lambda c: c["goodput"])
            best = dict(ok[(len(ok) - 1) // 2]) if ok else dict(cells[0])
            best["rounds_goodput"] = [round(c["goodput"], 1) if "goodput" in c else None for c in cells]
            out.setdefault(server, {})[workload] = best
    return out


def _cell(stats: dict[str, Any] | None) -> str:
    if not stats:
        return "-"
    if "error" in stats:
        return "failed"
    return f"{stats['goodput']:,.0f}/s, p99 {stats['p99_us'] / 1000:.1f} ms"


def _cpu_cell(stats: dict[str, Any] | None) -> str:
    if not stats or "error" in stats or stats.get("server_cpu_us_per_req") is None:
        return "-"
    return f"{stats['server_cpu_us_per_req']:,.0f} us, {stats['server_cpu_share']:.2f} core"


def format_report(bench: Bench, servers: list[str], workloads: list[str], meta: dict[str, Any]) -> str:
    out = [f"clipper-nb vs peers: {bench.connections} in flight (wrk -t{bench.threads} -c{bench.connections}, "
           f"{bench.duration_s:g} s per cell after {bench.warmup_s:g} s of warm-up, {meta['rounds']} round(s)), "
           f"SLO {bench.slo_ms:g} ms; "
           f"servers on core {SERVER_CORE}, wrk on core {LOAD_CORE}; load average {meta['load_before']} before, "
           f"{meta['load_after']} after; {meta['elapsed_s']:.0f} s", "",
           "goodput = good answers (HTTP 200, not a default output) within the SLO per second; p99 of all requests",
           "",
           "| " + f"{bench.connections} in flight | " + " | ".join(WORKLOAD_LABELS[w] for w in workloads) + " |",
           "|---|" + "---|" * len(workloads)]
    for s in servers:
        out.append(f"| {LABELS[s]} | " + " | ".join(_cell(bench.results.get(s, {}).get(w)) for w in workloads) + " |")
    out += ["", "server CPU per request (all its processes; less disturbed by other load than goodput) "
            "and the share of core 0 it got:", "",
            "| " + f"{bench.connections} in flight | " + " | ".join(WORKLOAD_LABELS[w] for w in workloads) + " |",
            "|---|" + "---|" * len(workloads)]
    for s in servers:
        out.append(f"| {LABELS[s]} | " + " | ".join(_cpu_cell(bench.results.get(s, {}).get(w)) for w in workloads)
                   + " |")
    out += ["", "detail: req/s, good/s, goodput/s, p50/p99 ms, bad (200 but default), errors, server CPU us/req", ""]
    for s in servers:
        for w in workloads:
            st = bench.results.get(s, {}).get(w)
            if not st:
                continue
            if "error" in st:
                out.append(f"  {s:8s} {w:7s} FAILED: {st['error'][:200]}")
                continue
            errors = st["http_errors"] + st["socket_errors"] + st["timeouts"]
            cpu = st.get("server_cpu_us_per_req")
            out.append(f"  {s:8s} {w:7s} req {st['req_per_s']:7.0f}  good {st['good_per_s']:7.0f}  "
                       f"goodput {st['goodput']:7.0f}  p50 {st['p50_us'] / 1000:6.1f}  p99 {st['p99_us'] / 1000:6.1f}  "
                       f"bad {st['bad']:6d}  errors {errors:5d}  cpu {cpu if cpu is None else round(cpu):>6} us/req"
                       + (f"  rounds {st['rounds_goodput']}" if len(st.get("rounds_goodput", [])) > 1 else "")
                       + (f"  SLO attainment server {st['server_attainment']:.1%} / client {st['client_attainment']:.1%}"
                          if "server_attainment" in st else ""))
    out += ["", "ratios of goodput (clipper-nb / other):", ""]
    for other in ("floor", "mlserver", "ray"):
        if "clipper" not in servers or other not in servers:
            continue
        parts = []
        for w in workloads:
            mine = bench.results.get("clipper", {}).get(w) or {}
            theirs = bench.results.get(other, {}).get(w) or {}
            if "goodput" in mine and "goodput" in theirs and theirs["goodput"] > 0:
                parts.append(f"{WORKLOAD_LABELS[w]} {mine['goodput'] / theirs['goodput']:.2f}")
            else:
                parts.append(f"{WORKLOAD_LABELS[w]} -")
        out.append(f"  clipper-nb / {other:9s} " + "  ".join(parts))
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=16, help="requests in flight (wrk -c); default 16")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds measured per cell; default 10")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds of unmeasured wrk load before each cell")
    parser.add_argument("--slo-ms", type=float, default=20.0, help="the SLO, ms (clipper-nb's apps and the scoring)")
    parser.add_argument("--only", default="", help="comma-separated workloads and/or servers "
                        f"({','.join(WORKLOADS)}; {','.join(SERVERS)}); default all")
    parser.add_argument("--wrk-threads", type=int, default=0,
                        help="wrk -t; default = --connections (one connection per thread: exact per-request "
                             "latency); fewer: goodput estimated from wrk's latency histogram")
    parser.add_argument("--venvs", default="~/.cache/clipper-nb-bench/venvs",
                        help="where the MLServer and Ray Serve virtualenvs live (made if absent)")
    parser.add_argument("--no-ray-throughput", action="store_true",
                        help="leave RAY_SERVE_THROUGHPUT_OPTIMIZED unset (default: =1)")
    parser.add_argument("--rounds", type=int, default=1,
                        help="run every server this many times (restarted each round, order reversed every other "
                             "round) and report the round with the median goodput per cell; default 1")
    parser.add_argument("--json", help="also write every cell's figures to this file")
    args = parser.parse_args()

    chosen = [t for t in args.only.split(",") if t]
    unknown = [t for t in chosen if t not in WORKLOADS and t not in SERVERS]
    if unknown:
        parser.error(f"--only: unknown {', '.join(unknown)}")
    workloads = [w for w in WORKLOADS if w in chosen] or list(WORKLOADS)
    servers = [s for s in SERVERS if s in chosen] or list(SERVERS)
    if args.wrk_threads and not 1 <= args.wrk_threads <= args.connections:
        parser.error("--wrk-threads must be between 1 and --connections")
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    if (os.cpu_count() or 1) < 2:
        parser.error("needs 2 cores: the servers on core 0, wrk on core 1")

    ensure_wrk()
    start, load_before = time.monotonic(), "%.2f" % os.getloadavg()[0]
    bench = Bench(args)
    # A signal ends the run through the finally clauses (every process group is ended).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        log(f"exporting the models to {bench.model_dir}")
        _peer_models.export(bench.model_dir)
        rounds = []
        for i in range(args.rounds):
            if args.rounds > 1:
                log(f"round {i + 1} of {args.rounds}")
            bench.results = {}
            # every other round in reverse order: drifting load from others falls on all servers alike
            for name in servers if i % 2 == 0 else servers[::-1]:
                bench.run_server(name, workloads)
            rounds.append(bench.results)
        bench.results = combine_rounds(rounds)
    finally:
        bench.close()
    meta = {"load_before": load_before, "load_after": "%.2f" % os.getloadavg()[0], "rounds": args.rounds,
            "elapsed_s": time.monotonic() - start}
    print(format_report(bench, servers, workloads, meta))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"connections": args.connections, "wrk_threads": bench.threads, "duration_s": args.duration,
                       "slo_ms": args.slo_ms, "meta": meta, "results": bench.results}, f, indent=1)


if __name__ == "__main__":
    main()

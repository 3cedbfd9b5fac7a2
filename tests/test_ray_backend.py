"""The Ray backend: replicas as Ray actors on a (local, multi-node) Ray cluster.

One machine plays a cluster (``ray.cluster_utils.Cluster``): a head and two worker
nodes, each declaring one CPU and a custom resource of its own; ``node_b`` also
declares two (fake) GPUs. Replicas ask for a quarter CPU each. The tests drive a real
:class:`~clipper_nb.engine.facade.Engine` whose models say ``backend="ray"`` (or whose
``default_backend`` knob does), so the whole path runs: the engine's cache, queue,
AIMD and retries on the frontend; the model in Ray actors.

The cluster tests are marked ``cluster`` and skipped when Ray is not installed; the
last one removes a node, so it runs last. The whole file takes about 1-1.5 minutes on
2 cores (starting the three nodes is 15-30 s of it).
"""

from __future__ import annotations

import asyncio
import importlib.util
import sys
import time
from typing import Any

import pytest

from clipper_nb.abstraction.backend import ReplicaSpec
from clipper_nb.abstraction.inprocess import InProcessBackend
from clipper_nb.config import ClipperNB
from clipper_nb.containers.ray_backend import NAMESPACE, RAY_MISSING, RayBackend, frontend_prefix
from clipper_nb.engine.facade import Engine
from clipper_nb.errors import BadInput, DeployError, ModelError, Unavailable
from clipper_nb.wire import artifact


def _has_ray() -> bool:
    try:
        return importlib.util.find_spec("ray") is not None
    except (ImportError, ValueError):
        return False


HAS_RAY = _has_ray()
needs_ray = pytest.mark.skipif(not HAS_RAY, reason='Ray is not installed: pip install "clipper-nb[ray]"')
#: Replicas of a restarted model must be back within this many seconds of their node's loss.
BACK_WITHIN_S = 30.0


def row_sums(batch):
    return [float(sum(row)) for row in batch]


def slow_row_sums(batch):
    """Row sums, 50 ms per batch: batches are in flight when something dies."""
    time.sleep(0.05)
    return [float(sum(row)) for row in batch]


def divide_by_zero(batch):
    return [1 / 0 for _ in batch]


async def deploy(engine: Engine, fn: Any, name: str, **options: Any) -> dict:
    payload, meta = artifact.package(fn)
    return await engine.deploy(name, payload, meta, **options)


def handles(engine: Engine, model: str) -> list:
    return [s.handle for s in engine.deployments[model].supervisor.slots if s.handle is not None]


def live_nodes(engine: Engine, model: str) -> list[str]:
    return [h.info["node_id"] for h in handles(engine, model) if h.state in ("idle", "busy")]


def our_actors(engine: Engine) -> list[str]:
    import ray

    prefix = frontend_prefix(engine.store.state_dir)
    return sorted(a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
                  if a["namespace"] == NAMESPACE and a["name"].startswith(prefix))


async def eventually(predicate, timeout: float, what: str) -> float:
    """Wait on the event loop until ``predicate()``; the seconds it took."""
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        await asyncio.sleep(0.1)
    return time.monotonic() - start


# ---------------------------------------------------------------- without a cluster


async def test_without_ray_choosing_the_backend_says_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    engine = Engine(ClipperNB(state_dir=str(tmp_path)), backends={"process": InProcessBackend()})
    await engine.start()
    try:
        with pytest.raises(Unavailable) as caught:
            await deploy(engine, row_sums, "m", backend="ray")
        assert caught.value.message == RAY_MISSING and 'pip install "clipper-nb[ray]"' in caught.value.message
        assert "m" not in engine.models and "m" not in engine.versions  # nothing stored
        assert "ray" not in engine.backends
        await deploy(engine, row_sums, "m")  # the process backend still serves
    finally:
        await engine.stop()


async def test_resources_are_for_ray_replicas_only(tmp_path):
    engine = Engine(ClipperNB(state_dir=str(tmp_path)), backends={"process": InProcessBackend()})
    await engine.start()
    try:
        with pytest.raises(BadInput, match="resources place replicas on a Ray cluster"):
            await deploy(engine, row_sums, "m", resources={"gpu_node": 1})
        with pytest.raises(BadInput, match="resources"):
            await deploy(engine, row_sums, "m", backend="ray", resources={"gpu_node": "many"})
        with pytest.raises(BadInput, match="unknown replica backend 'slurm'"):
            await deploy(engine, row_sums, "m", backend="slurm")
    finally:
        await engine.stop()


def test_placement_asks_ray_for_what_the_deploy_says():
    backend = RayBackend(num_cpus=0.5, tag="/tmp/some-state")
    spec = ReplicaSpec(model="m", version="1", index=0, artifact_dir="", log_dir="", device="cuda:1",
                       python=sys.executable, cwd=None, env={"OMP_NUM_THREADS": "1"})
    options, device, threads = backend.actor_options(spec, "m:1:0:1", {"gpu_node": 1})
    assert options["name"] == frontend_prefix("/tmp/some-state") + "m:1:0:1" and options["namespace"] == NAMESPACE
    assert (options["num_cpus"], options["num_gpus"], options["resources"]) == (0.5, 1, {"gpu_node": 1})
    assert options["scheduling_strategy"] == "SPREAD" and options["max_restarts"] == 0
    assert options["runtime_env"] == {"env_vars": {"OMP_NUM_THREADS": "1"}}
    assert (device, threads) == ("cuda", 1)  # Ray hands the actor its GPU as cuda:0
    cpu = ReplicaSpec(**{**spec.__dict__, "device": "auto", "env": {}})
    options, device, threads = backend.actor_options(cpu, "m:1:0:2", {"CPU": 2})
    assert (options["num_cpus"], options["num_gpus"], device, threads) == (2, 0, "cpu", 2)
    assert "resources" not in options and "runtime_env" not in options
    assert frontend_prefix("/a") != frontend_prefix("/b")


def test_the_deploy_magic_passes_backend_and_resources(monkeypatch):
    from IPython.core.error import UsageError
    from IPython.core.interactiveshell import InteractiveShell

    calls: list[dict] = []

    class Recorder:
        def deploy(self, obj, name, **options):
            calls.append({"name": name, **options})
            return {"version": "1", "kind": "callable", "replicas_up": 2, "replicas": 2}

    ip = InteractiveShell.instance()
    try:
        ip.run_line_magic("load_ext", "clipper_nb")
        monkeypatch.setattr(ip.magics_manager.registry["ClipperMagics"], "_client", lambda: Recorder())
        ip.user_ns["f"] = row_sums
        ip.run_line_magic("clipper", "deploy f --replicas 2 --backend ray --resources gpu_node=1,CPU=0.5")
        assert calls[0]["backend"] == "ray" and calls[0]["resources"] == {"gpu_node": 1.0, "CPU": 0.5}
        ip.run_line_magic("clipper", "deploy f")
        assert calls[1]["backend"] is None and calls[1]["resources"] is None  # the server decides
        with pytest.raises(UsageError, match="--resources takes NAME=AMOUNT"):
            ip.run_line_magic("clipper", "deploy f --resources gpu_node")
    finally:
        InteractiveShell.clear_instance()


# ---------------------------------------------------------------- on a three-node cluster


@pytest.fixture(scope="module")
def cluster():
    """A head and two workers on this machine; the test process is a driver of it."""
    if not HAS_RAY:
        pytest.skip('Ray is not installed: pip install "clipper-nb[ray]"')
    import ray
    from ray.cluster_utils import Cluster

    fast_failure_detection = {"health_check_period_ms": 500, "health_check_failure_threshold": 4,
                              "health_check_initial_delay_ms": 0}
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "resources": {"head": 1},
                                                     "include_dashboard": False,
                                                     "_system_config": fast_failure_detection})
    try:
        c.workers = {"node_a": c.add_node(num_cpus=1, resources={"node_a": 1}),
                     "node_b": c.add_node(num_cpus=1, num_gpus=2, resources={"node_b": 1})}
        c.wait_for_nodes()
        ray.init(address=c.address, namespace="clipper-nb-tests", log_to_driver=False)
        c.node_ids = {name: node.node_id for name, node in c.workers.items()}
        c.node_ids["head"] = c.head_node.node_id
        yield c
    finally:
        ray.shutdown()
        c.shutdown()


@pytest.fixture
async def engine(tmp_path, cluster):
    eng = Engine(_config(tmp_path, cluster))
    await eng.start()
    yield eng
    await eng.stop()


def _config(tmp_path, cluster, **knobs: Any) -> ClipperNB:
    return ClipperNB(state_dir=str(tmp_path / "state"), ray_address=cluster.address, ray_num_cpus=0.25,
                     heartbeat_timeout_s=3.0, hang_timeout_s=20.0, start_timeout_s=30.0, **knobs)


@pytest.mark.cluster
@needs_ray
async def test_replicas_are_actors_spread_over_the_nodes(engine, cluster):
    assert "ray" not in engine.backends  # created lazily, by the first model that asks
    model = await deploy(engine, row_sums, "m", backend="ray", replicas=3, app="app", slo_ms=2000)
    assert model["replicas_up"] == 3 and model["backend"] == "ray" and "ray" in engine.backends
    nodes = live_nodes(engine, "m")
    assert sorted(nodes) == sorted(cluster.node_ids.values())  # one replica on each node (SPREAD)
    rows = engine.status()
    assert {r["backend"] for r in rows} == {"ray"} and {r["pid"] for r in rows} == {None}
    assert all(h.info["device"] == "cpu" and h.info["pid"] > 0 for h in handles(engine, "m"))
    results = await asyncio.gather(*(engine.predict("app", [float(i), 1.0]) for i in range(40)))
    assert [r["output"] for r in results] == [i + 1.0 for i in range(40)]
    assert not any(r["default"] for r in results)
    await deploy(engine, divide_by_zero, "broken", backend="ray", app="broken", slo_ms=2000)
    with pytest.raises(ModelError, match="ZeroDivisionError: division by zero"):
        await engine.predict("broken", [1.0])
    assert len(our_actors(engine)) == 4
    _, meta = artifact.package(row_sums)
    with pytest.raises(DeployError, match="a Ray replica could not load bad:1: .*UnpicklingError") as caught:
        await engine.deploy("bad", b"not a pickle", meta, backend="ray")
    assert "Traceback" in caught.value.cause and "bad" not in engine.models
    assert len(our_actors(engine)) == 4  # the replica that could not load is gone


@pytest.mark.cluster
@needs_ray
async def test_a_cuda_replica_lands_where_a_gpu_is_declared_and_resources_steer(engine, cluster):
    # A function model ignores the device: the replica runs on CPU-only torch too; what
    # is checked is where Ray placed it, and that it was handed the node's GPU.
    await deploy(engine, row_sums, "gpu", backend="ray", device="cuda", replicas=2)
    assert live_nodes(engine, "gpu") == [cluster.node_ids["node_b"]] * 2
    assert all(h.info["gpus"] for h in handles(engine, "gpu"))
    await deploy(engine, row_sums, "pinned", backend="ray", replicas=2, resources={"node_a": 0.1})
    assert live_nodes(engine, "pinned") == [cluster.node_ids["node_a"]] * 2
    assert engine.describe_model("pinned")["resources"] == {"node_a": 0.1}


@pytest.mark.cluster
@needs_ray
async def test_a_killed_actor_loses_no_query_and_comes_back(engine, cluster):
    import ray

    await deploy(engine, slow_row_sums, "m", backend="ray", replicas=2, app="app", slo_ms=5000)
    await engine.update_app("app", cache=False)
    queries = [asyncio.ensure_future(engine.predict("app", [float(i), 1.0])) for i in range(12)]
    await eventually(lambda: any(h.state == "busy" for h in handles(engine, "m")), 5, "a busy replica")
    busy = next(h for h in handles(engine, "m") if h.state == "busy")
    ray.kill(busy.actor, no_restart=True)
    # The killed batch's queries are the abstraction layer's to retry (each alone, on the
    # replica that replaces the lost one): a prediction, or a default or an explicit error
    # when that takes past the deadline. The other batches are answered as usual.
    results = await asyncio.wait_for(asyncio.gather(*queries, return_exceptions=True), 30)
    assert all(isinstance(r, (dict, ModelError)) for r in results), results
    answered = {i: r["output"] for i, r in enumerate(results) if isinstance(r, dict) and not r["default"]}
    assert answered == {i: i + 1.0 for i in answered} and len(answered) >= 6, results
    await eventually(lambda: len(live_nodes(engine, "m")) == 2, BACK_WITHIN_S, "the replica's restart")
    assert sorted(r["restarts"] for r in engine.status()) == [0, 1]
    idle = handles(engine, "m")[0]
    ray.kill(idle.actor, no_restart=True)  # idle: found by the liveness check
    await eventually(lambda: idle.state == "dead", 10, "the idle actor's death to be noticed")
    assert idle.death_cause == "the Ray actor died (The actor is dead because it was killed by `ray.kill`.)"
    await eventually(lambda: len(live_nodes(engine, "m")) == 2, BACK_WITHIN_S, "the second restart")
    assert (await engine.predict("app", [1.0, 1.0]))["output"] == 2.0


@pytest.mark.cluster
@needs_ray
async def test_scale_rollback_undeploy_leave_no_actor_behind(engine, cluster):
    await deploy(engine, row_sums, "m", backend="ray", replicas=2, app="app", slo_ms=2000)
    await deploy(engine, slow_row_sums, "m")  # v2 on Ray too: the model keeps its backend
    await eventually(lambda: len(our_actors(engine)) == 2, 15, "v1's actors to stop")
    await engine.rollback("m", "1")
    assert (await engine.predict("app", [2.0, 1.0]))["output"] == 3.0
    await engine.scale("m", 3)
    await eventually(lambda: len(our_actors(engine)) == 3, 15, "v2's actors to stop")
    await engine.scale("m", 1)
    assert len(our_actors(engine)) == 1 and len(live_nodes(engine, "m")) == 1
    await engine.undeploy("m")
    assert our_actors(engine) == []


@pytest.mark.cluster
@needs_ray
async def test_a_restarted_frontend_brings_its_ray_replicas_back(tmp_path, cluster):
    config = _config(tmp_path, cluster, default_backend="ray")  # the server's default, not the model's
    first = Engine(config)
    await first.start()
    try:
        await deploy(first, row_sums, "m", replicas=2, app="app", slo_ms=2000)
        assert first.describe_model("m")["backend"] == "ray" and "backend" not in first.models["m"]
    finally:
        await first.stop()
    assert our_actors(first) == []  # stop() killed them all

    second = Engine(_config(tmp_path, cluster, default_backend="ray"))
    await second.start()
    try:
        assert second.restore_errors == {} and len(live_nodes(second, "m")) == 2
        assert (await second.predict("app", [3.0, 1.0]))["output"] == 4.0
        assert {r["backend"] for r in second.status()} == {"ray"}
    finally:
        await second.stop()
    assert our_actors(second) == []


@pytest.mark.cluster
@needs_ray
async def test_a_lost_node_loses_no_query_and_its_replicas_come_back_elsewhere(engine, cluster):
    # Runs last: the cluster has one node fewer afterwards.
    await deploy(engine, slow_row_sums, "m", backend="ray", replicas=3, app="app", slo_ms=3000)
    await engine.update_app("app", cache=False)
    victim = "node_a"
    assert cluster.node_ids[victim] in live_nodes(engine, "m")
    outcomes: dict[str, int] = {"prediction": 0, "default": 0, "error": 0}
    stop_at = time.monotonic() + 4.0

    async def client(k: int) -> None:
        i = 0
        while time.monotonic() < stop_at:
            i += 1
            try:
                r = await asyncio.wait_for(engine.predict("app", [float(k), float(i)]), 15)
            except ModelError:
                outcomes["error"] += 1
                continue
            if r["default"]:
                outcomes["default"] += 1
            else:
                assert r["output"] == k + i
                outcomes["prediction"] += 1

    load = asyncio.gather(*(client(k) for k in range(8)))
    await asyncio.sleep(1.0)
    lost_at = time.monotonic()
    cluster.remove_node(cluster.workers[victim])
    await load  # every query got an answer (a wait_for timeout would have raised)
    assert outcomes["prediction"] > 0, outcomes
    await eventually(lambda: len(live_nodes(engine, "m")) == 3 and cluster.node_ids[victim] not in
                     live_nodes(engine, "m"), BACK_WITHIN_S, "replicas on the remaining nodes")
    back_after = time.monotonic() - lost_at
    print(f"\nnode lost under load: {outcomes}; replicas back on the remaining nodes after {back_after:.1f}s")
    assert set(live_nodes(engine, "m")) <= {cluster.node_ids["head"], cluster.node_ids["node_b"]}
    assert sum(r["restarts"] for r in engine.status()) >= 1
    causes = [s.last_error for s in engine.deployments["m"].supervisor.slots if s.last_error]
    assert causes and all(c.startswith("its Ray node died") for c in causes), causes
    assert (await engine.predict("app", [5.0, 1.0]))["output"] == 6.0

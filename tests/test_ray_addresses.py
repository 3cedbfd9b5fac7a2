"""The Ray backend's addresses and a SIGKILLed server, with real ``clipper-nb serve`` processes.

``ray_address`` may be ``auto`` (Ray's own discovery: ``$RAY_ADDRESS``, else the address
file of the cluster last started on this machine), a raw GCS address, or empty (a local
Ray the server starts on demand, and ends when it stops). And a server that dies by
SIGKILL leaves its actors behind, or Ray ends them with their owner: either way, the
server that restarts on the same state directory kills what is left under its own name
prefix (``RayBackend.start()`` / ``_kill_leftovers``) and brings its models back with
fresh actors, while a server with another state directory on the same cluster touches
none of them.

One Ray head on this machine (two CPUs, no dashboard) with a private ``RAY_TMPDIR``, so
that its address file is this module's own; the test process is a driver of it and
checks the actors itself (by name in the ``clipper-nb`` namespace, and by actor id).
About 1.5 minutes on 2 cores (each server is a Ray driver of its own).
"""

from __future__ import annotations

import os
import shutil
import signal
import tempfile

import pytest
from _jupyter_fixtures import process_alive
from conftest import ServeProcess, wait_until, worker_pids
from test_ray_backend import HAS_RAY, needs_ray, row_sums

from clipper_nb.containers.ray_backend import NAMESPACE, ReplicaActor, frontend_prefix

pytestmark = [pytest.mark.cluster, pytest.mark.slow, needs_ray, pytest.mark.timeout(180)]

#: Every server: Ray replicas by default, a quarter CPU each (the head has two).
RAY_ARGS = ["--default-backend=ray", "--ray-num-cpus=0.25"]


@pytest.fixture(scope="module")
def ray_cluster():
    """A Ray head (on this machine's node address, as in test_ray_backend: Ray resolves
    127.0.0.1 to it when a driver connects) whose address file lies in a private ``RAY_TMPDIR``."""
    if not HAS_RAY:
        pytest.skip('Ray is not installed: pip install "clipper-nb[ray]"')
    import ray
    from ray.cluster_utils import Cluster

    tmp = tempfile.mkdtemp(prefix="cnbr", dir="/tmp")  # short: Ray's socket paths live under it
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RAY_TMPDIR", tmp)  # inherited by the servers: `auto` reads this cluster's address file
        mp.delenv("RAY_ADDRESS", raising=False)
        # Ray 2.60 turns token auth on in a driver that finds its cluster through the
        # address file (`auto`) whenever ~/.ray/auth_token exists (any earlier local
        # ray.init writes one), and such a driver's actors then die unborn on a cluster
        # started without auth: every process of this module runs without it.
        mp.setenv("RAY_AUTH_MODE", "disabled")
        cluster = None
        try:
            cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "include_dashboard": False})
            assert ray._private.utils.read_ray_address() == cluster.address  # the address file `auto` reads
            ray.init(address=cluster.address, namespace="clipper-nb-tests", log_to_driver=False)
            yield cluster
        finally:
            ray.shutdown()
            if cluster is not None:
                cluster.shutdown()
            shutil.rmtree(tmp, ignore_errors=True)


def prefix_of(state_dir: str) -> str:
    return frontend_prefix(os.path.abspath(state_dir))


def actors_under(prefix: str) -> dict[str, str]:
    """``{name: actor id}`` of the live actors of the cluster named under ``prefix``."""
    import ray

    found = {}
    for entry in ray.util.list_named_actors(all_namespaces=True):
        if entry["namespace"] == NAMESPACE and entry["name"].startswith(prefix):
            try:
                found[entry["name"]] = ray.get_actor(entry["name"], namespace=NAMESPACE)._actor_id.hex()
            except ValueError:
                pass  # gone meanwhile
    return found


def is_dead(handle) -> bool:
    import ray

    try:
        ray.get(handle.ping.remote(), timeout=5)
    except ray.exceptions.ActorUnavailableError:
        return False  # unreachable for now, not dead
    except ray.exceptions.RayActorError:
        return True
    except ray.exceptions.GetTimeoutError:
        return False
    return False


def answered(server: ServeProcess, app: str = "app") -> None:
    for i in range(5):
        result = server.client().predict(app, [float(i), 1.0])
        assert result["output"] == i + 1.0 and not result["default"], result


def stop_all(*servers: ServeProcess) -> None:
    for server in servers:
        server.stop()
    for server in servers:
        wait_until(lambda s=server: not worker_pids(s.state_dir, include_fork_server=True), timeout=15,
                   message=f"the workers of {server.state_dir} to exit")


def processes_below(root: int) -> dict[int, str]:
    """``{pid: command line}`` of the live descendants of process ``root``."""
    parents, commands = {}, {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if fields[0] == "Z":
            continue
        parents[int(entry)] = int(fields[1])
        commands[int(entry)] = cmd or stat[stat.index("(") + 1:stat.rindex(")")]
    found: dict[int, str] = {}
    frontier = [root]
    while frontier:
        parent = frontier.pop()
        for pid, ppid in parents.items():
            if ppid == parent and pid not in found:
                found[pid] = commands[pid]
                frontier.append(pid)
    return found


# ---------------------------------------------------------------- auto


def test_auto_joins_the_cluster_named_by_RAY_ADDRESS(ray_cluster, tmp_path, monkeypatch):
    # The address file the servers would read says a dead address: only $RAY_ADDRESS
    # names the cluster, so a server that ignored it could not serve.
    decoy = tempfile.mkdtemp(prefix="cnbd", dir="/tmp")
    os.makedirs(os.path.join(decoy, "ray"))
    with open(os.path.join(decoy, "ray", "ray_current_cluster"), "w") as f:
        f.write("127.0.0.1:1")
    monkeypatch.setenv("RAY_TMPDIR", decoy)
    monkeypatch.setenv("RAY_ADDRESS", ray_cluster.address)
    server = ServeProcess(state_dir=str(tmp_path / "state"), extra_args=[*RAY_ARGS, "--ray-address=auto"])
    prefix = prefix_of(server.state_dir)
    try:
        server.start()
        model = server.client().deploy(row_sums, "m", replicas=2, app="app", slo_ms=5000)
        assert model["backend"] == "ray" and model["replicas_up"] == 2, dict(model)
        answered(server)
        assert len(actors_under(prefix)) == 2  # on this cluster, under this server's prefix
        server.stop()  # SIGTERM: the server kills its own actors
        wait_until(lambda: actors_under(prefix) == {}, timeout=10, message="the stopped server's actors to end")
    finally:
        stop_all(server)
        shutil.rmtree(decoy, ignore_errors=True)


# ---------------------------------------------------------------- SIGKILL, restart, a neighbour


def test_a_sigkilled_servers_actors_are_replaced_on_restart_and_a_neighbour_is_untouched(ray_cluster, tmp_path):
    import ray

    # A: `auto` through the cluster's address file ($RAY_ADDRESS unset); B: the raw GCS
    # address, on the same cluster, with another state directory.
    a = ServeProcess(state_dir=str(tmp_path / "a"), extra_args=[*RAY_ARGS, "--ray-address=auto"])
    b = ServeProcess(state_dir=str(tmp_path / "b"), extra_args=[f"--ClipperNB.ray_address={ray_cluster.address}",
                                                                 "--ClipperNB.ray_num_cpus=0.25"])
    prefix_a, prefix_b = prefix_of(a.state_dir), prefix_of(b.state_dir)
    assert prefix_a != prefix_b
    try:
        a.start()
        assert a.client().deploy(row_sums, "m", replicas=2, app="app", slo_ms=5000)["replicas_up"] == 2
        answered(a)
        first = actors_under(prefix_a)
        assert len(first) == 2, first
        first_handles = [ray.get_actor(name, namespace=NAMESPACE) for name in first]

        a.stop(signal.SIGKILL)  # no close(): whatever Ray does not end is left behind
        # A leftover that outlives its owner (as under Ray Client, or a GCS slow to notice):
        # a detached replica actor under A's prefix, under a name A never gives.
        leftover = ray.remote(ReplicaActor).options(
            name=prefix_a + "m:1:0:0", namespace=NAMESPACE, lifetime="detached", num_cpus=0,
        ).remote((b"", {}), "cpu", 1, None)
        ray.get(leftover.ping.remote(), timeout=30)

        # B starts its Ray backend (kills leftovers under its own prefix) while A's are there.
        b.start()
        model = b.client().deploy(row_sums, "n", backend="ray", app="napp", slo_ms=5000)
        assert model["backend"] == "ray" and model["replicas_up"] == 1, dict(model)
        answered(b, "napp")
        neighbour = actors_under(prefix_b)
        assert len(neighbour) == 1, neighbour
        assert not is_dead(leftover), "a server with another state directory killed this frontend's leftover"

        # The actors A's driver owned end with it (the backend's promise, kept by Ray).
        wait_until(lambda: all(is_dead(h) for h in first_handles), timeout=30,
                   message="Ray to end the actors of the SIGKILLed server")

        a.start()  # same state directory: restores m on Ray, after killing what A left
        assert is_dead(leftover), "the restarted server did not kill the actor left under its prefix"
        assert a.client().model("m")["backend"] == "ray"
        answered(a)
        second = actors_under(prefix_a)
        assert len(second) == 2 and set(second.values()).isdisjoint(first.values()), (first, second)
        assert prefix_a + "m:1:0:0" not in second
        assert actors_under(prefix_b) == neighbour  # A's restart left B's actor alone
        answered(b, "napp")

        b.stop()
        wait_until(lambda: actors_under(prefix_b) == {}, timeout=10, message="B's actors to end with B")
        assert actors_under(prefix_a) == second
        a.stop()
        wait_until(lambda: actors_under(prefix_a) == {}, timeout=10, message="A's actors to end with A")
    finally:
        stop_all(a, b)
        try:
            ray.kill(ray.get_actor(prefix_a + "m:1:0:0", namespace=NAMESPACE), no_restart=True)
        except ValueError:
            pass  # killed by the restarted server, as it should be


# ---------------------------------------------------------------- the empty address


def test_an_empty_address_starts_a_local_ray_and_ends_it_with_the_server(ray_cluster, tmp_path, monkeypatch):
    # $RAY_ADDRESS names the running cluster: the server must start a Ray of its own anyway.
    private = tempfile.mkdtemp(prefix="cnbl", dir="/tmp")
    monkeypatch.setenv("RAY_TMPDIR", private)  # the local Ray's session files (and address file, if any)
    monkeypatch.setenv("RAY_ADDRESS", ray_cluster.address)
    server = ServeProcess(state_dir=str(tmp_path / "state"), extra_args=RAY_ARGS)
    ours: dict[int, str] = {}
    try:
        server.start()
        assert not any("gcs_server" in cmd for cmd in processes_below(server.proc.pid).values())  # on demand
        model = server.client().deploy(row_sums, "m", app="app", slo_ms=5000)
        assert model["backend"] == "ray" and model["replicas_up"] == 1, dict(model)
        answered(server)
        assert actors_under(prefix_of(server.state_dir)) == {}  # not on the cluster of $RAY_ADDRESS
        ours = processes_below(server.proc.pid)
        commands = list(ours.values())
        assert any("gcs_server" in c for c in commands) and any("/raylet" in c for c in commands), commands
        assert any("ReplicaActor" in c or "default_worker.py" in c for c in commands), commands
        server.stop()  # SIGTERM: the server ends the Ray it started
        wait_until(lambda: not [p for p in ours if process_alive(p)], timeout=30,
                   message="the server's local Ray to end with it")
    finally:
        stop_all(server)
        for pid in ours:  # only the processes this test's server started
            if process_alive(pid):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        shutil.rmtree(private, ignore_errors=True)

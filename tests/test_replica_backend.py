"""The replica-backend seam: ModelVersion's query path over the in-process backend, and a
conformance check of the process backend with a real worker.

The in-process backend runs the model on the event loop with scripted latency, so
these tests see exactly which batches ran (``backend.batches``) without depending on
the machine's speed. Models are module-level functions: the worker of the process
test gets them pickled by value (this module is not importable there).
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time

import numpy as np
import pytest
from conftest import wait_until, worker_pids

from clipper_nb.abstraction.backend import ReplicaLost, ReplicaSpec
from clipper_nb.abstraction.inprocess import InProcessBackend
from clipper_nb.abstraction.model_version import ModelVersion, ModelVersionConfig
from clipper_nb.abstraction.supervisor import restart_delay_s
from clipper_nb.containers.process_backend import ProcessBackend
from clipper_nb.errors import DeployError, ModelError, Unavailable
from clipper_nb.wire import artifact, predict


def row_sums(batch):
    return [float(sum(row)) for row in batch]


def divide_by_zero(batch):
    return [1 / 0 for _ in batch]


def one_output_too_many(batch):
    return [0.0] * (len(batch) + 1)


def sleepy_row_sums(batch):
    """Row sums; a row whose first value is negative sleeps that many seconds (a hang)."""
    for row in batch:
        if row[0] < 0:
            time.sleep(-row[0])
    return [float(sum(row)) for row in batch]


def write_model(tmp_path, fn, name: str = "m") -> str:
    payload, meta = artifact.package(fn)
    return predict.write_dir(str(tmp_path / "models" / name), payload, meta)


async def serve(tmp_path, backend, fn=row_sums, replicas: int = 1, **options) -> ModelVersion:
    config = ModelVersionConfig(model="m", version="1", artifact_dir=write_model(tmp_path, fn),
                                log_dir=str(tmp_path / "logs"), **options)
    version = ModelVersion(backend, config)
    await version.start(replicas)
    return version


def x(i: float) -> np.ndarray:
    return np.array([float(i), 1.0])


def soon(seconds: float = 10.0) -> float:
    return time.monotonic() + seconds


def rows_run(backend: InProcessBackend) -> list[int]:
    return [n for _, n in backend.batches]


# ---- ModelVersion over the in-process backend ---------------------------------------


async def test_a_second_identical_query_is_a_cache_hit(tmp_path):
    backend = InProcessBackend()
    version = await serve(tmp_path, backend)
    assert await version.submit(x(1), soon()) == 2.0
    again = version.submit(x(1), soon())
    assert again.done() and again.result() == 2.0  # answered at once, no batch
    assert await version.submit(x(1), soon(), use_cache=False) == 2.0
    assert rows_run(backend) == [1, 1]
    await version.stop()


async def test_identical_queries_in_flight_share_one_evaluation(tmp_path):
    backend = InProcessBackend(delays={"m": 0.05})
    version = await serve(tmp_path, backend)
    futures = [version.submit(x(3), soon()) for _ in range(20)]
    assert await asyncio.gather(*futures) == [4.0] * 20
    assert rows_run(backend) == [1]
    await version.stop()


async def test_batches_form_and_grow_under_aimd(tmp_path):
    # 20 ms per batch, well under the 45 ms objective: from its start cap of 4 the cap
    # grows after each full batch, so 30 queued queries run in a few growing batches.
    backend = InProcessBackend(delays={"m": 0.02})
    version = await serve(tmp_path, backend, objective_s=0.045)
    answers = await asyncio.gather(*(version.submit(x(i), soon()) for i in range(30)))
    assert answers == [i + 1.0 for i in range(30)]
    rows = rows_run(backend)
    assert rows[0] == 4 and sum(rows) == 30 and len(rows) < 8, rows
    assert rows[:-1] == sorted(rows[:-1]) and rows[1] > 4, rows
    assert version.status()[0]["batch_cap"] > rows[1]
    await version.stop()


async def test_a_slow_model_gets_smaller_batches(tmp_path):
    backend = InProcessBackend(latency=lambda model, n: 0.004 * n)  # over 10 ms from 3 rows on
    version = await serve(tmp_path, backend, objective_s=0.010)
    await asyncio.gather(*(version.submit(x(i), soon()) for i in range(12)))
    rows = rows_run(backend)
    assert rows[0] == 4 and rows[1] < 4, rows  # 16 ms > 10 ms: AIMD backs off
    await version.stop()


async def test_a_model_that_fails_every_input_fails_every_query_with_its_error(tmp_path):
    backend = InProcessBackend()
    version = await serve(tmp_path, backend, fn=divide_by_zero)
    results = await asyncio.gather(*(version.submit(x(i), soon()) for i in range(3)), return_exceptions=True)
    assert all(isinstance(r, ModelError) for r in results), results
    assert all("model m:1 failed: ZeroDivisionError: division by zero" in str(r) for r in results)
    assert "Traceback" in results[0].cause
    # bisected down to single inputs (each could have been the only bad one): 3, then 1 + 2, then 1 + 1
    assert rows_run(backend) == [3, 1, 2, 1, 1]
    assert version.counters()["batch_splits"] == 2
    assert version.status()[0]["state"] == "idle" and version.status()[0]["restarts"] == 0
    assert len(version._inflight) == 0  # failed keys do not pin the dedup table
    await version.stop()


async def test_a_model_returning_the_wrong_number_of_outputs_fails_its_queries(tmp_path):
    version = await serve(tmp_path, InProcessBackend(), fn=one_output_too_many)
    with pytest.raises(ModelError, match="returned 2 outputs for a batch of 1 input"):
        await version.submit(x(1), soon())
    await version.stop()


async def until(predicate, timeout: float = 5.0) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < end, "timed out"
        await asyncio.sleep(0.01)


async def test_a_killed_replicas_batch_is_retried_alone_on_its_replacement_not_on_the_other(tmp_path):
    backend = InProcessBackend(delays={"m": 0.1})
    version = await serve(tmp_path, backend, replicas=2)
    futures = [version.submit(x(i), soon()) for i in range(3)]
    await asyncio.sleep(0.02)
    busy = [r for r in backend.replicas("m") if r.state == "busy"]
    assert len(busy) == 1
    survivor = next(r for r in backend.replicas("m") if r is not busy[0])
    busy[0].kill("simulated crash")
    assert await asyncio.gather(*futures) == [1.0, 2.0, 3.0]
    replacement = backend.started[2]
    # one query a batch, all on the replica that replaced the dead one: an input that
    # crashed a replica is never sent to the other replicas in a batch
    assert backend.batches == [(replacement.name, 1)] * 3
    assert survivor.state == "idle" and replacement.spec.index == busy[0].spec.index
    await until(lambda: {r["state"] for r in version.status()} == {"idle"})
    assert sorted(r["restarts"] for r in version.status()) == [0, 1]
    assert version.counters()["lost_batches"] == 1
    await version.stop()


async def test_a_query_alone_on_a_lost_replica_gets_an_error_and_is_not_retried(tmp_path):
    backend = InProcessBackend(delays={"m": 0.1})
    version = await serve(tmp_path, backend, replicas=2)
    future = version.submit(x(1), soon())
    await asyncio.sleep(0.02)
    busy = [r for r in backend.replicas("m") if r.state == "busy"]
    assert len(busy) == 1
    busy[0].kill("simulated crash")
    with pytest.raises(ModelError, match="running this input alone was lost .*simulated crash.*not retried"):
        await future
    assert backend.batches == [] and version.counters()["inputs_refused"] == 1
    assert await version.submit(x(2), soon()) == 3.0  # the replicas keep serving
    await version.stop()


async def test_scaled_to_zero_answers_unavailable_at_once(tmp_path):
    backend = InProcessBackend()
    version = await serve(tmp_path, backend, replicas=2)
    await version.scale(0)
    assert version.replica_count == 0 and backend.replicas() == [] and version.status() == []
    future = version.submit(x(1), soon())
    assert future.done() and isinstance(future.exception(), Unavailable)
    await version.scale(1)
    assert await version.submit(x(1), soon()) == 2.0
    await version.stop()


async def test_stop_fails_queued_and_running_queries_clearly(tmp_path):
    backend = InProcessBackend(delays={"m": 0.5})
    version = await serve(tmp_path, backend)
    futures = [version.submit(x(i), soon()) for i in range(10)]  # 4 run, 6 wait
    await asyncio.sleep(0.02)
    await version.stop()
    results = await asyncio.gather(*futures, return_exceptions=True)
    assert all(isinstance(r, ModelError) and str(r) == "model m:1 was stopped" for r in results), results
    assert backend.replicas() == [] and backend.batches == []
    after = version.submit(x(99), soon())
    assert after.done() and isinstance(after.exception(), Unavailable)


async def test_status_rows_and_objective(tmp_path):
    version = await serve(tmp_path, InProcessBackend(), replicas=2, batch_size=7)
    rows = version.status()
    assert [r["replica"] for r in rows] == [0, 1]
    assert set(rows[0]) == {"model", "version", "replica", "name", "state", "pid", "device", "node", "batch_cap",
                            "restarts", "last_error", "backend"}
    assert rows[0]["backend"] == "inprocess" and rows[0]["name"].startswith("m:1:0:")
    assert rows[0]["batch_cap"] == 7 and rows[0]["device"] == "cpu" and rows[0]["pid"] is None
    version.set_objective(0.5)
    assert all(lane.controller.objective_s == 0.5 for lane in version.loops.lanes.values())
    await version.stop()


async def test_a_model_that_cannot_load_fails_the_start_with_the_cause(tmp_path):
    version = ModelVersion(InProcessBackend(), ModelVersionConfig(
        model="gone", version="1", artifact_dir=str(tmp_path / "nothing"), log_dir=str(tmp_path)))
    with pytest.raises(DeployError, match="could not load gone:1: FileNotFoundError"):
        await version.start(2)
    assert version.replica_count == 0
    await version.stop()


def test_crash_loops_back_off():
    assert [restart_delay_s(n) for n in range(7)] == [0.0, 0.0, 0.5, 1.0, 2.0, 4.0, 8.0]
    assert restart_delay_s(20) == 10.0


# ---- the process backend: a real worker -----------------------------------------------


@pytest.mark.timeout(60)
@pytest.mark.parametrize("fork_server", [True, False], ids=["forked", "fresh-interpreter"])
async def test_process_backend_runs_a_batch_and_reports_kill_9(tmp_path, fork_server):
    backend = ProcessBackend(fork_server=fork_server, tag=str(tmp_path))
    await backend.start()
    deaths: list[tuple[object, str]] = []
    spec = ReplicaSpec(model="p", version="1", index=0, artifact_dir=write_model(tmp_path, sleepy_row_sums),
                       log_dir=str(tmp_path / "logs"), device="cpu", python=sys.executable, cwd=None,
                       start_timeout_s=25)
    try:
        started = time.monotonic()
        replica = await backend.start_replica(spec, lambda h, cause: deaths.append((h, cause)))
        assert replica.state == "idle" and replica.pid and replica.info["pid"] == replica.pid
        assert replica.name.startswith("p:1:0:") and "-" not in replica.name  # no secret in the name
        outputs, meta = await replica.run_batch([x(1), x(2)])
        assert outputs == [2.0, 3.0] and meta["n"] == 2 and meta["compute_ms"] >= 0
        hung = asyncio.ensure_future(replica.run_batch([np.array([-30.0, 0.0])]))
        await asyncio.sleep(0.2)
        assert replica.state == "busy"
        os.kill(replica.pid, signal.SIGKILL)
        with pytest.raises(ReplicaLost):
            await asyncio.wait_for(hung, 10)
        assert deaths == [(replica, "worker process exited with code -9")]
        assert replica.state == "dead"
        with pytest.raises(DeployError, match="could not load p:1"):
            await backend.start_replica(ReplicaSpec(**{**spec.__dict__, "artifact_dir": str(tmp_path / "none")}),
                                        lambda h, cause: deaths.append((h, cause)))
        assert len(deaths) == 1
        assert time.monotonic() - started < 30
    finally:
        await backend.close()
    # close() has stopped them; an exiting process may take a moment to disappear from /proc
    wait_until(lambda: not worker_pids(str(tmp_path), include_fork_server=True), timeout=15,
               message="workers to exit")

"""The serving core end to end: real `clipper-nb serve`, real worker processes, real HTTP."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import requests
from sklearn.linear_model import LogisticRegression

from clipper_nb.errors import BadInput, DeployError, ModelError, NotFound
from conftest import TOKEN, client_of, wait_until, worker_pids


@pytest.fixture(scope="module")
def lr_data():
    rng = np.random.RandomState(0)
    X = rng.randn(400, 8)
    y = (X[:, 0] + 0.5 * X[:, 1] > 0).astype(int) + (X[:, 2] > 1).astype(int)
    return X, y, LogisticRegression(max_iter=500).fit(X, y)


def curl_predict(url: str, app: str, body: dict) -> dict:
    out = subprocess.run(["curl", "-s", "-X", "POST", f"{url}/{app}/predict", "-d", json.dumps(body)],
                         capture_output=True, text=True, timeout=30, check=True)
    return json.loads(out.stdout)


def test_sklearn_two_replicas_answers_curl_and_batches(serve, lr_data):
    X, y, model = lr_data
    c = serve.client()
    info = c.deploy(model, "lr", app="lr-app", replicas=2, slo_ms=1000)
    assert info["replicas_up"] == 2 and info["input_shape"] == [8]
    one = curl_predict(serve.url, "lr-app", {"input": X[0].tolist()})
    assert one["output"] == model.predict(X[:1])[0] and one["default"] is False and "query_id" in one
    rows = curl_predict(serve.url, "lr-app", {"input_batch": X[:100].tolist()})["batch_predictions"]
    assert len(rows) == 100
    assert [r["output"] for r in rows] == model.predict(X[:100]).tolist()
    assert not any(r["default"] for r in rows)
    status = c.status()
    assert len(status) == 2 and set(status["state"]) <= {"idle", "busy"}
    assert len(set(status["pid"])) == 2


def test_torch_module_and_plain_function(server, client):
    import torch

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
    X = np.random.RandomState(1).randn(50, 6)
    client.deploy(net, "net", app="net-app", slo_ms=2000)
    got = np.array([r["output"] for r in client.predict_batch("net-app", X.tolist())])
    with torch.inference_mode():
        want = net(torch.tensor(X, dtype=torch.float32)).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)

    def total(batch):
        return [float(np.sum(x)) for x in batch]

    client.deploy(total, "sum", app="sum-app", slo_ms=2000)
    assert client.predict("sum-app", [1, 2, 3.5])["output"] == 6.5
    assert [r["output"] for r in client.predict_batch("sum-app", [[1, 1], [2, 2]])] == [2.0, 4.0]
    m = client.model("sum")
    assert m["kind"] == "callable" and m["library_versions"]["python"]


class Unloadable:
    """Pickles fine here, fails to unpickle in the worker (as a class missing there would)."""

    def __reduce__(self):
        return (_explode, ())

    def predict(self, X):
        return X


def _explode():
    raise ImportError("No module named 'only_on_my_laptop'")


def test_deploy_fails_fast_with_the_cause(client):
    start = time.monotonic()
    with pytest.raises(DeployError) as err:
        client.deploy(Unloadable(), "bad", app="bad-app")
    assert time.monotonic() - start < 30
    assert "only_on_my_laptop" in str(err.value)
    assert "bad" not in list(client.models()["name"])
    lock = threading.Lock()
    with pytest.raises(DeployError, match="cannot pickle"):
        client.deploy(lambda batch: [lock for _ in batch], "locked")


def test_wrong_output_count_and_raising_model_fail_their_queries_only(client):
    client.deploy(lambda batch: [0] * (len(batch) + 1), "toomany", app="toomany", slo_ms=2000)
    with pytest.raises(ModelError, match="returned 2 outputs for a batch of 1"):
        client.predict("toomany", [1.0])

    def boom(batch):
        raise ValueError("feature 3 is negative")

    client.deploy(boom, "boom", app="boom", slo_ms=2000)
    with pytest.raises(ModelError, match="feature 3 is negative"):
        client.predict("boom", [1.0])
    client.deploy(lambda batch: [1] * len(batch), "ok", app="ok", slo_ms=2000)
    assert client.predict("ok", [1.0])["output"] == 1
    assert client.status().query("model == 'boom'")["state"].iloc[0] in ("idle", "busy")


def test_bad_requests_get_clear_4xx_and_the_server_keeps_serving(serve, lr_data):
    X, _, model = lr_data
    c = serve.client()
    c.deploy(model, "lr", app="lr-app", slo_ms=1000)
    url = serve.url
    r = requests.post(f"{url}/lr-app/predict", data=b"{not json")
    assert r.status_code == 400 and "malformed JSON" in r.json()["error"]
    r = requests.post(f"{url}/lr-app/predict", json={"input": [1.0, 2.0, 3.0]})
    assert r.status_code == 400 and "expects 8 features, got 3" in r.json()["error"]
    r = requests.post(f"{url}/lr-app/predict", json={"input_batch": [X[0].tolist(), [1.0]]})
    assert r.status_code == 400 and "input_batch[1]" in r.json()["error"]
    r = requests.post(f"{url}/lr-app/predict", json={"inputs": [1.0]})
    assert r.status_code == 400 and "'input'" in r.json()["error"]
    r = requests.post(f"{url}/no-such-app/predict", json={"input": [1.0]})
    assert r.status_code == 404 and "no application named 'no-such-app'" in r.json()["error"]
    r = requests.get(f"{url}/api/apps")
    assert r.status_code == 401 and "token" in r.json()["error"]
    r = requests.get(f"{url}/api/apps", headers={"Authorization": "token wrong"})
    assert r.status_code == 403
    r = requests.post(f"{url}/api/apps", json={"name": "x", "slo_ms": "fast"},
                      headers={"Authorization": f"token {TOKEN}"})
    assert r.status_code == 400 and "slo_ms" in r.json()["error"]
    r = requests.get(f"{url}/nowhere")
    assert r.status_code == 404 and "error" in r.json()
    assert c.predict("lr-app", X[0].tolist())["output"] == model.predict(X[:1])[0]
    with pytest.raises(NotFound):
        c.rollback("lr", "7")
    with pytest.raises(BadInput):
        c.scale("lr", -1)


def test_query_api_needs_the_token_unless_public(tmp_path):
    from conftest import ServeProcess

    srv = ServeProcess(state_dir=str(tmp_path / "s"), public_predict=False).start()
    try:
        srv.client().deploy(lambda b: [1] * len(b), "one", app="one", slo_ms=2000)
        assert requests.post(f"{srv.url}/one/predict", json={"input": [1]}).status_code == 401
        r = requests.post(f"{srv.url}/one/predict", json={"input": [1]}, headers={"Authorization": f"token {TOKEN}"})
        assert r.status_code == 200 and r.json()["output"] == 1
    finally:
        srv.stop()


def test_slo_miss_answers_the_default_output(client):
    def slow(batch):
        time.sleep(0.3)
        return [1] * len(batch)

    client.deploy(slow, "slow", app="slow", slo_ms=50, default_output=-1)
    start = time.monotonic()
    r = client.predict("slow", [1.0])
    assert time.monotonic() - start < 0.25
    assert r["default"] is True and r["output"] == -1 and "50 ms" in r["default_explanation"]


def test_the_slo_clock_starts_when_the_request_arrives_not_when_its_handler_runs(client, server):
    """A request whose body trickles in for 300 ms has used its 200 ms SLO before the
    handler runs: it gets the default output, as its client (who waited) would score it;
    the same query sent at once is answered by the model."""
    import socket
    import urllib.parse

    client.deploy(lambda batch: [1] * len(batch), "quick", app="quick", slo_ms=200, default_output=-1)
    assert client.predict("quick", [3.0])["default"] is False  # another input than below (a cache hit is answered at once)
    body = b'{"input": [1.0]}'
    host, port = urllib.parse.urlsplit(server.url).hostname, urllib.parse.urlsplit(server.url).port
    with socket.create_connection((host, port), timeout=10) as sock:
        head = (f"POST /quick/predict HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n")
        sock.sendall(head.encode() + body[:5])
        time.sleep(0.3)
        sock.sendall(body[5:])
        answer = b""
        while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            answer += chunk
    r = json.loads(answer.split(b"\r\n\r\n", 1)[1])
    assert r["default"] is True and r["output"] == -1, r
    assert client.predict("quick", [2.0])["default"] is False


def _stream(url: str, app: str, x: list, stop: threading.Event, results: list) -> None:
    s = requests.Session()
    while not stop.is_set():
        try:
            r = s.post(f"{url}/{app}/predict", json={"input": x}, timeout=5)
            results.append((r.status_code, r.json()))
        except requests.RequestException as e:  # a hang or a dropped connection
            results.append((0, {"error": repr(e)}))


@pytest.mark.slow
def test_kill_9_of_a_replica_loses_no_query(serve, lr_data):
    X, _, model = lr_data
    c = serve.client()
    c.deploy(model, "lr", app="lr-app", replicas=2, slo_ms=1000)
    before = c.status()
    stop, results = threading.Event(), []
    threads = [threading.Thread(target=_stream, args=(serve.url, "lr-app", X[i].tolist(), stop, results))
               for i in range(4)]
    for t in threads:
        t.start()
    time.sleep(3)
    victim = int(before["pid"].iloc[0])
    os.kill(victim, signal.SIGKILL)
    killed_at = time.monotonic()

    def back():
        st = c.status()
        return len(st) == 2 and set(st["state"]) <= {"idle", "busy"} and victim not in set(st["pid"])

    wait_until(back, timeout=5, interval=0.05, message="the replica to come back")
    recovered = time.monotonic() - killed_at
    time.sleep(max(0.0, 10 - 3 - recovered))
    stop.set()
    for t in threads:
        t.join(10)
    assert len(results) > 100
    hung = [r for r in results if r[0] == 0]
    assert not hung, hung[:3]
    for status, body in results:
        assert status == 200 or "error" in body, body
        if status == 200:
            assert body["default"] in (True, False) and ("output" in body)
    answered = sum(1 for s, b in results if s == 200 and not b["default"])
    assert answered / len(results) > 0.9
    assert int(c.status()["restarts"].sum()) == 1
    print(f"\n{len(results)} queries, {answered} predictions, replica back in {recovered:.2f}s")


@pytest.mark.slow
def test_restart_restores_apps_and_rollback_changes_answers(serve, lr_data):
    X, _, model = lr_data
    c = serve.client()
    c.deploy(model, "clf", app="clf-app", replicas=2, slo_ms=2000)
    c.deploy(lambda batch: [7] * len(batch), "clf", app="clf-app", slo_ms=2000)  # version 2
    assert c.predict("clf-app", X[0].tolist())["output"] == 7
    serve.restart()
    c = serve.client()
    info = c.model("clf")
    assert info["version"] == "2" and info["versions"] == ["1", "2"] and info["replicas"] == 2
    assert info["replicas_up"] == 2
    assert c.predict("clf-app", X[0].tolist())["output"] == 7
    c.rollback("clf", 1)
    rows = c.predict_batch("clf-app", X[:20].tolist())
    assert [r["output"] for r in rows] == model.predict(X[:20]).tolist()
    assert c.apps().set_index("name").loc["clf-app", "slo_ms"] == 2000


@pytest.mark.slow
def test_no_worker_outlives_a_killed_server(tmp_path):
    from conftest import ServeProcess

    srv = ServeProcess(state_dir=str(tmp_path / "s")).start()
    srv.client().deploy(lambda b: [0] * len(b), "z", app="z", replicas=2)
    assert len(worker_pids(str(tmp_path))) == 2
    assert len(worker_pids(str(tmp_path), include_fork_server=True)) == 3
    srv.stop(signal.SIGKILL)
    wait_until(lambda: not worker_pids(str(tmp_path), include_fork_server=True), timeout=15, message="orphaned workers to exit")


def test_scale_and_undeploy(client):
    client.deploy(lambda b: [os.getpid()] * len(b), "pid", app="pid", slo_ms=2000)
    client.scale("pid", 3)
    assert client.model("pid")["replicas_up"] == 3
    client.scale("pid", 1)
    assert client.model("pid")["replicas_up"] == 1
    client.undeploy("pid")
    assert client.predict("pid", [1])["default"] is True
    assert "pid" not in list(client.models()["name"])


@pytest.mark.slow
def test_demo_command_exits_zero():
    out = subprocess.run([sys.executable, "-m", "clipper_nb.cli", "demo", "--queries", "50"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "digits-lr" in out.stdout and "digits-mlp" in out.stdout and "demo passed" in out.stdout


def test_workers_also_run_as_fresh_interpreters_without_the_fork_server(tmp_path):
    from clipper_nb.frontend.server import Server

    with Server(state_dir=str(tmp_path / "s"), port=0, token=TOKEN, fork_server=False).start_in_thread() as srv:
        c = client_of(srv)
        c.deploy(lambda b: [len(x) for x in b], "n", app="n", slo_ms=5000)
        assert c.predict("n", [1, 2, 3])["output"] == 3
        pids = worker_pids(str(tmp_path))
        assert len(pids) == 1
        with open(f"/proc/{pids[0]}/cmdline", "rb") as f:
            assert b"clipper_nb.containers.worker" in f.read()  # not a fork of clipper_nb.containers.forkserver
    wait_until(lambda: not worker_pids(str(tmp_path), include_fork_server=True), timeout=15, message="exit")

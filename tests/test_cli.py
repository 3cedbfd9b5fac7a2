"""The ``clipper-nb`` command line beyond ``serve``: ``--version`` and ``status``."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from clipper_nb import __version__


def _clipper_nb(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    exe = os.path.join(os.path.dirname(sys.executable), "clipper-nb")
    return subprocess.run([exe, *args], capture_output=True, text=True, timeout=120, env=env)


def test_version():
    done = _clipper_nb("--version")
    assert done.returncode == 0 and done.stdout.strip() == __version__


def test_status_prints_the_replica_table(serve):
    serve.client().deploy(lambda batch: [0] * len(batch), "status-model", app="status-app", replicas=2)
    done = _clipper_nb("status", f"--url={serve.url}", f"--token={serve.token}")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == f"clipper-nb at {serve.url}: 1 application(s), 2 replica(s)"
    assert lines[1].split()[:4] == ["model", "version", "replica", "state"]
    assert [ln.split()[:4] for ln in lines[2:]] == [["status-model", "1", "0", "idle"],
                                                    ["status-model", "1", "1", "idle"]]
    # the URL and token from the environment, as clipper_nb.connect() reads them
    env = {**os.environ, "CLIPPER_NB_URL": serve.url, "CLIPPER_NB_TOKEN": serve.token}
    assert _clipper_nb("status", env=env).stdout.splitlines()[0] == lines[0]
    denied = _clipper_nb("status", f"--url={serve.url}", "--token=wrong")
    assert denied.returncode == 1 and denied.stderr.startswith("clipper-nb status: ") and "Traceback" not in denied.stderr
    assert "token" in denied.stderr


def test_a_wrong_method_on_a_query_route_says_which_to_use(serve):
    import requests

    r = requests.get(f"{serve.url}/anything/predict", headers={"Authorization": f"token {serve.token}"}, timeout=30)
    assert r.status_code == 405
    assert r.json()["cause"] == "use POST" and "GET is not allowed" in r.json()["error"]


def test_serve_on_a_busy_port_or_a_used_state_dir_says_so_without_a_traceback(serve, tmp_path):
    env = {**os.environ, "CLIPPER_NB_TOKEN": "t" * 24}
    busy = _clipper_nb("serve", f"--port={serve.port}", f"--state-dir={tmp_path / 'other'}", env=env)
    assert busy.returncode == 1 and "the port is in use" in busy.stderr and "Traceback" not in busy.stderr
    used = _clipper_nb("serve", "--port=0", f"--state-dir={serve.state_dir}", env=env)
    assert used.returncode == 1 and "another clipper-nb server" in used.stderr and "Traceback" not in used.stderr


def test_the_access_log_has_errors_and_slow_requests_only_unless_asked(serve):
    import requests

    before = open(serve.log_path).read()
    for _ in range(20):
        requests.get(f"{serve.url}/api/health", headers={"Authorization": f"token {serve.token}"}, timeout=30)
    requests.get(f"{serve.url}/api/health", timeout=30)  # a 401
    requests.post(f"{serve.url}/nosuchapp/predict", json={"input": [1.0]}, timeout=30)  # a 404, on the lean path
    deadline = time.monotonic() + 10  # tornado writes the line after the answer is sent
    while "404 POST /nosuchapp/predict" not in (added := open(serve.log_path).read()[len(before):]):
        if time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert "200 GET /api/health" not in added and "401 GET /api/health" in added
    assert "404 POST /nosuchapp/predict" in added


def test_load_reads_the_feature_count_and_misses_the_cache_by_default(serve):
    import json as _json

    serve.client().deploy(_lr(), "lr4", app="lr4", slo_ms=2000)
    done = _clipper_nb("load", "lr4", f"--url={serve.url}", f"--token={serve.token}", "--concurrency=4",
                       "--max-requests=300", "--duration=20s", "--json", "--quiet")
    assert done.returncode == 0, done.stderr
    result = _json.loads(done.stdout)
    assert result["requests"] == 300 and result["errors"] == 0
    cache = serve.client().metrics()["models"]["lr4"]["cache"]
    assert cache["misses"] >= 300 and cache["hits"] == 0, cache  # 300 distinct inputs: every one computed


def _lr():
    import numpy as np
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    return LogisticRegression().fit(rng.random((40, 4)), [0, 1] * 20)

"""The query route's lean path (``clipper_nb.frontend.fastpath``) answers exactly as the full one.

A real ``clipper-nb serve --public-predict``. A plain scripted ``POST /<app>/predict``
takes the lean path; the same request with a query string (``?via=full``) takes the full
path through ``PredictHandler`` (the lean path leaves any request it does not fully
understand to it). Tornado's ``RequestHandler`` adds a ``Server`` header, the lean path
does not: that tells the two apart from outside.
"""

from __future__ import annotations

import numpy as np
import pytest
import requests

from conftest import TOKEN


def _raising(batch):
    raise ValueError("this model always fails")


@pytest.fixture
def served(serve):
    client = serve.client()
    client.deploy(lambda batch: [float(np.sum(x)) for x in batch], "sum3", app="sum3", slo_ms=2000,
                  default_output=-1.0)
    client.predict("sum3", [0.0, 0.0, 0.0])  # the model's expected shape is known from here on
    client.deploy(_raising, "bad", app="bad", slo_ms=2000)
    return serve


def _post(url: str, data: bytes, full: bool, headers: dict | None = None) -> requests.Response:
    return requests.post(url + ("?via=full" if full else ""), data=data, timeout=30,
                         headers={"Content-Type": "application/json", **(headers or {})})


def _comparable(r: requests.Response) -> tuple[int, object]:
    body = r.json()
    if isinstance(body, dict):
        body.pop("query_id", None)
        if str(body.get("cause", "")).startswith("error "):  # an anonymous 5xx: a fresh log reference each time
            body["cause"] = "error <ref>"
        for row in body.get("batch_predictions", []):
            row.pop("query_id", None)
    return r.status_code, body


CASES = [
    ("sum3", b'{"input": [1.0, 2.0, 3.5]}'),
    ("sum3", b'{"input_batch": [[1, 2, 3], [4, 5, 6]]}'),
    ("sum3", b'{"input": [1.0, 2.0]}'),  # wrong feature count: 400
    ("sum3", b'{"input": [1.0, 2.0, '),  # malformed JSON: 400
    ("sum3", b'[1, 2, 3]'),  # not an object: 400
    ("sum3", b'{"inputs": [1, 2, 3]}'),  # neither input nor input_batch: 400
    ("sum3", b'{"input": [1, 2, 3], "context": {"a": 1}}'),  # a context that is not an id: 400
    ("sum3", b''),  # empty body: 400
    ("nosuchapp", b'{"input": [1.0, 2.0, 3.0]}'),  # 404
    ("bad", b'{"input": [1.0]}'),  # the model raises: 500, the details in the log only
]


@pytest.mark.parametrize("app,body", CASES)
def test_the_lean_path_answers_as_the_full_path(served, app, body):
    url = f"{served.url}/{app}/predict"
    lean, full = _post(url, body, full=False), _post(url, body, full=True)
    assert "Server" not in lean.headers and "Server" in full.headers  # each took the path meant
    assert lean.headers["Content-Type"] == full.headers["Content-Type"] == "application/json"
    assert "Date" in lean.headers
    assert _comparable(lean) == _comparable(full), (lean.text, full.text)


def test_a_token_holder_sees_the_whole_error_on_both_paths(served):
    url, auth = f"{served.url}/bad/predict", {"Authorization": f"token {TOKEN}"}
    lean, full = _post(url, b'{"input": [1.0]}', False, auth), _post(url, b'{"input": [1.0]}', True, auth)
    assert "Server" not in lean.headers
    assert lean.status_code == full.status_code == 500
    assert "this model always fails" in lean.json()["cause"] and lean.json() == full.json()


@pytest.mark.parametrize("headers,status", [
    ({"Authorization": "token wrong"}, 200),  # on a public server: answered as anyone's query
    ({"Origin": "http://evil.example"}, 403),  # a cross-site page
    ({"Content-Type": "text/plain", "Sec-Fetch-Site": "same-origin"}, 415),  # a browser's form type
])
def test_requests_the_lean_path_leaves_alone_get_the_full_paths_answer(served, headers, status):
    r = _post(f"{served.url}/sum3/predict", b'{"input": [1.0, 2.0, 3.0]}', False, headers)
    assert r.status_code == status, r.text
    assert "Server" in r.headers  # answered by the full path


def test_a_body_over_the_limit_is_refused_before_it_is_read(served):
    big = b'{"input": [' + b"1.0," * (3 << 20) + b'1.0]}'  # ~12 MiB, over max_query_mb's default
    r = requests.post(f"{served.url}/sum3/predict", data=big, headers={"Content-Type": "application/json"},
                      timeout=60)
    assert r.status_code == 413 and "over the limit" in r.json()["error"]


def test_kept_alive_connections_alternate_paths_and_nothing_is_lost(served):
    session = requests.Session()
    for i in range(60):
        r = session.post(f"{served.url}/sum3/predict" + ("?via=full" if i % 3 == 0 else ""),
                         json={"input": [i, 1, 1]}, timeout=30)
        assert r.status_code == 200 and r.json()["output"] == i + 2 and r.json()["default"] is False, r.text


def test_on_a_private_server_only_token_holders_take_the_lean_path(tmp_path):
    from conftest import ServeProcess, wait_until, worker_pids

    server = ServeProcess(state_dir=str(tmp_path / "state"), public_predict=False).start()
    try:
        server.client().deploy(lambda batch: [1] * len(batch), "one", app="one", slo_ms=2000)
        url, body = f"{server.url}/one/predict", b'{"input": [1.0]}'
        anonymous = _post(url, body, False)
        assert anonymous.status_code == 401 and "Server" in anonymous.headers
        holder = _post(url, body, False, {"Authorization": f"Bearer {TOKEN}"})
        assert holder.status_code == 200 and holder.json()["output"] == 1 and "Server" not in holder.headers
    finally:
        server.stop()
        wait_until(lambda: not worker_pids(str(tmp_path), include_fork_server=True), timeout=15,
                   message="workers to exit")

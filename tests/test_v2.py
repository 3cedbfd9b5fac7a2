"""The Open Inference Protocol (KServe V2) against a live server with real worker processes.

Triton's own HTTP client (``tritonclient[http]``, a test dependency) drives the happy
paths, JSON and binary; raw HTTP (requests) drives every mistake. Answers must equal
the model called in this process.
"""

from __future__ import annotations

import gzip
import json
import time

import numpy as np
import orjson
import pytest
import requests
from conftest import TOKEN, client_of, wait_until, worker_pids

from clipper_nb.frontend import v2 as v2_handlers
from clipper_nb.frontend.server import Server

httpclient = pytest.importorskip("tritonclient.http")
from tritonclient.utils import InferenceServerException

HEADER = "Inference-Header-Content-Length"
INT_TYPES = ["BOOL", "INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64"]
FLOAT_TYPES = ["FP16", "FP32", "FP64"]
NUMPY_OF = {"BOOL": np.bool_, "INT8": np.int8, "INT16": np.int16, "INT32": np.int32, "INT64": np.int64,
            "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32, "UINT64": np.uint64,
            "FP16": np.float16, "FP32": np.float32, "FP64": np.float64}


# ---------------------------------------------------------------- models (pickled by value into workers)


def row_sums(batch):
    return np.asarray(batch).sum(axis=1)


def shout(batch):
    return [s.upper() + "!" for s in batch]


def byte_count(batch):
    return [len(b) for b in batch]


def sorted_keys(batch):
    return [sorted(r) if isinstance(r, dict) else {"not": "a dict"} for r in batch]


def arange_as(batch):
    """One row per dtype name: [0, 1, 2] in that dtype (every V2 output datatype; one
    array per batch keeps its dtype, and the test sends one row at a time)."""
    return np.stack([np.arange(3).astype(name) for name in batch])


def with_nan(batch):
    return np.stack([np.full(2, np.nan if x[0] else 1.0, dtype=np.float32) for x in batch])


def slow_when_big(batch):
    batch = np.asarray(batch)
    if (batch[:, 0] > 0.5).any():
        time.sleep(1.5)
    return batch * 2


def _triton(srv, **kwargs):
    return httpclient.InferenceServerClient(url=srv.url.removeprefix("http://"), **kwargs)


def _input(name, arr, datatype, binary=True):
    inp = httpclient.InferInput(name, list(arr.shape), datatype)
    inp.set_data_from_numpy(arr, binary_data=binary)
    return inp


def _outputs(*names, binary=True):
    return [httpclient.InferRequestedOutput(n, binary_data=binary) for n in names]


def _iris_like():
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 4))
    y = (X[:, 0] + X[:, 1] > 0).astype(int) + (X[:, 2] > 1)
    return X, LogisticRegression(max_iter=500).fit(X, y)


# ---------------------------------------------------------------- tests


def test_tritonclient_json_binary_metadata_and_health(server):
    import torch

    X, clf = _iris_like()
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3)).eval()
    client = client_of(server)
    client.deploy(clf, "lr", app="iris", slo_ms=5000)
    client.deploy(net, "net", app="net", slo_ms=5000, input_type="float32")
    tc = _triton(server)

    assert tc.is_server_live() and tc.is_server_ready()
    assert tc.is_model_ready("iris") and tc.is_model_ready("lr", "1") and tc.is_model_ready("net")
    assert tc.get_server_metadata() == {"name": "clipper-nb", "version": "0.1.0", "extensions": ["binary_tensor_data"]}
    meta = tc.get_model_metadata("iris")
    assert meta["platform"] == "sklearn" and meta["inputs"] == [{"name": "input", "datatype": "FP64", "shape": [-1, 4]}]
    assert [o["name"] for o in meta["outputs"]] == ["output", "default"]
    assert meta["versions"] == []  # no model is named "iris": nothing versions/<v> could address
    net_meta = tc.get_model_metadata("net", "1")
    assert net_meta["platform"] == "pytorch" and net_meta["versions"] == ["1"]
    assert net_meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 8]}]
    assert net_meta["outputs"] == [{"name": "output", "datatype": "FP32", "shape": [-1, -1]}]

    # binary in, binary out (tritonclient's default), through the application
    rows = X[:20]
    r = tc.infer("iris", [_input("x", rows, "FP64")], request_id="req-1")
    assert r.get_response()["id"] == "req-1" and r.get_response()["parameters"] == {"default_rows": 0}
    assert r.get_output("output")["datatype"] == "INT64"
    assert r.as_numpy("output").tolist() == clf.predict(rows).tolist()
    assert not r.as_numpy("default").any()
    # the same rows through Clipper's input_batch give the same answers
    assert [a["output"] for a in client.predict_batch("iris", rows.tolist())] == r.as_numpy("output").tolist()
    # JSON in and out; FP32 converts to the app's FP64
    rows32 = X[20:30].astype(np.float32)
    r = tc.infer("iris", [_input("x", rows32, "FP32", binary=False)], outputs=_outputs("output", binary=False))
    assert "data" in r.get_output("output") and r.get_output("default") is None
    assert r.as_numpy("output").tolist() == clf.predict(rows32.astype(np.float64)).tolist()
    # one model version directly, gzip on the way in
    r = tc.infer("lr", [_input("x", X[30:40], "FP64")], model_version="1", request_compression_algorithm="gzip")
    assert r.get_response()["model_version"] == "1" and r.as_numpy("output").tolist() == clf.predict(X[30:40]).tolist()
    # metadata now tells the output's real datatype
    assert tc.get_model_metadata("iris")["outputs"][0] == {"name": "output", "datatype": "INT64", "shape": [-1]}

    # torch: FP32 rows in, FP32 rows out, equal to the module in process
    xs = np.random.default_rng(1).normal(size=(16, 8)).astype(np.float32)
    with torch.inference_mode():
        expected = net(torch.from_numpy(xs)).numpy()
    for binary in (True, False):
        r = tc.infer("net", [_input("input", xs, "FP32", binary)], outputs=_outputs("output", "default", binary=binary))
        got = r.as_numpy("output")
        assert got.dtype == np.float32 and got.shape == (16, 3)
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    r = tc.infer("net", [_input("input", xs.astype(np.float16), "FP16")], model_version="1")
    np.testing.assert_allclose(r.as_numpy("output"), expected, rtol=0.05, atol=0.05)
    tc.close()


def test_every_datatype_a_model_can_take(server):
    client = client_of(server)
    client.deploy(row_sums, "sum-i", app="sum-i", input_type="ints", slo_ms=5000)
    client.deploy(row_sums, "sum-f", app="sum-f", input_type="floats", slo_ms=5000)
    client.deploy(shout, "shout", app="shout", input_type="strings", slo_ms=5000)
    client.deploy(byte_count, "count", app="count", input_type="bytes", slo_ms=5000)
    client.deploy(sorted_keys, "keys", app="keys", input_type="json", slo_ms=5000)
    client.deploy(arange_as, "arange", app="arange", input_type="strings", slo_ms=5000)
    tc = _triton(server)
    rng = np.random.default_rng(3)
    for app, datatypes, target in [("sum-i", INT_TYPES, np.int64), ("sum-f", INT_TYPES + FLOAT_TYPES, np.float64)]:
        for i, datatype in enumerate(datatypes):
            arr = (rng.integers(0, 100, size=(5, 3)) if datatype != "BOOL" else rng.random((5, 3)) > 0.5)
            arr = arr.astype(NUMPY_OF[datatype])
            r = tc.infer(app, [_input("x", arr, datatype, binary=i % 2 == 0)])
            assert r.as_numpy("output").tolist() == row_sums(arr.astype(target)).tolist(), (app, datatype)

    words = np.array([["héllo"], ["wörld"]], dtype=object)
    for binary in (True, False):
        r = tc.infer("shout", [_input("text", words, "BYTES", binary)], outputs=_outputs("output", binary=binary))
        assert r.get_output("output")["datatype"] == "BYTES"
        assert [e.decode() if isinstance(e, bytes) else e for e in r.as_numpy("output")] == shout(words[:, 0])
    blobs = np.array([b"\x00\xff\x10", b"", b"\xfe" * 300], dtype=object)
    r = tc.infer("count", [_input("blob", blobs, "BYTES")])
    assert r.as_numpy("output").tolist() == [3, 0, 300]
    records = np.array([json.dumps({"b": 1, "a": 2}).encode(), b"[1, 2]"], dtype=object)
    r = tc.infer("keys", [_input("records", records, "BYTES")])
    assert [json.loads(e) for e in r.as_numpy("output")] == [["a", "b"], {"not": "a dict"}]

    # every V2 output datatype, JSON and binary: the model returns [0, 1, 2] as each dtype
    for datatype, np_type in NUMPY_OF.items():
        name = np.dtype(np_type).name
        for binary in (True, False):
            r = tc.infer("arange", [_input("dtype", np.array([name], dtype=object), "BYTES")],
                         outputs=_outputs("output", binary=binary))
            assert r.get_output("output")["datatype"] == datatype and r.get_output("output")["shape"] == [1, 3]
            assert np.array_equal(r.as_numpy("output").reshape(1, 3), arange_as([name])), datatype
    # a NaN row stays a float row, not JSON text
    client.deploy(with_nan, "nan", app="nan", slo_ms=5000)
    r = tc.infer("nan", [_input("x", np.array([[0.0], [1.0]]), "FP64")])
    got = r.as_numpy("output")
    assert r.get_output("output")["datatype"].startswith("FP") and got[0].tolist() == [1, 1] and np.isnan(got[1]).all()
    tc.close()


def test_default_outputs_show_in_the_response(server):
    client = client_of(server)
    client.register_app("empty", input_type="floats", default_output=-1)
    client.deploy(slow_when_big, "slow", app="slow", slo_ms=300, default_output=0)
    tc = _triton(server)

    r = tc.infer("empty", [_input("x", np.zeros((3, 2)), "FP64")])
    assert r.as_numpy("output").tolist() == [-1, -1, -1] and r.as_numpy("default").tolist() == [True] * 3
    params = r.get_response()["parameters"]
    assert params["default_rows"] == 3 and "no model is linked" in params["default_explanation"]

    small, big = [0.1, 0.2], [0.9, 0.1]
    r = tc.infer("slow", [_input("x", np.array([small]), "FP64")])  # answered (and cached)
    assert r.as_numpy("output").tolist() == [[0.2, 0.4]] and not r.as_numpy("default").any()
    r = tc.infer("slow", [_input("x", np.array([small, big]), "FP64")], outputs=_outputs("output", "default"))
    assert r.as_numpy("default").tolist() == [False, True]
    assert r.as_numpy("output").tolist() == [[0.2, 0.4], [0.0, 0.0]]  # the default 0 fills the row
    assert r.get_response()["parameters"]["default_rows"] == 1
    # one version directly has no default output: a row past the model's SLO fails the request;
    # a token holder reads why (an anonymous caller gets a generic message and a log reference)
    with pytest.raises(InferenceServerException) as err:
        tc.infer("slow", [_input("x", np.array([[0.8, 0.3]]), "FP64")], model_version="1",
                 headers={"Authorization": f"token {server.token}"})
    assert err.value.status() == "503" and "SLO of 300 ms" in err.value.message()
    with pytest.raises(InferenceServerException) as err:
        tc.infer("slow", [_input("x", np.array([[0.7, 0.3]]), "FP64")], model_version="1")
    assert err.value.status() == "503" and "SLO" not in err.value.message()
    tc.close()


def _post(srv, path, body, headers=None):
    return requests.post(f"{srv.url}/{path}", data=body, headers=headers or {}, timeout=30)


def _infer_body(datatype="FP64", shape=(2, 4), data=None, **extra):
    data = data if data is not None else np.zeros(shape).ravel().tolist()
    return orjson.dumps({"inputs": [{"name": "x", "datatype": datatype, "shape": list(shape), "data": data}],
                         **extra})


def _binary_body(arr, size=None, header=None):
    raw = arr.tobytes()
    head = orjson.dumps({"inputs": [{"name": "x", "datatype": "FP64", "shape": list(arr.shape),
                                     "parameters": {"binary_data_size": len(raw) if size is None else size}}]})
    return head + raw, {HEADER: str(len(head)) if header is None else header}


def test_mistakes_are_4xx_with_the_protocol_error_body(server):
    X, clf = _iris_like()
    client = client_of(server)
    client.deploy(clf, "lr", app="iris", slo_ms=5000)
    client.deploy(clf, "lr", slo_ms=5000)  # version 2 runs; version 1 is stored
    rows = np.zeros((2, 4))
    gz = {"Content-Encoding": "gzip"}
    cases = [
        ("v2/models/iris/infer", _infer_body(shape=(2, 3)), None, 400, "wrong shape"),
        ("v2/models/iris/infer", _infer_body("BYTES", (2,), ["a", "b"]), None, 400, "datatype mismatch"),
        ("v2/models/iris/infer", _infer_body("INT64", (2, 4), [1.5] * 8), None, 400, "datatype mismatch"),
        ("v2/models/iris/infer", _infer_body(data=[0.0] * 7), None, 400, "holds 8 elements, but 'data' has 7"),
        ("v2/models/nope/infer", _infer_body(), None, 404, "no application named 'nope'"),
        ("v2/models/lr/infer", _infer_body(), None, 404, "no application named 'lr'"),
        ("v2/models/nope/versions/1/infer", _infer_body(), None, 404, "no model named 'nope'"),
        ("v2/models/lr/versions/9/infer", _infer_body(), None, 404, "runs version '2'; version '9' does not exist"),
        ("v2/models/lr/versions/1/infer", _infer_body(), None, 404, "version '1' is stored but not serving"),
        ("v2/models/iris/infer", *_binary_body(rows, header="twelve"), 400, "malformed binary header"),
        ("v2/models/iris/infer", *_binary_body(rows, header="100000"), 400, "malformed binary header"),
        ("v2/models/iris/infer", *_binary_body(rows, size=48), 400, "binary_data_size is 48 bytes, but shape [2, 4] of FP64 needs 64"),
        ("v2/models/iris/infer", _binary_body(rows)[0], None, 400, "needs the Inference-Header-Content-Length header"),
        ("v2/models/iris/infer", _infer_body(outputs=[{"name": "probabilities"}]), None, 400, "unknown output"),
        ("v2/models/iris/infer", orjson.dumps({"inputs": [orjson.loads(_infer_body())["inputs"][0]] * 2}), None, 400,
         "one input tensor"),
        ("v2/models/iris/infer", b"{not json", None, 400, "malformed JSON"),
        ("v2/models/iris/infer", _infer_body(), {"Content-Encoding": "br"}, 400, "unsupported Content-Encoding"),
        ("v2/models/iris/infer", _infer_body(), gz, 400, "not valid gzip"),
    ]
    for path, body, headers, status, message in cases:
        r = _post(server, path, body, headers)
        assert r.status_code == status, (path, message, r.text)
        error = r.json()["error"]
        assert isinstance(error, str) and message in error, (message, r.text)
    for path, status, message in [("v2/models/nope", 404, "no application named 'nope'"),
                                  ("v2/models/nope/ready", 404, "no application"),
                                  ("v2/models/lr/versions/1", 404, "stored but not serving"),
                                  ("v2/models/lr/versions/1/ready", 404, "stored but not serving")]:
        r = requests.get(f"{server.url}/{path}", timeout=30)
        assert r.status_code == status and message in r.json()["error"], (path, r.text)

    # a small gzip body that inflates past the query limit is refused, not inflated whole
    limit = max(getattr(server.engine.config, "max_query_mb", 0) * (1 << 20), v2_handlers.MAX_INFER_BYTES)
    bomb = _post(server, "v2/models/iris/infer", gzip.compress(b" " * int(limit + 1)), gz)
    assert bomb.status_code == 413 and "decompressed body is over the limit" in bomb.json()["error"]

    # tritonclient surfaces the message; the server kept serving throughout
    tc = _triton(server)
    with pytest.raises(InferenceServerException, match="wrong shape"):
        tc.infer("iris", [_input("x", np.zeros((1, 5)), "FP64")])
    r = _post(server, "v2/models/iris/infer", gzip.compress(_infer_body(shape=(2, 4), data=X[:2].ravel().tolist())),
              gz)
    assert r.status_code == 200 and r.json()["outputs"][0]["data"] == clf.predict(X[:2]).tolist()
    assert tc.infer("lr", [_input("x", X[:3], "FP64")], model_version="2").as_numpy("output").tolist() == \
        clf.predict(X[:3]).tolist()
    tc.close()


def test_health_is_open_the_rest_follows_the_query_api_auth(tmp_path):
    srv = Server(state_dir=str(tmp_path / "state"), port=0, token=TOKEN, public_predict=False).start_in_thread()
    try:
        client_of(srv).register_app("app", default_output=0)
        for path, body in [("v2/health/live", {"live": True}), ("v2/health/ready", {"ready": True})]:
            r = requests.get(f"{srv.url}/{path}", timeout=10)
            assert r.status_code == 200 and r.json() == body  # nothing but liveness / readiness
        token = {"Authorization": f"token {TOKEN}"}
        for method, path in [("GET", "v2"), ("GET", "v2/models/app"), ("GET", "v2/models/app/ready"),
                             ("GET", "v2/models/app/versions/1"), ("POST", "v2/models/app/infer"),
                             ("POST", "v2/models/app/versions/1/infer")]:
            body = _infer_body(shape=(1, 2)) if method == "POST" else None
            anonymous = requests.request(method, f"{srv.url}/{path}", data=body, timeout=10)
            wrong = requests.request(method, f"{srv.url}/{path}", data=body, timeout=10,
                                     headers={"Authorization": "token nope"})
            good = requests.request(method, f"{srv.url}/{path}", data=body, timeout=10, headers=token)
            assert anonymous.status_code == 401 and "error" in anonymous.json(), path
            assert wrong.status_code == 403 and "error" in wrong.json(), path
            assert good.status_code not in (401, 403), path
        tc = _triton(srv)
        assert tc.is_server_live() and tc.is_server_ready()
        with pytest.raises(InferenceServerException):
            tc.get_server_metadata()
        assert tc.get_server_metadata(headers=token)["name"] == "clipper-nb"
        r = tc.infer("app", [_input("x", np.zeros((2, 2)), "FP64")], headers=token)
        assert r.as_numpy("default").all() and r.as_numpy("output").tolist() == [0, 0]
        tc.close()
    finally:
        srv.stop_thread()


def test_under_jupyter_at_base_url_clipper(tmp_path):
    from _jupyter_fixtures import BASE_URL, JUPYTER_TOKEN, JupyterServer

    X, clf = _iris_like()
    root = tmp_path / "root"
    root.mkdir()
    state = str(tmp_path / "state")
    jp = JupyterServer(str(root), state).start()
    try:
        from clipper_nb.kernel.client import Client

        Client(jp.clipper_url, token=JUPYTER_TOKEN).deploy(clf, "lr", app="iris", slo_ms=5000)
        assert requests.get(jp.clipper_url + "/v2/health/ready", timeout=10).json() == {"ready": True}
        anonymous = requests.get(jp.clipper_url + "/v2/models/iris", timeout=10)
        assert anonymous.status_code in (401, 403)
        tc = httpclient.InferenceServerClient(url=f"127.0.0.1:{jp.port}{BASE_URL}clipper")
        token = {"Authorization": f"token {JUPYTER_TOKEN}"}
        assert tc.is_server_live() and tc.is_model_ready("iris", headers=token)
        r = tc.infer("iris", [_input("x", X[:8], "FP64")], headers=token)
        assert r.as_numpy("output").tolist() == clf.predict(X[:8]).tolist()
        tc.close()
    finally:
        jp.stop()
        wait_until(lambda: not worker_pids(state, include_fork_server=True), timeout=30, message="workers to exit")

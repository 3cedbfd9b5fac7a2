"""``records`` applications over the Open Inference Protocol: one input tensor per field.

A scikit-learn Pipeline whose ColumnTransformer selects columns by name, deployed with
``input_type="records"``, queried with one V2 input tensor per field (MLServer's pandas
codec convention), through raw HTTP JSON and through Triton's client (JSON and binary,
numeric and BYTES tensors). Answers must equal ``pipe.predict(df)`` in this process.
"""

from __future__ import annotations

import numpy as np
import orjson
import pandas as pd
import pytest
import requests
from conftest import client_of

httpclient = pytest.importorskip("tritonclient.http")
from tritonclient.utils import InferenceServerException

FIELDS = ["age", "income", "city"]


def column_names(frame):
    """A records model whose fields are unknown at deploy: what columns did it get?"""
    return [",".join(map(str, frame.columns))] * len(frame)


def _people(n=40, seed=0):
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"age": rng.integers(18, 80, n), "income": rng.normal(40_000, 15_000, n).round(2),
                         "city": rng.choice(["Lyon", "Paris", "Nice", "Lille"], n)})


def _pipeline():
    from sklearn.compose import ColumnTransformer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    frame = _people(200)
    labels = ((frame["age"] > 45) ^ (frame["city"].isin(["Lyon", "Nice"])) ^ (frame["income"] > 45_000)).astype(int)
    pre = ColumnTransformer([("city", OneHotEncoder(handle_unknown="ignore"), ["city"]),
                             ("num", StandardScaler(), ["age", "income"])])
    return make_pipeline(pre, LogisticRegression(max_iter=1000)).fit(frame, labels)


@pytest.fixture
def people(server):
    """The pipeline as the app "people" (predict) and the model "people-proba" (predict_proba)."""
    pipe = _pipeline()
    client = client_of(server)
    client.deploy(pipe, "people-lr", app="people", input_type="records", slo_ms=5000)
    client.deploy(pipe, "people-proba", app="people-proba", input_type="records", method="predict_proba",
                  slo_ms=5000)
    return pipe


def _triton(srv):
    return httpclient.InferenceServerClient(url=srv.url.removeprefix("http://"))


def _input(name, arr, datatype, binary=True):
    inp = httpclient.InferInput(name, list(arr.shape), datatype)
    inp.set_data_from_numpy(arr, binary_data=binary)
    return inp


def _json_input(name, datatype, values, shape=None):
    return {"name": name, "datatype": datatype, "shape": [len(values)] if shape is None else shape, "data": values}


def _infer(srv, path, inputs):
    return requests.post(f"{srv.url}/{path}", data=orjson.dumps({"inputs": inputs}), timeout=30)


def _json_fields(frame):
    return [_json_input("city", "BYTES", frame["city"].tolist()),  # not the order the model was fitted in
            _json_input("income", "FP64", frame["income"].tolist()),
            _json_input("age", "INT64", frame["age"].tolist(), [len(frame), 1])]


# ---------------------------------------------------------------- tests


def test_raw_json_rows_are_records_like_the_clipper_route(server, people):
    frame = _people(30, seed=1)
    want = people.predict(frame).tolist()
    assert len(set(want)) == 2  # both classes: a wrong column mapping shows
    r = _infer(server, "v2/models/people/infer", _json_fields(frame))
    assert r.status_code == 200, r.text
    out = {o["name"]: o for o in r.json()["outputs"]}
    assert out["output"]["data"] == want and out["output"]["shape"] == [30]
    assert out["default"]["data"] == [False] * 30
    # the same rows through Clipper's own route give the same answers
    assert [a["output"] for a in client_of(server).predict_batch("people", frame)] == want
    # one version directly, and predict_proba's floats
    r = _infer(server, "v2/models/people-lr/versions/1/infer", _json_fields(frame))
    assert r.status_code == 200 and r.json()["outputs"][0]["data"] == want, r.text
    r = _infer(server, "v2/models/people-proba/infer", _json_fields(frame))
    got = np.asarray(r.json()["outputs"][0]["data"]).reshape(r.json()["outputs"][0]["shape"])
    np.testing.assert_allclose(got, people.predict_proba(frame), rtol=1e-12)


def test_tritonclient_numeric_and_bytes_tensors(server, people):
    frame = _people(25, seed=2)
    tc = _triton(server)
    for binary in (True, False):
        inputs = [_input("age", frame["age"].to_numpy(np.int32).reshape(-1, 1), "INT32", binary),
                  _input("city", frame["city"].to_numpy(object), "BYTES", binary),
                  _input("income", frame["income"].to_numpy(np.float64), "FP64", binary)]
        r = tc.infer("people", inputs)
        assert r.as_numpy("output").tolist() == people.predict(frame).tolist(), binary
        assert not r.as_numpy("default").any()
        r = tc.infer("people-proba", inputs, model_version="1")
        np.testing.assert_allclose(r.as_numpy("output"), people.predict_proba(frame), rtol=1e-12)
    # INT64 age [N], BYTES city [N, 1], FP32 income: numbers reach the model as numbers
    inputs = [_input("age", frame["age"].to_numpy(np.int64), "INT64"),
              _input("city", frame["city"].to_numpy(object).reshape(-1, 1), "BYTES"),
              _input("income", frame["income"].to_numpy(np.float32), "FP32")]
    r = tc.infer("people-proba", inputs)
    as32 = frame.assign(income=frame["income"].astype(np.float32).astype(np.float64))
    np.testing.assert_allclose(r.as_numpy("output"), people.predict_proba(as32), rtol=1e-12)
    tc.close()


def test_records_mistakes_are_clear_400s(server, people):
    frame = _people(4, seed=3)
    age, income, city = (_json_fields(frame)[i] for i in (2, 1, 0))
    cases = [
        ([age, income, _json_input("city", "BYTES", ["Lyon"] * 3)], "same number of rows: "),
        ([age, income, city, _json_input("zip", "BYTES", ["69001"] * 4)], "unknown: zip"),
        ([age, city], "missing: income"),
        ([age, income, city, age], "'age' sent more than once"),
        ([_json_input("age", "INT64", [1] * 8, [4, 2]), income, city], "shape [4, 2]"),
        ([_json_input("age", "INT64", [1], []), income, city], "shape []"),
        ([_json_input("age", "INT64", [], [0]), _json_input("income", "FP64", [], [0]),
          _json_input("city", "BYTES", [], [0])], "no rows"),
        ([_json_input("age", "INT64", ["41"] * 4), income, city], "datatype mismatch"),
    ]
    for path in ("v2/models/people/infer", "v2/models/people-lr/versions/1/infer"):
        for inputs, message in cases:
            r = _infer(server, path, inputs)
            assert r.status_code == 400, (path, message, r.text)
            assert message in r.json()["error"], (path, message, r.text)
    r = _infer(server, "v2/models/people/infer", [age, city])
    assert "the record's fields do not match the model's" in r.json()["error"]  # the Clipper route's wording
    assert "fitted on: age, income, city" in r.json()["cause"]
    # a BYTES field that is not UTF-8, in binary
    tc = _triton(server)
    bad = np.array([b"\xff\xfe"] * 4, dtype=object)
    with pytest.raises(InferenceServerException, match="not UTF-8") as e:
        tc.infer("people", [_input("age", frame["age"].to_numpy(), "INT64"),
                            _input("income", frame["income"].to_numpy(), "FP64"), _input("city", bad, "BYTES")])
    assert e.value.status() == "400"
    tc.close()
    # the server kept serving
    assert _infer(server, "v2/models/people/infer", [age, income, city]).json()["outputs"][0]["data"] == \
        people.predict(frame).tolist()


def test_metadata_lists_one_input_per_field(server, people):
    tc = _triton(server)
    fields = [{"name": f, "datatype": "BYTES", "shape": [-1]} for f in people.feature_names_in_]
    assert [f["name"] for f in fields] == FIELDS
    assert tc.get_model_metadata("people")["inputs"] == fields
    assert tc.get_model_metadata("people-lr", "1")["inputs"] == fields
    meta = tc.get_model_metadata("people-proba")
    assert meta["inputs"] == fields and meta["platform"] == "sklearn"

    # a records model whose fields are unknown (a function): one input as before, and any
    # fields go through as the DataFrame's columns
    client = client_of(server)
    client.deploy(column_names, "columns", app="columns", input_type="records", slo_ms=5000)
    assert tc.get_model_metadata("columns")["inputs"] == [{"name": "input", "datatype": "BYTES", "shape": [-1]}]
    r = tc.infer("columns", [_input("b", np.array([1.5, 2.5]), "FP64"), _input("a", np.array([True, False]), "BOOL")])
    assert [e.decode() for e in r.as_numpy("output")] == ["b,a", "b,a"]
    tc.close()

"""Codecs and artifacts: pure functions, tested directly."""

from __future__ import annotations

import base64

import numpy as np
import pytest

from clipper_nb.wire import artifact
from clipper_nb.wire import codec
from clipper_nb.errors import BadInput, DeployError


def test_numeric_input_decodes_and_checks_shape():
    x = codec.decode_input("floats", [1, 2, 3], [3])
    assert x.dtype == np.float64 and x.tolist() == [1.0, 2.0, 3.0]
    assert codec.decode_input("ints", [[1, 2], [3, 4]], [2, 2]).dtype == np.int64
    with pytest.raises(BadInput, match="expects 4 features, got 3"):
        codec.decode_input("floats", [1, 2, 3], [4])
    with pytest.raises(BadInput, match="expects \\[2, 2\\]"):
        codec.decode_input("floats", [1, 2, 3, 4], [2, 2])
    for bad in ("text", None, {"a": 1}, [1, "x"], [[1, 2], [3]]):
        with pytest.raises(BadInput):
            codec.decode_input("floats", bad)


def test_other_input_types():
    assert codec.decode_input("strings", "hello") == "hello"
    assert codec.decode_input("bytes", base64.b64encode(b"\x00\x01").decode()) == b"\x00\x01"
    assert codec.decode_input("json", {"a": [1]}) == {"a": [1]}
    with pytest.raises(BadInput, match="base64"):
        codec.decode_input("bytes", "***")
    with pytest.raises(BadInput, match="string"):
        codec.decode_input("strings", 3)
    with pytest.raises(BadInput, match="unknown input_type"):
        codec.check_input_type("tensors")


def test_batches_of_arrays_travel_as_one_buffer():
    items = [np.arange(4, dtype=np.float64) + i for i in range(3)]
    frames = codec.encode_batch(items)
    assert len(frames) == 2 and b"ndarray" in frames[0]
    batch = codec.decode_batch(frames[0], bytes(frames[1]))
    assert batch.shape == (3, 4) and batch[2].tolist() == [2, 3, 4, 5]


def test_ragged_and_object_batches_travel_pickled():
    items = ["a", "bc"]
    frames = codec.encode_batch(items)
    assert b"pickle" in frames[0]
    assert codec.decode_batch(frames[0], frames[1]) == items
    ragged = [np.zeros(2), np.zeros(3)]
    out = codec.decode_batch(*codec.encode_batch(ragged))
    assert [len(v) for v in out] == [2, 3]


def test_outputs_round_trip_and_split_into_rows():
    arr = np.array([[0.1, 0.9], [0.8, 0.2]])
    frames = codec.encode_outputs(arr)
    rows = codec.rows(codec.decode_batch(frames[0], bytes(frames[1])))
    assert len(rows) == 2 and rows[1].tolist() == [0.8, 0.2]
    assert codec.rows(codec.decode_batch(*codec.encode_outputs(["x", {"k": 1}]))) == ["x", {"k": 1}]


class Opaque:
    def __str__(self) -> str:
        return "opaque thing"


def test_outputs_json_cannot_carry_take_the_one_documented_encoding():
    nan, inf = float("nan"), float("inf")
    assert codec.to_jsonable([nan, inf, -inf, np.float32("nan"), np.array([1.0, -inf])]) == \
        ["NaN", "Infinity", "-Infinity", "NaN", [1.0, "-Infinity"]]
    assert codec.to_jsonable({1: b"\x00\x01", "s": {3}, "o": Opaque(), "t": (1, np.int64(2))}) == \
        {"1": "AAE=", "s": [3], "o": "opaque thing", "t": [1, 2]}
    assert codec.to_jsonable(b"ab", keep_bytes=True) == b"ab"
    assert codec.to_jsonable(np.bytes_(b"ab")) == "YWI=" and codec.to_jsonable(np.str_("héllo")) == "héllo"
    # a worker's outputs travel as data (the frontend's unpickler takes no class), in that encoding
    sent = codec.encode_outputs([Opaque(), nan, b"raw", "héllo", np.array([inf])])
    assert codec.rows(codec.decode_batch(*sent)) == ["opaque thing", "NaN", b"raw", "héllo", ["Infinity"]]
    # a numeric array's rows stay numpy unless they hold a non-finite number
    rows = codec.rows(codec.decode_batch(*codec.encode_outputs(np.array([[1.0, nan], [2.0, 3.0]]))))
    assert rows[0] == [1.0, "NaN"] and isinstance(rows[1], np.ndarray)
    empty = codec.decode_batch(*codec.encode_outputs(np.zeros((2, 0))))
    assert empty.shape == (2, 0)


def test_empty_too_deep_and_too_large_inputs_are_refused_at_the_edge():
    for empty in ([], [[], [], []], [[[]]]):
        with pytest.raises(BadInput, match="input is empty"):
            codec.decode_input("floats", empty)
    deep: object = 1.0
    for _ in range(40):
        deep = [deep]
    with pytest.raises(BadInput, match="nested 40 deep"):
        codec.decode_input("floats", deep)
    assert codec.decode_input("floats", [[[1.0]]]).shape == (1, 1, 1)
    with pytest.raises(BadInput, match="not a regular array"):
        codec.decode_input("ints", [2 ** 70])
    nested: object = 1
    for _ in range(codec.MAX_JSON_DEPTH + 1):
        nested = {"a": nested}
    with pytest.raises(BadInput, match="nested more than"):
        codec.decode_input("json", [nested])
    assert codec.decode_input("json", nested["a"]) is nested["a"]
    assert codec.decode_input("json", []) == [] and codec.decode_input("strings", "") == ""


def test_a_model_returning_one_string_for_a_batch_fails_instead_of_answering_with_characters():
    from clipper_nb.wire import predict

    spam = artifact.Predictor("callable", "cpu", lambda batch: "spam")
    with pytest.raises(TypeError, match="returned one str for the batch"):
        predict.run(spam, [1, 2, 3, 4])
    words = artifact.Predictor("callable", "cpu", lambda batch: ["spam", "", "eggs and ham"][:len(batch)])
    frames, _ = predict.run_frames(words, *codec.encode_batch(["a", "b", "c"]))
    assert predict.decode_outputs(*frames) == ["spam", "", "eggs and ham"]


def test_a_dataframe_of_outputs_answers_its_rows():
    import pandas as pd

    from clipper_nb.wire import predict

    frame = artifact.Predictor("callable", "cpu", lambda batch: pd.DataFrame({"a": [1, 2], "b": [3.0, 4.0]}))
    outputs, _ = predict.run(frame, [0, 1])
    assert [codec.to_jsonable(o) for o in outputs] == [[1.0, 3.0], [2.0, 4.0]]


def test_digest_depends_on_bytes_dtype_and_shape():
    a = np.arange(4, dtype=np.float64)
    assert codec.input_digest(a) == codec.input_digest(a.copy())
    assert codec.input_digest(a) != codec.input_digest(a.astype(np.float32))
    assert codec.input_digest(a) != codec.input_digest(a.reshape(2, 2))
    assert codec.input_digest("ab") != codec.input_digest(b"ab")


def test_to_jsonable():
    assert codec.to_jsonable({"a": np.float32(1.5), "b": (np.int64(2), np.array([1, 2]))}) == {"a": 1.5, "b": [2, [1, 2]]}


def test_package_records_kind_method_shape_and_versions():
    from sklearn.linear_model import LogisticRegression

    clf = LogisticRegression().fit(np.random.RandomState(0).randn(20, 5), [0, 1] * 10)
    payload, meta = artifact.package(clf, "predict_proba")
    assert meta["kind"] == "sklearn" and meta["method"] == "predict_proba" and meta["input_shape"] == [5]
    assert {"python", "numpy", "scikit-learn"} <= set(meta["versions"])
    pred = artifact.load(payload, meta)
    assert pred.predict(np.zeros((2, 5))).shape == (2, 2)
    with pytest.raises(DeployError, match="no method 'transform'"):
        artifact.package(clf, "transform")


def test_package_torch_and_callables():
    import torch

    net = torch.nn.Sequential(torch.nn.Linear(3, 2))
    payload, meta = artifact.package(net)
    assert meta["kind"] == "torch" and meta["input_shape"] == [3]
    out = artifact.load(payload, meta, "cpu").predict(np.ones((4, 3)))
    assert out.shape == (4, 2)

    payload, meta = artifact.package(lambda batch: [len(b) for b in batch])
    assert meta["kind"] == "callable"
    assert artifact.load(payload, meta).predict([[1, 2], [3]]) == [2, 1]
    with pytest.raises(DeployError, match="cannot deploy an object"):
        artifact.package(42)

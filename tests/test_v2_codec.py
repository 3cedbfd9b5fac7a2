"""The V2 (Open Inference Protocol) codec, pure: requests, tensors -> model rows, outputs -> responses.

Where tritonclient is installed (a test dependency, never a runtime one) its own request
encoder and response decoder are the reference for the binary tensor extension.
"""

from __future__ import annotations

import struct

import numpy as np
import orjson
import pytest

from clipper_nb.errors import BadInput
from clipper_nb.wire import v2

NUMERIC = ["BOOL", "INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64", "FP16", "FP32", "FP64"]


def _sample(datatype: str, shape=(3, 2)) -> np.ndarray:
    rng = np.random.default_rng(7)
    if datatype == "BOOL":
        return rng.random(shape) > 0.5
    if datatype == "BYTES":
        return np.array([f"é{i}".encode() for i in range(int(np.prod(shape)))], dtype=object).reshape(shape)
    dtype = v2.DATATYPES[datatype]
    if dtype.kind == "f":
        return (rng.random(shape) * 100 - 50).astype(dtype)
    info = np.iinfo(dtype)
    return rng.integers(info.min, info.max, size=shape, dtype=dtype, endpoint=True)


def _json_request(inputs: list[dict], **extra) -> bytes:
    return orjson.dumps({"inputs": inputs, **extra})


def _binary_request(arrays: dict[str, tuple[str, np.ndarray]], **extra) -> tuple[bytes, str]:
    """A binary request built by hand: JSON header, then each tensor's raw bytes."""
    specs, chunks = [], []
    for name, (datatype, arr) in arrays.items():
        if datatype == "BYTES":
            raw = b"".join(struct.pack("<I", len(e)) + e for e in arr.reshape(-1))
        else:
            raw = arr.astype(v2.DATATYPES[datatype]).tobytes()
        specs.append({"name": name, "datatype": datatype, "shape": list(arr.shape),
                      "parameters": {"binary_data_size": len(raw)}})
        chunks.append(raw)
    head = _json_request(specs, **extra)
    return head + b"".join(chunks), str(len(head))


# ====================================================================== requests


@pytest.mark.parametrize("datatype", NUMERIC + ["BYTES"])
def test_every_datatype_decodes_from_json_and_binary(datatype):
    arr = _sample(datatype)
    data = [e.decode() for e in arr.reshape(-1)] if datatype == "BYTES" else arr.tolist()  # nested, row-major
    req = v2.parse_request(_json_request([{"name": "x", "datatype": datatype, "shape": [3, 2], "data": data}]), None)
    (t,) = req.inputs
    assert t.datatype == datatype and t.data.shape == (3, 2)
    assert t.data.dtype == v2.DATATYPES[datatype]
    assert (t.data == arr).all()

    body, header = _binary_request({"x": (datatype, arr)})
    (b,) = v2.parse_request(body, header).inputs
    assert b.data.shape == (3, 2) and (b.data == arr).all()
    if datatype != "BYTES":  # a view of the body, no per-element work
        assert b.data.base is not None and not b.data.flags.writeable


def test_flat_json_data_is_row_major():
    req = v2.parse_request(_json_request([{"name": "x", "datatype": "FP32", "shape": [2, 3],
                                           "data": [1, 2, 3, 4, 5, 6]}]), None)
    assert req.inputs[0].data.tolist() == [[1, 2, 3], [4, 5, 6]]


def test_request_fields_outputs_and_parameters():
    body, header = _binary_request({"a": ("FP32", np.ones((2, 2), np.float32)), "b": ("INT64", np.arange(3))},
                                   id="req-7", parameters={"binary_data_output": True, "context": "u1"},
                                   outputs=[{"name": "output", "parameters": {"binary_data": False}},
                                            {"name": "default"}])
    req = v2.parse_request(body, header)
    assert req.id == "req-7" and req.parameters["context"] == "u1" and req.binary_output is True
    assert [t.name for t in req.inputs] == ["a", "b"] and req.inputs[1].data.tolist() == [0, 1, 2]
    assert [(r.name, r.binary) for r in req.outputs] == [("output", False), ("default", True)]
    assert v2.parse_request(_json_request([{"name": "x", "datatype": "FP64", "shape": [1], "data": [1]}]),
                            None).outputs is None


def test_tritonclient_request_bodies_parse():
    httpclient = pytest.importorskip("tritonclient.http")
    arrays = {dt: _sample(dt) for dt in NUMERIC + ["BYTES"]}
    inputs = []
    for i, (dt, arr) in enumerate(arrays.items()):
        inp = httpclient.InferInput(dt, list(arr.shape), dt)
        inp.set_data_from_numpy(arr, binary_data=i % 2 == 0)  # JSON and binary mixed in one request
        inputs.append(inp)
    body, json_size = httpclient.InferenceServerClient.generate_request_body(inputs, request_id="r1")
    req = v2.parse_request(body, None if json_size is None else str(json_size))
    assert req.id == "r1" and req.binary_output is True  # no outputs named: tritonclient asks for binary
    for t in req.inputs:
        assert t.data.shape == arrays[t.name].shape and (t.data == arrays[t.name]).all(), t.name


@pytest.mark.parametrize("spec, header, message", [
    ({"name": "x", "datatype": "FP32", "shape": [2, 3], "data": [1, 2, 3, 4, 5]}, None, "holds 6 elements"),
    ({"name": "x", "datatype": "FP32", "shape": [2], "data": ["a", "b"]}, None, "datatype mismatch"),
    ({"name": "x", "datatype": "INT32", "shape": [2], "data": [1.5, 2]}, None, "non-integer"),
    ({"name": "x", "datatype": "INT8", "shape": [1], "data": [300]}, None, "out of range"),
    ({"name": "x", "datatype": "UINT8", "shape": [1], "data": [-1]}, None, "out of range"),
    ({"name": "x", "datatype": "BOOL", "shape": [2], "data": [1, 0]}, None, "datatype mismatch"),
    ({"name": "x", "datatype": "BYTES", "shape": [2], "data": ["a", 3]}, None, "datatype mismatch"),
    ({"name": "x", "datatype": "FP64", "shape": [2, 2], "data": [[1, 2], [3]]}, None, "not a regular array"),
    ({"name": "x", "datatype": "BF16", "shape": [1], "data": [1]}, None, "unsupported datatype"),
    ({"name": "x", "datatype": ["FP32"], "shape": [1], "data": [1]}, None, "unsupported datatype"),
    ({"name": "x", "datatype": "FP32", "shape": [-1, 2], "data": [1, 2]}, None, "'shape' must be"),
    ({"name": "x", "datatype": "FP32", "shape": "2", "data": [1, 2]}, None, "'shape' must be"),
    ({"name": "x", "datatype": "FP32", "shape": [1]}, None, "neither 'data'"),
    ({"datatype": "FP32", "shape": [1], "data": [1]}, None, "inputs[0]"),
    ({"name": "x", "datatype": "FP32", "shape": [1], "parameters": {"shared_memory_region": "r"}}, None,
     "shared-memory"),
    ({"name": "x", "datatype": "FP32", "shape": [1], "parameters": {"binary_data_size": 4}}, None,
     "no Inference-Header-Content-Length"),
])
def test_json_request_mistakes_name_the_problem(spec, header, message):
    with pytest.raises(BadInput) as err:
        v2.parse_request(_json_request([spec]), header)
    assert message in err.value.message and err.value.status == 400


def test_binary_framing_mistakes_name_the_problem():
    arr = np.ones((2, 3), np.float32)
    body, header = _binary_request({"x": ("FP32", arr)})
    cases = [
        (body, "abc", "malformed binary header"),
        (body, "0", "malformed binary header"),
        (body, str(len(body) + 1), "malformed binary header"),
        (body, str(int(header) - 1), "malformed JSON"),
        (body + b"\0", header, "add up to"),
        (body[:-1], header, "only 23 are left"),
    ]
    for raw, head, message in cases:
        with pytest.raises(BadInput) as err:
            v2.parse_request(raw, head)
        assert message in err.value.message, (head, err.value.message)
    # the size says 24 bytes, the shape needs 2 x 2 x 4 = 16
    bad = orjson.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 2],
                                    "parameters": {"binary_data_size": 24}}]})
    with pytest.raises(BadInput, match="needs 16"):
        v2.parse_request(bad + arr.tobytes(), str(len(bad)))
    both = orjson.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1],
                                     "parameters": {"binary_data_size": 4}}]})
    with pytest.raises(BadInput, match="both 'data' and"):
        v2.parse_request(both + b"\0" * 4, str(len(both)))


def test_binary_bytes_framing_mistakes():
    def request(raw: bytes, count: int) -> tuple[bytes, str]:
        head = orjson.dumps({"inputs": [{"name": "s", "datatype": "BYTES", "shape": [count],
                                         "parameters": {"binary_data_size": len(raw)}}]})
        return head + raw, str(len(head))

    good = struct.pack("<I", 2) + b"ab" + struct.pack("<I", 0)
    assert v2.parse_request(*request(good, 2)).inputs[0].data.tolist() == [b"ab", b""]
    for raw, count, message in [(good, 3, "cannot hold"), (good[:-2], 2, "ends after 1 of 2"),
                                (struct.pack("<I", 9) + b"ab" + b"\0" * 4, 2, "says 9 bytes"),
                                (good + b"xxxx", 2, "are left after")]:
        with pytest.raises(BadInput, match=message):
            v2.parse_request(*request(raw, count))
    with pytest.raises(BadInput, match="cannot hold"):  # a huge shape is refused before any allocation
        v2.parse_request(*request(good, 10**12))


def test_request_level_mistakes():
    for body, message in [(b"", "malformed JSON"), (b"[1]", "JSON object"), (b'{"inputs": []}', "non-empty list"),
                          (b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1]}], "id": 3}',
                           "'id' must be a string"),
                          ((b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1]}],'
                           b' "outputs": [{"name": "o", "parameters": {"classification": 3}}]}'), "classification"),
                          ((b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1]}],'
                           b' "parameters": {"binary_data_output": "yes"}}'), "binary_data_output"),
                          ((b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1]}],'
                           b' "outputs": ["o"]}'), "'outputs' must be")]:
        with pytest.raises(BadInput) as err:
            v2.parse_request(body, None)
        assert message in err.value.message


# ====================================================================== tensors -> model rows


def _tensor(datatype: str, arr) -> v2.Tensor:
    arr = np.asarray(arr, dtype=v2.DATATYPES[datatype])
    return v2.Tensor("x", datatype, arr)


@pytest.mark.parametrize("datatype", ["BOOL", "INT8", "INT64", "UINT16", "UINT64", "FP16", "FP32", "FP64"])
def test_numbers_convert_to_a_float_app(datatype):
    arr = _sample(datatype, (4, 3))
    rows = v2.to_rows(v2.Tensor("x", datatype, arr), "floats", [3], "app 'a'")
    assert len(rows) == 4 and all(r.dtype == np.float64 and r.shape == (3,) for r in rows)
    assert np.array_equal(np.stack(rows), arr.astype(np.float64))


@pytest.mark.parametrize("datatype", ["BOOL", "INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32",
                                      "UINT64"])
def test_integers_convert_to_an_ints_app(datatype):
    arr = np.abs(_sample(datatype, (3, 2)).astype(np.int64) % 1000).astype(v2.DATATYPES[datatype])
    rows = v2.to_rows(v2.Tensor("x", datatype, arr), "ints", None, "app 'a'")
    assert [r.dtype for r in rows] == [np.int64] * 3 and np.array_equal(np.stack(rows), arr.astype(np.int64))


def test_row_conversion_mistakes():
    cases = [
        (_tensor("FP32", [[1.0, 2.0]]), "ints", None, "datatype mismatch: input 'x' is FP32, but app 'a' takes INT64"),
        (_tensor("BYTES", [b"1"]), "floats", None, "datatype mismatch"),
        (_tensor("FP64", [[1.0, 2.0]]), "strings", None, "takes BYTES"),
        (_tensor("UINT64", [2**63 + 5]), "ints", None, "too large for INT64"),
        (_tensor("FP64", [[1.0, 2.0, 3.0]]), "floats", [2], "has shape [1, 3], but app 'a' takes [-1, 2]"),
        (_tensor("FP64", [1.0, 2.0]), "floats", [2], "has shape [2], but app 'a' takes [-1, 2]"),
        (v2.Tensor("x", "FP64", np.float64(1.0).reshape(())), "floats", None, "shape []"),
        (_tensor("FP64", np.zeros((0, 2))), "floats", [2], "no rows"),
        (v2.Tensor("x", "BYTES", np.array([[b"a", b"b"]], dtype=object)), "strings", None, "[-1] or [-1, 1]"),
        (_tensor("BYTES", [b"\xff"]), "strings", None, "not UTF-8"),
        (_tensor("BYTES", [b"{nope"]), "json", None, "not JSON text"),
    ]
    for tensor, input_type, shape, message in cases:
        with pytest.raises(BadInput) as err:
            v2.to_rows(tensor, input_type, shape, "app 'a'")
        assert message in err.value.message, (input_type, err.value.message)


def test_text_bytes_and_json_rows():
    col = v2.Tensor("x", "BYTES", np.array([[b"h\xc3\xa9"], [b"b"]], dtype=object))
    assert v2.to_rows(col, "strings", None, "a") == ["hé", "b"]
    assert v2.to_rows(col, "bytes", None, "a") == [b"h\xc3\xa9", b"b"]
    assert v2.base64_rows([b"\x00\x01"]) == ["AAE="]
    records = v2.Tensor("x", "BYTES", np.array([b'{"a": 1}', b"[1, 2]"], dtype=object))
    assert v2.to_rows(records, "json", None, "a") == [{"a": 1}, [1, 2]]
    assert v2.to_rows(_tensor("INT32", [[1, 2], [3, 4]]), "json", None, "a") == [[1, 2], [3, 4]]


def test_input_signature():
    assert v2.input_signature("floats", [784]) == ("FP64", [-1, 784])
    assert v2.input_signature("float32", None) == ("FP32", [-1, -1])
    assert v2.input_signature("ints", [2, 3]) == ("INT64", [-1, 2, 3])
    assert v2.input_signature("strings", None) == ("BYTES", [-1])
    assert v2.input_signature("json", None) == ("BYTES", [-1])


# ====================================================================== outputs -> responses


def test_stack_outputs_numeric_and_defaults():
    rows = [np.array([1.0, 2.0], np.float32), None, np.array([3.0, 4.0], np.float32)]
    mask = np.array([False, True, False])
    out = v2.stack_outputs(rows, mask, 0)  # a scalar default fills the row
    assert out.dtype == np.float32 and out.tolist() == [[1, 2], [0, 0], [3, 4]]
    assert np.isnan(v2.stack_outputs(rows, mask, None)[1]).all()  # None in a float tensor: NaN
    assert v2.stack_outputs(rows, mask, [7, 8]).tolist()[1] == [7, 8]
    assert np.isnan(v2.stack_outputs(rows, mask, "n/a")[1]).all()
    ints = v2.stack_outputs([np.int64(3), None], np.array([False, True]), None)
    assert ints.dtype == np.int64 and ints.tolist() == [3, 0]
    labels = v2.stack_outputs(["cat", None], np.array([False, True]), "unknown")
    assert labels.dtype == object and labels.tolist() == [b"cat", b"unknown"]


def test_stack_outputs_takes_non_finite_floats_back_from_their_json_spelling():
    rows = [np.array([1.0, 2.0], np.float32), ["NaN", "Infinity"], [3.0, "-Infinity"]]
    out = v2.stack_outputs(rows, np.zeros(3, bool), None)
    assert out.dtype == np.float64 and out[0].tolist() == [1, 2] and np.isnan(out[1, 0])
    assert out[1, 1] == np.inf and out[2].tolist() == [3, -np.inf]
    scalars = v2.stack_outputs([1.5, "NaN"], np.zeros(2, bool), None)
    assert scalars.dtype == np.float64 and scalars[0] == 1.5 and np.isnan(scalars[1])
    labels = v2.stack_outputs(["NaN", "cat"], np.zeros(2, bool), None)  # strings stay strings
    assert labels.tolist() == [b"NaN", b"cat"]


def test_stack_outputs_without_real_rows():
    mask = np.array([True, True])
    assert v2.stack_outputs([None, None], mask, -1).tolist() == [-1, -1]
    assert v2.stack_outputs([None, None], mask, None).tolist() == [b"null", b"null"]
    hinted = v2.stack_outputs([None, None], mask, 0, ("FP32", [-1, 3]))
    assert hinted.dtype == np.float32 and hinted.shape == (2, 3) and not hinted.any()


def test_stack_outputs_of_anything_else_is_json_text():
    out = v2.stack_outputs([{"a": 1}, [1, [2]]], np.zeros(2, bool), None)
    assert v2.datatype_of(out) == "BYTES" and [orjson.loads(e) for e in out] == [{"a": 1}, [1, [2]]]
    odd = v2.stack_outputs([np.array([1 + 2j])], np.zeros(1, bool), None)  # no V2 datatype: JSON text
    assert v2.datatype_of(odd) == "BYTES"


@pytest.mark.parametrize("datatype", NUMERIC + ["BYTES"])
def test_responses_round_trip_through_tritonclient(datatype):
    httpclient = pytest.importorskip("tritonclient.http")
    arr = _sample(datatype)
    for binary in (False, True):
        body, header = v2.encode_response({"model_name": "m", "id": "7"}, [("output", arr, binary)])
        assert (header is not None) == binary
        result = httpclient.InferenceServerClient.parse_response_body(body, header_length=header)
        got = result.as_numpy("output")
        assert result.get_response()["id"] == "7" and result.get_output("output")["datatype"] == datatype
        if datatype == "BYTES":
            assert [g if isinstance(g, bytes) else g.encode() for g in got.reshape(-1)] == list(arr.reshape(-1))
        else:
            assert got.dtype == v2.DATATYPES[datatype] and np.array_equal(got.reshape(arr.shape), arr)


def test_json_response_layout_and_non_utf8_bytes():
    body, header = v2.encode_response({"model_name": "m"}, [("output", np.array([[1.5, 2.0]], np.float16), False),
                                                           ("default", np.array([False]), True)])
    head = orjson.loads(body[:header])
    assert head["outputs"][0] == {"name": "output", "datatype": "FP16", "shape": [1, 2], "data": [1.5, 2.0]}
    assert head["outputs"][1]["parameters"] == {"binary_data_size": 1} and body[header:] == b"\x00"
    with pytest.raises(BadInput, match="not UTF-8"):
        v2.encode_response({}, [("output", np.array([b"\xff"], dtype=object), False)])

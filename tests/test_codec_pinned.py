"""Tests that pin the codec core's arithmetic (see .ci/mutate.py).

Expected values come from the documented rules (module docstring and constants), written
out as literals here, so a mutated constant cannot move the expectation with it.

Mutants judged equivalent (they cannot change what the codec returns or raises):
* codec.py:177 ``dtype.kind != "f"`` -> ``==``: lists then take ``np.asarray`` and int lists
  ``np.fromiter``; both convert every list to the same values and raise for the same ones
  (checked for floats, ints, strings, bools, None, overflows): speed only.
* codec.py:213 ``len(items) > 1`` -> ``>=``: ``np.stack([a])`` and ``a[None, ...]`` hold the
  same (1, ...) array; the frames are identical.
* codec.py:273 ``reshape(len(outputs), -1)`` -> ``-2``: numpy 2 reads any negative size as
  "infer this axis", so the reshape is the same.
* codec.py:293 ``kind in "biu" or (...)`` -> ``and``: an int or finite float array then
  takes the general walk over ``tolist()``, which returns the same list: speed only.
"""

from __future__ import annotations

import numpy as np
import pytest

from clipper_nb.errors import BadInput
from clipper_nb.wire import codec


def _nested(levels: int, leaf=0):
    x = leaf
    for _ in range(levels):
        x = [x]
    return x


# ---------------------------------------------------------------- records


def test_a_record_with_exactly_1024_fields_passes_and_1025_is_refused():
    ok = {f"f{i}": i for i in range(1024)}
    assert codec.decode_record(ok) is ok
    assert codec.decode_input("records", ok) is ok
    with pytest.raises(BadInput, match="1 to 1024 fields, got 1025"):
        codec.decode_record({f"f{i}": i for i in range(1025)})


def test_a_record_must_be_a_non_empty_object():
    assert codec.decode_record({"a": 1}) == {"a": 1}
    with pytest.raises(BadInput, match="got 0"):
        codec.decode_record({})
    for bad in ([("a", 1)], "a=1", None, 3):
        with pytest.raises(BadInput, match="object of named fields"):
            codec.decode_record(bad)


def test_record_values_are_plain_scalars_null_included():
    row = {"s": "Lyon", "i": 41, "f": 1.5, "b": True, "n": None}
    assert codec.decode_record(row) == row
    for bad in ([1], {"x": 1}, (1,), b"x"):
        with pytest.raises(BadInput, match="are not numbers"):
            codec.decode_record({"ok": 1, "bad": bad})


def test_record_fields_must_match_the_models_exactly():
    fields = ["age", "city"]
    row = {"age": 41, "city": "Lyon"}
    assert codec.decode_record(row, fields) == row
    assert codec.decode_record({"city": "Lyon", "age": 41}, fields) == row  # order is free
    with pytest.raises(BadInput, match="missing: city") as e:
        codec.decode_record({"age": 41}, fields)
    assert "unknown" not in str(e.value)
    with pytest.raises(BadInput, match="unknown: zip") as e:
        codec.decode_record({"age": 41, "city": "Lyon", "zip": "69001"}, fields)
    assert "missing" not in str(e.value)
    with pytest.raises(BadInput, match="missing: city; unknown: zip"):
        codec.decode_record({"age": 41, "zip": "69001"}, fields)
    # no fields known (None or empty): any names pass
    assert codec.decode_record({"zip": 1}, None) == {"zip": 1}
    assert codec.decode_record({"zip": 1}, []) == {"zip": 1}


# ---------------------------------------------------------------- numeric limits


def test_31_dimensions_are_served_and_32_refused():
    x = np.ones((1,) * 31)
    assert codec.decode_input("floats", x).shape == (1,) * 31
    with pytest.raises(BadInput, match="nested 32 deep; at most 31"):
        codec.decode_input("floats", np.ones((1,) * 32))
    with pytest.raises(BadInput, match="at most 31"):
        codec.decode_input("floats", _nested(32, 1.0))
    assert codec.decode_input("ints", _nested(31, 1)).ndim == 31


def test_empty_arrays_are_refused_and_one_number_is_enough():
    assert codec.decode_input("floats", [1.5]).tolist() == [1.5]
    for empty in ([], [[], []], np.zeros((0, 3))):
        with pytest.raises(BadInput, match="empty"):
            codec.decode_input("floats", empty)


def test_a_numpy_input_of_the_right_dtype_is_used_as_is_without_a_copy():
    # only a plain list takes the np.fromiter path; anything else takes np.asarray,
    # which does not copy an array that already has the dtype
    a = np.array([1.0, 2.0, 3.0])
    assert codec.decode_input("floats", a) is a
    b = np.array([1.0, 2.0], dtype=np.float32)
    assert codec.decode_input("float32", b) is b
    assert codec.decode_input("floats", (1.0, 2.0)).tolist() == [1.0, 2.0]
    assert codec.decode_input("ints", [1, 2]).dtype == np.int64
    assert codec.decode_input("floats", [1, 2]).dtype == np.float64


# ---------------------------------------------------------------- json depth


def test_json_nested_exactly_100_deep_passes_and_101_is_refused():
    assert codec.decode_input("json", _nested(100)) == _nested(100)
    with pytest.raises(BadInput, match="nested more than 100 deep"):
        codec.decode_input("json", _nested(101))
    d: object = 0
    for _ in range(100):
        d = {"k": d}
    assert codec.decode_input("json", d) == d
    with pytest.raises(BadInput, match="more than 100"):
        codec.decode_input("json", {"k": d})
    # scalars and empty containers are depth 0 / 1
    for flat in (1, "x", None, [], {}, [1, {"a": 2}]):
        assert codec.decode_input("json", flat) == flat


# ---------------------------------------------------------------- digests


def test_a_digest_is_16_bytes_for_every_kind_of_input():
    for x in (np.zeros(3), b"ab", "ab", {"a": 1}, [1, 2], None):
        d = codec.input_digest(x)
        assert isinstance(d, bytes) and len(d) == 16


def test_digests_tell_dtype_shape_and_kind_apart():
    z64, zi = np.zeros(2), np.zeros(2, dtype=np.int64)  # the same 16 zero bytes
    assert z64.tobytes() == zi.tobytes()
    assert codec.input_digest(z64) != codec.input_digest(zi)
    assert codec.input_digest(np.zeros((2, 2))) != codec.input_digest(np.zeros(4))
    assert codec.input_digest(b"ab") != codec.input_digest("ab")
    assert codec.input_digest("ab") != codec.input_digest(["ab"])
    assert codec.input_digest(np.arange(3.0)) == codec.input_digest(np.arange(3.0))
    # non-contiguous views digest their values
    assert codec.input_digest(np.arange(6.0)[::2]) == codec.input_digest(np.array([0.0, 2.0, 4.0]))


def test_a_json_digest_ignores_key_order():
    assert codec.input_digest({"a": 1, "b": 2}) == codec.input_digest({"b": 2, "a": 1})
    assert codec.input_digest({"a": {"x": 1, "y": 2}}) == codec.input_digest({"a": {"y": 2, "x": 1}})
    assert codec.input_digest({"a": 1}) != codec.input_digest({"a": 2})


# ---------------------------------------------------------------- batches


def _roundtrip(items):
    header, payload = codec.encode_batch(items)
    return codec.decode_batch(header, payload)


def test_a_batch_of_exactly_one_array_stacks_to_one_row():
    out = _roundtrip([np.array([1.0, 2.0, 3.0])])
    assert isinstance(out, np.ndarray) and out.shape == (1, 3) and out.tolist() == [[1.0, 2.0, 3.0]]
    one_int = _roundtrip([np.array([[7, 8]], dtype=np.int64)])
    assert one_int.shape == (1, 1, 2) and one_int.dtype == np.int64


def test_a_batch_of_exactly_two_arrays_stacks_to_two_rows():
    out = _roundtrip([np.array([1.0, 2.0]), np.array([3.0, 4.0])])
    assert isinstance(out, np.ndarray) and out.shape == (2, 2) and out.tolist() == [[1.0, 2.0], [3.0, 4.0]]


def test_batches_that_cannot_stack_travel_pickled():
    one = _roundtrip(["hello"])
    assert one == ["hello"]
    header, _ = codec.encode_batch(["a", "b"])
    assert b'"n": 2' in header
    mixed = _roundtrip([np.array([1.0]), "x"])
    assert isinstance(mixed, list) and mixed[1] == "x" and mixed[0].tolist() == [1.0]
    ragged = _roundtrip([np.array([1.0]), np.array([1.0, 2.0])])
    assert isinstance(ragged, list) and [r.tolist() for r in ragged] == [[1.0], [1.0, 2.0]]
    dtypes = _roundtrip([np.array([1.0]), np.array([1], dtype=np.int64)])
    assert isinstance(dtypes, list) and dtypes[1].dtype == np.int64


# ---------------------------------------------------------------- rows and JSON


def test_rows_of_a_string_array_are_its_strings():
    assert codec.rows(np.array(["a", "b"])) == ["a", "b"]
    assert codec.rows(np.array([1, 2], dtype=object)) == [1, 2]
    assert [r.tolist() for r in codec.rows(np.array([[1, 2], [3, 4]]))] == [[1, 2], [3, 4]]
    assert codec.rows(np.zeros((0, 3))) == []


def test_rows_with_non_finite_numbers_take_their_json_spelling_row_by_row():
    out = codec.rows(np.array([[1.0, np.nan, 2.0], [3.0, 4.0, 5.0], [np.inf, -np.inf, 0.0]]))
    assert out[0] == [1.0, "NaN", 2.0]
    assert isinstance(out[1], np.ndarray) and out[1].tolist() == [3.0, 4.0, 5.0]
    assert out[2] == ["Infinity", "-Infinity", 0.0]


def test_to_jsonable_arrays_of_every_kind():
    assert codec.to_jsonable(np.array([1 + 2j])) == ["(1+2j)"]
    assert codec.to_jsonable(np.array(["a", "b"])) == ["a", "b"]
    assert codec.to_jsonable(np.array([1, 2], dtype=np.int64)) == [1, 2]
    assert codec.to_jsonable(np.array([True, False])) == [True, False]
    assert codec.to_jsonable(np.array([0.5, np.nan])) == [0.5, "NaN"]
    assert codec.to_jsonable(np.array([[0.5], [1.5]])) == [[0.5], [1.5]]

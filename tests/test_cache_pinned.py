"""Tests that pin the cache core's arithmetic (see .ci/mutate.py).

The documented sizes, written out as literals (a mutated constant must not move the
expectation): an entry costs its value's size plus 120 bytes of bookkeeping; a numpy
array is ``nbytes + 112``, a list or tuple ``56 +`` its items, a dict ``232 +`` its keys
and values, anything else ``sys.getsizeof``. The default capacity is 32 MiB.

Mutants judged equivalent (the value they change is always overwritten before it is read):
* cache.py:104 ``self._sizes.append(0)`` -> ``1``: put() sets the new slot's size next.
* cache.py:105 ``self._referenced.append(False)`` -> ``True``: put() sets the bit to False next.
* cache.py:127 ``self._sizes[slot] = 0`` on eviction -> ``1``: a freed slot's size is never read
  (the hand skips empty slots) and put() sets it when the slot is reused.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest

from clipper_nb.abstraction.cache import PredictionCache, value_size

OVERHEAD = 120


def test_the_default_capacity_is_32_mib():
    c = PredictionCache()
    assert c.max_bytes == 32 * 1024 * 1024 == 33554432
    assert c.bytes == 0 and len(c) == 0


def test_an_entry_costs_its_given_size_plus_120_bytes():
    c = PredictionCache(max_bytes=10_000)
    c.put("k", "anything", size=10)
    assert c.bytes == 130
    c.put("j", 1.0, size=0)
    assert c.bytes == 130 + 120


def test_an_array_is_sized_as_its_bytes_plus_112():
    assert value_size(np.zeros(3)) == 3 * 8 + 112 == 136
    assert value_size(np.zeros(5, dtype=np.int8)) == 5 + 112
    assert value_size(np.zeros((0,))) == 112
    assert value_size(np.zeros((2, 3), dtype=np.float32)) == 24 + 112


def test_a_list_or_tuple_is_56_plus_its_items():
    assert value_size([]) == 56
    assert value_size(()) == 56
    assert value_size([np.zeros(1)]) == 56 + 8 + 112 == 176
    assert value_size([[], ()]) == 56 + 56 + 56
    assert value_size((np.zeros(2), np.zeros(1))) == 56 + 128 + 120


def test_a_dict_is_232_plus_its_keys_and_values():
    assert value_size({}) == 232
    assert value_size({(): np.zeros(2)}) == 232 + 56 + (16 + 112) == 416
    assert value_size({(): [], ((),): np.zeros(1)}) == 232 + (56 + 56) + (56 + 56 + 8 + 112)


def test_other_values_are_their_getsizeof():
    for v in (1.5, 7, "abc", b"xy", None, True):
        assert value_size(v) == sys.getsizeof(v)


def test_put_without_size_estimates_the_value():
    c = PredictionCache(max_bytes=10_000)
    c.put("a", np.zeros(3))
    assert c.bytes == 136 + 120 == 256
    c.put("b", [np.zeros(1)])
    assert c.bytes == 256 + 176 + 120
    c.put("c", {(): np.zeros(2)})
    assert c.bytes == 256 + 296 + 416 + 120
    # replacing an entry swaps its size
    c.put("a", np.zeros(1))
    assert c.bytes == (8 + 112 + 120) + 296 + 536


def test_an_entry_exactly_as_large_as_the_cache_fits_and_one_byte_more_does_not():
    c = PredictionCache(max_bytes=130)
    assert c.put("fits", 1, size=10) == 0
    assert "fits" in c and c.bytes == 130 and c.get("fits") == (True, 1)
    assert c.put("big", 2, size=11) == 0  # 131 > 130: refused, nothing evicted for it
    assert "big" not in c and "fits" in c and c.bytes == 130
    # it takes the whole cache: the next entry evicts it
    assert c.put("next", 3, size=10) == 1
    assert "fits" not in c and "next" in c and c.bytes == 130


def test_a_cache_exactly_full_evicts_nothing_until_one_more_byte():
    c = PredictionCache(max_bytes=2 * 130)
    assert c.put("a", 1, size=10) == 0
    assert c.put("b", 2, size=10) == 0
    assert len(c) == 2 and c.bytes == 260 and c.evictions == 0
    assert c.put("c", 3, size=10) == 1  # the hand starts at a, unreferenced
    assert "a" not in c and "b" in c and "c" in c and c.evictions == 1 and c.bytes == 260
    # growing a kept entry by one byte evicts another one
    assert c.put("b", 2, size=11) == 1
    assert "b" in c and "c" not in c and c.bytes == 131


def test_an_empty_cache_refuses_everything():
    c = PredictionCache(max_bytes=0)
    assert c.put("a", 1, size=0) == 0
    assert c.get("a") == (False, None) and c.misses == 1 and len(c) == 0
    with pytest.raises(ValueError):
        PredictionCache(max_bytes=-1)


def test_a_freed_slot_is_reused_and_counted_again():
    c = PredictionCache(max_bytes=260)
    c.put("a", 1, size=10)
    c.put("b", 2, size=10)
    c.put("c", 3, size=10)  # evicts a, reuses its slot
    c.put("d", 4, size=10)  # evicts b
    assert sorted(k for k in "abcd" if k in c) == ["c", "d"] and c.bytes == 260 and c.evictions == 2
    c.clear()
    assert c.bytes == 0 and len(c) == 0 and c.max_bytes == 260

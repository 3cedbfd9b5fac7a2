"""Tests of clipper_nb.abstraction.cache: the byte-bounded CLOCK prediction cache. Pure, no I/O."""

from __future__ import annotations

import random

import numpy as np
import pytest

from clipper_nb.abstraction.cache import ENTRY_OVERHEAD, PredictionCache, value_size

UNIT = 100  # the payload size given to put(); an entry then costs UNIT + ENTRY_OVERHEAD


def cache_of(entries: int, unit: int = UNIT) -> PredictionCache:
    """A cache with room for exactly ``entries`` entries of ``unit`` payload bytes."""
    return PredictionCache(max_bytes=entries * (unit + ENTRY_OVERHEAD))


def keys_in(cache: PredictionCache, keys: str) -> str:
    return "".join(k for k in keys if k in cache)


# ---- CLOCK ------------------------------------------------------------------------

def test_a_referenced_entry_gets_a_second_chance_and_only_one():
    c = cache_of(3)
    for k in "abc":
        c.put(k, k.upper(), size=UNIT)
    assert c.get("a") == (True, "A")  # sets a's reference bit

    # The hand starts at a: it clears a's bit and evicts b, the first unreferenced entry.
    assert c.put("d", "D", size=UNIT) == 1
    assert keys_in(c, "abcd") == "acd"
    # Next in the ring is c (never referenced).
    c.put("e", "E", size=UNIT)
    assert keys_in(c, "abcde") == "ade"
    # The hand is back at a, whose bit the first sweep cleared: it goes now.
    c.put("f", "F", size=UNIT)
    assert keys_in(c, "abcdef") == "def"
    assert c.evictions == 3


def test_an_entry_hit_again_between_sweeps_survives_again():
    c = cache_of(2)
    c.put("hot", 1, size=UNIT)
    for i in range(20):  # a scan of one-time inputs
        c.get("hot")
        c.put(f"cold{i}", i, size=UNIT)
        assert "hot" in c, f"the hot entry was evicted by cold{i}"
    assert len(c) == 2


def test_new_entries_start_unreferenced_so_a_scan_evicts_the_scan_first():
    c = cache_of(3)
    c.put("a", 1, size=UNIT)
    c.get("a")
    c.put("x", 2, size=UNIT)
    c.put("y", 3, size=UNIT)
    c.put("z", 4, size=UNIT)  # evicts x (a is referenced), not a
    assert keys_in(c, "axyz") == "ayz"


def test_when_every_entry_is_referenced_clock_falls_back_to_ring_order():
    c = cache_of(3)
    for k in "abc":
        c.put(k, k, size=UNIT)
        c.get(k)
    c.put("d", "d", size=UNIT)  # one full sweep clears every bit, then a goes
    assert keys_in(c, "abcd") == "bcd"


# ---- byte bound and accounting ----------------------------------------------------------

def test_the_byte_bound_is_never_exceeded_and_bytes_match_the_entries():
    rng = random.Random(7)
    c = PredictionCache(max_bytes=5_000)
    sizes: dict[int, int] = {}  # the size each key was last put with
    for step in range(3_000):
        key = rng.randrange(60)
        if rng.random() < 0.4:
            c.get(key)
        else:
            size = rng.choice([10, 200, 900, 3_000, 6_000])  # 6,000 never fits
            c.put(key, step, size=size)
            if size + ENTRY_OVERHEAD <= c.max_bytes:
                sizes[key] = size
        assert c.bytes <= c.max_bytes, f"step {step}: {c.bytes} bytes in a {c.max_bytes}-byte cache"
        expected = sum(sizes[k] + ENTRY_OVERHEAD for k in sizes if k in c)
        assert c.bytes == expected, f"step {step}: accounting drifted"
        assert len(c) == sum(1 for k in sizes if k in c)
    assert c.evictions > 100


def test_replacing_a_key_updates_its_value_and_size_in_place():
    c = cache_of(3)
    c.put("a", "old", size=UNIT)
    c.put("b", "b", size=UNIT)
    assert c.put("a", "new", size=UNIT // 2) == 0
    assert len(c) == 2 and c.get("a") == (True, "new")
    assert c.bytes == (UNIT + ENTRY_OVERHEAD) + (UNIT // 2 + ENTRY_OVERHEAD)


def test_growing_a_replaced_entry_evicts_others_but_never_itself():
    c = cache_of(3)
    for k in "abc":
        c.put(k, k, size=UNIT)
    # a grows to two entries' worth: one of the others must go, a must stay.
    evicted = c.put("a", "A", size=2 * UNIT + ENTRY_OVERHEAD)
    assert evicted == 1 and c.evictions == 1
    assert c.get("a") == (True, "A")
    assert c.bytes <= c.max_bytes and len(c) == 2


def test_a_value_larger_than_the_whole_cache_is_skipped_without_evicting():
    c = cache_of(3)
    for k in "abc":
        c.put(k, k, size=UNIT)
    assert c.put("huge", "x", size=c.max_bytes) == 0
    assert "huge" not in c and len(c) == 3 and c.evictions == 0


def test_sizes_are_measured_when_not_given():
    big = np.zeros(100_000, dtype=np.float64)  # 800 kB
    assert value_size(big) >= big.nbytes
    assert value_size([big, big]) >= 2 * big.nbytes
    c = PredictionCache(max_bytes=500_000)
    c.put("big", big)
    assert "big" not in c  # measured, found too large, skipped
    c.put("small", np.zeros(10))
    assert "small" in c and c.bytes >= 80 + ENTRY_OVERHEAD


# ---- counters and switches ----------------------------------------------------------

def test_hit_miss_and_eviction_counters():
    c = cache_of(2)
    assert c.get("a") == (False, None)
    c.put("a", 1, size=UNIT)
    c.put("b", 2, size=UNIT)
    assert c.get("a") == (True, 1) and c.get("a") == (True, 1)
    assert c.get("zzz") == (False, None)
    c.put("c", 3, size=UNIT)
    assert (c.hits, c.misses, c.evictions) == (2, 2, 1)


def test_zero_bytes_disables_the_cache():
    c = PredictionCache(max_bytes=0)
    c.put("a", 1, size=0)
    assert c.get("a") == (False, None) and len(c) == 0 and c.bytes == 0


def test_clear_empties_and_keeps_the_bound():
    c = cache_of(2)
    c.put("a", 1, size=UNIT)
    c.get("a")
    c.clear()
    assert len(c) == 0 and c.bytes == 0 and c.hits == 0 and c.max_bytes == 2 * (UNIT + ENTRY_OVERHEAD)
    c.put("b", 2, size=UNIT)
    assert c.get("b") == (True, 2)


def test_negative_bound_is_refused():
    with pytest.raises(ValueError, match="max_bytes"):
        PredictionCache(max_bytes=-1)

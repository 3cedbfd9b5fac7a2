"""Clipper's prediction cache: ``Predict(model, version, x) -> y``, bounded in bytes.

Pure data structure, no I/O. Eviction is CLOCK (second chance): every hit sets an
entry's reference bit; to make room, the hand sweeps the ring, clearing set bits and
evicting the first entry whose bit is already clear. That approximates LRU at the
cost of one bit per entry and no reordering on a hit, which keeps hits cheap.

The non-blocking request/fetch half (identical queries in flight share one
evaluation) lives with the queue in ``deployment.py``: the cache only holds results.
"""

from __future__ import annotations

import sys
from typing import Any, Hashable

import numpy as np

from clipper_nb.config import DEFAULT_CACHE_BYTES

#: Rough per-entry bookkeeping cost (dict slot, key bytes, ring slots).
ENTRY_OVERHEAD = 120


def value_size(value: Any) -> int:
    """Bytes an output occupies, close enough to bound the cache's memory."""
    if isinstance(value, np.ndarray):
        return value.nbytes + 112
    if isinstance(value, (list, tuple)):
        return 56 + sum(value_size(v) for v in value)
    if isinstance(value, dict):
        return 232 + sum(value_size(k) + value_size(v) for k, v in value.items())
    return sys.getsizeof(value)


class PredictionCache:
    """A byte-bounded CLOCK cache. ``max_bytes=0`` disables it (every get misses).

    >>> c = PredictionCache(max_bytes=1 << 20)
    >>> c.put(b"k", 1.0); c.get(b"k")
    (True, 1.0)
    """

    def __init__(self, max_bytes: int = DEFAULT_CACHE_BYTES) -> None:
        if max_bytes < 0:
            raise ValueError("max_bytes must be >= 0")
        self.max_bytes = max_bytes
        self.bytes = 0
        self.hits = 0
        self.misses = 0
        self.evictions = 0
        self._index: dict[Hashable, int] = {}  # key -> slot in the ring
        self._keys: list[Hashable | None] = []
        self._values: list[Any] = []
        self._sizes: list[int] = []
        self._referenced: list[bool] = []
        self._free: list[int] = []
        self._hand = 0

    def __len__(self) -> int:
        return len(self._index)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._index

    def get(self, key: Hashable) -> tuple[bool, Any]:
        """``(True, value)`` on a hit (and mark the entry referenced), else ``(False, None)``."""
        slot = self._index.get(key)
        if slot is None:
            self.misses += 1
            return False, None
        self.hits += 1
        self._referenced[slot] = True
        return True, self._values[slot]

    def put(self, key: Hashable, value: Any, size: int | None = None) -> int:
        """Insert or replace; returns how many entries were evicted to make room."""
        size = (value_size(value) if size is None else size) + ENTRY_OVERHEAD
        if size > self.max_bytes:
            return 0  # larger than the whole cache: not worth evicting everything for
        slot = self._index.get(key)
        if slot is not None:
            self.bytes += size - self._sizes[slot]
            self._values[slot], self._sizes[slot] = value, size
        evicted = self._make_room(0, protect=slot)
        if slot is not None:
            return evicted
        evicted += self._make_room(size)
        slot = self._free.pop() if self._free else self._append_slot()
        self._keys[slot], self._values[slot], self._sizes[slot] = key, value, size
        # New entries start unreferenced, so a scan of one-time inputs cannot flush
        # entries that are being hit (they hold their second chance).
        self._referenced[slot] = False
        self._index[key] = slot
        self.bytes += size
        return evicted

    def clear(self) -> None:
        self.__init__(self.max_bytes)  # type: ignore[misc]

    def _append_slot(self) -> int:
        self._keys.append(None)
        self._values.append(None)
        self._sizes.append(0)
        self._referenced.append(False)
        return len(self._keys) - 1

    def _make_room(self, size: int, protect: int | None = None) -> int:
        evicted = 0
        n = len(self._keys)
        while self.bytes + size > self.max_bytes and self._index:
            slot = self._hand
            self._hand = (self._hand + 1) % n
            if self._keys[slot] is None or slot == protect:
                continue
            if self._referenced[slot]:
                self._referenced[slot] = False  # second chance
                continue
            self._evict(slot)
            evicted += 1
        self.evictions += evicted
        return evicted

    def _evict(self, slot: int) -> None:
        del self._index[self._keys[slot]]
        self.bytes -= self._sizes[slot]
        self._keys[slot], self._values[slot], self._sizes[slot] = None, None, 0
        self._free.append(slot)

"""Helpers of notebook 03-prediction-cache (kernel side only: no deployed model uses them).

* A Zipf query stream and the hit rate the real cache class,
  :class:`clipper_nb.abstraction.cache.PredictionCache` (CLOCK), gets on it, next to an
  exact LRU and the best any cache of that size could do on such a stream.
* ``clock_trace``: the CLOCK ring step by step (reference bits and the hand).
* ``closed_loop``: POST a list of bodies to ``<url>/<app>/<route>`` with a fixed number in
  flight (aiohttp), the way a saturating client does; returns the rate and latencies.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import OrderedDict
from typing import Sequence

import numpy as np

from clipper_nb.abstraction.cache import ENTRY_OVERHEAD, PredictionCache, value_size

#: Bytes one cached prediction of a float takes in the server's cache (output + bookkeeping).
ENTRY_BYTES = value_size(1.0) + ENTRY_OVERHEAD


def zipf_probabilities(n: int, s: float) -> np.ndarray:
    """P(rank k) proportional to 1 / (k+1)**s over ``n`` distinct inputs (rank 0 the most popular)."""
    p = 1.0 / np.arange(1, n + 1) ** s
    return p / p.sum()


def zipf_stream(n: int, s: float, length: int, seed: int = 0) -> np.ndarray:
    """``length`` input ranks drawn independently from Zipf(s) over ``n`` inputs."""
    return np.random.default_rng(seed).choice(n, size=length, p=zipf_probabilities(n, s))


def clock_run(stream: Sequence[int], entries: int, entry_bytes: int = ENTRY_BYTES) -> PredictionCache:
    """Drive the server's cache class as a model version does: look up; on a miss, insert.

    The cache holds ``entries`` predictions (its byte budget is ``entries * entry_bytes``).
    Returns the cache, whose ``hits``, ``misses`` and ``evictions`` tell what happened.
    """
    cache = PredictionCache(max_bytes=entries * entry_bytes)
    for key in map(int, stream):
        hit, _ = cache.get(key)
        if not hit:
            cache.put(key, 1.0, size=entry_bytes - ENTRY_OVERHEAD)
    return cache


def clock_hit_rate(stream: Sequence[int], entries: int, warmup: int = 0) -> float:
    """CLOCK's hit rate on ``stream`` after its first ``warmup`` queries (which fill the cache)."""
    cache = clock_run(stream[:warmup], entries)
    cache.hits = cache.misses = 0
    for key in map(int, stream[warmup:]):
        hit, _ = cache.get(key)
        if not hit:
            cache.put(key, 1.0, size=ENTRY_BYTES - ENTRY_OVERHEAD)
    return cache.hits / max(1, cache.hits + cache.misses)


def lru_hit_rate(stream: Sequence[int], entries: int, warmup: int = 0) -> float:
    """Exact LRU (an ordered dict moved on every hit), what CLOCK approximates; same counting."""
    cache: OrderedDict[int, None] = OrderedDict()
    hits = 0
    for i, key in enumerate(map(int, stream)):
        if key in cache:
            hits += i >= warmup
            cache.move_to_end(key)
        else:
            cache[key] = None
            if len(cache) > entries:
                cache.popitem(last=False)
    return hits / max(1, len(stream) - warmup)


def best_hit_rate(n: int, s: float, entries: int) -> float:
    """The best any cache of ``entries`` can do on an independent Zipf stream: keep the most popular."""
    return float(zipf_probabilities(n, s)[:entries].sum())


def entries_for(target: float, n: int, stream: Sequence[int], warmup: int = 0) -> int:
    """The fewest entries for which CLOCK reaches hit rate ``target`` on ``stream`` (bisection)."""
    lo, hi = 1, n
    while lo < hi:
        mid = (lo + hi) // 2
        if clock_hit_rate(stream, mid, warmup) >= target:
            hi = mid
        else:
            lo = mid + 1
    return lo


def clock_trace(accesses: str, entries: int) -> list[str]:
    """One line per access of a CLOCK cache of ``entries`` one-letter keys.

    Shows the ring (``*`` = reference bit set, ``^`` under the hand's slot), and whether
    the access hit, missed, and which key it evicted. Reads the cache's ring, so what
    it shows is the real class at work.
    """
    cache = PredictionCache(max_bytes=entries * ENTRY_BYTES)
    lines = []
    for key in accesses:
        hit, _ = cache.get(key)
        before = set(cache._index)
        if not hit:
            cache.put(key, 1.0, size=ENTRY_BYTES - ENTRY_OVERHEAD)
        gone = "".join(sorted(before - set(cache._index)))
        ring = " ".join(f"{k or '.'}{'*' if ref else ' '}" for k, ref in zip(cache._keys, cache._referenced))
        hand = "    " + "   " * (cache._hand if cache._keys else 0) + "^"
        what = "hit " if hit else ("miss, evict " + gone if gone else "miss")
        lines.append(f"{key}: [{ring}]  {what}\n{hand}")
    return lines


async def closed_loop(url: str, headers: dict, route: str, bodies: Sequence[dict],
                      in_flight: int = 16) -> tuple[float, float]:
    """POST every body to ``url/route`` keeping ``in_flight`` requests outstanding.

    Returns (requests per second, median latency in ms). Every answer must be 200.
    """
    import aiohttp

    payloads = iter([json.dumps(b).encode() for b in bodies])
    latencies: list[float] = []

    async def client(session: aiohttp.ClientSession) -> None:
        for data in payloads:
            t = time.perf_counter()
            async with session.post(f"{url}/{route}", data=data) as answer:
                text = await answer.text()
                if answer.status != 200:
                    raise RuntimeError(f"{route}: {answer.status} {text[:200]}")
            latencies.append(time.perf_counter() - t)

    connector = aiohttp.TCPConnector(limit=in_flight)
    async with aiohttp.ClientSession(connector=connector,
                                     headers={**headers, "Content-Type": "application/json"}) as session:
        start = time.perf_counter()
        await asyncio.gather(*(client(session) for _ in range(in_flight)))
        elapsed = time.perf_counter() - start
    return len(bodies) / elapsed, 1000 * float(np.median(latencies))


def fit_line(xs: Sequence[float], ys: Sequence[float]) -> tuple[float, float]:
    """Least-squares intercept and slope of ys against xs."""
    slope, intercept = np.polyfit(np.asarray(xs, float), np.asarray(ys, float), 1)
    return float(intercept), float(slope)

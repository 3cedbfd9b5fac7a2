"""The load generator's own process: JSON commands in on stdin, JSON results out.

The benchmark starts one of these (pinned to its own core where that helps, see
``bench_batching.py --pin``) and keeps it for the whole run, so that imports and
input generation are paid once. Each command is one line of JSON; each answer is
one line of JSON. Commands:

* ``{"cmd": "run", "url", "app", "features", "distinct", "seed", "concurrency" | "qps",
  "duration_s", "batch_size"?, "slo_ms"?}`` -> ``{"result": LoadResult.to_dict()}``
  (one :func:`clipper_nb.kernel.loadgen.run_load`);
* ``{"cmd": "series", ..., "start_at": unix_time, "total_s", "window_s",
  "schedule": [[offset_s, slo_ms], ...]}`` -> ``{"windows": [{"t": offset_s, ...}]}``:
  back-to-back short runs, each scored against the SLO the schedule gives for its
  start, to follow attainment while the SLO changes at run time;
* ``{"cmd": "quit"}``.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any

import numpy as np
import orjson

from clipper_nb.kernel import loadgen
from clipper_nb.kernel.loadgen import run_load


def _encode_bodies_fast(inputs: Any, batch_size: int | None, context: str | None) -> list[bytes]:
    """``loadgen._encode_bodies`` with orjson on numpy rows: the same bodies, 10x sooner.

    The stock encoder (``json.dumps`` of Python floats) costs ~1 ms per 784-float row
    on a busy machine; fresh inputs for every repetition would spend most of a quick
    run encoding. Only the set-up before each run changes, not what is sent.
    """
    extra = {"context": context} if context is not None else {}
    opt = orjson.OPT_SERIALIZE_NUMPY
    if batch_size is None:
        return [orjson.dumps({"input": x, **extra}, option=opt) for x in inputs]
    n = len(inputs)
    return [orjson.dumps({"input_batch": inputs[np.arange(s, s + batch_size) % n], **extra}, option=opt)
            for s in range(0, n, batch_size)]


loadgen._encode_bodies = _encode_bodies_fast


def inputs_for(features: int, distinct: int, seed: int) -> np.ndarray:
    """``distinct`` random rows of ``features`` floats with 6 decimals, like a client's JSON."""
    return np.random.default_rng(seed).random((distinct, features)).round(6)


def _load_args(cmd: dict[str, Any]) -> dict[str, Any]:
    return {"concurrency": cmd.get("concurrency"), "qps": cmd.get("qps"),
            "batch_size": cmd.get("batch_size"), "timeout_s": cmd.get("timeout_s", 30.0),
            "seed": cmd.get("seed", 0)}


async def run_one(cmd: dict[str, Any]) -> dict[str, Any]:
    xs = inputs_for(cmd["features"], cmd["distinct"], cmd["seed"])
    result = await run_load(cmd["url"], cmd["app"], xs, duration_s=cmd["duration_s"],
                            slo_ms=cmd.get("slo_ms"), **_load_args(cmd))
    return {"result": result.to_dict()}


def _slo_at(schedule: list[list[float]], offset: float) -> float:
    slo = schedule[0][1]
    for at, value in schedule:
        if offset >= at:
            slo = value
    return slo


async def run_series(cmd: dict[str, Any]) -> dict[str, Any]:
    xs = inputs_for(cmd["features"], cmd["distinct"], cmd["seed"])
    delay = cmd["start_at"] - time.time()
    if delay > 0:
        await asyncio.sleep(delay)
    windows = []
    while (offset := time.time() - cmd["start_at"]) < cmd["total_s"]:
        slo = _slo_at(cmd["schedule"], offset)
        # a window must not straddle an SLO change: it is scored against one SLO
        next_change = min((at for at, _ in cmd["schedule"] if at > offset), default=cmd["total_s"])
        length = min(cmd["window_s"], max(0.05, next_change - offset))
        result = await run_load(cmd["url"], cmd["app"], xs, duration_s=length, slo_ms=slo, **_load_args(cmd))
        windows.append({"t": offset, **result.to_dict()})
    return {"windows": windows}


def main() -> None:
    for line in sys.stdin:
        cmd = json.loads(line)
        if cmd["cmd"] == "quit":
            break
        try:
            answer = asyncio.run(run_series(cmd) if cmd["cmd"] == "series" else run_one(cmd))
        except Exception as exc:  # noqa: BLE001 - reported to the benchmark, which stops
            answer = {"error": f"{type(exc).__name__}: {exc}"}
        sys.stdout.write(json.dumps(answer) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()

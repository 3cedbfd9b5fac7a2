"""wrk as the load generator of ``bench_peers.py``: the Lua script and one run.

The generated Lua script POSTs one of a few fixed JSON bodies per request (cycled),
and in its ``response(status, headers, body)`` callback sorts every answer into

* ``good``: status 200 and the body matches the server's "real answer" pattern
  (Clipper shape: ``"default": false``; MLServer's V2 answer: ``"outputs"``);
* ``bad``: status 200 but not a real answer (clipper-nb's default output);
* ``errors``: any other status (wrk's socket errors and timeouts come from its summary).

**Per-request latency.** wrk's Lua has no clock and ``response()`` is not told which
connection answered, so the script times requests itself (LuaJIT's FFI,
``clock_gettime(CLOCK_MONOTONIC)``) between ``request()`` and ``response()``, which is
exact only when each wrk thread drives one connection (``-t`` = ``-c``, the default
here): a connection has one request in flight, so a thread's ``request()`` and
``response()`` alternate. Then ``good_in_slo`` counts the good answers whose own
latency was within the SLO, and goodput = ``good_in_slo`` / duration. With fewer
threads than connections (``--wrk-threads 1``) the pairs interleave, and goodput is
estimated as good answers/s x the share of all requests within the SLO in wrk's own
latency histogram (``latency:percentile`` bisected at the SLO).

``done()`` prints one line ``PEERSTATS {json}`` with the counts, wrk's own summary
(requests, duration, socket errors) and its latency percentiles.
"""

from __future__ import annotations

import json
import os
import subprocess
from typing import Any

_LUA = r"""
local ffi = require("ffi")
ffi.cdef[[
typedef struct { long tv_sec; long tv_nsec; } peer_timespec_t;
int clock_gettime(int clk, peer_timespec_t *tp);
]]
local ts = ffi.new("peer_timespec_t")
local function now_us()
  ffi.C.clock_gettime(1, ts)
  return tonumber(ts.tv_sec) * 1000000 + tonumber(ts.tv_nsec) / 1000
end

local PATH = "%(path)s"
local GOOD = "%(good)s"
local SLO_US = %(slo_us)d
local EXACT = %(exact)s
local BODIES = {
%(bodies)s
}
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"

good, good_in_slo, bad, errors = 0, 0, 0, 0
local i, t0 = 0, nil

local threads = {}
function setup(thread)
  table.insert(threads, thread)
end

function request()
  i = i %% #BODIES + 1
  t0 = now_us()
  return wrk.format("POST", PATH, nil, BODIES[i])
end

function response(status, headers, body)
  local lat = nil
  if t0 ~= nil then lat = now_us() - t0 end
  if status ~= 200 then
    errors = errors + 1
  elseif body ~= nil and string.find(body, GOOD) then
    good = good + 1
    if lat ~= nil and lat <= SLO_US then good_in_slo = good_in_slo + 1 end
  else
    bad = bad + 1
  end
end

local function share_within(latency, limit)
  -- the share of requests whose latency (us) is <= limit, bisecting percentile()
  if latency.max <= limit then return 1.0 end
  if latency.min > limit then return 0.0 end
  local lo, hi = 0.0, 100.0
  for _ = 1, 30 do
    local mid = (lo + hi) / 2
    if latency:percentile(mid) <= limit then lo = mid else hi = mid end
  end
  return lo / 100.0
end

function done(summary, latency, requests)
  local g, gs, b, e = 0, 0, 0, 0
  for _, t in ipairs(threads) do
    g = g + t:get("good")
    gs = gs + t:get("good_in_slo")
    b = b + t:get("bad")
    e = e + t:get("errors")
  end
  local se = summary.errors
  io.write(string.format(
    'PEERSTATS {"exact": %%s, "good": %%d, "good_in_slo": %%d, "bad": %%d, "http_errors": %%d, ' ..
    '"requests": %%d, "duration_us": %%d, "socket_errors": %%d, "timeouts": %%d, ' ..
    '"share_within_slo": %%.6f, "p50_us": %%d, "p90_us": %%d, "p99_us": %%d, "max_us": %%d, "mean_us": %%.1f}\n',
    tostring(EXACT), g, gs, b, e, summary.requests, summary.duration,
    se.connect + se.read + se.write, se.timeout,
    share_within(latency, SLO_US), latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max, latency.mean))
end
"""


def write_script(path: str, url_path: str, bodies: list[str], good_pattern: str, slo_ms: float,
                 exact: bool) -> None:
    """Write the Lua script for one cell (``good_pattern`` is a Lua pattern)."""
    for body in bodies:
        assert "]==]" not in body
    text = _LUA % {"path": url_path, "good": good_pattern.replace('"', '\\"'), "slo_us": int(slo_ms * 1000),
                   "exact": "true" if exact else "false",
                   "bodies": ",\n".join(f"[==[{b}]==]" for b in bodies)}
    with open(path, "w") as f:
        f.write(text)


def run(base_url: str, script: str, connections: int, threads: int, duration_s: float, core: int | None,
        timeout_s: float = 10.0) -> dict[str, Any]:
    """One wrk run; returns the ``PEERSTATS`` dict plus goodput, good/s and req/s."""
    cmd = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{max(1, round(duration_s))}s", "--latency",
           "--timeout", f"{timeout_s:g}s", "-s", script, base_url]
    if core is not None:
        cmd = ["taskset", "-c", str(core)] + cmd
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=duration_s + timeout_s + 60,
                          env={**os.environ, "LC_ALL": "C"})
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("PEERSTATS ")), None)
    if proc.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed (code {proc.returncode}): {proc.stderr.strip()[-500:]} "
                           f"{proc.stdout.strip()[-500:]}")
    stats = json.loads(line[len("PEERSTATS "):])
    secs = stats["duration_us"] / 1e6 or 1.0
    stats["req_per_s"] = stats["requests"] / secs
    stats["good_per_s"] = stats["good"] / secs
    if stats["exact"]:
        stats["goodput"] = stats["good_in_slo"] / secs
    else:
        stats["goodput"] = stats["good_per_s"] * stats["share_within_slo"]
    stats["wrk_threads"] = threads
    return stats

"""The pure part of a dashboard tick: a ``/api/metrics`` snapshot in, new points out.

A live view polls ``GET api/metrics?since=T`` and hands the JSON to :func:`tick`
together with a :class:`Cursor` (what it has streamed so far). :func:`tick` returns
the columns to append to each plot's data source, the numbers for the header and
the next cursor. It does no I/O and reads no clock, so it is tested directly. This
is the only implementation: the notebook widgets call it in the kernel, and the
standalone page's route (``GET api/dashboard/ticks``) calls it in the server and
sends the result to the page, with the cursor as JSON (:meth:`Cursor.to_json`).

Series keys name a data source (the part before the first ``/`` names its plot):

=======================  ================================================
``latency``              ``x, p50, p99, slo`` (milliseconds)
``throughput``           ``x, qps, goodput`` (queries per second)
``cache``                ``x, hit_rate`` (fraction)
``misses``               ``x, default_rate, slo_miss, error_rate``
``batch/<model>/<rep>``  ``x, cap, mean`` (AIMD cap and mean batch size);
                         ``<rep>`` is the public replica name
                         (:func:`public_replica_name`), as ``api/status`` shows it
``weights/<model>``      ``x, p`` (selection probability in one context)
=======================  ================================================

``x`` is milliseconds since the epoch shifted by ``tz_offset_s`` (Bokeh's datetime
axes show UTC, so a shift by the local offset shows local time).

Example::

    t = tick(snapshot, "digits", Cursor(), slo_ms=20)
    t.streams["latency"]["p99"]     # new p99 values, one per complete second
    t.cursor.since                  # pass as ?since= on the next poll
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field, replace
from typing import Any, Iterable, Mapping, Sequence

__all__ = ["APP_CONTEXT", "Columns", "Cursor", "HEADER_WINDOW_S", "Tick", "public_replica_name", "public_snapshot",
           "replica_label", "tick"]

#: Columns of one data source: name -> values, all of the same length.
Columns = dict[str, list[float]]
#: The metrics' name of the app-wide selection context (``context=None`` in queries).
APP_CONTEXT = "default"
#: Seconds over which the header averages SLO attainment and rates: one second of a
#: bursty load says little, the whole 600 s window says too little about now.
HEADER_WINDOW_S = 10
_NAN = math.nan
#: Bounds on a cursor read from JSON (it comes from a browser): series and seconds.
MAX_CURSOR_SERIES = 4096
MAX_CURSOR_RECENT = 3600
_MAX_KEY_CHARS = 512
# A replica's identity on the worker socket is ``model:version:index:serial-<secret>``;
# everything the user sees names it without the secret part.
_SECRET_SUFFIX = re.compile(r"^(.*:\d+)-[0-9a-fA-F]+$")


@dataclass(frozen=True)
class Cursor:
    """What a view has streamed: the next ``since`` and the last second per series."""

    since: float | None = None
    last_t: Mapping[str, int] = field(default_factory=dict)
    #: ``(t, queries, within_slo, defaults, p99_ms)`` of the last complete seconds.
    recent: tuple[tuple[int, int, float, float, float], ...] = ()

    def forget(self, prefix: str) -> "Cursor":
        """A cursor that streams series starting with ``prefix`` again from scratch,
        from a full snapshot (``since=None``): used when the weights' context changes."""
        return replace(self, since=None, last_t={k: t for k, t in self.last_t.items() if not k.startswith(prefix)})

    def to_json(self) -> dict[str, Any]:
        """This cursor as a JSON-able dict (a NaN p99 becomes ``null``);
        :meth:`from_json` reads it back."""
        return {"since": self.since, "last_t": dict(self.last_t),
                "recent": [[t, q, ok, dflt, None if math.isnan(p99) else p99] for t, q, ok, dflt, p99 in self.recent]}

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | str | bytes) -> "Cursor":
        """The cursor :meth:`to_json` wrote (a dict, or its JSON text); ``{}`` is a
        fresh cursor. Raises ``ValueError`` on anything else: it comes from a browser."""
        if isinstance(data, (str, bytes)):
            data = json.loads(data)  # JSONDecodeError is a ValueError
        if not isinstance(data, Mapping):
            raise ValueError(f"a cursor is a JSON object, got {type(data).__name__}")
        unknown = set(data) - {"since", "last_t", "recent"}
        if unknown:
            raise ValueError(f"unknown cursor field(s): {', '.join(sorted(map(str, unknown)))}")
        since = data.get("since")
        if since is not None:
            since = _finite(since, "since")
        return cls(since=since, last_t=_last_t(data.get("last_t", {})), recent=_recent_rows(data.get("recent", [])))


@dataclass(frozen=True)
class Tick:
    """The result of one poll: ``streams`` (series key -> new columns), the header's
    ``numbers``, the selection ``contexts`` seen for the app, and the next ``cursor``."""

    streams: dict[str, Columns]
    numbers: dict[str, float | None]
    contexts: list[str]
    cursor: Cursor


def _finite(v: Any, what: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise ValueError(f"cursor {what} must be a finite number, got {v!r}")
    return float(v)


def _second(v: Any, what: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise ValueError(f"cursor {what} must be an integer second, got {v!r}")
    return v


def _last_t(obj: Any) -> dict[str, int]:
    if not isinstance(obj, Mapping) or len(obj) > MAX_CURSOR_SERIES:
        raise ValueError(f"cursor last_t must be an object of at most {MAX_CURSOR_SERIES} series")
    if any(not isinstance(k, str) or len(k) > _MAX_KEY_CHARS for k in obj):
        raise ValueError("cursor last_t keys must be series keys")
    return {k: _second(t, f"last_t[{k!r}]") for k, t in obj.items()}


def _recent_rows(obj: Any) -> tuple[tuple[int, int, float, float, float], ...]:
    if not isinstance(obj, (list, tuple)) or len(obj) > MAX_CURSOR_RECENT:
        raise ValueError(f"cursor recent must be a list of at most {MAX_CURSOR_RECENT} rows")
    rows = []
    for r in obj:
        if not isinstance(r, (list, tuple)) or len(r) != 5:
            raise ValueError(f"cursor recent rows are [t, queries, within_slo, defaults, p99_ms], got {r!r}")
        t, q, ok, dflt, p99 = r
        rows.append((_second(t, "recent t"), _second(q, "recent queries"), _finite(ok, "recent within_slo"),
                     _finite(dflt, "recent defaults"), _NAN if p99 is None else _finite(p99, "recent p99_ms")))
    return tuple(rows)


def public_replica_name(name: str) -> str:
    """A replica's name without the secret part of its socket identity:
    ``digits:3:0:7`` for ``digits:3:0:7-9f2c...``; other names unchanged."""
    m = _SECRET_SUFFIX.match(name)
    return m.group(1) if m else name


def public_snapshot(snapshot: Mapping[str, Any]) -> dict[str, Any]:
    """``snapshot`` with every model's replicas keyed by :func:`public_replica_name`."""
    models = snapshot.get("models") or {}
    return {**snapshot, "models": {m: {**v, "replicas": {public_replica_name(r): x
                                                         for r, x in (v.get("replicas") or {}).items()}}
                                   for m, v in models.items()}}


def _num(v: Any) -> float:
    return _NAN if v is None else float(v)


def _new_rows(key: str, ts: Sequence[int], cursor: Cursor) -> list[int]:
    last = cursor.last_t.get(key)
    return [i for i, t in enumerate(ts) if last is None or t > last]


def _columns(ts: Sequence[int], rows: list[int], tz_offset_s: float, **series: Sequence[Any]) -> Columns:
    out: Columns = {"x": [(ts[i] + tz_offset_s) * 1000.0 for i in rows]}
    for name, values in series.items():
        out[name] = [_num(values[i]) for i in rows]
    return out


def _app_streams(a: Mapping[str, Any], rows: list[int], slo_ms: float | None, tz: float) -> dict[str, Columns]:
    ts = a["t"]
    miss = [None if s is None else 1.0 - s for s in a["slo_attainment"]]
    slo = [slo_ms] * len(ts)
    return {
        "latency": _columns(ts, rows, tz, p50=a["p50_ms"], p99=a["p99_ms"], slo=slo),
        "throughput": _columns(ts, rows, tz, qps=a["qps"], goodput=a["goodput"]),
        "cache": _columns(ts, rows, tz, hit_rate=a["cache_hit_rate"]),
        "misses": _columns(ts, rows, tz, default_rate=a["default_rate"], slo_miss=miss,
                           error_rate=a["error_rate"]),
    }


def _recent(a: Mapping[str, Any], rows: list[int], before: Iterable[tuple], window_s: int) -> tuple:
    fresh = []
    for i in rows:
        q = int(a["qps"][i] or 0)
        att, dflt = a["slo_attainment"][i], a["default_rate"][i]
        fresh.append((a["t"][i], q, q * (att or 0.0), q * (dflt or 0.0), _num(a["p99_ms"][i])))
    merged = [*before, *fresh]
    if not merged:
        return ()
    newest = merged[-1][0]
    return tuple(r for r in merged if r[0] > newest - window_s)


def _numbers(recent: tuple, slo_ms: float | None) -> dict[str, float | None]:
    n = sum(r[1] for r in recent)
    last = recent[-1] if recent else None
    p99 = next((r[4] for r in reversed(recent) if not math.isnan(r[4])), None)
    return {"qps": float(last[1]) if last else None, "p99_ms": p99, "slo_ms": slo_ms,
            "slo_attainment": sum(r[2] for r in recent) / n if n else None,
            "default_rate": sum(r[3] for r in recent) / n if n else None,
            "seconds": float(len(recent))}


def tick(snapshot: Mapping[str, Any], app: str, cursor: Cursor, *, slo_ms: float | None = None,
         models: Sequence[str] | None = None, context: str = APP_CONTEXT, tz_offset_s: float = 0.0,
         window_s: int = HEADER_WINDOW_S) -> Tick:
    """New points of ``app`` in ``snapshot`` that ``cursor`` has not streamed yet.

    ``slo_ms`` is drawn as the SLO line for the new seconds (the SLO in force now);
    ``models`` limits the batch series to the app's linked models (None: every model
    in the snapshot); ``context`` picks the selection context whose weights are
    shown (:data:`APP_CONTEXT` for the app-wide state).
    """
    streams: dict[str, Columns] = {}
    last_t = dict(cursor.last_t)
    recent = cursor.recent
    contexts: list[str] = []
    a = snapshot.get("apps", {}).get(app)
    if a is not None:
        rows = _new_rows("app", a["t"], cursor)
        if rows:
            streams.update(_app_streams(a, rows, slo_ms, tz_offset_s))
            last_t["app"] = a["t"][rows[-1]]
            recent = _recent(a, rows, cursor.recent, window_s)
        contexts = sorted(a.get("weights", {}))
        w = a.get("weights", {}).get(context)
        if w is not None:
            for model, probs in w["probabilities"].items():
                key = f"weights/{model}"
                rows = _new_rows(key, w["t"], cursor)
                if rows:
                    streams[key] = _columns(w["t"], rows, tz_offset_s, p=probs)
                    last_t[key] = w["t"][rows[-1]]
    all_models = snapshot.get("models", {})
    for model in (all_models if models is None else models):
        for rep, r in all_models.get(model, {}).get("replicas", {}).items():
            key = f"batch/{model}/{public_replica_name(rep)}"
            rows = _new_rows(key, r["t"], cursor)
            if rows:
                streams[key] = _columns(r["t"], rows, tz_offset_s, cap=r["batch_cap"], mean=r["mean_batch_size"])
                last_t[key] = r["t"][rows[-1]]
    now = snapshot.get("now")
    # Only complete seconds (< floor(now)) are ever reported, so floor(now) - 1 is the
    # last second this snapshot can hold: asking for t > it next never misses one.
    since = float(math.floor(now) - 1) if now is not None else cursor.since
    return Tick(streams=streams, numbers=_numbers(recent, slo_ms), contexts=contexts,
                cursor=Cursor(since=since, last_t=last_t, recent=recent))


def replica_label(key_or_name: str) -> str:
    """A short legend label for a replica: ``digits #0 v3`` for ``digits:3:0:1``
    (model:version:index:generation), or ``batch/digits/digits:3:0:1``."""
    name = key_or_name.split("/", 2)[-1]
    parts = name.rsplit(":", 3)
    if len(parts) == 4:
        model, version, index, _generation = parts
        return f"{model} #{index} v{version}"
    return name

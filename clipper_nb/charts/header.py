"""One application's dashboard header, shared by the server's page and the notebook widget.

:func:`header_html` formats the numbers of a tick (:attr:`~.series.Tick.numbers`) plus
``replicas_up``, ``replicas``, ``placement`` and ``policy``; :func:`placement` says where
an app's replicas run, from ``api/status`` rows::

    >>> placement([{"backend": "ray", "node": "a1", "device": "cuda"},
    ...            {"backend": "ray", "node": "b2", "device": "cuda"}])
    'ray · 2 nodes · cuda'
"""

from __future__ import annotations

import html
import math
from typing import Any, Iterable, Mapping

__all__ = ["header_html", "placement"]

#: (key, label) of the header's cells, in order; the latency is what the server measured
#: (a load generator's own p99 also counts the network and its client)
CELLS = (("qps", "q/s"), ("p99", "p99 at server"), ("slo", "SLO"), ("attained", "attained"),
         ("replicas", "replicas"), ("placement", "runs on"), ("policy", "policy"))


def placement(replicas: Iterable[Mapping[str, Any]]) -> str | None:
    """``backend[ · N nodes] · devices`` of ``replicas`` (``api/status`` rows, or a
    model's description), None for none. Nodes are named only by a cluster backend."""
    rows = list(replicas)
    if not rows:
        return None
    backends = sorted({str(r.get("backend") or "process") for r in rows})
    nodes = {r.get("node") for r in rows if r.get("node")}
    devices = sorted({str(r.get("device") or "auto") for r in rows})
    parts = ["+".join(backends)]
    if nodes:
        parts.append(f"{len(nodes)} node{'s' if len(nodes) != 1 else ''}")
    parts.append("+".join(devices))
    return " · ".join(parts)


def header_html(app: str, numbers: Mapping[str, Any]) -> str:
    """The header of one app (``–`` for a number not known yet)."""

    def fmt(key: str, spec: str, suffix: str = "", scale: float = 1.0) -> str:
        v = numbers.get(key)
        return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v * scale:{spec}}{suffix}"

    def text(key: str) -> str:
        v = numbers.get(key)
        return "–" if v is None else html.escape(str(v))

    values = {"qps": fmt("qps", ".0f"), "p99": fmt("p99_ms", ".2f", " ms"), "slo": fmt("slo_ms", "g", " ms"),
              "attained": fmt("slo_attainment", ".1f", " %", 100.0),
              "replicas": f"{numbers['replicas_up']}/{numbers['replicas']}" if "replicas" in numbers else "–",
              "placement": text("placement"), "policy": text("policy")}
    cells = "".join(f"<span class='cnb-{k}' style='margin-right:18px'><span style='color:#666'>{label}</span> "
                    f"<b>{values[k]}</b></span>" for k, label in CELLS)
    return (f"<div style='font-family:sans-serif;font-size:14px;margin:10px 0 2px 0' data-app='{html.escape(app)}'>"
            f"<b style='font-size:16px;margin-right:24px'>{html.escape(app)}</b>{cells}</div>")

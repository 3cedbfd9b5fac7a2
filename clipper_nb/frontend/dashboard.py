"""The standalone dashboard page: ``/dashboard`` (serve) and ``{base_url}clipper/dashboard``.

One page shows every application with the plots of the notebook ``Dashboard``
(:mod:`clipper_nb.widgets.plots`): latency against the SLO, queries/s, batch size per
replica (AIMD cap and mean), selection weights, cache hit rate, default-output and
SLO-miss rates, and a header of current numbers. BokehJS is inlined (no CDN: the page
works offline). The page's JavaScript polls ``api/metrics?since=T`` (relative to the
page, so the same page works under any prefix) and streams the new points, a port of
:func:`clipper_nb.widgets.ticks.tick`.

Authentication is the composed base class's: open ``/dashboard?token=T`` once and the
browser is logged in (a cookie, as in Jupyter); the page then removes the token from
the address bar. The rendered HTML depends only on which apps, linked models and
replicas exist, so it is cached per such set; the script reloads the page when the
set changes (a new app, a scaled model).
"""

from __future__ import annotations

import asyncio
import html
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from clipper_nb.frontend.api import ApiMixin

__all__ = ["DashboardPageHandler", "PageSpec", "page_spec", "render_page", "routes"]

POLL_INTERVAL_MS = 500
HISTORY_S = 300
_CACHE_SIZE = 16
_cache: "OrderedDict[str, bytes]" = OrderedDict()


@dataclass(frozen=True)
class AppSpec:
    """What one application's section shows: its linked models and their replicas."""

    name: str
    models: tuple[str, ...]
    replicas: tuple[tuple[str, str], ...]  # (model, replica name)


@dataclass(frozen=True)
class PageSpec:
    apps: tuple[AppSpec, ...]

    @property
    def key(self) -> str:
        """Identifies the page's layout; the script computes the same string from
        ``api/apps`` and ``api/status`` and reloads when it differs."""
        return "|".join(f"{a.name}:{','.join(a.models)}:{','.join(sorted(r for _, r in a.replicas))}"
                        for a in self.apps)


def page_spec(apps: list[dict], replicas: list[dict]) -> PageSpec:
    """The page for ``apps`` (``api/apps`` rows) and ``replicas`` (``api/status`` rows)."""
    specs = []
    for a in sorted(apps, key=lambda a: a["name"]):
        models = tuple(a.get("models") or ())
        reps = tuple(sorted(((r["model"], r["name"]) for r in replicas if r.get("name") and r["model"] in models),
                            key=lambda mr: mr[1]))
        specs.append(AppSpec(a["name"], models, reps))
    return PageSpec(tuple(specs))


def render_page(spec: PageSpec, interval_ms: int = POLL_INTERVAL_MS, history_s: int = HISTORY_S) -> bytes:
    """The whole HTML page, BokehJS inline. Pure (no I/O); takes ~0.1-0.5 s of CPU."""
    from bokeh.document import Document
    from bokeh.embed import file_html
    from bokeh.events import DocumentReady
    from bokeh.layouts import column, row
    from bokeh.models import CustomJS, Div
    from bokeh.resources import INLINE

    from clipper_nb.widgets.plots import PlotSet

    sources: dict[str, Any] = {}
    headers: dict[str, Any] = {}
    notes: dict[str, Any] = {}
    sections = []
    for a in spec.apps:
        plots = PlotSet(history_s=history_s, width=440, height=210, name_prefix=f"{a.name}|")
        for model, rep in a.replicas:
            plots.source_for(f"batch/{model}/{rep}")
        for model in a.models:
            plots.source_for(f"weights/{model}")
        sources.update({f"{a.name}|{k}": s for k, s in plots.sources.items()})
        notes[a.name] = plots.weights_note
        headers[a.name] = Div(text=_header_html(a.name), name=f"{a.name}|header")
        f = plots.figures
        sections.append(column(headers[a.name], row(f["latency"], f["throughput"], f["batch"]),
                               row(f["weights"], f["cache"], f["misses"])))
    title = Div(text="<h2 style='font-family:sans-serif;margin:4px 0'>clipper-nb dashboard</h2>")
    status = Div(text="<span class='cnb-status'>starting…</span>", name="status")
    empty = [] if spec.apps else [Div(text="<p style='font-family:sans-serif'>No applications yet: deploy a model "
                                           "with an app (<code>client.deploy(model, name, app=...)</code>). "
                                           "This page shows it as soon as it exists.</p>")]
    doc = Document()
    doc.add_root(column(title, status, *empty, *sections))
    doc.js_on_event(DocumentReady, CustomJS(args=dict(sources=sources, headers=headers, notes=notes, status=status,
                                                      apps=[a.name for a in spec.apps], page_key=spec.key,
                                                      interval_ms=interval_ms, history_s=history_s),
                                            code=_SCRIPT))
    return file_html(doc, resources=INLINE, title="clipper-nb dashboard").encode()


def _header_html(app: str, **numbers: str) -> str:
    # The script writes the same markup with live numbers (keep the two in step).
    cells = "".join(f"<span class='cnb-{k}' style='margin-right:18px'><span style='color:#666'>{label}</span> "
                    f"<b>{numbers.get(k, '–')}</b></span>"
                    for k, label in (("qps", "q/s"), ("p99", "p99"), ("slo", "SLO"), ("attained", "attained"),
                                     ("replicas", "replicas"), ("policy", "policy")))
    return (f"<div style='font-family:sans-serif;font-size:14px;margin:10px 0 2px 0' data-app='{html.escape(app)}'>"
            f"<b style='font-size:16px;margin-right:24px'>{html.escape(app)}</b>{cells}</div>")


class DashboardPageHandler(ApiMixin):
    """``GET /dashboard``: the page for every application (HTML, BokehJS inline)."""

    access = "metrics"

    async def get(self) -> None:
        engine = self.engine
        spec = page_spec(engine.list_apps(), engine.status())
        page = _cache.get(spec.key)
        if page is None:
            # Building and serialising the document takes CPU: keep it off the server's loop.
            page = await asyncio.to_thread(render_page, spec)
            _cache[spec.key] = page
            while len(_cache) > _CACHE_SIZE:
                _cache.popitem(last=False)
        else:
            _cache.move_to_end(spec.key)
        self.set_header("Content-Type", "text/html; charset=utf-8")
        self.set_header("Cache-Control", "no-store")  # the layout changes with the apps
        self.finish(page)


def routes() -> list[tuple[str, type]]:
    """``(path regex relative to the prefix, handler mixin)`` for the page."""
    return [(r"dashboard", DashboardPageHandler)]


# The script below is a port of clipper_nb.widgets.ticks.tick (keep the two in step).
# Bokeh calls it once the document is ready, with the CustomJS args as variables.
_SCRIPT = r"""
const base = window.location.pathname.replace(/dashboard\/?$/, "");
const params = new URLSearchParams(window.location.search);
if (params.has("token")) {
  // The server logged this browser in with a cookie: keep the token out of the address
  // bar, bookmarks and screen shares.
  params.delete("token");
  const q = params.toString();
  window.history.replaceState(null, "", window.location.pathname + (q ? "?" + q : "") + window.location.hash);
}
const WINDOW_S = 10;
const tz_ms = -new Date().getTimezoneOffset() * 60000;
const st = {since: null, last: {}, recent: {}, info: {}, up: {}, info_at: 0, delay: interval_ms, ticks: 0};
window.clipperDashboard = st;  // for tests and the curious: st.ticks counts polls that streamed

const ENTITIES = {"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"};
function esc(s) { return String(s).replace(/[&<>"']/g, (c) => ENTITIES[c]); }
function num(v) { return v === null || v === undefined ? NaN : Number(v); }
function show(text, error) {
  const colour = error ? "#b00020" : "#2e7d32";
  status.text = `<span class='cnb-status' style='font-family:sans-serif;font-size:12px;color:${colour}'>` +
                `${error ? "⚠" : "●"} ${esc(text)}</span>`;
}
async function get(path) {
  const r = await fetch(base + path, {credentials: "same-origin", headers: {Accept: "application/json"}});
  if (r.status === 401 || r.status === 403) {
    throw new Error("not logged in: open this page as …/dashboard?token=<TOKEN>");
  }
  if (!r.ok) { throw new Error(`HTTP ${r.status} from ${path}`); }
  return r.json();
}
function newRows(key, ts) {
  const last = st.last[key];
  const rows = [];
  ts.forEach((t, i) => { if (last === undefined || t > last) rows.push(i); });
  return rows;
}
function columns(ts, rows, series) {
  const out = {x: rows.map((i) => ts[i] * 1000 + tz_ms)};
  for (const [name, values] of Object.entries(series)) out[name] = rows.map((i) => num(values[i]));
  return out;
}
function put(key, cols) {
  const src = sources[key];
  if (src === undefined) return false;
  src.stream(cols, history_s);
  return true;
}
function tickApp(app, a) {
  let streamed = false;
  const info = st.info[app] || {};
  const rows = newRows(app + "|app", a.t);
  if (rows.length) {
    const slo = a.t.map(() => (info.slo_ms === undefined ? null : info.slo_ms));
    const miss = a.slo_attainment.map((s) => (s === null ? null : 1 - s));
    streamed = put(`${app}|latency`, columns(a.t, rows, {p50: a.p50_ms, p99: a.p99_ms, slo: slo})) || streamed;
    streamed = put(`${app}|throughput`, columns(a.t, rows, {qps: a.qps, goodput: a.goodput})) || streamed;
    streamed = put(`${app}|cache`, columns(a.t, rows, {hit_rate: a.cache_hit_rate})) || streamed;
    streamed = put(`${app}|misses`, columns(a.t, rows, {default_rate: a.default_rate, slo_miss: miss,
                                                         error_rate: a.error_rate})) || streamed;
    st.last[app + "|app"] = a.t[rows[rows.length - 1]];
    const recent = (st.recent[app] || []).concat(rows.map((i) => {
      const q = a.qps[i] || 0;
      return [a.t[i], q, q * (a.slo_attainment[i] || 0), num(a.p99_ms[i])];
    }));
    const newest = recent[recent.length - 1][0];
    st.recent[app] = recent.filter((r) => r[0] > newest - WINDOW_S);
  }
  const w = (a.weights || {})["default"];
  if (w) {
    for (const [model, probs] of Object.entries(w.probabilities)) {
      const key = `${app}|weights/${model}`;
      const wr = newRows(key, w.t);
      if (wr.length) {
        streamed = put(key, columns(w.t, wr, {p: probs})) || streamed;
        st.last[key] = w.t[wr[wr.length - 1]];
        notes[app].visible = false;
      }
    }
  }
  return streamed;
}
function tickModels(app, models) {
  let streamed = false;
  for (const model of (st.info[app] || {}).models || []) {
    const m = models[model];
    if (!m) continue;
    for (const [rep, r] of Object.entries(m.replicas || {})) {
      const key = `${app}|batch/${model}/${rep}`;
      const rows = newRows(key, r.t);
      if (rows.length) {
        streamed = put(key, columns(r.t, rows, {cap: r.batch_cap, mean: r.mean_batch_size})) || streamed;
        st.last[key] = r.t[rows[rows.length - 1]];
      }
    }
  }
  return streamed;
}
function header(app) {
  const info = st.info[app] || {};
  const recent = st.recent[app] || [];
  const n = recent.reduce((s, r) => s + r[1], 0);
  const last = recent[recent.length - 1];
  const p99 = recent.map((r) => r[3]).filter((v) => !Number.isNaN(v)).pop();
  const up = st.up[app] || [0, 0];
  const cells = [
    ["qps", "q/s", last ? last[1].toFixed(0) : "–"],
    ["p99", "p99", p99 === undefined ? "–" : p99.toFixed(2) + " ms"],
    ["slo", "SLO", info.slo_ms === undefined ? "–" : info.slo_ms + " ms"],
    ["attained", "attained", n ? (100 * recent.reduce((s, r) => s + r[2], 0) / n).toFixed(1) + " %" : "–"],
    ["replicas", "replicas", `${up[0]}/${up[1]}`],
    ["policy", "policy", info.policy === undefined ? "–" : esc(info.policy)],
  ].map(([k, label, v]) => `<span class='cnb-${k}' style='margin-right:18px'>` +
                          `<span style='color:#666'>${label}</span> <b>${v}</b></span>`);
  headers[app].text = `<div style='font-family:sans-serif;font-size:14px;margin:10px 0 2px 0' data-app='${esc(app)}'>` +
                      `<b style='font-size:16px;margin-right:24px'>${esc(app)}</b>${cells.join("")}</div>`;
}
async function refreshInfo() {
  const [appsDoc, statusDoc] = await Promise.all([get("api/apps"), get("api/status")]);
  const rows = statusDoc.replicas || [];
  const key = appsDoc.apps.slice().sort((x, y) => (x.name < y.name ? -1 : x.name > y.name ? 1 : 0)).map((a) => {
    const reps = rows.filter((r) => r.name && (a.models || []).includes(r.model)).map((r) => r.name).sort();
    return `${a.name}:${(a.models || []).join(",")}:${reps.join(",")}`;
  }).join("|");
  if (key !== page_key) {
    // New apps, links or replicas: the server renders (and caches) a page with their plots.
    const last = Number(window.sessionStorage.getItem("clipper-nb-reload") || 0);
    if (Date.now() - last > 10000) {
      window.sessionStorage.setItem("clipper-nb-reload", String(Date.now()));
      window.location.reload();
    }
  }
  for (const a of appsDoc.apps) {
    st.info[a.name] = a;
    const mine = rows.filter((r) => (a.models || []).includes(r.model));
    st.up[a.name] = [mine.filter((r) => r.state === "idle" || r.state === "busy").length, mine.length];
  }
  st.info_at = Date.now();
}
async function poll() {
  if (Date.now() - st.info_at > 2000) await refreshInfo();
  const snap = await get("api/metrics" + (st.since === null ? "" : "?since=" + st.since));
  let streamed = false;
  for (const app of apps) {
    const a = snap.apps[app];
    if (a) streamed = tickApp(app, a) || streamed;
    streamed = tickModels(app, snap.models || {}) || streamed;
    header(app);
  }
  st.since = Math.floor(snap.now) - 1;
  if (streamed) st.ticks += 1;
  show(`live · updated ${new Date().toLocaleTimeString()}`, false);
}
async function loop() {
  try {
    await poll();
    st.delay = interval_ms;
  } catch (e) {
    show(`cannot update: ${e.message}; retrying`, true);
    st.delay = Math.min(Math.max(st.delay * 2, 1000), 5000);
  }
  window.setTimeout(loop, st.delay);
}
loop();
"""

"""The standalone dashboard page: ``/dashboard`` (serve) and ``{base_url}clipper/dashboard``.

One page shows every application with the plots of the notebook ``Dashboard``
(:mod:`clipper_nb.charts.figures`): latency against the SLO, queries/s, batch size per
replica (AIMD cap and mean), selection weights, cache hit rate, default-output and
SLO-miss rates, and a header of current numbers. BokehJS is inlined (no CDN: the page
works offline).

The page computes no series itself. Its script polls ``api/dashboard/ticks`` (relative
to the page, so the same page works under any prefix) with the cursors the previous
answer gave it; the server runs :func:`clipper_nb.charts.series.tick` — the one
implementation the notebook widgets use too — on ``engine.metrics`` (:func:`ticks`),
and the script streams each returned series into the Bokeh source of the same name and
writes each app's header. Batch series are named by the public replica name
(``model:version:index:serial``, as ``api/status`` shows it), never by the replica's
socket identity, whose last part is a secret.

Authentication is the composed base class's: open ``/dashboard?token=T`` once and the
browser is logged in (a cookie, as in Jupyter); the page then removes the token from
the address bar. The rendered HTML depends only on which apps, linked models and
replicas exist (:class:`PageSpec`), so it is cached per such set; every tick answer
names the current set (``layout``) and the script reloads the page when it differs.

This module does no I/O: the handlers (``clipper_nb.frontend.api``) call it.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Mapping

import orjson
from bokeh.document import Document
from bokeh.embed import file_html
from bokeh.events import DocumentReady
from bokeh.layouts import column, row
from bokeh.models import CustomJS, Div
from bokeh.resources import INLINE

from clipper_nb.charts.figures import PlotSet
from clipper_nb.charts.header import header_html, placement
from clipper_nb.charts.series import Cursor, public_replica_name, tick

__all__ = ["PageSpec", "cached_page", "cursors_from_json", "header_html", "page_spec", "remember_page",
           "render_page", "snapshot_since", "ticks"]

POLL_INTERVAL_MS = 500
HISTORY_S = 300
#: Most applications one tick request may ask for.
MAX_APPS = 256
_CACHE_SIZE = 16
_cache: "OrderedDict[str, bytes]" = OrderedDict()
_UP_STATES = ("idle", "busy")


@dataclass(frozen=True)
class AppSpec:
    """What one application's section shows: its linked models and their replicas."""

    name: str
    models: tuple[str, ...]
    replicas: tuple[tuple[str, str], ...]  # (model, public replica name)


@dataclass(frozen=True)
class PageSpec:
    apps: tuple[AppSpec, ...]

    @property
    def key(self) -> str:
        """Identifies the page's layout; tick answers carry the current one (``layout``)
        and the page's script reloads when it differs from the one it was rendered for."""
        return "|".join(f"{a.name}:{','.join(a.models)}:{','.join(sorted(r for _, r in a.replicas))}"
                        for a in self.apps)


def page_spec(apps: list[dict], replicas: list[dict]) -> PageSpec:
    """The page for ``apps`` (``api/apps`` rows) and ``replicas`` (``api/status`` rows)."""
    specs = []
    for a in sorted(apps, key=lambda a: a["name"]):
        models = tuple(a.get("models") or ())
        reps = tuple(sorted(((r["model"], public_replica_name(r["name"])) for r in replicas
                             if r.get("name") and r["model"] in models), key=lambda mr: mr[1]))
        specs.append(AppSpec(a["name"], models, reps))
    return PageSpec(tuple(specs))


# ---------------------------------------------------------------------- the tick route


def cursors_from_json(text: str | bytes | None) -> dict[str, Cursor] | None:
    """The ``cursor`` argument of ``api/dashboard/ticks``: a JSON object of app name ->
    :meth:`Cursor.to_json` (``{}`` for an app not streamed yet). None when absent (every
    app, from scratch). Raises ``ValueError`` when malformed."""
    if text is None:
        return None
    try:
        obj = orjson.loads(text)
    except orjson.JSONDecodeError as e:
        raise ValueError(f"'cursor' is not JSON: {e}") from None
    if not isinstance(obj, dict) or len(obj) > MAX_APPS:
        raise ValueError(f"'cursor' must be a JSON object of at most {MAX_APPS} apps: app name -> cursor")
    return {str(app): Cursor.from_json(c) for app, c in obj.items()}


def snapshot_since(cursors: Mapping[str, Cursor] | None) -> float | None:
    """The ``since`` one metrics snapshot needs to serve every cursor."""
    if not cursors or any(c.since is None for c in cursors.values()):
        return None
    return min(c.since for c in cursors.values())  # type: ignore[type-var]


def _replica_numbers(models: list[str], replicas: list[dict]) -> dict[str, Any]:
    """The header's replica cells of an app serving ``models``."""
    mine = [r for r in replicas if r.get("model") in models]
    return {"replicas_up": sum(1 for r in mine if r.get("state") in _UP_STATES), "replicas": len(mine),
            "placement": placement(mine)}


def ticks(snapshot: Mapping[str, Any], apps: list[dict], replicas: list[dict],
          cursors: Mapping[str, Cursor] | None, tz_offset_s: float = 0.0) -> dict[str, Any]:
    """The answer of ``api/dashboard/ticks``: for each app of ``cursors`` that exists
    (every app when None), :func:`~clipper_nb.charts.series.tick`'s streams, numbers,
    contexts and next cursor (as JSON), and the header's HTML; ``layout`` is the key of
    the page the current apps and replicas need (:attr:`PageSpec.key`)."""
    by_name = {a["name"]: a for a in apps}
    names = list(by_name) if cursors is None else [n for n in cursors if n in by_name]
    out: dict[str, Any] = {}
    for name in names:
        info = by_name[name]
        models = list(info.get("models") or ())
        t = tick(snapshot, name, (cursors or {}).get(name, Cursor()), slo_ms=info.get("slo_ms"), models=models,
                 tz_offset_s=tz_offset_s)
        numbers = {**t.numbers, **_replica_numbers(models, replicas), "policy": info.get("policy")}
        out[name] = {"streams": t.streams, "numbers": numbers, "contexts": t.contexts,
                     "header": header_html(name, numbers), "cursor": t.cursor.to_json()}
    return {"now": snapshot.get("now"), "layout": page_spec(apps, replicas).key, "apps": out}


# ---------------------------------------------------------------------- the page


def cached_page(spec: PageSpec) -> bytes | None:
    """The page rendered for ``spec`` earlier, if still cached."""
    page = _cache.get(spec.key)
    if page is not None:
        _cache.move_to_end(spec.key)
    return page


def remember_page(spec: PageSpec, page: bytes) -> None:
    _cache[spec.key] = page
    while len(_cache) > _CACHE_SIZE:
        _cache.popitem(last=False)


def render_page(spec: PageSpec, interval_ms: int = POLL_INTERVAL_MS, history_s: int = HISTORY_S) -> bytes:
    """The whole HTML page, BokehJS inline. Pure (no I/O); takes ~0.1-0.5 s of CPU."""
    sources: dict[str, Any] = {}
    headers: dict[str, Any] = {}
    notes: dict[str, Any] = {}
    sections = []
    for a in spec.apps:
        plots = PlotSet(history_s=history_s, width=440, height=210, name_prefix=f"{a.name}|", shared_x=True)
        for model, rep in a.replicas:
            plots.source_for(f"batch/{model}/{rep}")
        for model in a.models:
            plots.source_for(f"weights/{model}")
        sources.update({f"{a.name}|{k}": s for k, s in plots.sources.items()})
        notes[a.name] = plots.notes
        headers[a.name] = Div(text=header_html(a.name, {}), name=f"{a.name}|header")
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


# Bokeh calls the script once the document is ready, with the CustomJS args as
# variables. It computes no series: it sends back the cursors the server gave it,
# streams what the server computed and writes the headers the server formatted.
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
const tz_s = -new Date().getTimezoneOffset() * 60;
const st = {cursor: Object.fromEntries(apps.map((a) => [a, {}])), delay: interval_ms, ticks: 0};
window.clipperDashboard = st;  // for the curious: st.ticks counts polls that streamed

const ENTITIES = {"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"};
function esc(s) { return String(s).replace(/[&<>"']/g, (c) => ENTITIES[c]); }
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
function draw(app, streams) {
  let streamed = false;
  for (const [key, columns] of Object.entries(streams)) {
    const src = sources[`${app}|${key}`];
    if (src === undefined || !columns.x.length) continue;
    const data = {};  // JSON has no NaN: the server's NaN (a gap in a line) arrives as null
    for (const [name, values] of Object.entries(columns)) data[name] = values.map((v) => (v === null ? NaN : v));
    src.stream(data, history_s);
    streamed = true;
    const note = notes[app][key.split("/")[0]];  // "no traffic yet" goes with the first point
    if (note !== undefined) note.visible = false;
  }
  return streamed;
}
function reloadIfChanged(layout) {
  if (layout === page_key) return;
  // New apps, links or replicas: the server renders (and caches) a page with their plots.
  const last = Number(window.sessionStorage.getItem("clipper-nb-reload") || 0);
  if (Date.now() - last > 10000) {
    window.sessionStorage.setItem("clipper-nb-reload", String(Date.now()));
    window.location.reload();
  }
}
async function poll() {
  const answer = await get(`api/dashboard/ticks?tz=${tz_s}&cursor=${encodeURIComponent(JSON.stringify(st.cursor))}`);
  reloadIfChanged(answer.layout);
  let streamed = false;
  for (const [app, t] of Object.entries(answer.apps)) {
    if (!(app in st.cursor)) continue;
    st.cursor[app] = t.cursor;
    streamed = draw(app, t.streams) || streamed;
    headers[app].text = t.header;
  }
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

"""Bokeh figures of the dashboard and the data sources behind them.

:class:`PlotSet` owns one figure per plot kind and one ``ColumnDataSource`` per
series key of :mod:`clipper_nb.charts.series`. Series whose number is not known in
advance (one per replica, one per model's weight) get their source and glyphs the
first time a tick streams them. Nothing here knows about ipywidgets or HTTP: the
notebook's live views wrap each figure in a ``BokehModel``; the standalone page
(``clipper_nb.frontend.dashboard``) puts all of them in one document, and its
script streams into the sources what the server's tick route returns.
"""

from __future__ import annotations

from typing import Iterable

from bokeh.models import (ColumnDataSource, DataRange1d, DatetimeTickFormatter, Label, Legend,
                          NumeralTickFormatter, Range1d)
from bokeh.palettes import Category10_10
from bokeh.plotting import figure

from .series import Columns, replica_label

__all__ = ["FIGURES", "PlotSet", "TITLES", "series_columns"]

#: Plot kinds in display order.
FIGURES = ("latency", "throughput", "batch", "weights", "cache", "misses")
TITLES = {
    "latency": "Latency at the server (ms): p50, p99 and the SLO",
    "throughput": "Throughput (queries/s)",
    "batch": "Batch size per replica: AIMD cap (dashed) and mean",
    "weights": "Selection weights (probability per model)",
    "cache": "Prediction cache hit rate",
    "misses": "Default outputs and SLO misses",
}
# Fixed series: (column, legend label, colour, dash).
_LINES = {
    "latency": [("p50", "p50", "#1f77b4", "solid"), ("p99", "p99", "#ff7f0e", "solid"),
                ("slo", "SLO", "#d62728", "dashed")],
    "throughput": [("qps", "queries/s", "#1f77b4", "solid"), ("goodput", "goodput", "#2ca02c", "solid")],
    "cache": [("hit_rate", "hit rate", "#9467bd", "solid")],
    "misses": [("default_rate", "default outputs", "#8c564b", "solid"),
               ("slo_miss", "SLO misses", "#d62728", "solid"), ("error_rate", "errors", "#7f7f7f", "dotted")],
}
_FRACTION_PLOTS = {"weights", "cache", "misses"}
#: What an empty plot says until its first point arrives.
EMPTY_NOTES = {kind: "no traffic yet" for kind in FIGURES} | {"weights": "no feedback yet (client.feedback)"}


def series_columns(key: str) -> list[str]:
    """The columns of the source for series ``key`` (see :mod:`.series`)."""
    kind = key.split("/", 1)[0]
    if kind == "batch":
        return ["x", "cap", "mean"]
    if kind == "weights":
        return ["x", "p"]
    return ["x", *(col for col, *_ in _LINES[kind])]


class PlotSet:
    """Figures ``names`` (a subset of :data:`FIGURES`) and their sources.

    ``history_s`` bounds every source (older points roll over) and the visible time
    span; ``name_prefix`` names the Bokeh models (sources ``"<prefix>latency"``,
    figures ``"<prefix>plot:latency"``) so a page with several applications can find
    them from JavaScript.
    """

    def __init__(self, names: Iterable[str] = FIGURES, *, history_s: int = 300, width: int = 470,
                 height: int = 220, name_prefix: str = "", shared_x: bool = False) -> None:
        self.history_s = history_s
        self.name_prefix = name_prefix
        self.figures: dict[str, figure] = {}
        self.sources: dict[str, ColumnDataSource] = {}
        self._dynamic: dict[str, int] = {}  # plot kind -> series added so far (picks the colour)
        #: plot kind -> its "no traffic yet" label, hidden once the plot has data
        self.notes: dict[str, Label] = {}
        # shared_x (one Bokeh document, the page): one time axis for every plot, so a load
        # fills the same window everywhere. Figures shown as separate widgets live in
        # separate documents and cannot share a model: each then gets its own range.
        self._shared_x = self._time_range() if shared_x else None
        for name in names:
            if name not in TITLES:
                raise ValueError(f"unknown plot {name!r}; plots: {', '.join(FIGURES)}")
            self.figures[name] = self._figure(name, width, height)
            for col, label, colour, dash in _LINES.get(name, []):
                src = self._source(name)
                self.figures[name].line("x", col, source=src, legend_label=label, color=colour,
                                        line_dash=dash, line_width=2)

    def _figure(self, name: str, width: int, height: int) -> figure:
        fig = figure(title=TITLES[name], x_axis_type="datetime", width=width, height=height,
                     x_range=self._shared_x or self._time_range(),
                     tools="pan,wheel_zoom,box_zoom,reset,save", toolbar_location="right",
                     name=f"{self.name_prefix}plot:{name}")
        clock = "%H:%M:%S"
        fig.xaxis.formatter = DatetimeTickFormatter(milliseconds=clock, seconds=clock, minsec=clock,
                                                    minutes="%H:%M", hourmin="%H:%M", hours="%H:%M", context=None)
        fig.xaxis.ticker.desired_num_ticks = 4  # clock labels that never overlap at this width
        if name in _FRACTION_PLOTS:
            fig.y_range = Range1d(-0.03, 1.05)  # below 0: a 0 % line stays visible above the axis
            fig.yaxis.formatter = NumeralTickFormatter(format="0%")
        else:
            # From 0, and an axis even before the first point (an idle app is not a blank box).
            fig.y_range = DataRange1d(start=0, min_interval=1.0, default_span=1.0)
        # Until the first point: say why the plot is empty (weights are sampled on feedback).
        self.notes[name] = Label(x=12, y=12, x_units="screen", y_units="screen", text_font_size="9pt",
                                 text_color="#777", name=f"{self.name_prefix}note:{name}", text=EMPTY_NOTES[name])
        fig.add_layout(self.notes[name])
        # Outside the plot area: a legend inside would hide the newest points.
        fig.add_layout(Legend(click_policy="hide", label_text_font_size="8pt", spacing=0, padding=4,
                              margin=4, label_height=12, glyph_height=12, border_line_alpha=0), "right")
        fig.title.text_font_size = "10pt"
        return fig

    def _source(self, key: str) -> ColumnDataSource:
        src = self.sources.get(key)
        if src is None:
            src = ColumnDataSource({c: [] for c in series_columns(key)}, name=f"{self.name_prefix}{key}")
            self.sources[key] = src
        return src

    def _time_range(self) -> DataRange1d:
        # The window follows the newest point, at most history_s wide. min_interval: a few
        # seconds of data still get a readable clock axis, not "500ms".
        return DataRange1d(follow="end", follow_interval=self.history_s * 1000, range_padding=0,
                           min_interval=30_000)

    @property
    def weights_note(self) -> Label | None:
        """The weights plot's "no feedback yet" label (None when the set has no weights plot)."""
        return self.notes.get("weights")

    def source_for(self, key: str) -> ColumnDataSource | None:
        """The source of series ``key``, made (with its glyphs) on first use; None when
        this set does not show that plot."""
        kind = key.split("/", 1)[0]
        fig = self.figures.get(kind)
        if fig is None:
            return None
        if key in self.sources:
            return self.sources[key]
        src = self._source(key)
        n = self._dynamic.get(kind, 0)
        self._dynamic[kind] = n + 1
        colour = Category10_10[n % len(Category10_10)]
        if kind == "batch":
            label = replica_label(key)
            fig.line("x", "mean", source=src, legend_label=label, color=colour, line_width=2)
            fig.line("x", "cap", source=src, legend_label=label, color=colour, line_dash="dashed", line_width=1.5)
        elif kind == "weights":
            fig.step("x", "p", source=src, legend_label=key.split("/", 1)[1], color=colour, line_width=2,
                     mode="after")
        return src

    def stream(self, streams: dict[str, Columns]) -> list[str]:
        """Append each series' new columns to its source; returns the keys streamed."""
        done = []
        for key, columns in streams.items():
            src = self.source_for(key)
            if src is not None and columns.get("x"):
                src.stream(columns, rollover=self.history_s)
                done.append(key)
                note = self.notes.get(key.split("/", 1)[0])
                if note is not None and note.visible:
                    note.visible = False
        return done

    def clear(self, prefix: str) -> None:
        """Empty the sources of series starting with ``prefix`` (their glyphs stay)."""
        for key, src in self.sources.items():
            if key.startswith(prefix):
                src.data = {c: [] for c in series_columns(key)}

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
    "latency": "Latency (ms): p50, p99 and the SLO",
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
                 height: int = 220, name_prefix: str = "") -> None:
        self.history_s = history_s
        self.name_prefix = name_prefix
        self.figures: dict[str, figure] = {}
        self.sources: dict[str, ColumnDataSource] = {}
        self._dynamic: dict[str, int] = {}  # plot kind -> series added so far (picks the colour)
        self.weights_note: Label | None = None
        for name in names:
            if name not in TITLES:
                raise ValueError(f"unknown plot {name!r}; plots: {', '.join(FIGURES)}")
            self.figures[name] = self._figure(name, width, height)
            for col, label, colour, dash in _LINES.get(name, []):
                src = self._source(name)
                self.figures[name].line("x", col, source=src, legend_label=label, color=colour,
                                        line_dash=dash, line_width=2)

    def _figure(self, name: str, width: int, height: int) -> figure:
        # follow="end": the x range slides with the newest point instead of growing.
        # min_interval: a few seconds of data still get a readable clock axis, not "500ms".
        x_range = DataRange1d(follow="end", follow_interval=self.history_s * 1000, range_padding=0,
                              min_interval=30_000)
        fig = figure(title=TITLES[name], x_axis_type="datetime", width=width, height=height, x_range=x_range,
                     tools="pan,wheel_zoom,box_zoom,reset,save", toolbar_location="right",
                     name=f"{self.name_prefix}plot:{name}")
        clock = "%H:%M:%S"
        fig.xaxis.formatter = DatetimeTickFormatter(milliseconds=clock, seconds=clock, minsec=clock,
                                                    minutes="%H:%M", hourmin="%H:%M", hours="%H:%M", context=None)
        if name in _FRACTION_PLOTS:
            fig.y_range = Range1d(-0.03, 1.05)  # below 0: a 0 % line stays visible above the axis
            fig.yaxis.formatter = NumeralTickFormatter(format="0%")
        if name == "weights":
            # Weights are sampled on feedback: say so until the first sample arrives.
            self.weights_note = Label(x=12, y=12, x_units="screen", y_units="screen", text_font_size="9pt",
                                      text_color="#777", name=f"{self.name_prefix}note:weights",
                                      text="no feedback yet (client.feedback)")
            fig.add_layout(self.weights_note)
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
                if key.startswith("weights/") and self.weights_note is not None and self.weights_note.visible:
                    self.weights_note.visible = False
        return done

    def clear(self, prefix: str) -> None:
        """Empty the sources of series starting with ``prefix`` (their glyphs stay)."""
        for key, src in self.sources.items():
            if key.startswith(prefix):
                src.data = {c: [] for c in series_columns(key)}

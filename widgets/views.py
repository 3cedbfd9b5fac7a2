"""The live views: the full :class:`Dashboard`, and :class:`SLOTuner` and
:class:`WeightsView` for teaching one concept at a time.

>>> import clipper_nb
>>> c = clipper_nb.connect()                                  # doctest: +SKIP
>>> dash = c.dashboard("digits")   # or clipper_nb.widgets.Dashboard("digits", client=c)
>>> dash                                                      # doctest: +SKIP
>>> dash.load.start(qps=200)       # the load generator, as the toggle does
>>> dash.slo.value = 10            # as moving the slider does: applied at once
>>> dash.close()                   # stops polling and load
"""

from __future__ import annotations

import html
from typing import Any, Sequence

import ipywidgets as W

from clipper_nb.charts.figures import FIGURES
from clipper_nb.charts.series import Tick
from clipper_nb.config import DEFAULT_SLO_MS
from .controls import (LoadPanel, context_dropdown, policy_dropdown, quiet, replicas_slider, slo_slider,
                       update_contexts)
from .live import LiveView

__all__ = ["Dashboard", "SLOTuner", "WeightsView"]


def _sync(widget: W.Widget, value: Any, busy: bool) -> None:
    """Show a value the server reports, unless the user is changing it right now."""
    if not busy and value is not None and widget.value != value:
        with quiet(widget):
            widget.value = value


class Dashboard(LiveView):
    """Everything about one application, live: latency (p50/p99 against the SLO),
    queries/s, per-replica batch sizes (AIMD cap and mean), selection weights, cache
    hit rate, default-output and SLO-miss rates, and a header of current numbers.

    Controls act on the server at once: the SLO slider, the policy, replicas per
    linked model, and a load generator (``load_inputs``: what to send; by default
    random vectors of the model's input shape) bounded by ``max_load_qps`` and
    ``max_load_s``. ``client`` defaults to ``clipper_nb.connect()``; ``interval`` is
    the polling period in seconds; ``context`` picks whose weights are shown.
    """

    plots_shown = FIGURES

    def __init__(self, app: str, client: Any = None, interval: float = 0.5, *, context: str | None = None,
                 history_s: int = 300, load_inputs: Sequence[Any] | None = None, load_qps: int = 100,
                 max_load_qps: int = 1000, max_load_s: float = 300.0, autostart: bool = True) -> None:
        self._load_options = dict(inputs=load_inputs, qps=load_qps, max_qps=max_load_qps, max_s=max_load_s)
        super().__init__(app, client, interval, context=context, history_s=history_s, autostart=autostart)

    def _build(self) -> list[W.Widget]:
        info = self.info
        self.slo = slo_slider(self, float(info.get("slo_ms", DEFAULT_SLO_MS)))
        self.policy = policy_dropdown(self, str(info.get("policy", "single")))
        self.contexts = context_dropdown(self, self.context)
        self.replicas = {m: replicas_slider(self, m, int(i.get("replicas", 1))) for m, i in self.model_info.items()}
        self.load = LoadPanel(self, **self._load_options)
        title = W.HTML(f"<b style='font-family:sans-serif;font-size:15px'>clipper-nb · {html.escape(self.app)}</b>")
        return [title, self.header, W.HBox([self.slo, self.policy, self.contexts]),
                W.HBox(list(self.replicas.values())), self.load.widget, self._plot_grid(), self.status_line]

    def _on_tick(self, t: Tick) -> None:
        super()._on_tick(t)
        busy = bool(self._actions)
        _sync(self.slo, self.info.get("slo_ms"), busy)
        _sync(self.policy, self.info.get("policy") if self.info.get("policy") in self.policy.options else None,
              busy)
        for m, s in self.replicas.items():
            _sync(s, self.model_info.get(m, {}).get("replicas"), busy)
        update_contexts(self.contexts, t.contexts)

    def _stop_extras(self) -> None:
        self.load.stop()


class SLOTuner(LiveView):
    """An SLO slider with the two plots it moves: latency against the SLO, and each
    replica's batch size, where AIMD's saw-tooth follows the new objective."""

    plots_shown = ("latency", "batch")

    def _build(self) -> list[W.Widget]:
        self.slo = slo_slider(self, float(self.info.get("slo_ms", DEFAULT_SLO_MS)))
        return [self.header, self.slo, self._plot_grid(), self.status_line]

    def _on_tick(self, t: Tick) -> None:
        super()._on_tick(t)
        _sync(self.slo, self.info.get("slo_ms"), bool(self._actions))


class WeightsView(LiveView):
    """The selection policy's weights per model over time, for the app or one
    ``context`` (chosen from the dropdown once feedback has been sent for it)."""

    plots_shown = ("weights",)

    def _build(self) -> list[W.Widget]:
        self.contexts = context_dropdown(self, self.context)
        return [W.HBox([self.contexts]), self._plot_grid(), self.status_line]

    def _on_tick(self, t: Tick) -> None:
        update_contexts(self.contexts, t.contexts)

"""Controls that act on the live system, and the demo load generator.

Each control is a plain ipywidget whose observer hands the change to the owning
view's ``_act`` (a blocking client call run off the loop, one at a time). Values the
server reports are written back with ``quiet`` so they do not echo as changes.
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import math
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

import ipywidgets as W

from clipper_nb.charts.series import APP_CONTEXT
from clipper_nb.kernel.loadgen import guess_inputs, run_load
from clipper_nb.wire.protocol import POLICY_NAMES

if TYPE_CHECKING:
    from .live import LiveView

__all__ = ["LoadPanel", "context_dropdown", "policy_dropdown", "quiet", "replicas_slider", "slo_slider"]

#: SLO slider range (ms): 1 ms .. 10 s on a log scale.
SLO_RANGE_MS = (1.0, 10_000.0)
MAX_REPLICAS = 8
_STYLE = {"description_width": "initial"}


@contextlib.contextmanager
def quiet(widget: W.Widget) -> Iterator[None]:
    """Set a control's value from the server without acting on it."""
    widget._cnb_quiet = True  # type: ignore[attr-defined]
    try:
        yield
    finally:
        widget._cnb_quiet = False  # type: ignore[attr-defined]


def _on_user_change(widget: W.Widget, handler: Callable[[Any], None]) -> None:
    def observer(change: dict) -> None:
        if not getattr(widget, "_cnb_quiet", False) and change["new"] != change["old"]:
            handler(change["new"])

    widget.observe(observer, names="value")


def slo_slider(view: "LiveView", slo_ms: float) -> W.FloatLogSlider:
    """A log slider for the app's SLO; a release applies the new SLO at once."""
    lo, hi = SLO_RANGE_MS
    slider = W.FloatLogSlider(value=min(max(slo_ms, lo), hi), base=10, min=math.log10(lo), max=math.log10(hi),
                              step=0.01, description="SLO (ms)", readout_format=".3g", continuous_update=False,
                              style=_STYLE, layout=W.Layout(width="340px"))

    def apply(value: float) -> None:
        value = round(float(value), 3)
        view._act(f"SLO of {view.app} → {value:g} ms", view.client.set_slo, view.app, value,
                  after=lambda info: view._took_info(info))

    _on_user_change(slider, apply)
    return slider


def policy_dropdown(view: "LiveView", policy: str) -> W.Dropdown:
    """The app's selection policy (with the policy's default options)."""
    options = list(POLICY_NAMES)
    if policy not in options:
        options.append(policy)
    dd = W.Dropdown(options=options, value=policy, description="policy", style=_STYLE,
                    layout=W.Layout(width="200px"))
    _on_user_change(dd, lambda value: view._act(f"policy of {view.app} → {value}", view.client.set_policy,
                                                view.app, value, after=lambda info: view._took_info(info)))
    return dd


def replicas_slider(view: "LiveView", model: str, replicas: int) -> W.IntSlider:
    """Replicas of one linked model; scaling starts or stops worker processes."""
    s = W.IntSlider(value=min(max(replicas, 1), MAX_REPLICAS), min=1, max=MAX_REPLICAS, description=f"{model} replicas",
                    continuous_update=False, style=_STYLE, layout=W.Layout(width="300px"))
    _on_user_change(s, lambda value: view._act(f"scaling {model} to {value}", view.client.scale, model, int(value)))
    return s


def context_dropdown(view: "LiveView", context: str) -> W.Dropdown:
    """Whose selection weights to plot: the app-wide state or one context."""
    dd = W.Dropdown(options=_context_options([context]), value=context, description="weights of",
                    style=_STYLE, layout=W.Layout(width="260px"))
    _on_user_change(dd, view.set_context)
    return dd


def _context_options(contexts: Sequence[str]) -> list[tuple[str, str]]:
    others = sorted(c for c in set(contexts) if c != APP_CONTEXT)
    return [("the app (all queries)", APP_CONTEXT)] + [(f"context {c}", c) for c in others]


def update_contexts(dd: W.Dropdown, contexts: Sequence[str]) -> None:
    """Offer every context seen so far, keeping the current choice."""
    options = _context_options([*contexts, dd.value])
    if options != list(dd.options):
        with quiet(dd):
            value = dd.value
            dd.options = options
            dd.value = value


class LoadPanel:
    """A load generator toggle and a QPS slider for demos.

    Runs :func:`clipper_nb.kernel.loadgen.run_load` (open loop, Poisson arrivals) as a task on
    the kernel's loop with a ``stop`` event. Bounded: at most ``max_qps`` and
    ``max_s`` seconds a run; it stops with the view. Moving the slider while it runs
    restarts it at the new rate.
    """

    def __init__(self, view: "LiveView", inputs: Sequence[Any] | None = None, *, qps: int = 100,
                 max_qps: int = 1000, max_s: float = 300.0) -> None:
        self.view = view
        self.inputs = list(inputs) if inputs is not None else None
        self.max_s = max_s
        self.toggle = W.ToggleButton(value=False, description="load", icon="play", tooltip="send demo queries",
                                     layout=W.Layout(width="90px"))
        self.qps = W.IntSlider(value=min(qps, max_qps), min=1, max=max_qps, description="QPS",
                               continuous_update=False, style=_STYLE, layout=W.Layout(width="300px"))
        self.label = W.HTML()
        self.widget = W.HBox([self.toggle, self.qps, self.label])
        self._stop: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self.last_result: Any = None
        _on_user_change(self.toggle, lambda on: self.start() if on else self.stop())
        _on_user_change(self.qps, lambda _v: self.start() if self.running else None)

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def start(self, qps: int | None = None) -> None:
        """Start (or restart at the slider's rate) sending queries to the view's app."""
        if qps is not None:
            with quiet(self.qps):
                self.qps.value = min(max(int(qps), self.qps.min), self.qps.max)
        self.stop()
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self._show("the load generator needs a running event loop (a notebook kernel)", error=True)
            return
        with quiet(self.toggle):
            self.toggle.value, self.toggle.icon = True, "stop"
        self._stop = asyncio.Event()
        self._task = loop.create_task(self._run(self.qps.value, self._stop))

    def stop(self) -> None:
        """Stop sending; requests in flight finish (each bounded by its timeout)."""
        if self._stop is not None:
            self._stop.set()
        with quiet(self.toggle):
            self.toggle.value, self.toggle.icon = False, "play"

    async def wait(self) -> None:
        """Wait for the current run to end (after :meth:`stop` or its time limit)."""
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self, qps: int, stop: asyncio.Event) -> None:
        view = self.view
        try:
            inputs = self.inputs if self.inputs is not None else await asyncio.to_thread(self._guess_inputs)
            self._show(f"sending {qps} q/s…")
            result = await run_load(view.client.url, view.app, inputs, qps=float(qps), duration_s=self.max_s,
                                    stop=stop, token=getattr(view.client, "_token", None), timeout_s=5.0,
                                    slo_ms=view.info.get("slo_ms"), progress=self._progress)
        except Exception as e:  # noqa: BLE001 - shown next to the toggle
            self._show(f"load failed: {e}", error=True)
            result = None
        self.last_result = result
        if result is not None:
            err = f", first error: {result.first_error}" if result.first_error else ""
            self._show(f"sent {result.requests} queries at {result.qps:.0f} q/s, {result.errors} errors{err}",
                       error=bool(result.errors))
        if self._stop is stop:  # not replaced by a restart: the toggle shows "off"
            with quiet(self.toggle):
                self.toggle.value, self.toggle.icon = False, "play"

    def _progress(self, p: dict) -> None:
        self._show(f"{p['qps']:.0f} q/s sent · p99 {p['p99_ms']:.1f} ms · {p['errors']} errors")

    def _guess_inputs(self) -> list[Any]:
        """:func:`~clipper_nb.kernel.loadgen.guess_inputs` (random rows of the first linked
        model's input shape), or ``[[0.0]]`` when no model declares a shape."""
        rows = guess_inputs(self.view.client, self.view.info)
        return rows if rows is not None else [[0.0]]

    def _show(self, text: str, error: bool = False) -> None:
        colour = "#b00020" if error else "#555"
        self.label.value = f"<span style='font-size:12px;color:{colour}'>{html.escape(text)}</span>"

"""The machinery every live view shares: polling on the kernel's loop, plots, status.

A :class:`LiveView` is an ``ipywidgets.VBox`` that polls ``api/metrics`` every
``interval`` seconds from an asyncio task on the kernel's own event loop (ipykernel 7
no longer forwards comm messages sent from other threads, and Bokeh documents are not
thread-safe). Each blocking HTTP call runs in ``asyncio.to_thread`` so the kernel
stays responsive; the widgets are only touched back on the loop. Polling stops when
the view is closed (from Python or by the frontend) and with the kernel; a server
that goes away shows in the status line and polling carries on, slower, until it is
back.
"""

from __future__ import annotations

import asyncio
import atexit
import html
import logging
import time
import weakref
from typing import Any, Callable, ClassVar, Sequence

import ipywidgets as W

from clipper_nb.charts.figures import PlotSet
from clipper_nb.charts.header import header_html, placement
from clipper_nb.charts.series import APP_CONTEXT, Cursor, Tick, tick
from clipper_nb.kernel.client import Client, connect

__all__ = ["LiveView", "ensure_bokehjs"]

log = logging.getLogger("clipper_nb.widgets")

#: Seconds between app/model look-ups (SLO, policy, replicas): they change rarely,
#: and our own controls update the header at once.
INFO_EVERY_S = 2.0
#: Longest wait between polls while the server cannot be reached.
MAX_BACKOFF_S = 5.0
#: Per-request timeout of the polling connection: a poll must not hang the view.
POLL_TIMEOUT_S = 5.0

_bokehjs_loaded = False
_live: "weakref.WeakSet[LiveView]" = weakref.WeakSet()


def ensure_bokehjs() -> None:
    """Put BokehJS (inline: no CDN, works offline) on the notebook page, once per kernel.

    jupyter_bokeh's ``BokehModel`` expects ``window.Bokeh``; without it JupyterLab shows
    "Cannot read properties of undefined (reading 'require')". Outside IPython there
    is no page to put it on, so this does nothing.
    """
    global _bokehjs_loaded
    if _bokehjs_loaded:
        return
    try:
        from IPython import get_ipython
    except ImportError:
        return
    if get_ipython() is None:
        return
    from bokeh.io import output_notebook
    from bokeh.resources import INLINE

    output_notebook(INLINE, hide_banner=True)
    _bokehjs_loaded = True


def _bokeh_model(fig: Any) -> W.DOMWidget:
    """A jupyter_bokeh ``BokehModel`` showing ``fig``, closable twice (``__del__`` closes
    again after :meth:`LiveView.close`, and jupyter_bokeh 4.1 raises on that)."""
    from jupyter_bokeh import BokehModel

    class _BokehModel(BokehModel):
        def close(self) -> None:
            if self.comm is not None:
                super().close()

    return _BokehModel(fig)


def _polling_client(client: Client) -> Client:
    """A second connection for polling: ``requests.Session`` is not thread-safe, and a
    poll must not wait behind a slow control call (scaling takes seconds)."""
    # The token is read from the client's private field on purpose: it goes into the
    # new client's headers only, never into widget state or a message.
    return Client(client.url, token=getattr(client, "_token", None), timeout=POLL_TIMEOUT_S)


def _describe(exc: BaseException) -> str:
    text = getattr(exc, "message", None) or str(exc) or type(exc).__name__
    cause = getattr(exc, "cause", None)
    return f"{text} ({cause})" if cause else text


def _tz_offset_s() -> float:
    return float(time.localtime().tm_gmtoff)


def _shutdown_all() -> None:
    """At interpreter exit (the kernel shutting down): stop every view's load and polls."""
    for view in list(_live):
        try:
            view.stop(freeze=False)
        except Exception:  # noqa: BLE001 - the loop may be closed already; nothing left to stop
            pass


atexit.register(_shutdown_all)


class LiveView(W.VBox):
    """Base of :class:`~clipper_nb.widgets.Dashboard`, ``SLOTuner`` and ``WeightsView``.

    Subclasses set :attr:`plots_shown` and build their controls in :meth:`_build`.
    ``await view.refresh()`` runs one poll by hand (the task calls it every
    ``interval`` seconds); ``await view.settle()`` waits for control actions in flight.
    """

    plots_shown: ClassVar[Sequence[str]] = ()

    def __init__(self, app: str, client: Client | None = None, interval: float = 0.5, *,
                 context: str | None = None, history_s: int = 300, autostart: bool = True,
                 **layout: Any) -> None:
        if interval <= 0:
            raise ValueError(f"interval must be > 0 seconds, got {interval}")
        if client is None:
            client = connect()
        ensure_bokehjs()
        self.app = app
        self.client = client
        self.interval = float(interval)
        self.context = context or APP_CONTEXT
        self.ticks = 0  # polls that streamed something (tests and the header read it)
        self.last_tick: Tick | None = None
        self.info: dict[str, Any] = {}  # the app's description from api/apps/<app>
        self.model_info: dict[str, dict] = {}
        self._poll_client = _polling_client(client)
        # Read the app now: a wrong name or an unreachable server is the caller's to see
        # at once; later failures only show in the status line.
        self.info = client.app(app)
        self.model_info = {m: client.model(m) for m in self.info.get("models", [])}
        self._cursor = Cursor()
        self._info_at = -float("inf")
        self._task: asyncio.Task | None = None
        self._actions: set[asyncio.Task] = set()
        self._control_lock: asyncio.Lock | None = None
        self._closed = False
        self._error: str | None = None
        self.plots = PlotSet(self.plots_shown, history_s=history_s)
        self.bokeh_models = {name: _bokeh_model(fig) for name, fig in self.plots.figures.items()}
        self.header = W.HTML(self._header_html({}), layout=W.Layout(margin="0 0 4px 0"))
        self.status_line = W.HTML(layout=W.Layout(margin="2px 0 0 0"))
        children = self._build()
        super().__init__(children=children, **layout)
        self._set_status("starting…")
        _live.add(self)
        self.comm.on_close(lambda _msg: self.close())  # the frontend closed us: stop polling
        if autostart:
            self.start()

    # ------------------------------------------------------------------ to override
    def _build(self) -> list[W.Widget]:
        """The children of the view; subclasses add controls around the plots."""
        return [self.header, self._plot_grid(), self.status_line]

    def _on_tick(self, t: Tick) -> None:
        """Update controls and header from a tick (on the loop)."""
        self.header.value = self._header_html(t.numbers)

    # ------------------------------------------------------------------ layout helpers
    def _plot_grid(self, columns: int = 2) -> W.GridBox:
        boxes = list(self.bokeh_models.values())
        return W.GridBox(boxes, layout=W.Layout(grid_template_columns=f"repeat({min(columns, len(boxes))}, "
                                                                      "max-content)", grid_gap="4px"))

    def _header_html(self, numbers: dict[str, Any]) -> str:
        """The page's header (:func:`clipper_nb.charts.header.header_html`), with the
        replicas of this app's models as the view last described them."""
        models = list(self.model_info.values())
        return header_html(self.app, {
            **numbers, "slo_ms": self.info.get("slo_ms", numbers.get("slo_ms")), "policy": self.info.get("policy"),
            **({"replicas_up": sum(m.get("replicas_up", 0) for m in models),
                "replicas": sum(m.get("replicas", 0) for m in models), "placement": placement(models)}
               if models else {}),
        })

    def _set_status(self, text: str, error: bool = False) -> None:
        colour = "#b00020" if error else "#2e7d32"
        mark = "⚠" if error else "●"
        self.status_line.value = (f"<span style='font-family:sans-serif;font-size:12px;color:{colour}'>{mark} "
                                  f"{html.escape(text)}</span>")

    # ------------------------------------------------------------------ polling
    def start(self) -> None:
        """Start polling on the running event loop (the kernel's, in a notebook)."""
        if self._closed or (self._task is not None and not self._task.done()):
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self._set_status("no running event loop here: call `await view.refresh()` to update", error=True)
            return
        self._task = loop.create_task(self._poll_forever(), name=f"clipper-nb {type(self).__name__} {self.app}")

    async def _poll_forever(self) -> None:
        delay = self.interval
        while not self._closed:
            try:
                await self.refresh()
                delay = self.interval
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - a dashboard reports, it does not crash
                log.debug("poll of %s failed", self.app, exc_info=True)
                self._error = _describe(e)
                self._set_status(f"cannot update from {self.client.url}: {self._error}; retrying", error=True)
                delay = min(max(delay * 2, 1.0), MAX_BACKOFF_S)
            await asyncio.sleep(delay)

    async def refresh(self) -> Tick:
        """Poll once: fetch new metrics (and, every few seconds, the app's settings) and
        stream them into the plots. Raises what the client raised when the server fails."""
        if time.monotonic() - self._info_at >= INFO_EVERY_S:
            await self._fetch_info()
        snapshot = await asyncio.to_thread(self._poll_client.metrics, self._cursor.since)
        t = tick(snapshot, self.app, self._cursor, slo_ms=self.info.get("slo_ms"),
                 models=self.info.get("models"), context=self.context, tz_offset_s=_tz_offset_s())
        if self._closed:
            return t
        self._cursor = t.cursor
        if self.plots.stream(t.streams):
            self.ticks += 1
        self.last_tick = t
        self._on_tick(t)
        if self.app not in snapshot.get("apps", {}) and "name" in self.info:
            self._set_status("live · no queries yet: send some (or switch on the load generator)")
        else:
            self._set_status(f"live · updated {time.strftime('%H:%M:%S')} from {self.client.url}")
        self._error = None
        return t

    async def _fetch_info(self) -> None:
        self.info = await asyncio.to_thread(self._poll_client.app, self.app)
        infos = {}
        for m in self.info.get("models", []):
            infos[m] = await asyncio.to_thread(self._poll_client.model, m)
        self.model_info = infos
        self._info_at = time.monotonic()

    # ------------------------------------------------------------------ control actions
    def _act(self, what: str, fn: Callable[..., Any], *args: Any, after: Callable[[Any], None] | None = None) -> None:
        """Run a blocking client call for a control, off the loop, one at a time."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        if loop is None:  # no loop (a plain script): act synchronously
            try:
                result = fn(*args)
            except Exception as e:  # noqa: BLE001
                self._set_status(f"{what} failed: {_describe(e)}", error=True)
                return
            if after is not None:
                after(result)
            return
        task = loop.create_task(self._run_action(what, fn, args, after))
        self._actions.add(task)
        task.add_done_callback(self._actions.discard)

    async def _run_action(self, what: str, fn: Callable[..., Any], args: tuple,
                          after: Callable[[Any], None] | None) -> None:
        if self._control_lock is None:
            self._control_lock = asyncio.Lock()
        async with self._control_lock:
            self._set_status(f"{what}…")
            try:
                result = await asyncio.to_thread(fn, *args)
            except Exception as e:  # noqa: BLE001 - shown, not raised into the comm handler
                self._set_status(f"{what} failed: {_describe(e)}", error=True)
                return
            if after is not None:
                after(result)
            self._info_at = -float("inf")  # show the change at the next poll
            self._set_status(f"{what}: done")

    def _took_info(self, info: dict) -> None:
        """An app description a control got back: show it without waiting for a poll."""
        if isinstance(info, dict) and info.get("name") == self.app:
            self.info = info
            self.header.value = self._header_html(self.last_tick.numbers if self.last_tick else {})

    async def settle(self, timeout: float = 60.0) -> None:
        """Wait until every control action started so far has finished."""
        if self._actions:
            await asyncio.wait_for(asyncio.gather(*list(self._actions), return_exceptions=True), timeout)

    def set_context(self, context: str | None) -> None:
        """Show the selection weights of ``context`` (None: the app-wide state)."""
        context = context or APP_CONTEXT
        if context == self.context:
            return
        self.context = context
        self.plots.clear("weights/")
        self._cursor = self._cursor.forget("weights/")

    # ------------------------------------------------------------------ lifecycle
    def stop(self, freeze: bool = True) -> None:
        """Stop polling (and any load this view runs). With ``freeze`` the plots' data is
        written into the widgets' state, so a saved notebook keeps the last picture."""
        if self._task is not None:
            self._task.cancel()
            self._task = None
        for task in list(self._actions):
            task.cancel()
        self._stop_extras()
        if freeze and not self._closed:
            for bm, fig in zip(self.bokeh_models.values(), self.plots.figures.values()):
                bm.update_from_model(fig)
            self._set_status("stopped")

    def _stop_extras(self) -> None:
        """Subclasses stop what else they run (the load generator)."""

    def close(self) -> None:
        """Stop polling and close this view and every widget inside it."""
        if getattr(self, "_closed", True):
            super().close()
            return
        self.stop(freeze=False)
        self._closed = True
        _live.discard(self)
        for child in self._descendants():
            child.close()
        super().close()

    def _descendants(self) -> list[W.Widget]:
        """Every widget inside this view, with their layout and style widgets (each
        holds a comm of its own; ipywidgets' ``close`` leaves them open)."""
        out, todo = [], [*self.children, self.layout]
        while todo:
            w = todo.pop()
            out.append(w)
            todo.extend(getattr(w, "children", ()))
            todo.extend(x for x in (getattr(w, "layout", None), getattr(w, "style", None))
                        if isinstance(x, W.Widget) and x is not w)
        return out

    def __repr__(self) -> str:  # never the client's token: only its URL
        return f"<{type(self).__name__} app={self.app!r} server={self.client.url}>"

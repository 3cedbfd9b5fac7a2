"""Live widgets for clipper-nb: ``Dashboard``, ``SLOTuner`` and ``WeightsView``.

>>> from clipper_nb.widgets import Dashboard
>>> Dashboard("digits")        # in a notebook; client defaults to clipper_nb.connect()  # doctest: +SKIP

The widgets are kernel side: they talk to the server over HTTP only (through
:class:`clipper_nb.kernel.client.Client`). The pure parts they share with the server's
standalone page — the per-tick series and the Bokeh figures — live in
:mod:`clipper_nb.charts`.
"""

from __future__ import annotations

from .views import Dashboard, SLOTuner, WeightsView

__all__ = ["Dashboard", "SLOTuner", "WeightsView"]

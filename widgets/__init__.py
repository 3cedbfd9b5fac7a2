"""Live widgets for clipper-nb: ``Dashboard``, ``SLOTuner`` and ``WeightsView``.

>>> from clipper_nb.widgets import Dashboard
>>> Dashboard("digits")        # in a notebook; client defaults to clipper_nb.connect()  # doctest: +SKIP

Imports are lazy: the standalone dashboard page (``clipper_nb.frontend.dashboard``) uses the
Bokeh parts (:mod:`.plots`, :mod:`.ticks`) inside the server, without ipywidgets.
"""

from __future__ import annotations

from typing import Any

__all__ = ["Dashboard", "SLOTuner", "WeightsView"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from . import views

        value = getattr(views, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'clipper_nb.widgets' has no attribute {name!r}")

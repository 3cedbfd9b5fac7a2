"""The dashboards' pure parts, shared by the server's standalone page and the notebook widgets.

* :mod:`.series` — one dashboard tick: a ``/api/metrics`` snapshot and a cursor in,
  the points to stream, the header's numbers and the next cursor out (no I/O, no Bokeh);
* :mod:`.figures` — the Bokeh figures and data sources those points stream into.

Nothing here does I/O or imports a server or kernel layer (only ``clipper_nb.wire``
may be used), so ``clipper_nb.frontend`` and ``clipper_nb.widgets`` can both import it.
Importing this package does not import Bokeh: ``figures`` does, when imported.
"""

"""The engine: the facade over both layers, its registry of apps and models, store and metrics.

Configured by :class:`clipper_nb.config.ClipperNB`::

    engine = Engine(ClipperNB(state_dir="/tmp/state"))
"""

from clipper_nb.engine.facade import Engine

__all__ = ["Engine"]

"""The engine: the facade over both layers, its registry of apps and models, store and metrics."""

from clipper_nb.engine.facade import Engine, EngineConfig

__all__ = ["Engine", "EngineConfig"]

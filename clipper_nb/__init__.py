"""clipper-nb: Clipper prediction serving (NSDI 2017), rebuilt for notebooks.

The public surface::

    import clipper_nb
    c = clipper_nb.connect(url, token=...)     # a Client
    c.deploy(model, "name", app="my-app", slo_ms=20)
    c.predict("my-app", x)

and, in IPython, ``%load_ext clipper_nb`` for the ``%clipper`` magics. Imports are
lazy so that a worker process (``python -m clipper_nb.containers.worker``) pays for none of it.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

__all__ = [
    "BadInput", "ClipperError", "Client", "Conflict", "DeployError", "ClipperNB", "Engine", "ModelError",
    "NotFound", "Server", "Unauthorized", "Unavailable", "UserError", "__version__", "connect",
    "load_ipython_extension", "unload_ipython_extension",
]

_LAZY = {
    "Client": ("kernel.client", "Client"), "connect": ("kernel.client", "connect"),
    "Engine": ("engine.facade", "Engine"), "ClipperNB": ("config", "ClipperNB"),
    "Server": ("frontend.server", "Server"),
    **{name: ("errors", name) for name in ("BadInput", "ClipperError", "Conflict", "DeployError", "ModelError",
                                           "NotFound", "Unauthorized", "Unavailable", "UserError")},
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        value = getattr(importlib.import_module(f"{__name__}.{module}"), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'clipper_nb' has no attribute {name!r}")


def load_ipython_extension(ipython: Any) -> None:
    """``%load_ext clipper_nb``: register the ``%clipper`` magics."""
    from clipper_nb.kernel.magics import load_ipython_extension as load

    load(ipython)


def unload_ipython_extension(ipython: Any) -> None:
    pass


def _jupyter_server_extension_points() -> list[dict]:
    # Imported here, not at module level: workers and plain clients never pay for
    # jupyter_server. The "app" key makes Jupyter call ClipperNBExtension.stop_extension on shutdown.
    from .server_ext import ClipperNBExtension

    return [{"module": "clipper_nb.server_ext", "app": ClipperNBExtension}]

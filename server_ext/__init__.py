"""The Jupyter server extension (``import clipper_nb.server_ext``).

Enabled on install by ``etc/jupyter/jupyter_server_config.d/clipper_nb.json``; check
with ``jupyter server extension list``. The APIs of ``clipper-nb serve`` are mounted
under ``{base_url}clipper/`` behind Jupyter's authentication; the knobs are
:class:`~clipper_nb.config.ClipperNB`'s (``c.ClipperNB.state_dir``, ...), the extension
itself is :class:`ClipperNBExtension`.
"""

from __future__ import annotations

from .app import ClipperNBExtension

__all__ = ["ClipperNBExtension"]


def _jupyter_server_extension_points() -> list[dict]:
    return [{"module": "clipper_nb.server_ext", "app": ClipperNBExtension}]

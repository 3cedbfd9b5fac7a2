"""Picking a TCP port, shared by whoever starts a listener: ``clipper-nb serve``, ``%clipper start``, tests.

It lives in the bottom layer because both the frontend and the kernel side need it and
neither may import the other.
"""

from __future__ import annotations

import socket

__all__ = ["free_port"]


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` that nothing listens on right now.

    The port is only free when asked: another process may take it before the caller
    binds it, so a caller that must not lose that race binds port 0 itself.

    >>> 0 < free_port() < 65536
    True
    """
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]

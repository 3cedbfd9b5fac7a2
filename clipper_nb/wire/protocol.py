"""Names and constants both sides of a boundary must agree on.

The worker protocol's message kinds and heartbeat period (frontend <-> model
containers), and the selection policies' names (the server's selection layer <->
the kernel's widgets and magics, which offer them in a menu).
"""

from __future__ import annotations

__all__ = ["HEARTBEAT_S", "POLICY_NAMES"]

#: Seconds between heartbeats, each way, between the frontend and a worker.
HEARTBEAT_S = 0.5

#: Every selection policy an application may use (``clipper_nb.selection.policies.POLICIES``
#: has exactly these keys; a test holds the two together).
POLICY_NAMES = ("single", "exp3", "exp4", "epsilon_greedy", "thompson")

"""Names and constants both sides of a boundary must agree on.

The worker protocol's message kinds and heartbeat period (frontend <-> model
containers), and the selection policies' names (the server's selection layer <->
the kernel's widgets and magics, which offer them in a menu).

Worker protocol (ZeroMQ DEALER in the worker, ROUTER at the frontend; every message
is multipart and its first frame is one of the kinds below):

=============================================  ==========================================
worker -> frontend                             frontend -> worker
=============================================  ==========================================
``HELLO, {pid, device, versions}``             ``BATCH, id, header, payload``
``LOAD_ERROR, {error, traceback}``             ``HEARTBEAT``  (the frontend is alive)
``RESULT, id, {n, compute_ms}, hdr, data``     ``STOP``
``ERROR, id, {error, traceback}``
``HEARTBEAT``  (idle and alive)
=============================================  ==========================================
"""

from __future__ import annotations

__all__ = ["BATCH", "ERROR", "HEARTBEAT", "HEARTBEAT_S", "HELLO", "LOAD_ERROR", "POLICY_NAMES", "RESULT",
           "STOP"]

#: Seconds between heartbeats, each way, between the frontend and a worker.
HEARTBEAT_S = 0.5

# -- worker -> frontend
#: the model loaded: ``{pid, device, versions}`` follows
HELLO = b"hello"
#: the model cannot load: ``{error, traceback}`` follows; the worker then exits
LOAD_ERROR = b"load_error"
#: a batch's outputs: ``id, {n, compute_ms}, header, payload`` follow
RESULT = b"result"
#: the model raised on a batch: ``id, {error, traceback}`` follow
ERROR = b"error"

# -- frontend -> worker
#: a batch to run: ``id, header, payload`` follow (``clipper_nb.wire.codec`` frames)
BATCH = b"batch"
#: exit now
STOP = b"stop"

# -- both ways
#: alive (sent at least every ``HEARTBEAT_S``)
HEARTBEAT = b"hb"

#: Every selection policy an application may use (``clipper_nb.selection.policies.POLICIES``
#: has exactly these keys; a test holds the two together).
POLICY_NAMES = ("single", "exp3", "exp4", "epsilon_greedy", "thompson")

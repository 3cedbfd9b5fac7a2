"""The wire format: what crosses a process boundary, shared by the frontend and the containers.

``codec`` (Clipper's input types <-> numpy batches and multipart frames), ``artifact``
(packaging a model for a worker) and ``protocol`` (message kinds and shared constants).
Imports nothing above it.
"""

"""Model containers: the worker process, its fork server, the ZeroMQ transport, and the
process backend that puts them behind the replica-backend interface.

:class:`~clipper_nb.containers.process_backend.ProcessBackend` is the default
implementation of :class:`clipper_nb.abstraction.backend.ReplicaBackend`. This package
imports only :mod:`clipper_nb.abstraction.backend`, :mod:`clipper_nb.wire` and
:mod:`clipper_nb.errors` from the rest of clipper-nb.
"""

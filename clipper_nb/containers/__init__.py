"""Model containers: the worker process, its fork server, and the ZeroMQ transport.

The process backend here is the default implementation of the abstraction layer's
replica-backend interface (:mod:`clipper_nb.abstraction.backend`).
"""

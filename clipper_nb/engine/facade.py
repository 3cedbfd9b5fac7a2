"""The Engine: applications, models, replicas and the query path. Plain asyncio.

The Engine knows nothing of HTTP or Jupyter: ``clipper-nb serve`` and the Jupyter
server extension each run one on their event loop and put thin handlers in front.
Blocking work (SQLite, artifact files) goes to a one-thread executor; models run on
replica backends (worker processes by default); so nothing here blocks the loop.

The Engine is the lifecycle (start, restore, the selection-state flush loop, stop)
and a facade over its rooms, each of which fits one reading:

* :mod:`clipper_nb.engine.registry`: apps, models, versions; app management;
* :mod:`clipper_nb.engine.models`: deploy, scale, roll back, undeploy, status;
* :mod:`clipper_nb.engine.query`: predict, predict_batch, feedback, selection;
* :mod:`clipper_nb.selection.state`: what the selection layer learned, per app and context.
"""

from __future__ import annotations

import asyncio
import os
import concurrent.futures
import logging
from typing import Any

from clipper_nb.abstraction.backend import ReplicaBackend
from clipper_nb.config import ClipperNB
from clipper_nb.containers.process_backend import ProcessBackend
from clipper_nb.containers.ray_backend import RayBackend
from clipper_nb.engine.metrics import Metrics
from clipper_nb.engine.models import DEFAULT_BACKEND, ModelManager
from clipper_nb.engine.query import QueryPath
from clipper_nb.engine.registry import App, AppManager, Registry
from clipper_nb.engine.store import Store
from clipper_nb.errors import Unavailable
from clipper_nb.selection.state import SelectionStates

__all__ = ["App", "Engine"]

log = logging.getLogger("clipper_nb.engine.facade")

#: Seconds between two writes of the selection states changed by feedback.
FLUSH_PERIOD_S = 1.0
#: Feedbacks arriving within this window share one transaction (answered once it commits).
GROUP_COMMIT_S = 0.002


class Engine:
    """Owns every app, model version and replica of one clipper-nb frontend.

    ``backends`` maps a backend name to a :class:`ReplicaBackend`; by default one
    ``"process"`` backend (worker processes). A model's spec may name another; the
    ``"ray"`` backend (replicas as Ray actors) joins ``backends`` the first time a model
    asks for it, by its own ``backend="ray"`` or the ``default_backend`` knob.

    >>> engine = Engine(ClipperNB(state_dir="/tmp/state"))   # doctest: +SKIP
    >>> await engine.start(); await engine.predict("digits", [0.1] * 64)
    """

    def __init__(self, config: ClipperNB, metrics: Any = None,
                 backends: dict[str, ReplicaBackend] | None = None) -> None:
        self.config = config
        self.metrics = metrics if metrics is not None else Metrics()
        self.store = Store(config.state_dir)
        if backends is None:
            backends = {DEFAULT_BACKEND: ProcessBackend(
                fork_server=config.fork_server, tag=self.store.state_dir, memory_limit_mb=config.worker_memory_mb,
                max_message_bytes=int(config.worker_message_mb * (1 << 20)))}
        self.backends: dict[str, ReplicaBackend] = backends
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="clipper-store")
        self._lock = asyncio.Lock()  # one management change at a time
        self._tasks: set[asyncio.Task] = set()
        self._commit: asyncio.Future | None = None  # the group commit feedbacks are waiting for
        #: one flush at a time: a group commit that finds nothing dirty because the flush
        #: loop took the rows must still wait until they are written (or not)
        self._flushing = asyncio.Lock()
        self.ready = asyncio.Event()
        self.registry = Registry()
        self.states = SelectionStates(config.max_contexts)
        self.model_admin = ModelManager(self.registry, self.store, self._db, self._lock, config, self.metrics,
                                        self.backends, self._spawn, make_backend=self._make_backend)
        self.app_admin = AppManager(self.registry, self.states, self.store, self._db, self._lock, self.metrics,
                                    config.default_slo_ms, self.model_admin.retune)
        self.queries = QueryPath(self.registry, self.states, self.model_admin.running, self.metrics, self.store,
                                 self._db, config.max_batch_rows)
        # The rooms' dicts, never rebound: what handlers, widgets and tests read.
        self.apps: dict[str, App] = self.registry.apps
        self.models: dict[str, dict] = self.registry.models
        self.versions: dict[str, dict[str, dict]] = self.registry.versions
        self.policies = self.registry.policies
        self.deployments = self.model_admin.running
        self.selection_states = self.states.states
        self.restore_errors: dict[str, str] = self.model_admin.restore_errors

    # ================================================================== lifecycle
    async def start(self, wait: bool = True) -> None:
        """Start the backends, open the store, bring back every app and model, start their replicas."""
        for backend in self.backends.values():
            await backend.start()
        state = await self._db(self.store.load)
        self.registry.load(state)
        for app_name, context, saved in state["selection"]:
            if app_name in self.apps:
                self.states.load(app_name, context, saved)
        self._spawn(self._flush_loop())
        restore = self._spawn(self._restore())
        if wait:
            await restore

    async def _restore(self) -> None:
        await self.model_admin.restore()
        self.ready.set()

    async def stop(self) -> None:
        """Stop every replica (no worker outlives this), the backends, and flush state to disk."""
        await self.model_admin.stop_all()
        for t in list(self._tasks):
            t.cancel()
        await self._flush_selection()
        await asyncio.gather(*(b.close() for b in self.backends.values()), return_exceptions=True)
        await self._db(self.store.close)
        self._executor.shutdown(wait=True)

    def _make_backend(self, name: str) -> ReplicaBackend:
        """A backend created the first time a model asks for it (``ray``: ``ray.init`` is slow,
        and Ray is an optional extra); the model manager starts it and adds it to ``backends``."""
        if name == "ray":
            config = self.config
            return RayBackend(address=config.ray_address, num_cpus=config.ray_num_cpus, tag=self.store.state_dir)
        raise ValueError(f"no replica backend {name!r} can be created")

    def _spawn(self, coro) -> asyncio.Task:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _db(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def _flush_loop(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_PERIOD_S)
            try:
                await self._flush_selection()
            except Exception:
                log.exception("could not save selection state")

    async def _flush_selection(self) -> None:
        """Save the states and choice records changed since the last flush; delete the
        records dropped since (both taken at once, written in that order)."""
        async with self._flushing:
            await self._flush_taken()

    async def _flush_taken(self) -> None:
        rows = self.states.take_dirty()
        gone = self.states.take_deleted()
        if rows:
            try:
                await self._db(self.store.save_selection, rows)
            except BaseException:
                self.states.keep_dirty(rows)  # written by a later flush once the store recovers
                raise
        for app_name, keys in gone.items():
            await self._db(self.store.delete_contexts, app_name, keys)

    # ================================================================== applications
    async def register_app(self, name: str, input_type: str = "floats", default_output: Any = None,
                           slo_ms: float | None = None, policy: str = "single", policy_options: dict | None = None,
                           models: list[str] | None = None, **options: Any) -> dict:
        """Create an application. Raises ``Conflict`` when it exists."""
        return await self.app_admin.register_app(name, input_type, default_output, slo_ms, policy, policy_options,
                                                 models, **options)

    async def update_app(self, name: str, **changes: Any) -> dict:
        """Change an app at run time: SLO, policy and its options, default output, cache, ..."""
        return await self.app_admin.update_app(name, **changes)

    async def delete_app(self, name: str) -> None:
        await self.app_admin.delete_app(name)

    async def link(self, app_name: str, model: str) -> dict:
        return await self.app_admin.link(app_name, model)

    async def unlink(self, app_name: str, model: str) -> dict:
        return await self.app_admin.unlink(app_name, model)

    def describe_app(self, name: str) -> dict:
        return self.registry.describe_app(name)

    def list_apps(self) -> list[dict]:
        return self.registry.list_apps()

    # ================================================================== models
    async def deploy(self, name: str, payload: bytes, meta: dict, **options: Any) -> dict:
        """Store an artifact as a new version, start its replicas, make it current
        (options: see :meth:`ModelManager.deploy`)."""
        return await self.model_admin.deploy(name, payload, meta, **options)

    async def scale(self, name: str, replicas: int) -> dict:
        return await self.model_admin.scale(name, replicas)

    async def rollback(self, name: str, version: str) -> dict:
        return await self.model_admin.rollback(name, version)

    async def undeploy(self, name: str) -> None:
        """Stop a model's replicas, unlink it from every app and delete its versions."""
        await self.model_admin.undeploy(name)

    def describe_model(self, name: str) -> dict:
        return self.model_admin.describe_model(name)

    def list_models(self) -> list[dict]:
        return self.model_admin.list_models()

    def status(self) -> list[dict]:
        """One row per replica."""
        return self.model_admin.status()

    def worker_pids(self) -> list[int]:
        return self.model_admin.worker_pids()

    async def model_logs(self, name: str, tail_bytes: int = 20_000) -> dict:
        """The end of each replica log of ``name``'s current version: what the model printed
        and its tracebacks (``{"model", "version", "replicas": [{"replica", "log"}]}``).
        Replicas on Ray log on their nodes instead (Ray's own logs)."""
        spec = self.registry.require_model(name)
        version = spec.get("current_version")
        prefix = f"{name}-{version}-"
        return {"model": name, "version": version,
                "replicas": await self._db(_read_logs, self.store.log_dir, prefix, tail_bytes)}

    # ================================================================== queries and feedback
    async def predict(self, app_name: str, x: Any, context: str | None = None, *,
                      arrival: float | None = None) -> dict:
        """Answer one query (Clipper's ``{"query_id", "output", "default", ...}``); its deadline
        runs from ``arrival`` (event-loop time the request reached the server; default: now)."""
        return await self.queries.predict(app_name, x, context, arrival=arrival)

    async def predict_batch(self, app_name: str, xs: list, context: str | None = None, *,
                            arrival: float | None = None) -> list[dict]:
        """Answer each row as its own query; all rows share the arrival time and deadline."""
        return await self.queries.predict_batch(app_name, xs, context, arrival=arrival)

    async def feedback(self, app_name: str, x: Any, label: Any, context: str | None = None) -> dict:
        """Clipper's ``update``: learn from ``label`` for ``x`` (see :meth:`QueryPath.feedback`).

        Answered once the new weights are on disk: the feedbacks of a few milliseconds share
        one transaction (group commit). When the store cannot write, this raises
        :class:`Unavailable` (503) saying so: the update stays in memory (the weights have
        learnt from it) and is written by the next flush that succeeds."""
        result = await self.queries.feedback(app_name, x, label, context)
        try:
            await self._commit_soon()
        except Unavailable as e:
            raise Unavailable(f"the feedback was learnt from but not yet saved: {e.message}",
                              "it stays in memory and is saved by the next flush that succeeds (once a second); "
                              "sending it again would count it twice") from e
        return result

    async def _commit_soon(self) -> None:
        """Wait for a flush that starts within ``GROUP_COMMIT_S`` (one for every caller meanwhile)."""
        if self._commit is None:
            self._commit = asyncio.get_running_loop().create_future()
            self._spawn(self._group_commit())
        await asyncio.shield(self._commit)

    async def _group_commit(self) -> None:
        await asyncio.sleep(GROUP_COMMIT_S)
        done, self._commit = self._commit, None
        try:
            await self._flush_selection()
        except Exception as e:  # noqa: BLE001 - every waiting feedback gets the store's error
            if done is not None and not done.done():
                done.set_exception(e)
                done.exception()  # retrieved: the callers may have gone
            return
        if done is not None and not done.done():
            done.set_result(None)

    def selection(self, app_name: str, context: str | None = None) -> dict:
        return self.queries.selection(app_name, context)


def _read_logs(log_dir: str, prefix: str, tail_bytes: int) -> list[dict]:
    """``[{"replica": index, "log": last bytes}]`` of the logs ``<prefix><index>.log``."""
    found = []
    for entry in sorted(os.listdir(log_dir)):
        index = entry[len(prefix):-len(".log")] if entry.startswith(prefix) and entry.endswith(".log") else ""
        if index.isdigit():
            with open(os.path.join(log_dir, entry), "rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - tail_bytes))
                found.append({"replica": int(index), "log": f.read().decode(errors="replace")})
    return sorted(found, key=lambda r: r["replica"])

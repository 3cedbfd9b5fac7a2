"""Model lifecycle: deploy a version, swap it in, scale, roll back, undeploy, report status.

:class:`ModelManager` owns the running :class:`~clipper_nb.abstraction.model_version.ModelVersion`
of each model (``running``) and the old versions still draining after a swap. A new
version starts its replicas on the model's replica backend (``"process"`` unless the
model spec names another) while the previous version keeps serving; only once every
new replica has loaded does it become current, and the old one stops when its queue
is empty. Every change is saved through the engine's store executor, under the
engine's management lock.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

from clipper_nb.abstraction import batching
from clipper_nb.abstraction.backend import ReplicaBackend
from clipper_nb.abstraction.model_version import ModelVersion, ModelVersionConfig
from clipper_nb.config import ClipperNB
from clipper_nb.engine.registry import (
    App,
    Db,
    Registry,
    _check_int,
    _check_number,
    check_slo,
    make_policy,
)
from clipper_nb.engine.store import Store, check_name
from clipper_nb.errors import BadInput, ClipperError, Conflict, NotFound, Unavailable
from clipper_nb.wire import artifact as artifact_mod
from clipper_nb.wire.codec import check_input_type

__all__ = ["DEFAULT_BACKEND", "LAZY_BACKENDS", "PRELOADABLE", "BackendPool", "ModelManager"]

log = logging.getLogger("clipper_nb.engine.models")

#: The replica backend of a model spec without ``"backend"`` (the ``default_backend`` knob's default).
DEFAULT_BACKEND = "process"
#: Backends the engine creates the first time a model asks for one (Ray: ``ray.init`` is slow,
#: and Ray an optional extra).
LAZY_BACKENDS = ("ray",)

#: Libraries whose modules the fork server may import ahead of the workers: installed,
#: side-effect free, and the bulk of a worker's start-up time.
PRELOADABLE = ("sklearn", "torch", "scipy", "pandas", "xgboost", "lightgbm")

#: What a stored version spec keeps of the artifact's meta.
_VERSION_META = ("kind", "method", "input_shape", "feature_names", "object_type", "versions", "python_executable",
                 "cwd", "pickled_by_value")

#: An old version drains its queue for at most this many 0.1 s rounds before it stops.
_RETIRE_ROUNDS = 50


class ModelManager:
    """Deploy, scale, roll back and undeploy models; ``running`` maps a model to its current version."""

    def __init__(self, registry: Registry, store: Store, db: Db, lock: asyncio.Lock, config: ClipperNB,
                 metrics: Any, backends: dict[str, ReplicaBackend],
                 spawn: Callable[[Awaitable[Any]], asyncio.Task],
                 make_backend: Callable[[str], ReplicaBackend] | None = None) -> None:
        self.registry = registry
        self.store = store
        self._db = db
        self._lock = lock
        self.config = config
        self.metrics = metrics
        self.backends = backends
        self._spawn = spawn
        self.pool = BackendPool(backends, config, make_backend)
        self.running: dict[str, ModelVersion] = {}
        self.retiring: set[ModelVersion] = set()
        #: model -> why its stored version could not start at restore
        self.restore_errors: dict[str, str] = {}

    # ---------------------------------------------------------------- start and stop
    async def restore(self) -> None:
        """Start the current version of every stored model; a failure is kept in ``restore_errors``."""
        # Under the management lock: a deploy or undeploy arriving while restore runs
        # waits, instead of being overwritten by the restored (older) version.
        async with self._lock:
            await asyncio.gather(*(self._restore_one(s) for s in list(self.registry.models.values())))

    async def _restore_one(self, spec: dict) -> None:
        vspec = self.registry.versions.get(spec["name"], {}).get(spec["current_version"])
        if vspec is None:
            return
        version = None
        try:
            version = await self._new_version(spec, vspec)
            await version.start(spec["replicas"])
        except ClipperError as e:
            self.restore_errors[spec["name"]] = e.message
            log.error("could not restore model %s: %s", spec["name"], e.message)
            if version is not None:
                await version.stop()
            return
        self.running[spec["name"]] = version

    async def stop_all(self) -> None:
        """Stop every running version, old ones still draining included."""
        versions = [*self.running.values(), *self.retiring]
        await asyncio.gather(*(v.stop() for v in versions), return_exceptions=True)
        self.running.clear()

    # ---------------------------------------------------------------- deploy
    async def deploy(self, name: str, payload: bytes, meta: dict, *, version: str | None = None,
                     replicas: int | None = None, device: str = "auto", batch_size: int | None = None,
                     max_batch_size: int | None = None, batch_delay_ms: float | None = None,
                     app: str | None = None, slo_ms: float | None = None, input_type: str | None = None,
                     default_output: Any = None, backend: str | None = None,
                     resources: dict[str, float] | None = None) -> dict:
        """Store an artifact as a new version, start its replicas, make it current.

        The previous version keeps serving until every new replica has loaded; a worker
        that cannot load the artifact fails the deploy with the cause. ``backend``: the
        replica backend (default: the model's current one, else the ``default_backend``
        knob); ``resources``: custom Ray resources each replica asks for.
        """
        check_name("model", name)
        options = self._check_deploy(name, meta, replicas=replicas, device=device, batch_size=batch_size,
                                     max_batch_size=max_batch_size, batch_delay_ms=batch_delay_ms, backend=backend,
                                     app=app, slo_ms=slo_ms, input_type=input_type)
        options["resources"] = self.pool.check_placement(name, backend, self.registry.models.get(name), resources)
        slo_ms = options.pop("slo_ms")
        async with self._lock:
            spec = _model_spec(self.registry.models.get(name), name, options)
            await self.pool.for_spec(spec)  # a backend that cannot start fails the deploy before it is stored
            versions = self.registry.versions.setdefault(name, {})
            version = _next_version(name, versions, version)
            vspec = _version_spec(name, version, meta, input_type)
            # The worker reads the artifact's meta: a records model gets DataFrames.
            await self._db(self.store.write_artifact, name, version, payload, {**meta, "input_type": vspec["input_type"]})
            target, current = (None, None) if app is None else \
                self._linked_app(app, name, vspec["input_type"], slo_ms, default_output)
            try:
                await self._activate(spec, vspec, new_version=True, app=target)
            except BaseException:
                with contextlib.suppress(Unavailable):  # the store's trouble is what the caller hears of
                    await self._db(self.store.delete_version, name, version)
                if not versions:
                    self.registry.versions.pop(name, None)
                raise
            created = None if target is None else self._serve_linked(target, current)
            self.retune([name])
            described = self.describe_model(name)
            if created is not None:  # a typo (app="digit") must not create an app silently
                described["app_created"] = created
            return described

    def _check_deploy(self, name: str, meta: dict, *, replicas: int | None, device: str,
                      batch_size: int | None, max_batch_size: int | None, batch_delay_ms: float | None,
                      backend: str | None, app: str | None, slo_ms: float | None, input_type: str | None) -> dict:
        """The deploy's settings, checked before anything is stored: the model spec's
        (``None``: keep the model's current one) and the app's ``slo_ms``."""
        if replicas is None:  # a new version keeps the running one's replica count
            replicas = self.registry.models[name]["replicas"] if name in self.registry.models else 1
        options: dict[str, Any] = {"replicas": _check_int("replicas", replicas, 0, 64), "device": _check_device(device)}
        if batch_size is not None:
            batch_size = _check_int("batch_size", batch_size, 1, self.config.max_batch_rows)
        if max_batch_size is not None:
            max_batch_size = _check_int("max_batch_size", max_batch_size, 1, batching.DEFAULT_MAX_CAP)
        if meta.get("kind") not in artifact_mod.KINDS:
            raise BadInput(f"artifact kind must be one of {artifact_mod.KINDS}", "package the model with clipper_nb")
        if app is not None:
            check_name("application", app)
        options["slo_ms"] = None if slo_ms is None else check_slo(slo_ms)
        if input_type is not None:
            check_input_type(input_type)
        if batch_delay_ms is not None:
            batch_delay_ms = _check_number("batch_delay_ms", batch_delay_ms, 0, 1000)
        if backend is not None and backend not in self.pool.names():
            raise BadInput(f"unknown replica backend {backend!r}",
                           f"this server has: {', '.join(self.pool.names()) or 'none'}")
        options.update(batch_size=batch_size, max_batch_size=max_batch_size, batch_delay_ms=batch_delay_ms,
                       backend=backend)
        return options

    def _linked_app(self, app_name: str, model: str, input_type: str, slo_ms: float | None,
                    default_output: Any) -> tuple[App, App | None]:
        """``deploy(..., app=NAME)``: the app as it will be (registered when missing, its SLO
        set, the model linked), written with the deploy, and the app as it is (None: new)."""
        current = self.registry.apps.get(app_name)
        if current is None:
            default_slo = self.config.default_slo_ms
            target = App(name=app_name, input_type=input_type, default_output=default_output,
                         slo_ms=check_slo(slo_ms if slo_ms is not None else default_slo))
        else:  # changed on a copy, served once written
            target = App(**{**current.__dict__, "models": list(current.models)})
            if slo_ms is not None:
                target.slo_ms = slo_ms  # checked on the way in
        if model not in target.models:
            target.models.append(model)
        return target, current

    def _serve_linked(self, target: App, current: App | None) -> dict | None:
        """Serve the app a deploy wrote; the new app's description when it was created."""
        policy = make_policy(target) if current is None else self.registry.policies[target.name]
        self.registry.add_app(target, policy)
        if current is None:
            return {"name": target.name, "slo_ms": target.slo_ms, "policy": target.policy,
                    "input_type": target.input_type}
        return None

    async def _activate(self, spec: dict, vspec: dict, new_version: bool = False, app: App | None = None) -> None:
        """Start ``vspec``'s replicas, store the model with it current (and ``vspec`` itself
        when ``new_version``, and ``app`` linking it, in the same transaction), then swap it
        in and stop the old version. Memory changes only once the store has the change: a
        write that fails stops the new replicas and leaves the old version serving."""
        name = spec["name"]
        spec = {**spec, "current_version": vspec["version"]}
        version = await self._new_version(spec, vspec)
        try:
            await version.start(spec["replicas"])
            await self._db(self.store.save_model, spec, vspec if new_version else None,
                           None if app is None else app.to_json())
        except BaseException:
            await version.stop()
            raise
        if new_version:
            self.registry.versions.setdefault(name, {})[vspec["version"]] = vspec
        old = self.running.get(name)
        self.running[name] = version
        self.registry.models[name] = spec
        self.restore_errors.pop(name, None)
        if old is not None:
            # Queries already queued on the old version finish there; new ones go to the new.
            self._spawn(self._retire(old))

    async def _retire(self, version: ModelVersion) -> None:
        self.retiring.add(version)
        try:
            for _ in range(_RETIRE_ROUNDS):
                if not len(version.queue):
                    break
                await asyncio.sleep(0.1)
        finally:
            self.retiring.discard(version)
            await version.stop()

    async def _new_version(self, spec: dict, vspec: dict) -> ModelVersion:
        backend = await self.pool.for_spec(spec)
        return ModelVersion(backend, self._version_config(spec, vspec), self.metrics)

    def _version_config(self, spec: dict, vspec: dict) -> ModelVersionConfig:
        python = vspec.get("python_executable") or sys.executable
        if not os.path.exists(python):
            python = sys.executable
        delay = spec.get("batch_delay_ms")
        config = self.config
        return ModelVersionConfig(
            model=spec["name"], version=vspec["version"],
            artifact_dir=self.store.artifact_dir(spec["name"], vspec["version"]), log_dir=self.store.log_dir,
            device=spec.get("device") or "auto", python=python, cwd=vspec.get("cwd"),
            batch_size=spec.get("batch_size"),
            max_batch_size=spec.get("max_batch_size") or batching.DEFAULT_MAX_CAP,
            batch_delay_s=(config.batch_delay_ms if delay is None else delay) / 1000.0,
            objective_s=self.objective(spec["name"], delay),
            cache_bytes=config.cache_bytes, start_timeout_s=config.start_timeout_s,
            heartbeat_timeout_s=config.heartbeat_timeout_s, hang_timeout_s=config.hang_timeout_s,
            hang_factor=config.hang_factor, env=dict(config.worker_env), preload=_preload_modules(vspec),
        )

    # ---------------------------------------------------------------- batch objective
    def objective(self, model: str, delay_ms: float | None = None) -> float:
        """Batch-latency objective: the tightest SLO among the apps linked to ``model``."""
        slos = [a.slo_s for a in self.registry.linked_apps(model)] or [self.config.default_slo_ms / 1000]
        delay = (self.config.batch_delay_ms if delay_ms is None else delay_ms) / 1000.0
        return batching.objective_for_slo(min(slos), delay)

    def retune(self, models: list[str]) -> None:
        """Give each running model of ``models`` its objective after an SLO or link change."""
        for m in models:
            version = self.running.get(m)
            if version is not None:
                version.set_objective(self.objective(m, self.registry.models[m].get("batch_delay_ms")))

    # ---------------------------------------------------------------- scale, rollback, undeploy
    async def scale(self, name: str, replicas: int) -> dict:
        replicas = _check_int("replicas", replicas, 0, 64)
        async with self._lock:
            spec = self.registry.require_model(name)
            version = self.running.get(name)
            if version is None:
                raise Unavailable(f"model {name!r} is not running",
                                  self.restore_errors.get(name, "roll back or redeploy it"))
            await version.scale(replicas)
            try:
                await self._db(self.store.save_model, {**spec, "replicas": replicas})
            except BaseException:
                await version.scale(spec["replicas"])  # served as stored
                raise
            spec["replicas"] = replicas
            return self.describe_model(name)

    async def rollback(self, name: str, version: str) -> dict:
        async with self._lock:
            spec = self.registry.require_model(name)
            version = str(version)
            vspec = self.registry.versions.get(name, {}).get(version)
            if vspec is None:
                raise NotFound(f"model {name!r} has no version {version!r}",
                               f"versions: {', '.join(self.registry.versions.get(name, {}))}")
            if spec.get("current_version") == version and name in self.running:
                return self.describe_model(name)
            await self._activate(dict(spec), vspec)
            return self.describe_model(name)

    async def undeploy(self, name: str) -> None:
        """Stop a model's replicas, unlink it from every app and delete its versions."""
        async with self._lock:
            self.registry.require_model(name)
            linked = self.registry.linked_apps(name)
            unlinked = [{**a.to_json(), "models": [m for m in a.models if m != name]} for a in linked]
            await self._db(self.store.delete_model, name, unlinked)  # first: a failed write changes nothing
            version = self.running.pop(name, None)
            if version is not None:
                await version.stop()
            for app in linked:
                app.models.remove(name)
            del self.registry.models[name]
            self.registry.versions.pop(name, None)
            self.metrics.forget_model(name)

    # ---------------------------------------------------------------- reports
    def describe_model(self, name: str) -> dict:
        spec = self.registry.require_model(name)
        current = self.registry.current_version(name)
        version = self.running.get(name)
        return {
            "name": name, "version": spec.get("current_version"),
            "versions": list(self.registry.versions.get(name, {})),
            "kind": current.get("kind"), "method": current.get("method"),
            "input_type": current.get("input_type"), "input_shape": current.get("input_shape"),
            "replicas": spec["replicas"],
            "replicas_up": sum(1 for r in version.status() if r["state"] in ("idle", "busy")) if version else 0,
            "device": spec.get("device"), "backend": self.pool.name_of(spec), "resources": spec.get("resources"),
            "batch_size": spec.get("batch_size"),
            "max_batch_size": spec.get("max_batch_size"), "batch_delay_ms": spec.get("batch_delay_ms"),
            "apps": [a.name for a in self.registry.linked_apps(name)],
            "library_versions": current.get("versions"), "error": self.restore_errors.get(name),
        }

    def list_models(self) -> list[dict]:
        return [self.describe_model(n) for n in sorted(self.registry.models)]

    def status(self) -> list[dict]:
        """One row per replica."""
        return [row for name in sorted(self.running) for row in self.running[name].status()]

    def worker_pids(self) -> list[int]:
        return [pid for v in self.running.values() for pid in v.pids()]


class BackendPool:
    """The engine's replica backends by name (``backends``, the engine's own dict), and the
    one that is created the first time a model asks for it (:data:`LAZY_BACKENDS`)."""

    def __init__(self, backends: dict[str, ReplicaBackend], config: ClipperNB,
                 make_backend: Callable[[str], ReplicaBackend] | None) -> None:
        self.backends = backends
        self.config = config
        self._make_backend = make_backend
        self._creating: dict[str, asyncio.Task] = {}

    def name_of(self, spec: dict | None) -> str:
        """The backend a model runs on: its own choice, else the ``default_backend`` knob."""
        return (spec or {}).get("backend") or self.config.default_backend or DEFAULT_BACKEND

    def names(self) -> list[str]:
        """Every backend a model may choose: those running and those created on demand."""
        lazy = LAZY_BACKENDS if self._make_backend is not None else ()
        return sorted({*self.backends, *lazy})

    def check_placement(self, name: str, backend: str | None, current: dict | None,
                        resources: dict[str, float] | None) -> dict[str, float] | None:
        """A deploy's custom resources, checked: ``{name: amount}``, and only for Ray replicas."""
        if resources is None:
            return None
        if not isinstance(resources, dict) or not resources:
            raise BadInput("resources must be a non-empty object {name: amount}", 'e.g. {"gpu_node": 1}')
        checked = {}
        for key, amount in resources.items():
            if not isinstance(key, str) or not key.strip():
                raise BadInput(f"resources names must be non-empty strings, got {key!r}")
            checked[key] = _check_number(f"resources[{key!r}]", amount, 0, 1_000_000)
        effective = backend or self.name_of(current)
        if effective != "ray":
            raise BadInput(f"resources place replicas on a Ray cluster; model {name!r} would run on the "
                           f"{effective!r} backend", "deploy with backend='ray' (or drop resources)")
        return checked

    async def for_spec(self, spec: dict) -> ReplicaBackend:
        """The backend ``spec`` runs on (created and started when first asked for), placed
        with the model's own ``resources`` where the backend places replicas on a cluster."""
        name = self.name_of(spec)
        backend = self.backends.get(name)
        if backend is None:
            if self._make_backend is None or name not in LAZY_BACKENDS:
                raise Unavailable(f"model {spec['name']!r} runs on the replica backend {name!r}, which this "
                                  "server does not have", f"backends: {', '.join(self.names()) or 'none'}")
            task = self._creating.get(name)
            if task is None:  # concurrent restores of several models share one start
                task = self._creating[name] = asyncio.ensure_future(self._create(name))
                task.add_done_callback(lambda _t: self._creating.pop(name, None))
            backend = await asyncio.shield(task)
        resources = spec.get("resources")
        place = getattr(backend, "placement", None)
        return place(resources) if resources and place is not None else backend

    async def _create(self, name: str) -> ReplicaBackend:
        assert self._make_backend is not None
        backend = self._make_backend(name)
        started = time.monotonic()
        await backend.start()  # raises (Unavailable) when it cannot, leaving nothing behind
        self.backends[name] = backend
        log.info("replica backend %r started in %.1f s", name, time.monotonic() - started)
        return backend


def _next_version(name: str, versions: dict[str, dict], version: str | None) -> str:
    """The version to deploy: ``version`` checked, or one past the highest numeric version."""
    if version is None:
        numeric = [int(v) for v in versions if v.isdigit()]
        version = str(max(numeric, default=0) + 1)
    version = check_name("version", str(version))
    if version in versions:
        raise Conflict(f"model {name!r} already has version {version!r}",
                       "deploy with another version, or roll back to it with rollback()")
    return version


def _model_spec(current: dict | None, name: str, options: dict) -> dict:
    """The model spec after a deploy: a copy of ``current`` with the deploy's settings.

    Replicas and device always change; the batching settings and the backend only when
    given (or when the spec has none yet).
    """
    spec = dict(current) if current else {"name": name, "created": time.time()}
    spec.update(replicas=options["replicas"], device=options["device"])
    for key in ("batch_size", "max_batch_size", "batch_delay_ms"):
        if options[key] is not None or key not in spec:
            spec[key] = options[key]
    if options["backend"] is not None:
        if options["backend"] != spec.get("backend"):
            spec.pop("resources", None)  # another backend's placement does not carry over
        spec["backend"] = options["backend"]
    if options.get("resources") is not None:
        spec["resources"] = options["resources"]
    return spec


def _version_spec(name: str, version: str, meta: dict, input_type: str | None) -> dict:
    vspec = {"model": name, "version": version, "created": time.time(), **{k: meta.get(k) for k in _VERSION_META}}
    vspec["input_type"] = input_type or meta.get("input_type") or "floats"
    return vspec


def _preload_modules(vspec: dict) -> list[str]:
    modules = ["torch"] if vspec.get("kind") == "torch" else []
    module = (vspec.get("object_type") or "").rpartition(".")[0]
    if module.split(".")[0] in PRELOADABLE and module not in (vspec.get("pickled_by_value") or []):
        modules.append(module)
    return modules


_DEVICE = re.compile(r"auto|cpu|mps|cuda(:[0-9]+)?")


def _check_device(device: Any) -> str:
    """A deploy's ``device``: ``auto`` (a GPU when the replica sees one), ``cpu``, ``cuda``,
    ``cuda:N`` or ``mps``."""
    if not isinstance(device, str) or not _DEVICE.fullmatch(device):
        raise BadInput(f"device must be 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps', got {device!r}")
    return device

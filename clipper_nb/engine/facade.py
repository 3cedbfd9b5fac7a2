"""The Engine: applications, models, replicas and the query path. Plain asyncio.

The Engine knows nothing of HTTP or Jupyter: ``clipper-nb serve`` and the Jupyter
server extension each run one on their event loop and put thin handlers in front.
Blocking work (SQLite, artifact files) goes to a one-thread executor; models run in
worker processes; so nothing here blocks the loop.

Query semantics follow Clipper: every query gets a deadline = arrival + the app's
SLO. What the linked models answer by then is the answer; when nothing has, the
app's default output with ``"default": true`` and a ``default_explanation``.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import itertools
import logging
import math
import os
import random
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from clipper_nb.wire import artifact as artifact_mod
from clipper_nb.abstraction import batching
from clipper_nb.selection import policies as selection
from clipper_nb.wire.codec import check_input_type, decode_input, input_digest, to_jsonable
from clipper_nb.abstraction.model_version import Deployment, DeploymentConfig
from clipper_nb.containers.forkserver import ForkServer
from clipper_nb.errors import BadInput, ClipperError, Conflict, DeployError, ModelError, NotFound, Unavailable
from clipper_nb.abstraction.batching import DeadlineMissed
from clipper_nb.engine.store import Store, check_name

log = logging.getLogger("clipper_nb.engine.facade")

APP_FIELDS = {"input_type", "default_output", "slo_ms", "policy", "policy_options", "cache",
              "confidence_threshold", "low_confidence", "loss", "loss_scale", "straggler_mitigation"}


@dataclass
class EngineConfig:
    """Knobs of an Engine; the CLI and the Jupyter extension expose each of them."""

    state_dir: str
    default_slo_ms: float = 100.0
    cache_bytes: int = 32 << 20
    batch_delay_ms: float = 2.0
    max_batch_rows: int = 10_000
    start_timeout_s: float = 120.0
    heartbeat_timeout_s: float = 5.0
    hang_timeout_s: float = 60.0
    worker_env: dict[str, str] = field(default_factory=dict)
    #: selection contexts kept per application (least recently updated evicted first)
    max_contexts: int = 10_000
    #: start workers by forking a pre-warmed interpreter (Linux); off: a fresh process each
    fork_server: bool = True


@dataclass
class App:
    name: str
    input_type: str = "floats"
    default_output: Any = None
    slo_ms: float = 100.0
    policy: str = "single"
    policy_options: dict = field(default_factory=dict)
    models: list[str] = field(default_factory=list)
    cache: bool = True
    confidence_threshold: float | None = None
    low_confidence: str = "flag"          # "flag" the answer, or answer the "default" output
    loss: str = "zero_one"
    loss_scale: float = 1.0
    straggler_mitigation: bool = True
    created: float = field(default_factory=time.time)

    @property
    def slo_s(self) -> float:
        return self.slo_ms / 1000.0

    def to_json(self) -> dict:
        return {k: to_jsonable(v) for k, v in self.__dict__.items()}


class Engine:
    """Owns every app, model version and replica of one clipper-nb frontend.

    >>> engine = Engine(EngineConfig(state_dir="/tmp/state"))   # doctest: +SKIP
    >>> await engine.start(); await engine.predict("digits", [0.1] * 64)
    """

    def __init__(self, config: EngineConfig, metrics: Any = None) -> None:
        self.config = config
        if metrics is None:
            from clipper_nb.engine.metrics import Metrics

            metrics = Metrics()
        self.metrics = metrics
        self.store = Store(config.state_dir)
        self.apps: dict[str, App] = {}
        self.models: dict[str, dict] = {}                 # name -> model spec
        self.versions: dict[str, dict[str, dict]] = {}    # name -> version -> version spec
        self.deployments: dict[str, Deployment] = {}      # name -> running current version
        self.policies: dict[str, selection.Policy] = {}
        self.selection_states: dict[tuple[str, str], selection.SelectionState] = {}
        self._dirty_states: set[tuple[str, str]] = set()
        self._chosen: collections.OrderedDict[tuple[str, bytes], str] = collections.OrderedDict()
        self._rng = random.Random(0)
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="clipper-store")
        self._lock = asyncio.Lock()
        self._query_ids = itertools.count()
        self._router = None
        self._spawners: dict[str, Any] = {}
        self._retiring: set[Deployment] = set()
        self._tasks: set[asyncio.Task] = set()
        self.ready = asyncio.Event()
        self.restore_errors: dict[str, str] = {}

    # ================================================================== lifecycle
    async def start(self, wait: bool = True) -> None:
        """Open the store, bring back every app and model, start their replicas."""
        from clipper_nb.containers.zmq_transport import Router

        self._router = Router()
        self._router.start()
        state = await self._db(self.store.load)
        for spec in state["apps"]:
            app = App(**{k: v for k, v in spec.items() if k in App.__dataclass_fields__})
            self.apps[app.name] = app
            self.policies[app.name] = self._make_policy(app)
        for spec in state["versions"]:
            self.versions.setdefault(spec["model"], {})[spec["version"]] = spec
        for spec in state["models"]:
            self.models[spec["name"]] = spec
        for app_name, context, st in state["selection"]:
            if app_name in self.apps:
                self.selection_states[(app_name, context)] = selection.SelectionState.from_json(st)
        self._spawn(self._flush_loop())
        restore = self._spawn(self._restore())
        if wait:
            await restore

    async def _restore(self) -> None:
        async def one(spec: dict) -> None:
            vspec = self.versions.get(spec["name"], {}).get(spec["current_version"])
            if vspec is None:
                return
            dep = self._new_deployment(spec, vspec)
            try:
                await dep.start(spec["replicas"])
            except ClipperError as e:
                self.restore_errors[spec["name"]] = e.message
                log.error("could not restore model %s: %s", spec["name"], e.message)
                await dep.stop()
                return
            self.deployments[spec["name"]] = dep

        # Under the management lock: a deploy or undeploy arriving while restore runs
        # waits, instead of being overwritten by the restored (older) version.
        async with self._lock:
            await asyncio.gather(*(one(s) for s in list(self.models.values())))
        self.ready.set()

    async def stop(self) -> None:
        """Stop every replica (no worker outlives this) and flush state to disk."""
        retiring = list(self._retiring)  # old versions still draining after a swap
        await asyncio.gather(*(d.stop() for d in [*self.deployments.values(), *retiring]), return_exceptions=True)
        self.deployments.clear()
        for t in list(self._tasks):
            t.cancel()
        await self._flush_selection()
        await asyncio.gather(*(s.close() for s in self._spawners.values()), return_exceptions=True)
        if self._router is not None:
            await self._router.close()
        await self._db(self.store.close)
        self._executor.shutdown(wait=True)

    def _spawn(self, coro) -> asyncio.Task:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _db(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    # ================================================================== applications
    async def register_app(self, name: str, input_type: str = "floats", default_output: Any = None,
                           slo_ms: float | None = None, policy: str = "single", policy_options: dict | None = None,
                           models: list[str] | None = None, **options: Any) -> dict:
        """Create an application. Raises ``Conflict`` when it exists."""
        check_name("application", name)
        async with self._lock:
            if name in self.apps:
                raise Conflict(f"application {name!r} already exists", "use PATCH /api/apps/<name> to change it")
            app = App(name=name, input_type=check_input_type(input_type), default_output=default_output,
                      slo_ms=self._check_slo(slo_ms if slo_ms is not None else self.config.default_slo_ms),
                      policy=policy, policy_options=dict(policy_options or {}))
            self._apply_options(app, options)
            policy_obj = self._make_policy(app)
            for m in models or []:
                self._require_model(m)
                if m not in app.models:
                    app.models.append(m)
            self.apps[name] = app
            self.policies[name] = policy_obj
            await self._db(self.store.save_app, app.to_json())
            self._retune(app.models)
            return self.describe_app(name)

    async def update_app(self, name: str, **changes: Any) -> dict:
        """Change an app at run time: SLO, policy and its options, default output, cache, ..."""
        async with self._lock:
            app = self._app(name)
            unknown = set(changes) - APP_FIELDS
            if unknown:
                raise BadInput(f"unknown application setting(s): {', '.join(sorted(unknown))}",
                               f"settable: {', '.join(sorted(APP_FIELDS))}")
            old = App(**app.__dict__)
            try:
                if "slo_ms" in changes:
                    app.slo_ms = self._check_slo(changes.pop("slo_ms"))
                if "input_type" in changes:
                    app.input_type = check_input_type(changes.pop("input_type"))
                if "default_output" in changes:
                    app.default_output = changes.pop("default_output")
                if "policy" in changes:
                    app.policy = changes.pop("policy")
                    app.policy_options = dict(changes.pop("policy_options", None) or {})
                elif "policy_options" in changes:
                    app.policy_options = {**app.policy_options, **(changes.pop("policy_options") or {})}
                self._apply_options(app, changes)
                policy_changed = (app.policy, app.policy_options) != (old.policy, old.policy_options)
                policy_obj = self._make_policy(app) if policy_changed else self.policies[name]
            except Exception:
                self.apps[name] = old  # all or nothing: no half-applied change stays live
                raise
            self.policies[name] = policy_obj
            if policy_changed:  # weights of another policy mean something else: start afresh
                for key in [k for k in self.selection_states if k[0] == name]:
                    del self.selection_states[key]
                await self._db(self.store.delete_selection, name)
            await self._db(self.store.save_app, app.to_json())
            self._retune(app.models)
            return self.describe_app(name)

    def _apply_options(self, app: App, options: dict) -> None:
        for key, value in options.items():
            if key not in APP_FIELDS:
                raise BadInput(f"unknown application setting {key!r}", f"settable: {', '.join(sorted(APP_FIELDS))}")
            try:
                value = self._check_option(key, value)
            except (ValueError, TypeError) as e:  # float("x"), an unknown loss, ...
                raise BadInput(f"invalid {key}: {e}") from None
            setattr(app, key, value)

    @staticmethod
    def _check_option(key: str, value: Any) -> Any:
        if key in ("cache", "straggler_mitigation"):
            return bool(value)
        if key == "confidence_threshold" and value is not None:
            value = float(value)
            if not 0 <= value <= 1:
                raise ValueError("it must be between 0 and 1")
        elif key == "low_confidence" and value not in ("flag", "default"):
            raise ValueError("it must be 'flag' or 'default'")
        elif key == "loss":
            selection.make_loss(value, 1.0)
        elif key == "loss_scale":
            value = float(value)
            if not 0 < value < math.inf:
                raise ValueError("it must be a finite number > 0")
        return value

    def _make_policy(self, app: App) -> selection.Policy:
        try:
            return selection.make_policy(app.policy, **app.policy_options)
        except (ValueError, TypeError) as e:
            raise BadInput(f"invalid selection policy: {e}") from None

    @staticmethod
    def _check_slo(slo_ms: Any) -> float:
        return _check_number("slo_ms", slo_ms, 0.1, 600_000, "a number of milliseconds")

    async def delete_app(self, name: str) -> None:
        async with self._lock:
            app = self._app(name)
            del self.apps[name]
            self.policies.pop(name, None)
            for key in [k for k in self.selection_states if k[0] == name]:
                del self.selection_states[key]
            self.metrics.forget_app(name)
            await self._db(self.store.delete_app, name)
            self._retune(app.models)

    async def link(self, app_name: str, model: str) -> dict:
        async with self._lock:
            app = self._app(app_name)
            self._require_model(model)
            if model not in app.models:
                app.models.append(model)
                await self._db(self.store.save_app, app.to_json())
            self._retune([model])
            return self.describe_app(app_name)

    async def unlink(self, app_name: str, model: str) -> dict:
        async with self._lock:
            app = self._app(app_name)
            if model not in app.models:
                raise NotFound(f"model {model!r} is not linked to application {app_name!r}",
                               f"linked: {', '.join(app.models) or 'none'}")
            app.models.remove(model)
            await self._db(self.store.save_app, app.to_json())
            self._retune([model])
            return self.describe_app(app_name)

    def _app(self, name: str) -> App:
        app = self.apps.get(name)
        if app is None:
            raise NotFound(f"no application named {name!r}",
                           f"known applications: {', '.join(sorted(self.apps)) or 'none'}; "
                           "register one with POST /api/apps or deploy(..., app=NAME)")
        return app

    def _require_model(self, name: str) -> dict:
        spec = self.models.get(name)
        if spec is None:
            raise NotFound(f"no model named {name!r}",
                           f"known models: {', '.join(sorted(self.models)) or 'none'}")
        return spec

    def describe_app(self, name: str) -> dict:
        app = self._app(name)
        d = app.to_json()
        d["policy_options"] = self.policies[name].options() if name in self.policies else app.policy_options
        return d

    def list_apps(self) -> list[dict]:
        return [self.describe_app(n) for n in sorted(self.apps)]

    # ================================================================== models
    async def deploy(self, name: str, payload: bytes, meta: dict, *, version: str | None = None,
                     replicas: int | None = None, device: str = "auto", batch_size: int | None = None,
                     max_batch_size: int | None = None, batch_delay_ms: float | None = None,
                     app: str | None = None, slo_ms: float | None = None, input_type: str | None = None,
                     default_output: Any = None) -> dict:
        """Store an artifact as a new version, start its replicas, make it current.

        The previous version keeps serving until every new replica has loaded; a worker
        that cannot load the artifact fails the deploy with the cause.
        """
        check_name("model", name)
        if replicas is None:  # a new version keeps the running one's replica count
            replicas = self.models[name]["replicas"] if name in self.models else 1
        replicas = _check_int("replicas", replicas, 0, 64)
        if batch_size is not None:
            batch_size = _check_int("batch_size", batch_size, 1, self.config.max_batch_rows)
        if max_batch_size is not None:
            max_batch_size = _check_int("max_batch_size", max_batch_size, 1, batching.DEFAULT_MAX_CAP)
        if meta.get("kind") not in artifact_mod.KINDS:
            raise BadInput(f"artifact kind must be one of {artifact_mod.KINDS}", "package the model with clipper_nb")
        if app is not None:
            check_name("application", app)
        if slo_ms is not None:
            slo_ms = self._check_slo(slo_ms)
        if input_type is not None:
            check_input_type(input_type)
        if batch_delay_ms is not None:
            batch_delay_ms = _check_number("batch_delay_ms", batch_delay_ms, 0, 1000)
        async with self._lock:
            model = self.models.get(name)
            versions = self.versions.setdefault(name, {})
            if version is None:
                numeric = [int(v) for v in versions if v.isdigit()]
                version = str(max(numeric, default=0) + 1)
            version = check_name("version", str(version))
            if version in versions:
                raise Conflict(f"model {name!r} already has version {version!r}",
                               "deploy with another version, or roll back to it with rollback()")
            spec = dict(model) if model else {"name": name, "created": time.time()}
            spec.update(replicas=replicas, device=device)
            for key, value in (("batch_size", batch_size), ("max_batch_size", max_batch_size),
                               ("batch_delay_ms", batch_delay_ms)):
                if value is not None or key not in spec:
                    spec[key] = value
            vspec = {"model": name, "version": version, "created": time.time(), **{
                k: meta.get(k) for k in ("kind", "method", "input_shape", "object_type", "versions",
                                         "python_executable", "cwd", "pickled_by_value")}}
            vspec["input_type"] = input_type or meta.get("input_type") or "floats"
            await self._db(self.store.write_artifact, name, version, payload, meta)
            try:
                await self._activate(spec, vspec)
            except BaseException:
                await self._db(self.store.delete_version, name, version)
                if not versions:
                    self.versions.pop(name, None)
                raise
            versions[version] = vspec
            await self._db(self.store.save_version, vspec)
            if app is not None:
                target = self.apps.get(app)
                if target is None:
                    target = App(name=app, input_type=vspec["input_type"], default_output=default_output,
                                 slo_ms=self._check_slo(slo_ms if slo_ms is not None else self.config.default_slo_ms))
                    self.apps[app] = target
                    self.policies[app] = self._make_policy(target)
                elif slo_ms is not None:
                    target.slo_ms = slo_ms  # checked on the way in
                if name not in target.models:
                    target.models.append(name)
                await self._db(self.store.save_app, target.to_json())
            self._retune([name])
            return self.describe_model(name)

    async def _activate(self, spec: dict, vspec: dict) -> None:
        """Start ``vspec``'s replicas, then swap it in and stop the old version."""
        name = spec["name"]
        dep = self._new_deployment(spec, vspec)
        try:
            await dep.start(spec["replicas"])
        except BaseException:
            await dep.stop()
            raise
        old = self.deployments.get(name)
        self.deployments[name] = dep
        spec["current_version"] = vspec["version"]
        self.models[name] = spec
        self.restore_errors.pop(name, None)
        await self._db(self.store.save_model, spec)
        if old is not None:
            # Queries already queued on the old version finish there; new ones go to the new.
            self._spawn(self._retire(old))

    async def _retire(self, dep: Deployment) -> None:
        self._retiring.add(dep)
        try:
            for _ in range(50):
                if not len(dep.queue):
                    break
                await asyncio.sleep(0.1)
        finally:
            self._retiring.discard(dep)
            await dep.stop()

    def _new_deployment(self, spec: dict, vspec: dict) -> Deployment:
        config = self._deployment_config(spec, vspec)
        spawner = None
        if self.config.fork_server and sys.platform.startswith("linux"):
            spawner = self._spawners.get(config.python)
            if spawner is None:
                spawner = self._spawners[config.python] = ForkServer(config.python, tag=self.store.state_dir)
        return Deployment(self._router, config, self.metrics, spawner)

    def _deployment_config(self, spec: dict, vspec: dict) -> DeploymentConfig:

        python = vspec.get("python_executable") or sys.executable
        if not os.path.exists(python):
            python = sys.executable
        delay = spec.get("batch_delay_ms")
        return DeploymentConfig(
            model=spec["name"], version=vspec["version"],
            artifact_dir=self.store.artifact_dir(spec["name"], vspec["version"]), log_dir=self.store.log_dir,
            device=spec.get("device") or "auto", python=python, cwd=vspec.get("cwd"),
            batch_size=spec.get("batch_size"),
            max_batch_size=spec.get("max_batch_size") or batching.DEFAULT_MAX_CAP,
            batch_delay_s=(self.config.batch_delay_ms if delay is None else delay) / 1000.0,
            objective_s=self._objective(spec["name"], delay),
            cache_bytes=self.config.cache_bytes, start_timeout_s=self.config.start_timeout_s,
            heartbeat_timeout_s=self.config.heartbeat_timeout_s, hang_timeout_s=self.config.hang_timeout_s,
            env=dict(self.config.worker_env), preload=_preload_modules(vspec),
        )

    def _objective(self, model: str, delay_ms: float | None = None) -> float:
        """Batch-latency objective: the tightest SLO among the apps linked to ``model``."""
        slos = [a.slo_s for a in self.apps.values() if model in a.models] or [self.config.default_slo_ms / 1000]
        delay = (self.config.batch_delay_ms if delay_ms is None else delay_ms) / 1000.0
        return batching.objective_for_slo(min(slos), delay)

    def _retune(self, models: list[str]) -> None:
        for m in models:
            dep = self.deployments.get(m)
            if dep is not None:
                dep.set_objective(self._objective(m, self.models[m].get("batch_delay_ms")))

    async def scale(self, name: str, replicas: int) -> dict:
        replicas = _check_int("replicas", replicas, 0, 64)
        async with self._lock:
            spec = self._require_model(name)
            dep = self.deployments.get(name)
            if dep is None:
                raise Unavailable(f"model {name!r} is not running",
                                  self.restore_errors.get(name, "roll back or redeploy it"))
            await dep.scale(replicas)
            spec["replicas"] = replicas
            await self._db(self.store.save_model, spec)
            return self.describe_model(name)

    async def rollback(self, name: str, version: str) -> dict:
        async with self._lock:
            spec = self._require_model(name)
            version = str(version)
            vspec = self.versions.get(name, {}).get(version)
            if vspec is None:
                raise NotFound(f"model {name!r} has no version {version!r}",
                               f"versions: {', '.join(self.versions.get(name, {}))}")
            if spec.get("current_version") == version and name in self.deployments:
                return self.describe_model(name)
            await self._activate(dict(spec), vspec)
            return self.describe_model(name)

    async def undeploy(self, name: str) -> None:
        """Stop a model's replicas, unlink it from every app and delete its versions."""
        async with self._lock:
            self._require_model(name)
            dep = self.deployments.pop(name, None)
            if dep is not None:
                await dep.stop()
            for app in self.apps.values():
                if name in app.models:
                    app.models.remove(name)
                    await self._db(self.store.save_app, app.to_json())
            del self.models[name]
            self.versions.pop(name, None)
            self.metrics.forget_model(name)
            await self._db(self.store.delete_model, name)

    def describe_model(self, name: str) -> dict:
        spec = self._require_model(name)
        current = self.versions.get(name, {}).get(spec.get("current_version"), {})
        dep = self.deployments.get(name)
        return {
            "name": name, "version": spec.get("current_version"),
            "versions": list(self.versions.get(name, {})),
            "kind": current.get("kind"), "method": current.get("method"),
            "input_type": current.get("input_type"), "input_shape": current.get("input_shape"),
            "replicas": spec["replicas"], "replicas_up": sum(1 for r in dep.status() if r["state"] in ("idle", "busy"))
            if dep else 0,
            "device": spec.get("device"), "batch_size": spec.get("batch_size"),
            "max_batch_size": spec.get("max_batch_size"), "batch_delay_ms": spec.get("batch_delay_ms"),
            "apps": [a.name for a in self.apps.values() if name in a.models],
            "library_versions": current.get("versions"), "error": self.restore_errors.get(name),
        }

    def list_models(self) -> list[dict]:
        return [self.describe_model(n) for n in sorted(self.models)]

    def status(self) -> list[dict]:
        """One row per replica."""
        rows = []
        for name in sorted(self.deployments):
            rows.extend(self.deployments[name].status())
        return rows

    def worker_pids(self) -> list[int]:
        return [pid for d in self.deployments.values() for pid in d.pids()]

    # ================================================================== queries
    def _expected_shape(self, app: App) -> list[int] | None:
        for m in app.models:
            spec = self.models.get(m)
            if spec is not None:
                shape = self.versions.get(m, {}).get(spec.get("current_version"), {}).get("input_shape")
                if shape:
                    return shape
        return None

    def _state(self, app: str, context: str | None, create: bool = False) -> selection.SelectionState:
        """The selection state for (app, context); an unseen context starts from the app's."""
        models = self.apps[app].models
        base = self.selection_states.get((app, ""))
        if base is None or list(base.log_weights) != models:
            base = base.with_models(models) if base is not None else self.policies[app].init_state(models)
            self.selection_states[(app, "")] = base
        if not context:
            return base
        state = self.selection_states.get((app, context))
        if state is None:
            # Only feedback creates a context's state: queries with ever-new uids (any
            # anonymous caller can send them) must not grow memory.
            return base.copy() if create else base
        if list(state.log_weights) != models:
            state = state.with_models(models)
            self.selection_states[(app, context)] = state
        return state

    async def predict(self, app_name: str, x: Any, context: str | None = None) -> dict:
        """Answer one query (Clipper's ``{"query_id", "output", "default", ...}``)."""
        loop = asyncio.get_running_loop()
        start = loop.time()
        app = self._app(app_name)
        x = decode_input(app.input_type, x, self._expected_shape(app))
        return await self._answer(app, x, context, start, start + app.slo_s)

    async def predict_batch(self, app_name: str, xs: list, context: str | None = None) -> list[dict]:
        """Answer each row as its own query; all rows share the arrival time and deadline."""
        loop = asyncio.get_running_loop()
        start = loop.time()
        app = self._app(app_name)
        if not isinstance(xs, list) or not xs:
            raise BadInput("'input_batch' must be a non-empty list of inputs")
        if len(xs) > self.config.max_batch_rows:
            raise BadInput(f"'input_batch' has {len(xs)} rows; the limit is {self.config.max_batch_rows}",
                           "split it into smaller requests")
        shape = self._expected_shape(app)
        decoded = []
        for i, x in enumerate(xs):
            try:
                decoded.append(decode_input(app.input_type, x, shape))
            except BadInput as e:
                raise BadInput(f"input_batch[{i}]: {e.message}", e.cause) from None
        deadline = start + app.slo_s
        return list(await asyncio.gather(*(self._answer(app, x, context, start, deadline) for x in decoded)))

    async def _answer(self, app: App, x: Any, context: str | None, start: float, deadline: float) -> dict:
        loop = asyncio.get_running_loop()
        qid = next(self._query_ids)
        if not app.models:
            return self._default(app, qid, start, f"no model is linked to application {app.name!r}")
        policy = self.policies[app.name]
        if app.policy == "single":
            chosen = [app.models[0]]
        else:
            chosen = policy.select(self._state(app.name, context), self._rng)
        futures: dict[str, asyncio.Future] = {}
        # Without straggler mitigation the query waits for every model (up to 60 s below),
        # so the batcher must not drop a slow model's share of it at the SLO deadline.
        model_deadline = deadline if app.straggler_mitigation or len(chosen) == 1 else loop.time() + 60.0
        for m in chosen:
            dep = self.deployments.get(m)
            if dep is not None:
                futures[m] = dep.submit(x, model_deadline, use_cache=app.cache)
        if not futures:
            return self._default(app, qid, start, f"model(s) {', '.join(chosen)} are not running")
        cache_hit = all(f.done() for f in futures.values())
        pending = [f for f in futures.values() if not f.done()]
        if pending:
            timeout = deadline - loop.time() if app.straggler_mitigation or len(futures) == 1 else 60.0
            if timeout > 0:
                await _wait_all(pending, timeout)
        outputs, failures = {}, {}
        for m, f in futures.items():
            if not f.done():
                continue
            exc = f.exception()
            if exc is None:
                outputs[m] = f.result()
            else:
                failures[m] = exc
        if not outputs:
            if failures and all(isinstance(e, ModelError) for e in failures.values()):
                msg = "; ".join(e.message for e in failures.values())
                self.metrics.record_query(app.name, loop.time() - start, slo_s=app.slo_s, default=True, error=True)
                raise ModelError(msg, next(iter(failures.values())).cause)
            unavailable = [e for e in failures.values() if isinstance(e, Unavailable)]
            if unavailable:
                why = "; ".join(e.message for e in unavailable)
            elif any(isinstance(e, DeadlineMissed) for e in failures.values()):
                for m in failures:
                    self.metrics.record_deadline_drop(app.name, m)
                why = "the query could not meet its deadline when its batch was formed (the system is overloaded)"
            else:
                why = f"no model answered within the SLO of {app.slo_ms:g} ms"
            return self._default(app, qid, start, why)
        if policy.name != "single" and len(chosen) >= 1 and app.policy in ("exp3", "epsilon_greedy", "thompson"):
            self._remember_choice(app.name, x, chosen[0])
        result: dict[str, Any] = {"query_id": qid}
        if len(futures) == 1 and app.policy == "single":
            result["output"] = next(iter(outputs.values()))
            result["default"] = False
        else:
            combined = policy.combine(self._state(app.name, context), outputs)
            result["output"] = combined.output
            result["default"] = False
            result["confidence"] = combined.confidence
            result["models_used"] = combined.models_used
            missing = [m for m in chosen if m not in outputs]
            if missing:
                result["models_missing"] = missing
            if app.confidence_threshold is not None and combined.confidence < app.confidence_threshold:
                why = f"confidence {combined.confidence:.2f} is below the threshold {app.confidence_threshold:g}"
                if app.low_confidence == "default":
                    out = self._default(app, qid, start, why)
                    out.update(confidence=combined.confidence, models_used=combined.models_used)
                    return out
                result["low_confidence"] = True
        self.metrics.record_query(app.name, loop.time() - start, slo_s=app.slo_s, default=False, cache_hit=cache_hit)
        return result

    def _default(self, app: App, qid: int, start: float, why: str) -> dict:
        latency = asyncio.get_running_loop().time() - start
        self.metrics.record_query(app.name, latency, slo_s=app.slo_s, default=True)
        return {"query_id": qid, "output": app.default_output, "default": True, "default_explanation": why}

    def _remember_choice(self, app: str, x: Any, model: str) -> None:
        key = (app, input_digest(x))
        self._chosen[key] = model
        self._chosen.move_to_end(key)
        if len(self._chosen) > 100_000:
            self._chosen.popitem(last=False)

    # ================================================================== feedback
    async def feedback(self, app_name: str, x: Any, label: Any, context: str | None = None) -> dict:
        """Clipper's ``update``: join ``label`` with each linked model's prediction for ``x``
        (from the cache, computed on a miss), compute losses, update the selection state."""
        loop = asyncio.get_running_loop()
        app = self._app(app_name)
        if not app.models:
            raise Conflict(f"application {app_name!r} has no linked model to give feedback on")
        x = decode_input(app.input_type, x, self._expected_shape(app))
        loss_fn = selection.make_loss(app.loss, app.loss_scale)
        if app.loss == "abs" and not isinstance(label, (int, float)):
            raise BadInput(f"label must be a number for loss 'abs', got {type(label).__name__}")
        if label is None or isinstance(label, dict):
            raise BadInput("label must be a class, a number or a list", f"got {type(label).__name__}")
        deadline = loop.time() + max(app.slo_s, 5.0)
        futures = {m: self.deployments[m].submit(x, deadline, use_cache=True)
                   for m in app.models if m in self.deployments}
        if futures:
            await asyncio.wait(list(futures.values()), timeout=max(0.0, deadline - loop.time()))
        losses = {}
        for m, f in futures.items():
            if f.done() and f.exception() is None:
                output = to_jsonable(f.result())
                # zero_one compares anything, so a label of another type than the outputs
                # ("3" for 3) would silently count as every model being wrong.
                if app.loss == "zero_one" and output is not None and _json_kind(output) != _json_kind(label):
                    raise BadInput(f"label {label!r} is a {_json_kind(label)} but model {m!r} answers a "
                                   f"{_json_kind(output)}", "send the label as the models' output type")
                try:
                    losses[m] = float(loss_fn(output, label))
                except Exception as e:  # noqa: BLE001 - a label the loss cannot compare with
                    raise BadInput(f"cannot compare label {label!r} with model {m!r}'s output: {e}") from None
        if not losses:
            raise Unavailable(f"no model linked to {app_name!r} could predict this input; feedback not recorded",
                              "check the models' status and send the feedback again")
        chosen = self._chosen.get((app_name, input_digest(x)))
        policy = self.policies[app_name]
        contexts = [""] + ([context] if context else [])
        new_states = {}
        for ctx in contexts:
            state = self._state(app_name, ctx, create=True)
            new_states[ctx] = policy.update(state, losses, chosen)
        for ctx, state in new_states.items():
            self.selection_states.pop((app_name, ctx), None)  # re-insert: most recent last
            self.selection_states[(app_name, ctx)] = state
            self._dirty_states.add((app_name, ctx))
        if context:
            await self._evict_contexts(app_name)
        final = new_states[context or ""]
        probs = policy.probabilities(final)
        weights = _normalised(final.log_weights)
        for ctx, state in new_states.items():
            self.metrics.record_weights(app_name, ctx or "default", _normalised(state.log_weights),
                                        policy.probabilities(state))
        for m, l in losses.items():
            self.metrics.record_model_loss(app_name, m, l)
        return {"app": app_name, "context": context, "losses": losses, "weights": weights,
                "probabilities": probs, "updates": final.updates}

    async def _evict_contexts(self, app_name: str) -> None:
        """Keep at most ``max_contexts`` per app: the least recently updated go first."""
        keys = [k for k in self.selection_states if k[0] == app_name and k[1]]
        excess = len(keys) - self.config.max_contexts
        if excess <= 0:
            return
        gone = keys[:excess]
        for key in gone:
            del self.selection_states[key]
            self._dirty_states.discard(key)
        await self._db(self.store.delete_contexts, app_name, [c for _, c in gone])

    def selection(self, app_name: str, context: str | None = None) -> dict:
        app = self._app(app_name)
        state = self._state(app.name, context)
        policy = self.policies[app.name]
        return {"app": app.name, "context": context, "policy": app.policy, "weights": _normalised(state.log_weights),
                "probabilities": policy.probabilities(state), "counts": state.counts, "cum_loss": state.cum_loss,
                "updates": state.updates,
                "contexts": sorted(c for a, c in self.selection_states if a == app.name and c)}

    async def _flush_loop(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            try:
                await self._flush_selection()
            except Exception:  # noqa: BLE001 - keep trying; state stays dirty
                log.exception("could not save selection state")

    async def _flush_selection(self) -> None:
        if not self._dirty_states:
            return
        rows = [(a, c, self.selection_states[(a, c)].to_json()) for a, c in self._dirty_states
                if (a, c) in self.selection_states]
        self._dirty_states.clear()
        await self._db(self.store.save_selection, rows)


async def _wait_all(futures: list[asyncio.Future], timeout: float) -> None:
    """Until every future is done or ``timeout`` seconds pass.

    ``asyncio.wait`` less the set building and checks it spends about half its time
    on; every query that is not a cache hit waits here once.
    """
    loop = asyncio.get_running_loop()
    waiter: asyncio.Future[None] = loop.create_future()
    left = len(futures)

    def one_done(_: asyncio.Future) -> None:
        nonlocal left
        left -= 1
        if left == 0 and not waiter.done():
            waiter.set_result(None)

    timer = loop.call_later(timeout, _release, waiter)
    for f in futures:
        f.add_done_callback(one_done)
    try:
        await waiter
    finally:
        timer.cancel()
        for f in futures:
            f.remove_done_callback(one_done)


def _release(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


#: Libraries whose modules the fork server may import ahead of the workers: installed,
#: side-effect free, and the bulk of a worker's start-up time.
PRELOADABLE = ("sklearn", "torch", "scipy", "pandas", "xgboost", "lightgbm")


def _preload_modules(vspec: dict) -> list[str]:
    modules = ["torch"] if vspec.get("kind") == "torch" else []
    module = (vspec.get("object_type") or "").rpartition(".")[0]
    if module.split(".")[0] in PRELOADABLE and module not in (vspec.get("pickled_by_value") or []):
        modules.append(module)
    return modules


def _normalised(log_weights: dict[str, float]) -> dict[str, float]:
    if not log_weights:
        return {}
    top = max(log_weights.values())
    w = {m: math.exp(v - top) for m, v in log_weights.items()}
    total = sum(w.values())
    return {m: v / total for m, v in w.items()}


def _json_kind(value: Any) -> str:
    """The JSON type of a label or output: bool, number, string, list or object."""
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    return "list" if isinstance(value, list) else type(value).__name__


def _check_number(name: str, value: Any, low: float, high: float, what: str = "a number") -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise BadInput(f"{name} must be {what}, got {value!r}") from None
    if not low <= number <= high:  # also refuses NaN
        raise BadInput(f"{name} must be between {low:g} and {high:g}, got {number}")
    return number


def _check_int(name: str, value: Any, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value:
        raise BadInput(f"{name} must be an integer, got {value!r}")
    if not low <= value <= high:
        raise BadInput(f"{name} must be between {low} and {high}, got {value}")
    return int(value)

"""The registry of applications, models and versions, and the management of applications.

:class:`Registry` is the in-memory picture the Engine serves from: each
:class:`App`, its selection policy object, each model's spec (replicas, device,
batching, current version) and each stored version's spec. It does no I/O.
:class:`AppManager` changes applications at run time (register, update, delete,
link, unlink): under the engine's management lock, all or nothing, saved through
the engine's store executor.

The checks of user-given settings (``_check_number``, ``_check_int``,
``_check_option``, :func:`check_slo`) raise :class:`~clipper_nb.errors.BadInput`
naming the setting, so that an HTTP caller gets a 400 that says what to fix.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from clipper_nb.config import DEFAULT_SLO_MS
from clipper_nb.engine.store import Store, check_name
from clipper_nb.errors import BadInput, Conflict, NotFound
from clipper_nb.selection import policies as selection
from clipper_nb.selection.state import SelectionStates
from clipper_nb.wire.codec import check_input_type, to_jsonable

__all__ = ["APP_FIELDS", "App", "AppManager", "Registry", "check_slo"]

#: What ``update_app`` (and ``register_app``'s options) may set.
APP_FIELDS = {"input_type", "default_output", "slo_ms", "policy", "policy_options", "cache",
              "confidence_threshold", "low_confidence", "loss", "loss_scale", "straggler_mitigation"}

#: ``await db(fn, *args)``: run blocking store work on the engine's store executor.
Db = Callable[..., Awaitable[Any]]


@dataclass
class App:
    name: str
    input_type: str = "floats"
    default_output: Any = None
    slo_ms: float = DEFAULT_SLO_MS
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

    @classmethod
    def from_json(cls, spec: dict) -> App:
        """Rebuild an app saved by :meth:`to_json` (unknown keys ignored)."""
        return cls(**{k: v for k, v in spec.items() if k in cls.__dataclass_fields__})


class Registry:
    """Apps, their policies, models and versions, in memory; lookups raise ``NotFound``.

    The dicts are never rebound, so the Engine may hand them out as its own attributes.
    """

    def __init__(self) -> None:
        self.apps: dict[str, App] = {}
        self.policies: dict[str, selection.Policy] = {}
        self.models: dict[str, dict] = {}                 # name -> model spec
        self.versions: dict[str, dict[str, dict]] = {}    # name -> version -> version spec

    def load(self, state: dict) -> None:
        """Fill from what :meth:`Store.load` returned (apps, models, versions)."""
        for spec in state["apps"]:
            self.add_app(App.from_json(spec))
        for spec in state["versions"]:
            self.versions.setdefault(spec["model"], {})[spec["version"]] = spec
        for spec in state["models"]:
            self.models[spec["name"]] = spec

    def add_app(self, app: App, policy: selection.Policy | None = None) -> None:
        """Add (or replace) ``app`` with its policy object (by default built from its settings)."""
        policy = policy if policy is not None else make_policy(app)
        self.apps[app.name] = app
        self.policies[app.name] = policy

    def app(self, name: str) -> App:
        app = self.apps.get(name)
        if app is None:
            raise NotFound(f"no application named {name!r}",
                           f"known applications: {', '.join(sorted(self.apps)) or 'none'}; "
                           "register one with POST /api/apps or deploy(..., app=NAME)")
        return app

    def require_model(self, name: str) -> dict:
        spec = self.models.get(name)
        if spec is None:
            raise NotFound(f"no model named {name!r}",
                           f"known models: {', '.join(sorted(self.models)) or 'none'}")
        return spec

    def current_version(self, name: str) -> dict:
        """The spec of model ``name``'s current version ({} when it has none)."""
        spec = self.models.get(name) or {}
        return self.versions.get(name, {}).get(spec.get("current_version"), {})

    def linked_apps(self, model: str) -> list[App]:
        """The apps that ``model`` is linked to."""
        return [a for a in self.apps.values() if model in a.models]

    def expected_shape(self, app: App) -> list | None:
        """What one input must look like, from the first linked model that says: its shape
        for numeric inputs, the column names it was fitted on for ``records``."""
        key = "feature_names" if app.input_type == "records" else "input_shape"
        for m in app.models:
            shape = self.current_version(m).get(key)
            if shape:
                return shape
        return None

    def describe_app(self, name: str) -> dict:
        app = self.app(name)
        d = app.to_json()
        d["policy_options"] = self.policies[name].options() if name in self.policies else app.policy_options
        return d

    def list_apps(self) -> list[dict]:
        return [self.describe_app(n) for n in sorted(self.apps)]


class AppManager:
    """Register, change, delete, link and unlink applications; each change is saved.

    ``retune(models)`` is called after a change that may move those models' batch
    latency objective (the tightest SLO among their apps).
    """

    def __init__(self, registry: Registry, states: SelectionStates, store: Store, db: Db,
                 lock: asyncio.Lock, metrics: Any, default_slo_ms: float,
                 retune: Callable[[list[str]], None]) -> None:
        self.registry = registry
        self.states = states
        self.store = store
        self._db = db
        self._lock = lock
        self.metrics = metrics
        self.default_slo_ms = default_slo_ms
        self._retune = retune

    def new_app(self, name: str, input_type: str = "floats", default_output: Any = None,
                slo_ms: float | None = None, policy: str = "single", policy_options: dict | None = None) -> App:
        """A checked, unregistered App (the engine's default SLO when ``slo_ms`` is None)."""
        return App(name=name, input_type=check_input_type(input_type), default_output=default_output,
                   slo_ms=check_slo(slo_ms if slo_ms is not None else self.default_slo_ms),
                   policy=policy, policy_options=_check_policy_options(policy_options))

    async def register_app(self, name: str, input_type: str = "floats", default_output: Any = None,
                           slo_ms: float | None = None, policy: str = "single", policy_options: dict | None = None,
                           models: list[str] | None = None, **options: Any) -> dict:
        """Create an application. Raises ``Conflict`` when it exists."""
        check_name("application", name)
        async with self._lock:
            if name in self.registry.apps:
                raise Conflict(f"application {name!r} already exists", "use PATCH /api/apps/<name> to change it")
            app = self.new_app(name, input_type, default_output, slo_ms, policy, policy_options)
            apply_options(app, options)
            policy_obj = make_policy(app)  # refuse a bad policy before the models are looked up
            for m in models or []:
                self.registry.require_model(m)
                if m not in app.models:
                    app.models.append(m)
            await self._db(self.store.save_app, app.to_json())  # durable first: a failed write changes nothing
            self.registry.add_app(app, policy_obj)
            self._retune(app.models)
            return self.registry.describe_app(name)

    async def update_app(self, name: str, **changes: Any) -> dict:
        """Change an app at run time: SLO, policy and its options, default output, cache, ..."""
        async with self._lock:
            app = self.registry.app(name)
            unknown = set(changes) - APP_FIELDS
            if unknown:
                raise BadInput(f"unknown application setting(s): {', '.join(sorted(unknown))}",
                               f"settable: {', '.join(sorted(APP_FIELDS))}")
            # All or nothing: the change is made on a copy, written, and only then served.
            new = App(**{**app.__dict__, "models": list(app.models)})
            _apply_changes(new, changes)
            policy_changed = (new.policy, new.policy_options) != (app.policy, app.policy_options)
            policy_obj = make_policy(new) if policy_changed else self.registry.policies[name]
            await self._db(self.store.save_app, new.to_json())
            if policy_changed:  # weights of another policy mean something else: start afresh
                await self._db(self.store.delete_selection, name)
                self.states.forget(name)
            self.registry.add_app(new, policy_obj)
            self._retune(new.models)
            return self.registry.describe_app(name)

    async def delete_app(self, name: str) -> None:
        async with self._lock:
            app = self.registry.app(name)
            await self._db(self.store.delete_app, name)
            del self.registry.apps[name]
            self.registry.policies.pop(name, None)
            self.states.forget(name)
            self.metrics.forget_app(name)
            self._retune(app.models)

    async def link(self, app_name: str, model: str) -> dict:
        async with self._lock:
            app = self.registry.app(app_name)
            self.registry.require_model(model)
            if model not in app.models:
                await self._db(self.store.save_app, {**app.to_json(), "models": [*app.models, model]})
                app.models.append(model)
            self._retune([model])
            return self.registry.describe_app(app_name)

    async def unlink(self, app_name: str, model: str) -> dict:
        async with self._lock:
            app = self.registry.app(app_name)
            if model not in app.models:
                raise NotFound(f"model {model!r} is not linked to application {app_name!r}",
                               f"linked: {', '.join(app.models) or 'none'}")
            await self._db(self.store.save_app, {**app.to_json(), "models": [m for m in app.models if m != model]})
            app.models.remove(model)
            self._retune([model])
            return self.registry.describe_app(app_name)


def _apply_changes(app: App, changes: dict) -> None:
    """Apply ``update_app``'s changes to ``app`` (consumes ``changes``); raises on a bad one."""
    if "slo_ms" in changes:
        app.slo_ms = check_slo(changes.pop("slo_ms"))
    if "input_type" in changes:
        app.input_type = check_input_type(changes.pop("input_type"))
    if "default_output" in changes:
        app.default_output = changes.pop("default_output")
    if "policy" in changes:  # a new policy starts from its own defaults
        app.policy = changes.pop("policy")
        app.policy_options = _check_policy_options(changes.pop("policy_options", None))
    elif "policy_options" in changes:
        app.policy_options = {**app.policy_options, **_check_policy_options(changes.pop("policy_options"))}
    apply_options(app, changes)


def apply_options(app: App, options: dict) -> None:
    """Set the app's plain options (cache, loss, thresholds, ...), each checked."""
    for key, value in options.items():
        if key not in APP_FIELDS:
            raise BadInput(f"unknown application setting {key!r}", f"settable: {', '.join(sorted(APP_FIELDS))}")
        try:
            value = _check_option(key, value)
        except (ValueError, TypeError) as e:  # float("x"), an unknown loss, ...
            raise BadInput(f"invalid {key}: {e}") from None
        setattr(app, key, value)


def make_policy(app: App) -> selection.Policy:
    """The app's selection policy object; a bad name or option raises ``BadInput``."""
    try:
        return selection.make_policy(app.policy, **app.policy_options)
    except (ValueError, TypeError) as e:
        raise BadInput(f"invalid selection policy: {e}") from None


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


def check_slo(slo_ms: Any) -> float:
    """A latency objective in milliseconds, as a float; ``BadInput`` when out of range."""
    return _check_number("slo_ms", slo_ms, 0.1, 600_000, "a number of milliseconds")


def _check_number(name: str, value: Any, low: float, high: float, what: str = "a number") -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise BadInput(f"{name} must be {what}, got {value!r}") from None
    if not low <= number <= high:  # also refuses NaN
        raise BadInput(f"{name} must be between {low:g} and {high:g}, got {number}")
    return number


def _check_policy_options(options: Any) -> dict:
    """``policy_options``: an object of option name -> value (None: none); each option is
    checked by the policy itself."""
    if options is None:
        return {}
    if not isinstance(options, dict):
        raise BadInput(f"policy_options must be an object of option name -> value, got {options!r}")
    return dict(options)


def _check_int(name: str, value: Any, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value:
        raise BadInput(f"{name} must be an integer, got {value!r}")
    if not low <= value <= high:
        raise BadInput(f"{name} must be between {low} and {high}, got {value}")
    return int(value)

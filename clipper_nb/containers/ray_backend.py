"""The Ray backend: each replica of a model version is a Ray actor on a Ray cluster (optional).

:class:`RayBackend` implements :class:`clipper_nb.abstraction.backend.ReplicaBackend`.
Ray only *places and runs* replicas: the frontend keeps the cache, the queue, delayed
batching, each replica's AIMD controller, deadlines and selection, exactly as with
worker processes. A replica is a :class:`ReplicaActor` that loads the artifact with the
worker's code (:func:`clipper_nb.wire.artifact.load`, what ``predict.load_dir`` calls)
and runs each batch through :func:`clipper_nb.wire.predict.run_frames`, so a model
behaves the same on either backend.

* **Placement.** ``device="cuda"`` (or ``cuda:N``) asks Ray for a GPU per replica
  (``num_gpus=1``; the actor then sees it as ``cuda``); every replica asks for
  ``num_cpus`` (the ``ray_num_cpus`` knob). A deploy's ``resources`` add custom
  resources (``{"gpu_node": 1}``; ``"CPU"`` / ``"GPU"`` override the two counts).
  Replicas are placed with Ray's ``SPREAD`` strategy: those of one model land on
  different nodes where Ray can. ``auto`` asks for no GPU and runs on the CPU.
* **Batches** go through Ray's object store as numpy buffers: the stacked batch is
  handed to Ray as one ``uint8`` array (out-of-band, read zero-copy by the actor when
  Ray puts it in the object store) and the outputs come back the same way, with the
  replica's own ``compute_ms`` for AIMD. Outputs are copied once out of the object
  store, so that cached rows do not pin Ray's shared memory.
* **Faults.** A call that fails with ``RayActorError`` (killed, crashed, its node
  lost) fails the batch with :class:`ReplicaLost` (the abstraction layer retries its
  queries or answers them with an explicit error) and calls ``on_dead``; idle replicas are pinged every
  ``LIVENESS_S`` and one that does not answer within ``spec.heartbeat_timeout_s`` is
  dead too; a batch past ``spec.hang_timeout_s`` kills its actor. The supervisor
  then starts a new replica, which Ray places on a node that is alive.
* **No orphans.** Actors are named ``<prefix><model>:<version>:<index>:<serial>`` in
  the ``clipper-nb`` namespace; the prefix (:func:`frontend_prefix`) is unique to a
  frontend (its host and state directory), so several frontends can share a
  cluster. ``stop()`` kills a replica's actor and waits until Ray says it is dead;
  ``start()`` and ``close()`` kill any actor left under this frontend's prefix. The
  actors are owned by the frontend's Ray driver: if the frontend dies, Ray ends them.

Ray is imported lazily, on :meth:`RayBackend.start` (``ray.init`` is slow): without
Ray installed, choosing the backend raises :class:`~clipper_nb.errors.Unavailable`
saying ``pip install "clipper-nb[ray]"``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import itertools
import json
import logging
import os
import re
import socket
import sys
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any

import numpy as np

from clipper_nb.abstraction.backend import OnDead, ReplicaLost, ReplicaSpec
from clipper_nb.errors import DeployError, ModelError, Unavailable
from clipper_nb.wire import artifact, codec, predict

__all__ = ["NAMESPACE", "RAY_MISSING", "RayBackend", "RayPlacement", "RayReplica", "ReplicaActor",
           "frontend_prefix", "import_ray"]

log = logging.getLogger("clipper_nb.containers.ray_backend")

#: The Ray namespace of every clipper-nb actor (each frontend adds its own name prefix).
NAMESPACE = "clipper-nb"
RAY_MISSING = 'the Ray backend needs Ray, which is not installed on this server: pip install "clipper-nb[ray]"'
#: Seconds between two liveness checks of idle replicas.
LIVENESS_S = 1.0
#: How long ``stop()`` waits for Ray to confirm that a killed actor is gone.
STOP_WAIT_S = 10.0

_serial = itertools.count(1)
#: One Ray connection per process, shared by every RayBackend in it; ended by the last
#: backend to close, and only when a backend started it (never a user's own ray.init).
_session_lock = threading.Lock()
_session = {"users": 0, "ours": False}


def import_ray() -> Any:
    """The ``ray`` module, or :class:`Unavailable` saying how to install it."""
    try:
        import ray
    except ImportError as e:
        raise Unavailable(RAY_MISSING, f"{type(e).__name__}: {e}") from None
    return ray


def frontend_prefix(tag: str) -> str:
    """The name prefix of one frontend's actors: its host and state directory, hashed."""
    ident = f"{socket.gethostname()}:{os.path.abspath(tag or '.')}"
    return f"cnb-{hashlib.blake2b(ident.encode(), digest_size=5).hexdigest()}/"


# ====================================================================== the actor (on the cluster)


class ReplicaActor:
    """One replica on a Ray worker: loads the artifact, then runs batches one at a time.

    Plain class: :class:`RayBackend` wraps it with ``ray.remote`` (Ray is optional).
    """

    def __init__(self, model: tuple[bytes, dict], device: str, threads: int | None, cwd: str | None) -> None:
        self._model: tuple[bytes, dict] | None = model
        self.device = device
        self.threads = threads
        if cwd and os.path.isdir(cwd) and cwd not in sys.path:
            sys.path.insert(0, cwd)  # the notebook's folder, when the node shares it (same machine)
        self.predictor: artifact.Predictor | None = None

    def load(self) -> dict:
        """Load the model: what the replica reports (``pid``, ``device``, ``node``, ...), or ``error``."""
        import ray

        assert self._model is not None
        payload, meta = self._model
        self._model = None
        started = time.perf_counter()
        try:
            self.predictor = artifact.load(payload, meta, self.device, self.threads)
        except BaseException as e:  # noqa: BLE001 - any load failure is the deploy's to report
            return {"error": artifact.format_exception(e), "traceback": traceback.format_exc(limit=8)}
        node_id = ray.get_runtime_context().get_node_id()
        return {"pid": os.getpid(), "device": self.predictor.device, "node": node_id[:12], "node_id": node_id,
                "node_ip": ray.util.get_node_ip_address(), "host": socket.gethostname(),
                "gpus": [str(g) for g in ray.get_gpu_ids()], "versions": artifact.library_versions(),
                "load_ms": (time.perf_counter() - started) * 1000}

    def run(self, header: bytes, payload: Any) -> tuple:
        """``("ok", out_header, out_payload, meta)`` or ``("error", message, traceback)``."""
        assert self.predictor is not None
        try:
            frames, meta = predict.run_frames(self.predictor, header, payload)
        except Exception as e:  # noqa: BLE001 - a failing model fails its own queries only
            return "error", artifact.format_exception(e), traceback.format_exc(limit=6)
        return "ok", bytes(frames[0]), _as_array(frames[1]), meta

    def ping(self) -> bool:
        return True


def _as_array(buf: Any) -> Any:
    """A frame as Ray moves it best: a buffer as a ``uint8`` array (out-of-band, zero-copy
    from the object store); bytes (pickled batches) as they are."""
    return np.frombuffer(buf, dtype=np.uint8) if isinstance(buf, memoryview) else buf


# ====================================================================== the frontend's side


class RayReplica:
    """One actor as the abstraction layer sees it: state, the batch in flight, liveness."""

    pid = None  # remote: the actor's own pid is ``info["pid"]``, on ``info["node"]``

    def __init__(self, backend: RayBackend, spec: ReplicaSpec) -> None:
        self.backend = backend
        self.spec = spec
        self.name = f"{spec.model}:{spec.version}:{spec.index}:{next(_serial)}"
        self.state = "starting"
        self.info: dict[str, Any] = {}
        self.death_cause: str | None = None
        self.actor: Any = None
        self.on_dead: OnDead | None = None
        self._returned = False
        self._pending: asyncio.Future | None = None
        self._ping: asyncio.Future | None = None
        self._ping_sent = 0.0

    async def run_batch(self, inputs: list) -> tuple[list, dict]:
        """Run a batch on the actor: ``(outputs, {"n", "compute_ms"})``; see the interface."""
        if self.state != "idle":
            raise ReplicaLost(f"replica {self.name} is {self.state}")
        header, payload = codec.encode_batch(inputs)
        loop = asyncio.get_running_loop()
        self.state = "busy"
        self._pending = done = loop.create_future()
        try:
            reply = self.backend.watch(self.actor.run.remote(header, _as_array(payload)))
        except Exception as e:  # noqa: BLE001 - the submission itself failed: the actor is gone
            self.mark_dead(f"cannot reach the Ray actor: {_short(e)}")
            raise ReplicaLost(f"replica {self.name} died: {self.death_cause}") from None
        reply.add_done_callback(lambda f: self._on_reply(done, f))
        hang = loop.call_later(self.spec.hang_timeout_s, self.mark_dead,
                               f"a batch ran longer than the hang timeout ({self.spec.hang_timeout_s:.0f}s)")
        try:
            return await done
        finally:
            hang.cancel()
            self._pending = None
            if self.state == "busy":
                self.state = "idle"

    def _on_reply(self, done: asyncio.Future, reply: asyncio.Future) -> None:
        if reply.cancelled():
            return
        error = reply.exception()
        if done.done():
            return  # dead already, or cancelled: nobody waits for this reply
        if error is not None:
            self.mark_dead(self.backend.death_cause(error))
            return
        kind, *rest = reply.result()
        if kind != "ok":
            done.set_exception(ModelError(f"the model failed: {rest[0]}", rest[1]))
            return
        out_header, out_payload, meta = rest
        if isinstance(out_payload, np.ndarray):
            out_payload = out_payload.copy()  # out of Ray's shared memory: cached rows must not pin it
        try:
            done.set_result((predict.decode_outputs(out_header, out_payload), meta))
        except Exception as e:  # noqa: BLE001
            done.set_exception(ModelError(f"cannot decode the model's outputs: {e}"))

    def check_liveness(self, now: float) -> None:
        """Ping an idle actor; one that has not answered its ping in time is dead."""
        if self.state == "dead":
            return
        if self._ping is None:
            if self.state == "idle":
                try:
                    self._ping = self.backend.watch(self.actor.ping.remote())
                except Exception as e:  # noqa: BLE001
                    self.mark_dead(f"cannot reach the Ray actor: {_short(e)}")
                    return
                self._ping_sent = now
                self._ping.add_done_callback(self._on_pong)
        elif now - self._ping_sent > self.spec.heartbeat_timeout_s:
            self.mark_dead(f"no answer to a liveness check for {now - self._ping_sent:.1f}s")

    def _on_pong(self, pong: asyncio.Future) -> None:
        if pong is not self._ping:
            return
        self._ping = None
        if not pong.cancelled() and pong.exception() is not None:
            self.mark_dead(self.backend.death_cause(pong.exception()))

    def mark_dead(self, cause: str, kill: bool = True) -> None:
        """Dead now: the batch in flight fails with :class:`ReplicaLost`, the actor is
        killed (it may only be hung), then ``on_dead`` is called once."""
        if self.state == "dead":
            return
        self.state = "dead"
        self.death_cause = cause
        self.backend.forget(self)
        if self._pending is not None and not self._pending.done():
            self._pending.set_exception(ReplicaLost(f"replica {self.name} died: {cause}"))
        if kill and self.actor is not None:
            self.backend.kill_soon(self.actor)
        on_dead, self.on_dead = self.on_dead, None
        if on_dead is not None and self._returned:
            log.warning("Ray replica %s (node %s) died: %s", self.name, self.info.get("node"), cause)
            on_dead(self, cause)

    async def stop(self) -> None:
        """Kill the actor and wait until Ray says it is gone; never calls ``on_dead``."""
        self.on_dead = None
        self.mark_dead("stopped", kill=False)
        if self.actor is not None:
            actor, self.actor = self.actor, None
            await self.backend.kill(actor)


class RayPlacement:
    """The Ray backend as one model sees it: the same cluster, with the model's own
    ``resources`` (a deploy option). Started and closed with its :class:`RayBackend`."""

    name = "ray"

    def __init__(self, backend: RayBackend, resources: dict[str, float]) -> None:
        self.backend = backend
        self.resources = dict(resources)

    async def start(self) -> None:
        """Nothing: the engine starts the backend itself."""

    async def close(self) -> None:
        """Nothing: the engine closes the backend itself."""

    async def start_replica(self, spec: ReplicaSpec, on_dead: OnDead) -> RayReplica:
        return await self.backend.start_replica(spec, on_dead, resources=self.resources)


class RayBackend:
    """Replicas as Ray actors; see the module docstring.

    ``address``: ``""`` starts a local Ray on demand (ended again on ``close()``),
    ``"auto"`` joins the cluster this machine is part of (``ray start --head``), and
    ``"ray://host:10001"`` connects through Ray Client. ``num_cpus``: CPUs each replica
    asks for (fractions allowed). ``tag`` (the state directory) makes this frontend's
    actor-name prefix.
    """

    name = "ray"

    def __init__(self, address: str = "", num_cpus: float = 1.0, tag: str = "") -> None:
        self.address = address
        self.num_cpus = float(num_cpus)
        self.prefix = frontend_prefix(tag)
        self._ray: Any = None
        self._actor_class: Any = None
        self._actor_errors: tuple[type[BaseException], ...] = ()
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._live: set[RayReplica] = set()
        self._artifacts: dict[str, Any] = {}
        self._liveness: asyncio.Task | None = None
        self._kills: set[asyncio.Future] = set()

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        """Connect to Ray (or start a local one) and kill actors this frontend left behind."""
        if self._ray is not None:
            return
        ray = import_ray()
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="clipper-ray")
        try:
            await self._call(self._connect, ray)
        except Exception as e:  # noqa: BLE001 - any failure to connect is this backend's to report
            self._executor.shutdown(wait=False)
            self._executor = None
            where = f"at {self.address}" if self.address else "(a local one)"
            raise Unavailable(f"cannot start or reach the Ray cluster {where}: {_short(e)}",
                              "check the ray_address knob: auto, ray://host:port, or empty") from None
        self._ray = ray
        self._actor_errors = (ray.exceptions.RayActorError,)
        self._actor_class = ray.remote(ReplicaActor)
        left = await self._call(self._kill_leftovers)
        if left:
            log.warning("killed %d Ray actor(s) this frontend had left running", left)
        self._liveness = asyncio.ensure_future(self._liveness_loop())

    def _connect(self, ray: Any) -> None:
        with _session_lock:
            if not ray.is_initialized():
                # "local": a new Ray of our own; ray.init(address=None) would join whatever
                # cluster this machine last started (or $RAY_ADDRESS): that is what "auto" is for.
                kwargs: dict[str, Any] = {"address": self.address or "local", "namespace": NAMESPACE,
                                          "log_to_driver": False, "logging_level": logging.WARNING}
                if not self.address:
                    kwargs["include_dashboard"] = False
                ray.init(**kwargs)
                _session["ours"] = True
            _session["users"] += 1

    async def close(self) -> None:
        """Stop every replica, kill any actor left under this frontend's prefix, disconnect."""
        if self._ray is None:
            return
        if self._liveness is not None:
            self._liveness.cancel()
            await asyncio.gather(self._liveness, return_exceptions=True)
        await asyncio.gather(*(r.stop() for r in list(self._live)), return_exceptions=True)
        await asyncio.gather(*list(self._kills), return_exceptions=True)
        try:
            await self._call(self._kill_leftovers)
        finally:
            self._artifacts.clear()
            await self._call(self._disconnect)
            assert self._executor is not None
            self._executor.shutdown(wait=True)
            self._executor = None
            self._ray = None

    def _disconnect(self) -> None:
        with _session_lock:
            _session["users"] = max(0, _session["users"] - 1)
            if _session["users"] == 0 and _session["ours"]:
                _session["ours"] = False
                self._ray.shutdown()

    def _kill_leftovers(self) -> int:
        """Kill every live actor named under this frontend's prefix (blocking)."""
        ray, killed = self._ray, 0
        for entry in ray.util.list_named_actors(all_namespaces=True):
            if entry["namespace"] != NAMESPACE or not entry["name"].startswith(self.prefix):
                continue
            self._kill_blocking(entry["name"])
            killed += 1
        return killed

    async def _liveness_loop(self) -> None:
        while True:
            await asyncio.sleep(LIVENESS_S)
            now = time.monotonic()
            for replica in list(self._live):
                replica.check_liveness(now)

    # ------------------------------------------------------------------ replicas
    def placement(self, resources: dict[str, float] | None) -> RayBackend | RayPlacement:
        """This backend with a model's own custom resources (itself when there are none)."""
        return RayPlacement(self, resources) if resources else self

    async def start_replica(self, spec: ReplicaSpec, on_dead: OnDead,
                            resources: dict[str, float] | None = None) -> RayReplica:
        """Create the actor, let it load the model; see the interface's contract."""
        if self._ray is None:
            raise RuntimeError("RayBackend.start() must run before start_replica()")
        handle = RayReplica(self, spec)
        options, device, threads = self.actor_options(spec, handle.name, resources)
        label = f"{spec.model}:{spec.version}"
        try:
            model = await self._artifact(spec.artifact_dir)
            handle.actor = await self._call(self._create_actor, options, model, device, threads, spec.cwd)
            info = await asyncio.wait_for(self.watch(handle.actor.load.remote()), spec.start_timeout_s)
        except asyncio.TimeoutError:
            await self._discard(handle, "did not start in time")
            raise DeployError(f"replica {spec.index} of {label} did not start on Ray within "
                              f"{spec.start_timeout_s:.0f}s", _unplaced(options)) from None
        except self._ray.exceptions.RayError as e:  # the actor died, or Ray could not create it
            await self._discard(handle, "died while it started")
            raise DeployError(f"a Ray replica of {label} died while it started: {self.death_cause(e)}",
                              str(e)[-4000:]) from None
        except BaseException:  # cancelled (or our bug): leave nothing running, without waiting
            handle.state, handle.death_cause = "dead", "did not start"
            # By name: the actor may still be in creation (this executor runs calls in order).
            self.kill_soon(options["name"])
            raise
        if "error" in info:
            await self._discard(handle, "cannot load the model")
            raise DeployError(f"a Ray replica could not load {label}: {info['error']}", info.get("traceback"))
        handle.info = info
        handle.state = "idle"
        handle.on_dead = on_dead
        handle._returned = True
        self._live.add(handle)
        return handle

    def actor_options(self, spec: ReplicaSpec, name: str,
                      resources: dict[str, float] | None) -> tuple[dict[str, Any], str, int]:
        """Ray's actor options for a replica, the device its model loads on, its threads."""
        extra = dict(resources or {})
        num_cpus = float(extra.pop("CPU", self.num_cpus))
        wants_gpu = spec.device.startswith("cuda")
        num_gpus = float(extra.pop("GPU", 1 if wants_gpu else 0))
        options: dict[str, Any] = {"name": self.prefix + name, "namespace": NAMESPACE, "num_cpus": num_cpus,
                                   "num_gpus": num_gpus, "max_restarts": 0, "max_task_retries": 0,
                                   "max_concurrency": 1, "scheduling_strategy": "SPREAD"}
        if extra:
            options["resources"] = extra
        if spec.env:
            options["runtime_env"] = {"env_vars": dict(spec.env)}
        if spec.device.startswith("cuda") or (spec.device in ("", "auto") and num_gpus):
            device = "cuda"  # Ray hands the actor its GPU(s) as cuda:0, ...
        else:
            device = "cpu" if spec.device in ("", "auto") else spec.device
        return options, device, spec.threads or max(1, int(num_cpus))

    def _create_actor(self, options: dict, model: Any, device: str, threads: int, cwd: str | None) -> Any:
        return self._actor_class.options(**options).remote(model, device, threads, cwd)

    async def _artifact(self, artifact_dir: str) -> Any:
        """The artifact in Ray's object store, put once per version while replicas use it."""
        ref = self._artifacts.get(artifact_dir)
        if ref is None:
            ref = self._artifacts[artifact_dir] = await self._call(self._put_artifact, artifact_dir)
        return ref

    def _put_artifact(self, artifact_dir: str) -> Any:
        with open(os.path.join(artifact_dir, predict.META_FILE)) as f:
            meta = json.load(f)
        with open(os.path.join(artifact_dir, predict.PAYLOAD_FILE), "rb") as f:
            payload = f.read()
        return self._ray.put((payload, meta))

    def forget(self, handle: RayReplica) -> None:
        """A replica is dead: stop checking it; drop its artifact when no replica uses it."""
        self._live.discard(handle)
        if not any(r.spec.artifact_dir == handle.spec.artifact_dir for r in self._live):
            self._artifacts.pop(handle.spec.artifact_dir, None)

    async def _discard(self, handle: RayReplica, cause: str) -> None:
        """A replica that did not start: dead, and its actor gone before the deploy fails."""
        handle.state, handle.death_cause = "dead", cause
        if handle.actor is not None:
            actor, handle.actor = handle.actor, None
            await self.kill(actor)

    # ------------------------------------------------------------------ Ray calls
    def watch(self, ref: Any) -> asyncio.Future:
        """An asyncio future of a Ray object ref (resolved on this event loop)."""
        return asyncio.wrap_future(ref.future())

    def death_cause(self, error: BaseException) -> str:
        """What a failed Ray call says about its replica, in one line."""
        if not isinstance(error, self._actor_errors):
            return f"the Ray call failed: {_short(error)}"
        text = " ".join(str(error).split())
        why = re.search(r"The actor (?:is dead|died) because .*?\.(?=\s|$)", text)
        if "because its node" in text:
            return f"its Ray node died ({why.group(0) if why else _short(error)})"
        return f"the Ray actor died ({why.group(0) if why else _short(error)})"

    async def kill(self, actor: Any) -> None:
        """Kill an actor and wait until Ray confirms it is gone."""
        await self._call(self._kill_blocking, actor)

    def kill_soon(self, actor: Any) -> None:
        """Kill an actor (a handle, or this backend's name for it) without waiting: from
        callbacks, or from a cancelled start."""
        if self._executor is None:
            return
        fut = asyncio.wrap_future(self._executor.submit(self._kill_blocking, actor))
        self._kills.add(fut)
        fut.add_done_callback(self._kills.discard)
        fut.add_done_callback(_retrieve)

    def _kill_blocking(self, actor: Any) -> None:
        ray, end = self._ray, time.monotonic() + STOP_WAIT_S
        if isinstance(actor, str):
            try:
                actor = ray.get_actor(actor, namespace=NAMESPACE)
            except ValueError:
                return  # never created, or gone already
        while True:
            ray.kill(actor, no_restart=True)
            try:
                ray.get(actor.ping.remote(), timeout=max(0.1, end - time.monotonic()))
            except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
                return  # gone (or, after STOP_WAIT_S, left to Ray's own kill)
            except ray.exceptions.RayError:
                return
            if time.monotonic() >= end:
                return
            time.sleep(0.05)  # the ping overtook the kill: ask again

    async def _call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """A blocking Ray call, off the event loop (one at a time, in order)."""
        assert self._executor is not None
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)


def _unplaced(options: dict[str, Any]) -> str:
    wanted = {"CPU": options["num_cpus"], **({"GPU": options["num_gpus"]} if options["num_gpus"] else {}),
              **options.get("resources", {})}
    return (f"no live Ray node had {wanted} free in time (a GPU or custom resource no node declares "
            "keeps a replica waiting forever); see `ray status`")


def _short(error: BaseException, limit: int = 240) -> str:
    text = " ".join(str(error).split())
    return (text[:limit] + "...") if len(text) > limit else (text or type(error).__name__)


def _retrieve(fut: asyncio.Future) -> None:
    if not fut.cancelled() and fut.exception() is not None:
        log.debug("killing a Ray actor failed: %s", fut.exception())

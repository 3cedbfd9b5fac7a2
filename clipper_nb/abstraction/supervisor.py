"""The replica supervisor: keeps a model version's wanted replicas running on a backend.

It knows slots (wanted replica positions), a :class:`~.backend.ReplicaBackend` and
nothing else: no queue, no cache, no batching. It starts a replica per slot (and
waits until each can take a batch), restarts one that dies (at once the first time,
then with exponential backoff while it keeps crashing young: a crash loop must not
spin), and stops them. The serving side hears about it through two callbacks:

* ``on_up(slot)`` - ``slot.handle`` is a fresh replica in state ``idle``: serve it;
* ``on_down(slot, deliberate)`` - the slot's replica is going away: stop serving it
  (``deliberate``: scaled down or stopped; else it died and will be restarted).

The serving side may also ask for a replica to be ``replace``-d: one that is alive but
useless (a batch hung in the model). It is stopped and its slot restarted as for a death.
A replica that answered a batch was not crash-looping, however young it died: one bad
input that crashes the model must not push its slot into the crash loop's backoff.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable

from clipper_nb.abstraction.backend import ReplicaBackend, ReplicaHandle, ReplicaSpec
from clipper_nb.errors import DeployError

__all__ = ["Slot", "Supervisor", "restart_delay_s"]

log = logging.getLogger("clipper_nb.abstraction.supervisor")

#: A replica that lived this long before dying was not crash-looping: restart it at once.
HEALTHY_AFTER_S = 30.0
#: The longest wait between two restarts of a crash-looping replica.
MAX_BACKOFF_S = 10.0


def restart_delay_s(crashes_in_row: int) -> float:
    """Wait before restart number ``crashes_in_row`` of a replica that keeps dying young."""
    return 0.0 if crashes_in_row <= 1 else min(MAX_BACKOFF_S, 0.5 * 2 ** (crashes_in_row - 2))


class Slot:
    """One wanted replica position; its handle changes on restart."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.handle: ReplicaHandle | None = None
        self.wanted = True
        #: a start or restart is running (``handle`` is still the previous, dead replica)
        self.starting = False
        self.start_task: asyncio.Task | None = None
        self.started_at = 0.0
        self.restarts = 0
        self.crashes_in_row = 0
        #: the replica answered a batch (the serving side says so): it was not crash-looping
        self.served = False
        #: why the last replica died, or why the last restart failed
        self.last_error: str | None = None

    @property
    def state(self) -> str:
        """The replica's state; ``starting`` while a (re)start runs."""
        if self.handle is None or self.starting:
            return "starting"
        return self.handle.state


class Supervisor:
    """Starts, restarts and stops the replicas of one model version on ``backend``.

    ``template`` is the version's :class:`ReplicaSpec`; each slot's replica gets it
    with its own ``index`` and the current ``replicas`` count.
    """

    def __init__(self, backend: ReplicaBackend, template: ReplicaSpec, *,
                 on_up: Callable[[Slot], None], on_down: Callable[[Slot, bool], None]) -> None:
        self.backend = backend
        self.template = template
        self.label = f"{template.model}:{template.version}"
        self.slots: list[Slot] = []
        self._on_up = on_up
        self._on_down = on_down
        self._stopping = False
        self._tasks: set[asyncio.Task] = set()

    @property
    def replica_count(self) -> int:
        """Replicas wanted (running, starting or being restarted)."""
        return sum(1 for s in self.slots if s.wanted)

    def pids(self) -> list[int]:
        """OS process ids of the live replicas that have one."""
        return [s.handle.pid for s in self.slots
                if s.handle is not None and s.handle.pid is not None and s.handle.state != "dead"]

    # ------------------------------------------------------------------ scale and stop
    async def scale(self, replicas: int) -> None:
        """Grow or shrink to ``replicas``; new replicas can take a batch when this returns.

        When one cannot start, every replica this call started is stopped again and the
        first error (a :class:`DeployError` naming the cause) is raised.
        """
        if self._stopping:
            raise DeployError(f"model {self.label} was stopped")
        for slot in self.slots[replicas:]:
            slot.wanted = False
            await self._stop_slot(slot)
        self.slots = [s for s in self.slots if s.wanted]
        new = []
        for _ in range(replicas - len(self.slots)):
            new.append(Slot(self._next_index()))
            self.slots.append(new[-1])
        for slot in new:
            slot.start_task = self._spawn(self._start_slot(slot))
        results = await asyncio.gather(*(s.start_task for s in new), return_exceptions=True)
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            for slot in new:
                slot.wanted = False
                await self._stop_slot(slot)
            self.slots = [s for s in self.slots if s.wanted]
            if self._stopping or not isinstance(errors[0], Exception):
                raise DeployError(f"model {self.label} was stopped while its replicas started")
            raise errors[0]

    async def stop(self) -> None:
        """Stop every replica; nothing is restarted afterwards."""
        self._stopping = True
        await asyncio.gather(*(self._stop_slot(s) for s in self.slots), return_exceptions=True)
        for task in list(self._tasks):
            task.cancel()

    def _next_index(self) -> int:
        used = {s.index for s in self.slots}
        return next(i for i in range(len(used) + 1) if i not in used)

    async def _stop_slot(self, slot: Slot) -> None:
        task = slot.start_task
        if task is not None and not task.done() and task is not asyncio.current_task():
            task.cancel()  # the backend leaves nothing running when a start is cancelled
            await asyncio.gather(task, return_exceptions=True)
        self._on_down(slot, True)
        if slot.handle is not None:
            await slot.handle.stop()

    # ------------------------------------------------------------------ start and restart
    async def _start_slot(self, slot: Slot) -> None:
        spec = dataclasses.replace(self.template, index=slot.index, replicas=max(1, self.replica_count))
        slot.starting = True
        try:
            handle = await self.backend.start_replica(spec, self._on_dead)
        finally:
            slot.starting = False
        if self._stopping or not slot.wanted:  # stopped while it started
            await handle.stop()
            return
        slot.handle = handle
        slot.started_at = time.monotonic()
        slot.served = False
        log.info("replica %s up (pid %s, %s)", handle.name, handle.pid, handle.info.get("device"))
        self._on_up(slot)

    def _slot_of(self, handle: ReplicaHandle) -> Slot | None:
        """The slot whose current replica is ``handle``, unless it is being stopped or replaced."""
        slot = next((s for s in self.slots if s.handle is handle), None)
        if slot is None or self._stopping or not slot.wanted:
            return None  # stopped on purpose, or a replica we already replaced
        if slot.start_task is not None and not slot.start_task.done():
            return None  # a restart of this slot is under way already
        return slot

    def _crashed(self, slot: Slot, cause: str) -> float:
        """Count a death of ``slot``'s replica; the wait before its restart."""
        slot.last_error = cause
        self._on_down(slot, False)
        lived = time.monotonic() - slot.started_at
        healthy = lived > HEALTHY_AFTER_S or slot.served
        slot.crashes_in_row = 0 if healthy else slot.crashes_in_row + 1
        return restart_delay_s(slot.crashes_in_row)

    def _on_dead(self, handle: ReplicaHandle, cause: str) -> None:
        slot = self._slot_of(handle)
        if slot is None:
            return
        delay = self._crashed(slot, cause)
        log.warning("replica %s died: %s; restarting in %.1fs", handle.name, cause, delay)
        slot.start_task = self._spawn(self._restart(slot, delay))

    def replace(self, handle: ReplicaHandle, cause: str) -> None:
        """Stop ``handle`` (alive but useless: hung) and start another replica in its slot.

        As for a death: ``on_down(slot, False)`` first, then the replica is stopped (its
        batch in flight fails with :class:`~.backend.ReplicaLost`), then restarted.
        """
        slot = self._slot_of(handle)
        if slot is None:
            return
        delay = self._crashed(slot, cause)
        log.warning("replica %s replaced: %s; restarting in %.1fs", handle.name, cause, delay)
        slot.start_task = self._spawn(self._replace(slot, handle, delay))

    async def _replace(self, slot: Slot, handle: ReplicaHandle, delay: float) -> None:
        await handle.stop()
        await self._restart(slot, delay)

    async def _restart(self, slot: Slot, delay: float) -> None:
        await asyncio.sleep(delay)
        if self._stopping or not slot.wanted:
            return
        slot.restarts += 1
        try:
            await self._start_slot(slot)
        except Exception as e:  # noqa: BLE001 - try again later, with a longer wait
            log.warning("restart of %s replica %d failed: %s", self.label, slot.index, e)
            slot.last_error = str(e)
            if not self._stopping and slot.wanted:
                slot.start_task = self._spawn(self._restart(slot, min(MAX_BACKOFF_S, 1.0 + delay * 2)))

    def _spawn(self, coro) -> asyncio.Task:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

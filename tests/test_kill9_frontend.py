"""``kill -9`` of ``clipper-nb serve`` under load loses nothing it acknowledged.

A real server gets feedback from two client threads and management changes (new apps,
SLO changes, a model's replica count) from a third, all at once; midway it is killed with SIGKILL (no drain, no
flush: what a crash, the OOM killer or a pulled plug does). A new server on the same
state directory must hold every change it answered with a 2xx: each acknowledged app with
its last acknowledged SLO and the model its last acknowledged replica count (or the
value in flight at the kill), and each context's learnt
updates at least as many as the last acknowledged feedback said. Requests in flight at
the kill may fail: they were never acknowledged. Its workers must go too.
"""

from __future__ import annotations

import signal
import threading

import pytest

from conftest import TOKEN, ServeProcess, wait_until, worker_pids
from clipper_nb.kernel.client import Client

pytestmark = [pytest.mark.slow, pytest.mark.fault]


def half(batch):
    return [0.5 * row[0] for row in batch]


def double(batch):
    return [2.0 * row[0] for row in batch]


def _feedback_loop(url: str, context: str, acked: dict, stop: threading.Event) -> None:
    client = Client(url, token=TOKEN, retry_s=0)  # no retries: a failure is a failure
    for i in range(5_000):  # bounded: stops at `stop` long before this
        if stop.is_set():
            return
        try:
            done = client.feedback("fb", [float(i % 7)], 2.0 * (i % 7), context=context)
        except Exception:  # noqa: BLE001 - the kill; not acknowledged
            return
        acked[context] = done["updates"]


def _management_loop(url: str, acked: dict, pending: list, stop: threading.Event) -> None:
    """Register an app, change its SLO twice, scale a model up (to 3 replicas, then the
    same again); repeat. ``acked``: key -> the value last answered with a 2xx (app name ->
    SLO; ``half:replicas`` -> the replica count); ``pending``: the change sent and not
    answered (the one in flight at the kill), if any."""
    client = Client(url, token=TOKEN, retry_s=0)
    for i in range(5_000):  # bounded: stops at `stop` long before this
        if stop.is_set():
            return
        step, name = i % 4, f"app-{i // 4}"
        key, value = ("half:replicas", min(3, 2 + i // 4)) if step == 3 else (name, 100.0 + i)
        pending[:] = [(key, value)]
        try:
            if step == 0:
                client.register_app(name, slo_ms=value)
            elif step < 3:
                client.set_slo(name, value)
            else:
                client.scale("half", value)
        except Exception:  # noqa: BLE001 - the kill; not acknowledged
            return
        acked[key] = value
        pending.clear()


def test_kill_9_under_load_loses_nothing_acknowledged(tmp_path):
    state = str(tmp_path / "state")
    serve = ServeProcess(state_dir=state).start()
    port, client = serve.port, serve.client()
    client.deploy(half, "half", app="fb", slo_ms=2000)
    client.deploy(double, "double")
    client.link("fb", "double")
    client.set_policy("fb", "exp4")
    acked: dict[str, int] = {}
    acked_apps: dict[str, float] = {}
    pending: list[tuple[str, float]] = []
    stop = threading.Event()
    threads = [threading.Thread(target=_feedback_loop, args=(serve.url, f"user-{k}", acked, stop), daemon=True)
               for k in range(2)]
    threads.append(threading.Thread(target=_management_loop, args=(serve.url, acked_apps, pending, stop),
                                    daemon=True))
    for t in threads:
        t.start()
    try:
        wait_until(lambda: min(acked.values(), default=0) >= 20 and len(acked) == 2 and acked_apps.get("half:replicas") == 3,
                   timeout=60, message="feedback and management changes to be acknowledged")
        assert worker_pids(state)
        serve.proc.send_signal(signal.SIGKILL)
        serve.proc.wait(30)
        serve.proc = None
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    wait_until(lambda: not worker_pids(state), timeout=30, message="the workers to notice their frontend is gone")

    serve.start(port)
    try:
        after = serve.client()
        for name, value in acked_apps.items():
            now = after.model("half")["replicas"] if name == "half:replicas" else after.app(name)["slo_ms"]
            assert now == value or pending == [(name, now)], (name, value, pending, now)
        for context, updates in acked.items():
            learnt = after.selection("fb", context)["updates"]
            assert updates <= learnt <= updates + 1, (context, updates, learnt)  # +1: the one in flight
        assert after.predict("fb", [4.0])["default"] is False  # and it serves again
        print(f"\n[kill -9] acknowledged before the kill: {len(acked_apps)} management changes, "
              f"{sum(acked.values())} feedbacks over {len(acked)} contexts; all present after the restart")
    finally:
        serve.stop()

"""A SIGTERM restart of ``clipper-nb serve`` under load loses no query.

A real ``clipper-nb serve`` answers a bounded closed loop of queries from four client
threads (the Python client, as a user's service would call it); midway it gets SIGTERM
(as a service manager restarts it), drains what is in flight, stops its workers, and a
new ``serve`` starts on the same port and state directory. Every query must get an
answer (a prediction or the app's default output while the model comes back): none may
be refused, reset or cut off.
"""

from __future__ import annotations

import signal
import threading

import pytest

from conftest import TOKEN, ServeProcess, wait_until, worker_pids
from clipper_nb.kernel.client import Client

pytestmark = [pytest.mark.slow, pytest.mark.fault]


def slow_double(batch):
    import time as _t

    _t.sleep(0.02)  # each batch is still running when SIGTERM arrives
    return [2.0 * row[0] for row in batch]


def test_sigterm_restart_under_load_loses_no_query(tmp_path):
    serve = ServeProcess(state_dir=str(tmp_path / "state")).start()
    port = serve.port
    serve.client().deploy(slow_double, "double", app="double", slo_ms=2000, default_output=-1.0)
    outcomes: list[str] = []
    stop = threading.Event()

    def caller(k: int) -> None:
        client = Client(serve.url, token=TOKEN, retry_s=30)
        for i in range(2_000):  # bounded: stops at `stop` long before this
            if stop.is_set():
                return
            try:
                r = client.predict("double", [float(k * 10_000 + i)])
                outcomes.append("ok" if r["output"] == 2.0 * (k * 10_000 + i) else
                                "default" if r["default"] else f"wrong {r}")
            except Exception as e:  # noqa: BLE001 - every failure is what this test counts
                outcomes.append(f"{type(e).__name__}: {e}")

    threads = [threading.Thread(target=caller, args=(k,), daemon=True) for k in range(4)]
    for t in threads:
        t.start()
    try:
        wait_until(lambda: len(outcomes) >= 50, timeout=30, message="the load to run")
        before = len(outcomes)
        serve.proc.send_signal(signal.SIGTERM)
        serve.proc.wait(60)
        assert not worker_pids(str(tmp_path / "state")), "SIGTERM left workers behind"
        serve.proc = None
        serve.start(port)
        wait_until(lambda: outcomes.count("ok") >= before + 50, timeout=60, message="answers after the restart")
    finally:
        stop.set()
        for t in threads:
            t.join(30)
        serve.stop()
    failures = [o for o in outcomes if o not in ("ok", "default")]
    print(f"\n[restart] {len(outcomes)} queries: {outcomes.count('ok')} answered by the model, "
          f"{outcomes.count('default')} default outputs, {len(failures)} failed")
    assert not failures, failures[:5]

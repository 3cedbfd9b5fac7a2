"""Edge cases of the core that a reviewer found: each test failed before its fix."""

from __future__ import annotations

import threading
import time

import pytest
import requests

from clipper_nb.errors import BadInput
from conftest import TOKEN


def _slow(batch):
    time.sleep(0.4)
    return [1] * len(batch)


def test_scaling_down_mid_batch_loses_no_query_and_poisons_no_cache_key(client, server):
    client.deploy(_slow, "slow", app="slow", slo_ms=5000, replicas=2)
    results = []

    def ask():
        results.append(client.predict("slow", [7.0]))

    threads = [threading.Thread(target=ask) for _ in range(2)]
    for t in threads:
        t.start()
    time.sleep(0.15)  # a replica holds the batch now
    client.scale("slow", 1)
    for t in threads:
        t.join(10)
    assert [r["output"] for r in results] == [1, 1], results
    # the same input again: answered, not joined to a future that never completes
    again = client.predict("slow", [7.0])
    assert again["output"] == 1 and again["default"] is False


def test_a_bad_app_change_is_a_400_and_changes_nothing(client):
    client.register_app("a", slo_ms=100)
    for change in ({"slo_ms": 50, "loss": "bogus"}, {"confidence_threshold": "high"},
                   {"loss_scale": float("inf")}, {"slo_ms": "fast"}):
        with pytest.raises(BadInput):
            client.update_app("a", **change)
    app = client.app("a")
    assert app["slo_ms"] == 100 and app["loss"] == "zero_one" and app["confidence_threshold"] is None
    with pytest.raises(BadInput, match="batch_delay_ms"):
        client.deploy(lambda b: [0] * len(b), "m", app="a", batch_delay_ms="soon")
    assert "m" not in list(client.models()["name"])


def test_queries_with_new_contexts_keep_no_state(client, server):
    client.deploy(lambda b: [0] * len(b), "m1", slo_ms=2000)
    client.deploy(lambda b: [1] * len(b), "m2", slo_ms=2000)
    client.register_app("ctx", policy="exp3", models=["m1", "m2"], slo_ms=2000)
    for i in range(50):
        client.predict("ctx", [float(i)], context=f"user-{i}")
    assert not [k for k in server.engine.selection_states if k[0] == "ctx" and k[1]]
    client.feedback("ctx", [1.0], 1, context="user-1")
    assert [k[1] for k in server.engine.selection_states if k[0] == "ctx" and k[1]] == ["user-1"]


def test_a_model_scaled_to_zero_answers_the_default_at_once_and_says_why(client):
    client.deploy(lambda b: [1] * len(b), "z", app="z", slo_ms=3000, default_output=-1)
    client.scale("z", 0)
    start = time.monotonic()
    r = client.predict("z", [1.0])
    assert time.monotonic() - start < 1.0
    assert r["default"] is True and r["output"] == -1 and "no replicas" in r["default_explanation"]
    client.scale("z", 1)
    assert client.predict("z", [1.0])["output"] == 1


def test_replica_identities_carry_a_secret_the_status_does_not_show(client, server):
    client.deploy(lambda b: [1] * len(b), "g", app="g")
    shown = client.status()
    identities = list(server.engine.backends["process"].router.replicas)
    assert len(identities) == 1
    secret = identities[0].decode().rsplit("-", 1)[1]
    assert len(secret) == 16  # 64 random bits after the serial
    rows = requests.get(f"{client.url}/api/status", headers={"Authorization": f"token {TOKEN}"}).text
    assert secret not in rows and len(shown) == 1

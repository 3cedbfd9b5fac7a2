"""The standalone dashboard page over HTTP: authentication, offline resources, caching,
and ``api/dashboard/ticks``, the route that computes what the page draws."""

from __future__ import annotations

import json
import math
import re

import requests

from _widgets_fixtures import ones, zeros
from clipper_nb.charts.series import Cursor
from clipper_nb.frontend import api
from clipper_nb.frontend import dashboard
from conftest import TOKEN, wait_until

AUTH = {"Authorization": f"token {TOKEN}"}
# A replica's socket identity ends in "-<hex secret>" after its serial: never in an answer.
SECRET = re.compile(r":\d+-[0-9a-f]{8,}")


def test_page_and_its_ticks_are_routed_under_the_prefix():
    assert (r"dashboard", api.DashboardPageHandler) in api.routes()
    assert (r"api/dashboard/ticks", api.DashboardTicksHandler) in api.routes()
    assert api.DashboardPageHandler.access == "metrics" and api.DashboardTicksHandler.access == "metrics"


def test_token_in_the_url_logs_a_browser_in_for_reads_only(server, client):
    client.deploy(zeros, "zero", app="auth-app", slo_ms=100)
    url = server.url
    assert requests.get(f"{url}/dashboard", timeout=30).status_code == 401
    assert requests.get(f"{url}/dashboard?token=wrong", timeout=30).status_code == 403
    browser = requests.Session()
    r = browser.get(f"{url}/dashboard?token={TOKEN}", timeout=60)
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/html")
    cookie = r.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and TOKEN not in cookie
    # the cookie stands in for the token: reloads and the page's own polls work ...
    assert browser.get(f"{url}/dashboard", timeout=60).status_code == 200
    assert browser.get(f"{url}/api/metrics", timeout=30).status_code == 200
    assert browser.get(f"{url}/api/dashboard/ticks", timeout=30).status_code == 200
    assert browser.get(f"{url}/api/apps", timeout=30).status_code == 200
    # ... but never for a change: a cookie rides along on cross-site requests
    assert browser.patch(f"{url}/api/apps/auth-app", json={"slo_ms": 5}, timeout=30).status_code == 401
    assert client.app("auth-app")["slo_ms"] == 100
    forged = requests.get(f"{url}/api/metrics", cookies={k: "x" * 64 for k in browser.cookies.keys()}, timeout=30)
    assert forged.status_code == 401


def test_page_has_every_app_and_no_external_resources(server, client):
    client.deploy(zeros, "m-a", app="app-a", slo_ms=100)
    client.deploy(ones, "m-b", app="app-b", slo_ms=100, replicas=2)
    page = requests.get(f"{server.url}/dashboard?token={TOKEN}", timeout=60).text
    assert "app-a" in page and "app-b" in page
    # replica names are model:version:index:serial, the serial counting every replica started
    assert re.search(r"app-b\|batch/m-b/m-b:1:0:\d+", page) and re.search(r"app-b\|batch/m-b/m-b:1:1:\d+", page)
    assert "Bokeh" in page and len(page) > 500_000  # BokehJS inline
    assert not re.search(r"""<(script|link)[^>]+(src|href)=["']?(https?:)?//""", page)
    assert "cdn.bokeh.org" not in page
    assert TOKEN not in page


def test_page_is_cached_per_set_of_apps_and_replicas(server, client):
    client.deploy(zeros, "m-c", app="app-c", slo_ms=100)
    get = lambda: requests.get(f"{server.url}/dashboard?token={TOKEN}", timeout=60).content  # noqa: E731
    first = get()
    key = next(k for k, v in dashboard._cache.items() if v == first)
    n = len(dashboard._cache)
    assert get() == first and len(dashboard._cache) == n  # a fresh render has new ids: this came from the cache
    assert dashboard._cache[key] == first
    client.scale("m-c", 2)
    second = get()
    assert second != first and re.search(rb"m-c:1:1:\d+", second)
    client.deploy(ones, "m-d", app="app-d", slo_ms=100)
    assert b"app-d" in get()
    assert len(dashboard._cache) <= dashboard._CACHE_SIZE


def test_page_spec_key_names_apps_models_and_public_replica_names():
    apps = [{"name": "b", "models": ["m2", "m1"]}, {"name": "a", "models": []}]
    status = [{"model": "m1", "name": "m1:1:0:1"}, {"model": "m2", "name": "m2:3:1:1"},
              {"model": "m2", "name": "m2:3:0:2-00ff00ff00ff00ff"}, {"model": "zz", "name": "zz:1:0:1"},
              {"model": "m1", "name": None}]
    spec = dashboard.page_spec(apps, status)
    assert [a.name for a in spec.apps] == ["a", "b"]
    assert spec.apps[1].replicas == (("m1", "m1:1:0:1"), ("m2", "m2:3:0:2"), ("m2", "m2:3:1:1"))
    # the string a tick answer carries as "layout": the page reloads when it changes
    assert spec.key == "a::|b:m2,m1:m1:1:0:1,m2:3:0:2,m2:3:1:1"


def _snapshot(now: float) -> dict:
    n = 2
    app = {"t": [100, 101], "qps": [4, 6], "goodput": [4, 6], "p50_ms": [1.0, 1.0], "p95_ms": [2.0] * n,
           "p99_ms": [3.0, None], "slo_attainment": [1.0, 0.5], "default_rate": [0.0] * n, "error_rate": [0.0] * n,
           "cache_hit_rate": [0.0] * n, "deadline_drops": [0] * n, "weights": {}}
    rep = {"t": [101], "batch_cap": [2.0], "mean_batch_size": [1.5]}
    return {"now": now, "apps": {"a": app, "b": app},
            "models": {"m": {"t": [101], "replicas": {"m:1:0:4-0123456789abcdef": rep}}}}


def test_ticks_answer_per_app_with_cursor_header_and_layout():
    apps = [{"name": "a", "models": ["m"], "slo_ms": 20.0, "policy": "exp3"}, {"name": "b", "models": []}]
    status = [{"model": "m", "name": "m:1:0:4", "state": "idle"}, {"model": "m", "name": "m:1:1:5", "state": "starting"}]
    answer = dashboard.ticks(_snapshot(102.3), apps, status, {"a": Cursor(), "gone": Cursor()}, tz_offset_s=60)
    assert list(answer["apps"]) == ["a"]  # only the apps asked for that exist
    assert answer["layout"] == dashboard.page_spec(apps, status).key and answer["now"] == 102.3
    a = answer["apps"]["a"]
    assert sorted(a["streams"]) == ["batch/m/m:1:0:4", "cache", "latency", "misses", "throughput"]
    assert a["streams"]["latency"]["x"] == [160_000.0, 161_000.0] and a["streams"]["latency"]["slo"] == [20.0, 20.0]
    assert a["numbers"]["replicas_up"] == 1 and a["numbers"]["replicas"] == 2 and a["numbers"]["qps"] == 6.0
    for text in ("20 ms", "1/2", "exp3", "3.00 ms", "70.0 %", "data-app='a'"):
        assert text in a["header"], (text, a["header"])
    assert Cursor.from_json(json.loads(api.dumps(a["cursor"]))).last_t == {"app": 101, "batch/m/m:1:0:4": 101}
    assert not SECRET.search(api.dumps(answer).decode())
    assert sorted(dashboard.ticks(_snapshot(102.3), apps, status, None)["apps"]) == ["a", "b"]  # None: all apps


def test_snapshot_since_serves_every_cursor():
    assert dashboard.snapshot_since(None) is None and dashboard.snapshot_since({}) is None
    assert dashboard.snapshot_since({"a": Cursor(since=5.0), "b": Cursor(since=3.0)}) == 3.0
    assert dashboard.snapshot_since({"a": Cursor(since=5.0), "b": Cursor()}) is None


def _get(url: str, path: str) -> dict:
    r = requests.get(f"{url}/{path}", headers=AUTH, timeout=30)
    assert r.status_code == 200, r.text
    return r.json()


def _ticks(url: str, cursor: dict | None, tz: float = 0.0) -> dict:
    params = {"tz": str(tz)}
    if cursor is not None:
        params["cursor"] = json.dumps(cursor)
    r = requests.get(f"{url}/api/dashboard/ticks", params=params, headers=AUTH, timeout=30)
    assert r.status_code == 200, r.text
    assert not SECRET.search(r.text), r.text  # replicas by public name only
    return r.json()


def test_ticks_route_streams_every_plot_after_real_queries(server, client):
    client.deploy(zeros, "tick-model", app="tick-app", slo_ms=500)
    for i in range(40):  # distinct inputs: every query misses the cache and reaches a replica
        client.predict("tick-app", [float(i), 0.5])
    client.feedback("tick-app", [0.0, 0.5], 0)  # the selection state is sampled on feedback
    (replica,) = [r["name"] for r in _get(server.url, "api/status")["replicas"] if r["model"] == "tick-model"]
    batch, weights = f"batch/tick-model/{replica}", "weights/tick-model"
    wanted = {"latency", "throughput", "cache", "misses", batch, weights}

    def complete():  # metrics report complete seconds only: wait for the ones holding the queries
        answer = _ticks(server.url, {"tick-app": {}})
        s = answer["apps"]["tick-app"]["streams"]
        done = wanted <= set(s) and sum(v for v in s["throughput"]["qps"] if v is not None) == 40
        return answer if done else None

    answer = wait_until(complete, timeout=20, interval=0.3, message="every plot's series")
    t = answer["apps"]["tick-app"]
    s = t["streams"]
    for key in wanted:
        assert len(s[key]["x"]) >= 1 and len({len(col) for col in s[key].values()}) == 1, (key, s[key])
    hits = s["cache"]["hit_rate"]
    assert all(v == 0.0 for v in hits if v is not None) and 0.0 in hits  # every query missed the cache
    assert all(v >= 1.0 for v in s[batch]["mean"] if v is not None) and max(s[batch]["cap"]) >= 1.0
    assert s[weights]["p"][-1] == 1.0  # the only model
    assert all(v == 500.0 for v in s["latency"]["slo"])
    assert t["numbers"]["slo_ms"] == 500.0 and "500 ms" in t["header"] and "1/1" in t["header"]
    assert t["numbers"]["placement"] == "process · cpu" and "runs on" in t["header"]  # a real worker's own report
    # the page's layout key, from the same apps and replicas
    spec = dashboard.page_spec(_get(server.url, "api/apps")["apps"],
                               _get(server.url, "api/status")["replicas"])
    assert answer["layout"] == spec.key and spec.apps[0].replicas == (("tick-model", replica),)
    # /api/metrics keys the replica by the same public name
    assert list(client.metrics()["models"]["tick-model"]["replicas"]) == [replica]
    # the cursor that came back streams only what is new
    again = _ticks(server.url, {"tick-app": t["cursor"]})
    for key, cols in again["apps"]["tick-app"]["streams"].items():
        assert min(cols["x"]) > max(s[key]["x"]), key
    # tz shifts x by the browser's offset; no cursor at all means every app from scratch
    shifted = _ticks(server.url, None, tz=3600)["apps"]["tick-app"]["streams"]["latency"]["x"]
    assert shifted[0] == s["latency"]["x"][0] + 3_600_000


def test_ticks_route_refuses_a_malformed_cursor_or_offset(server):
    url = f"{server.url}/api/dashboard/ticks"
    assert requests.get(url, timeout=30).status_code == 401  # a token or the login cookie, as every read
    for params in ({"cursor": "{not json"}, {"cursor": "[]"}, {"cursor": json.dumps({"a": {"since": "x"}})},
                   {"cursor": json.dumps({"a": {"last_t": {"app": 1.5}}})}, {"tz": "abc"}, {"tz": "nan"},
                   {"tz": "1e9"}):
        r = requests.get(url, params=params, headers=AUTH, timeout=30)
        assert r.status_code == 400 and set(r.json()) >= {"error", "cause"}, (params, r.text)
    assert not math.isnan(_ticks(server.url, {})["now"])

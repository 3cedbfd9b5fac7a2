"""The standalone dashboard page over HTTP: authentication, offline resources, caching."""

from __future__ import annotations

import re

import requests

from _widgets_fixtures import ones, zeros
from clipper_nb.frontend import api
from clipper_nb.frontend import dashboard
from conftest import TOKEN


def test_page_is_routed_under_the_prefix():
    assert (r"dashboard", dashboard.DashboardPageHandler) in api.routes()
    assert dashboard.DashboardPageHandler.access == "metrics"


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


def test_page_spec_key_is_what_the_script_computes():
    apps = [{"name": "b", "models": ["m2", "m1"]}, {"name": "a", "models": []}]
    status = [{"model": "m1", "name": "m1:1:0:1"}, {"model": "m2", "name": "m2:3:1:1"},
              {"model": "m2", "name": "m2:3:0:2"}, {"model": "zz", "name": "zz:1:0:1"},
              {"model": "m1", "name": None}]
    spec = dashboard.page_spec(apps, status)
    assert [a.name for a in spec.apps] == ["a", "b"]
    # the same string the page's script builds from api/apps and api/status
    assert spec.key == "a::|b:m2,m1:m1:1:0:1,m2:3:0:2,m2:3:1:1"

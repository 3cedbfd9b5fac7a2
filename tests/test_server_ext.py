"""The Jupyter server extension under pytest-jupyter: a real ServerApp on a non-root
base_url, the clipper-nb APIs mounted under ``{base_url}clipper/``, Jupyter auth.

The fixtures of pytest-jupyter are imported here rather than enabled as a plugin,
so that its event-loop hooks do not reach the rest of the suite; tests are plain
functions that run their coroutines on ``jp_asyncio_loop`` (the server's loop).
"""

from __future__ import annotations

import asyncio
import json
import os
import re

import pytest
import requests
from jupyter_server.auth import Authorizer
from pytest_jupyter.jupyter_server import *  # noqa: F403 - the jp_* fixtures
from tornado.httpclient import HTTPClientError

from clipper_nb.frontend import api
from clipper_nb.kernel.client import Client
from clipper_nb.errors import NotFound
from clipper_nb.server_ext.handlers import defined_methods
from conftest import wait_until, worker_pids

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class DenyClipper(Authorizer):
    """An authorizer that allows everything in Jupyter except the clipper resource."""

    def is_authorized(self, handler, user, action, resource) -> bool:
        return resource != "clipper"


@pytest.fixture
def jp_base_url() -> str:
    return "/a/b/"


@pytest.fixture
def clipper_options() -> dict:
    """c.ClipperNB knobs of a test (override with @pytest.mark.parametrize("clipper_options", ...))."""
    return {}


@pytest.fixture
def server_options() -> dict:
    """c.ServerApp traits of a test, besides enabling the extension."""
    return {}


@pytest.fixture
def jp_server_config(tmp_path, clipper_options, server_options):
    return {"ServerApp": {"jpserver_extensions": {"clipper_nb": True}, **server_options},
            "ClipperNB": {"state_dir": str(tmp_path / "state"), **clipper_options}}


def _extension(serverapp):
    return serverapp.web_app.settings["clipper_nb"]


def _stop_and_check_workers(serverapp, loop, marker: str) -> None:
    loop.run_until_complete(_extension(serverapp).stop_extension())
    wait_until(lambda: not worker_pids(marker, include_fork_server=True), timeout=15,
               message="workers to exit after stop_extension")


def test_extension_serves_query_management_and_metrics(jp_fetch, jp_serverapp, jp_http_port, jp_base_url,
                                                       jp_asyncio_loop, tmp_path):
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    X, y = load_iris(return_X_y=True)
    clf = LogisticRegression(max_iter=500).fit(X, y)
    token = jp_serverapp.identity_provider.token
    client = Client(f"http://127.0.0.1:{jp_http_port}{jp_base_url}clipper", token=token)
    assert _extension(jp_serverapp).url_prefix == "/a/b/clipper/"

    async def scenario() -> None:
        # The Python client blocks: run it off the server's loop, as a kernel would.
        model = await asyncio.to_thread(client.deploy, clf, "iris-lr", app="iris", slo_ms=2000)
        assert model["replicas_up"] == 1 and model["apps"] == ["iris"]
        answer = await asyncio.to_thread(client.predict, "iris", X[0].tolist())
        assert answer["output"] == clf.predict(X[:1])[0] and answer["default"] is False
        rows = await asyncio.to_thread(client.predict_batch, "iris", X[:5].tolist())
        assert [r["output"] for r in rows] == clf.predict(X[:5]).tolist()

        apps = await asyncio.to_thread(client.apps)
        assert apps["name"].tolist() == ["iris"] and apps["models"].tolist() == [["iris-lr"]]
        status = await asyncio.to_thread(client.status)
        assert status["state"].isin(["idle", "busy"]).all() and len(status) == 1
        updated = await asyncio.to_thread(client.set_slo, "iris", 500)
        assert updated["slo_ms"] == 500

        prom = await jp_fetch("clipper", "metrics")
        assert prom.headers["Content-Type"].startswith("text/plain")
        assert b"iris" in prom.body
        series = json.loads((await jp_fetch("clipper", "api", "metrics")).body)
        assert isinstance(series, dict) and series
        if "dashboard" in dict(api.routes()):  # an optional page: HTML keeps its type and may run scripts
            page = await jp_fetch("clipper", "dashboard")
            assert page.headers["Content-Type"].startswith("text/html")
            assert "default-src 'none'" not in page.headers["Content-Security-Policy"]

        # ClipperErrors raised under Jupyter still answer {"error", "cause"} with their 4xx.
        for parts, kwargs, code in [
            (("clipper", "nope", "predict"), {"method": "POST", "body": '{"input": [1, 2, 3, 4]}'}, 404),
            (("clipper", "iris", "predict"), {"method": "POST", "body": "{not json"}, 400),
            (("clipper", "iris", "predict"), {"method": "POST", "body": '{"input": [1, 2]}'}, 400),
            (("clipper", "no", "such", "route"), {}, 404),
        ]:
            with pytest.raises(HTTPClientError) as err:
                await jp_fetch(*parts, **kwargs)
            assert err.value.code == code, (parts, err.value.response.body)
            body = json.loads(err.value.response.body)
            assert {"error", "cause"} <= set(body) and body["error"]
        with pytest.raises(NotFound):
            await asyncio.to_thread(client.model, "missing")

    jp_asyncio_loop.run_until_complete(scenario())
    marker = str(tmp_path / "state")
    assert len(worker_pids(marker)) == 1
    _stop_and_check_workers(jp_serverapp, jp_asyncio_loop, marker)


def _walk():
    """Every (path, method, access) of api.routes() and the catch-all, '([^/]+)' -> 'x'.

    Under Jupyter the catch-all 404 needs credentials too, whatever public_predict says."""
    for pattern, mixin in api.routes():
        path = re.sub(r"\(\[\^/\]\+\)", "x", pattern)
        for method in defined_methods(mixin):
            yield path, method.upper(), mixin.access
    for method in ("GET", "POST", "PUT", "PATCH", "DELETE"):
        yield "some/unknown/path", method, "catch-all"


def _request(http_server_client, base_url: str, path: str, method: str, headers: dict):
    body = b"{}" if method in ("POST", "PUT", "PATCH") else None
    return http_server_client.fetch(f"{base_url}clipper/{path}", method=method, body=body, headers=headers,
                                    raise_error=False, allow_nonstandard_methods=True, request_timeout=20)


@pytest.mark.parametrize("clipper_options", [{}, {"public_predict": True}], ids=["private", "public_predict"])
def test_route_walk_refuses_requests_without_credentials(clipper_options, jp_serverapp, http_server_client, jp_base_url,
                                                         jp_asyncio_loop):
    public = bool(clipper_options.get("public_predict"))
    token = jp_serverapp.identity_provider.token
    walked = list(_walk())
    assert len(walked) >= 20  # every route and method of the API

    async def walk() -> None:
        for path, method, access in walked:
            opened = access == "open" or (public and access == "predict")
            anon = await _request(http_server_client, jp_base_url, path, method, {})
            wrong = await _request(http_server_client, jp_base_url, path, method,
                                   {"Authorization": "token not-the-token"})
            good = await _request(http_server_client, jp_base_url, path, method,
                                  {"Authorization": f"token {token}"})
            where = f"{method} {path} (access={access}, public_predict={public})"
            assert good.code not in (401, 403), where  # with credentials, auth is not what stops it
            for r in (anon, wrong):
                if opened:
                    assert r.code not in (401, 403), where
                else:
                    assert r.code in (401, 403), where
                    assert "error" in json.loads(r.body), where

    jp_asyncio_loop.run_until_complete(walk())


@pytest.mark.parametrize("public", [False, True], ids=["private", "public_predict"])
def test_standalone_route_walk_refuses_requests_without_credentials(tmp_path, public):
    """The same walk against ``clipper-nb serve``'s handlers (TokenAuthHandler), with a
    fourth credential: the right token in the URL, which opens nothing (only the
    dashboard's GET takes it, to log a browser in)."""
    from clipper_nb.frontend.server import Server

    token = "walk-token"
    with Server(state_dir=str(tmp_path / "state"), port=0, token=token, public_predict=public) as srv:
        srv.start_in_thread()
        for path, method, access in _walk():
            access = "predict" if access == "catch-all" else access
            opened = access == "open" or (public and access == "predict")
            body = b"{}" if method in ("POST", "PUT", "PATCH") else None
            headers = {"Content-Type": "application/json"} if body else {}

            def call(extra: dict, query: str = "", path=path, method=method, body=body, headers=headers):
                return requests.request(method, f"{srv.url}/{path}{query}", data=body, headers={**headers, **extra},
                                        timeout=20, allow_redirects=False)

            where = f"{method} {path} (access={access}, public_predict={public})"
            good = call({"Authorization": f"token {token}"})
            assert good.status_code not in (401, 403), where
            for r in (call({}), call({"Authorization": "token not-the-token"}), call({}, f"?token={token}")):
                if opened:
                    assert r.status_code not in (401, 403), where
                elif (path, method) == ("dashboard", "GET") and "token=" in r.url:
                    assert r.status_code == 200, where  # the one URL that takes a token
                else:
                    assert r.status_code in (401, 403), where
                    assert "error" in r.json(), where


@pytest.mark.parametrize("server_options", [{"authorizer_class": DenyClipper}])
def test_jupyter_authorizer_decides(jp_fetch, jp_asyncio_loop):
    """@authorized is applied: an authorizer denying resource 'clipper' refuses a valid token."""

    async def check() -> None:
        ok = await jp_fetch("api", "status")  # Jupyter's own API is allowed
        assert ok.code == 200
        for parts, kwargs in [(("clipper", "api", "health"), {}), (("clipper", "metrics"), {}),
                              (("clipper", "iris", "predict"), {"method": "POST", "body": "{}"})]:
            with pytest.raises(HTTPClientError) as err:
                await jp_fetch(*parts, **kwargs)
            assert err.value.code == 403, parts

    jp_asyncio_loop.run_until_complete(check())


@pytest.mark.parametrize("clipper_options", [{"default_slo_ms": 37.0, "cache_mb": 0.0}], ids=["knobs"])
def test_jupyter_config_reaches_the_knobs(jp_serverapp, jp_asyncio_loop, clipper_options):
    """c.ClipperNB.* in the server's config is what the Engine runs with."""
    extension = _extension(jp_serverapp)
    assert extension.knobs.state_dir.endswith("state")  # c.ClipperNB.state_dir was honoured
    assert extension.knobs.default_slo_ms == 37.0 and extension.knobs.cache_bytes == 0
    engine = jp_asyncio_loop.run_until_complete(extension.ensure_engine())
    assert engine.config is extension.knobs
    app = jp_asyncio_loop.run_until_complete(engine.register_app("no-slo"))
    assert app["slo_ms"] == 37.0
    jp_asyncio_loop.run_until_complete(extension.stop_extension())


def test_state_dir_default_and_traits_documented():
    from jupyter_core.paths import jupyter_data_dir

    from clipper_nb.config import ClipperNB
    from clipper_nb.server_ext import ClipperNBExtension

    # Under Jupyter, state lives in the data dir unless the config says otherwise.
    assert ClipperNB(parent=ClipperNBExtension()).state_dir == os.path.join(jupyter_data_dir(), "clipper_nb")
    assert ClipperNB().state_dir == "clipper-state"  # clipper-nb serve: the working directory
    for cls in (ClipperNB, ClipperNBExtension):
        for name, trait in cls.class_own_traits(config=True).items():
            assert trait.help, f"{cls.__name__}.{name} has no help text"


def test_packaged_config_enables_the_extension():
    """The JSON that pip installs into etc/jupyter/jupyter_server_config.d enables a valid
    extension package (the real-server tests load the extension through this file)."""
    import tomllib

    from jupyter_server.extension.manager import ExtensionPackage

    rel = "jupyter-config/jupyter_server_config.d/clipper_nb.json"
    with open(os.path.join(REPO, "pyproject.toml"), "rb") as f:
        data_files = tomllib.load(f)["tool"]["setuptools"]["data-files"]
    assert data_files["etc/jupyter/jupyter_server_config.d"] == [rel]
    with open(os.path.join(REPO, rel)) as f:
        assert json.load(f) == {"ServerApp": {"jpserver_extensions": {"clipper_nb": True}}}
    package = ExtensionPackage(name="clipper_nb", enabled=True)
    assert package.validate()
    (point,) = package.extension_points.values()
    assert point.name == "clipper_nb" and point.app.__class__.__name__ == "ClipperNBExtension"

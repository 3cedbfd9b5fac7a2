"""Property-based fuzzing of the HTTP API: whatever a caller sends, a bad request is a 4xx.

Hypothesis generates JSON bodies (any shape, deep nesting, huge and odd numbers,
unicode, wrong types where the API expects others) and raw bytes, and sends them to
every body-taking route of a live in-process server (real worker processes behind it)
with and without the token. The property: no answer is a 5xx, every answer is JSON
with an ``error`` when it is not a 2xx, and the server keeps answering real queries.
The number of examples is bounded (``FUZZ_EXAMPLES``); ``benchmarks/soak.py --fuzz``
sends more.
"""

from __future__ import annotations

import json
import os

import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import TOKEN, client_of

FUZZ_EXAMPLES = int(os.environ.get("CLIPPER_NB_FUZZ_EXAMPLES", "250"))
AUTH = {"Authorization": f"token {TOKEN}"}

_scalars = st.one_of(st.none(), st.booleans(), st.integers(min_value=-(10 ** 30), max_value=10 ** 30),
                     st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=20))
_json = st.recursive(_scalars, lambda inner: st.one_of(st.lists(inner, max_size=5),
                                                       st.dictionaries(st.text(max_size=8), inner, max_size=5)),
                     max_leaves=30)
_keys = st.sampled_from(["input", "input_batch", "label", "context", "uid", "name", "slo_ms", "policy",
                         "policy_options", "input_type", "default_output", "models", "replicas", "version",
                         "cache", "confidence_threshold", "loss", "inputs", "outputs", "id", "parameters"])
_bodies = st.one_of(_json, st.dictionaries(_keys, _json, max_size=4),
                    st.fixed_dictionaries({"input": _json}), st.fixed_dictionaries({"input_batch": _json}),
                    st.fixed_dictionaries({"input": _json, "label": _json}))
_deep = st.integers(min_value=1, max_value=3000).map(lambda n: "[" * n + "1" + "]" * n)
_raw = st.one_of(st.binary(max_size=64), _deep.map(str.encode),
                 st.sampled_from([b"1e999999", b"-1e400", b"NaN", b'{"input": [1e309]}', b'{"input": NaN}',
                                  b'{"input": [[], [], []]}', b'\xff\xfe', b'{"input": "\\ud800"}']))

ROUTES = [("POST", "fz/predict"), ("POST", "fz/update"), ("POST", "api/apps"), ("PATCH", "api/apps/fz"),
          ("POST", "api/apps/fz/links"), ("PATCH", "api/models/fz-model"), ("POST", "api/models/fz-model/rollback"),
          ("POST", "v2/models/fz/infer"), ("POST", "nope/predict")]


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    from clipper_nb.frontend.server import Server

    srv = Server(state_dir=str(tmp_path_factory.mktemp("fuzz") / "state"), port=0, token=TOKEN,
                 public_predict=True).start_in_thread()
    client = client_of(srv)
    # A model that answers any input: whatever goes wrong below is the server's doing, not the
    # model's (a model failing on an input is a ModelError of its own queries, tested elsewhere).
    client.deploy(lambda batch: [0.0] * len(batch), "fz-model", app="fz", slo_ms=2000)
    yield srv
    srv.stop_thread()


def _check(live, method: str, path: str, body: bytes, headers: dict) -> None:
    r = requests.request(method, f"{live.url}/{path}", data=body, timeout=30,
                         headers={"Content-Type": "application/json", **headers})
    assert r.status_code < 500, (method, path, body[:300], r.status_code, r.text[:500])
    if r.status_code >= 400:
        assert "error" in r.json(), r.text[:300]


@settings(max_examples=FUZZ_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
@given(route=st.sampled_from(ROUTES), body=_bodies, authed=st.booleans())
def test_fuzzed_json_bodies_never_get_a_5xx(live, route, body, authed):
    _check(live, *route, json.dumps(body).encode(), AUTH if authed else {})


@settings(max_examples=FUZZ_EXAMPLES // 2, deadline=None, suppress_health_check=list(HealthCheck), database=None)
@given(route=st.sampled_from(ROUTES), body=_raw)
def test_fuzzed_raw_bodies_never_get_a_5xx(live, route, body):
    _check(live, *route, body, AUTH)


def test_the_server_still_answers_after_the_fuzzing(live):
    assert client_of(live).predict("fz", [1.0, 2.0])["output"] == 0.0


@pytest.mark.parametrize("method, path, body, says", [
    ("PATCH", "api/apps/fz", {"policy_options": 5}, "policy_options must be an object"),
    ("PATCH", "api/apps/fz", {"policy": "exp3", "policy_options": [1]}, "policy_options must be an object"),
])
def test_settings_of_the_wrong_kind_are_a_400_that_says_so(live, method, path, body, says):
    """Bodies the fuzzing reached only rarely (a token and the right key with a value of
    the wrong kind): each was a 500 TypeError."""
    r = requests.request(method, f"{live.url}/{path}", json=body, headers=AUTH, timeout=30)
    assert r.status_code == 400 and says in r.json()["error"], (r.status_code, r.text)
    assert client_of(live).predict("fz", [1.0, 2.0])["output"] == 0.0


def test_a_deploy_with_a_device_of_the_wrong_kind_is_refused_before_any_worker_starts(live):
    from clipper_nb.errors import BadInput

    with pytest.raises(BadInput, match="device must be 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps', got \\[1\\]"):
        client_of(live).deploy(lambda batch: [1.0] * len(batch), "fz-device", device=[1])
    assert "fz-device" not in client_of(live).models()["name"].tolist()

"""What a newcomer meets after ``deploy``: an endpoint card, the model's own output, plain errors.

Real worker processes behind an in-process server (``tests/conftest.py``'s ``server``).
"""

from __future__ import annotations

import pandas as pd
import pytest

from clipper_nb.errors import NotFound
from clipper_nb.kernel.endpoint import Endpoint


def chatty(batch):
    print(f"the model saw a batch of {len(batch)}")  # not flushed: the worker's output is line-buffered
    if any(row[0] < 0 for row in batch):
        raise ValueError("negative inputs are not allowed")
    return [2.0 * row[0] for row in batch]


def test_deploy_returns_an_endpoint_card(server, client):
    ep = client.deploy(chatty, "chatty", app="hour", slo_ms=2000)
    assert isinstance(ep, Endpoint) and ep["version"] == "1" and ep.url == f"{client.url}/hour/predict"
    assert ep["app_created"] == {"name": "hour", "slo_ms": 2000.0, "policy": "single", "input_type": "floats"}
    card = ep._repr_html_()
    assert f"<code>{ep.url}</code>" in card and "created application <b>hour</b>" in card
    assert "$CLIPPER_NB_TOKEN" in card and client.headers["Authorization"].split()[1] not in card  # never the token
    assert "<td>0</td><td>idle</td>" in card  # the replica table
    snippets = ep.snippets([1.5])
    assert snippets["curl"].startswith(f"curl -X POST {ep.url} -H \"Authorization: token $CLIPPER_NB_TOKEN\"")
    assert "c.predict('hour', [1.5])" in snippets["python"] and "tritonclient" in snippets["v2"]
    again = client.deploy(chatty, "chatty", app="hour")
    assert "app_created" not in again  # linking into an existing app says nothing
    assert ep.rollback(1)["version"] == "1"


def test_the_model_output_and_tracebacks_are_readable_from_the_client(server, client):
    client.deploy(chatty, "chatty2", app="hour2", slo_ms=2000)
    assert client.predict("hour2", [1.0])["output"] == 2.0
    with pytest.raises(Exception) as failed:
        client.predict("hour2", [-1.0])
    assert "negative inputs are not allowed" in str(failed.value)  # the cause is in the text
    logs = client.logs("chatty2")
    assert logs.startswith("--- chatty2 v1 replica 0 ---")
    assert "the model saw a batch of 1" in logs and "ValueError: negative inputs are not allowed" in logs


def test_errors_carry_their_cause_and_tables_show_times(server, client):
    client.register_app("digits", slo_ms=50)
    with pytest.raises(NotFound) as e:
        client.app("digit")
    assert "no application named 'digit'" in str(e.value) and "digits" in str(e.value)
    apps = client.apps()
    assert pd.api.types.is_datetime64_any_dtype(apps["created"])


def _pipeline():
    from sklearn.compose import ColumnTransformer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder

    frame = pd.DataFrame({"age": [20, 35, 50, 65, 30, 45, 60, 25], "city": ["Lyon", "Paris", "Lyon", "Nice",
                                                                          "Nice", "Paris", "Lyon", "Paris"]})
    labels = [0, 1, 0, 1, 1, 0, 1, 0]
    pre = ColumnTransformer([("city", OneHotEncoder(handle_unknown="ignore"), ["city"]), ("age", "passthrough", ["age"])])
    return make_pipeline(pre, LogisticRegression()).fit(frame, labels), frame


def test_records_reach_a_pipeline_as_a_dataframe(server, client):
    """A scikit-learn pipeline that selects columns by name: rows as named fields, queried
    one by one, as a DataFrame batch, and with the wrong fields (a clear 400)."""
    from clipper_nb.errors import BadInput

    model, frame = _pipeline()
    ep = client.deploy(model, "by-name", app="people", input_type="records", slo_ms=3000)
    assert ep["input_type"] == "records"
    want = model.predict(frame).tolist()
    assert client.predict("people", {"age": 20, "city": "Lyon"})["output"] == want[0]
    assert client.predict("people", frame.iloc[3])["output"] == want[3]  # a pandas Series is one row
    assert [r["output"] for r in client.predict_batch("people", frame)] == want  # a DataFrame: a row per query
    with pytest.raises(BadInput, match="missing: city") as e:
        client.predict("people", {"age": 20})
    assert "fitted on: age, city" in str(e.value) or "fitted on: city, age" in str(e.value)
    with pytest.raises(BadInput, match="unknown: zip"):
        client.predict("people", {"age": 20, "city": "Lyon", "zip": "69001"})
    with pytest.raises(BadInput, match="named fields"):
        client.predict("people", [20, 1.0])

"""What ``deploy`` returns: the model's description, shown in a notebook as an endpoint card.

An :class:`Endpoint` is the ``dict`` the server answered (``version``, ``replicas``, ...,
so code that indexes it keeps working) plus what a data scientist wants next: the URL,
copy-ready ``curl``, Python and V2 (tritonclient) snippets with the token read from an
environment variable (never the token itself), the replicas and their state, a link to
the dashboard, and methods::

    ep = c.deploy(clf, "digits-lr", app="digits")
    ep                      # the card (in a notebook), or a short text elsewhere
    ep.logs()               # what the replicas printed, tracebacks included
    ep.dashboard()          # the live dashboard widget of its application
    ep.rollback(1); ep.undeploy()
"""

from __future__ import annotations

import html
import json
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the client builds endpoints; importing it here would be a cycle
    from clipper_nb.kernel.client import Client

__all__ = ["Endpoint", "with_progress"]

TOKEN_VAR = "CLIPPER_NB_TOKEN"


def copied_headers(client: Client) -> dict[str, str]:
    """What a copied call (curl, tritonclient) sends to get in as ``client`` does: its token,
    read from ``$CLIPPER_NB_TOKEN``; for a client without one, a matching XSRF header and
    cookie, which a token-less Jupyter asks of every POST without an Authorization header
    (other servers ignore both). Values may hold ``$CLIPPER_NB_TOKEN``."""
    headers = client.headers
    if headers.get("Authorization"):
        return {"Authorization": f"token ${TOKEN_VAR}"}
    if headers.get("X-XSRFToken"):
        return {"X-XSRFToken": "clipper", "Cookie": "_xsrf=clipper"}
    return {}


def curl_auth(client: Client) -> str:
    """:func:`copied_headers` as ``curl`` options, each followed by a space."""
    return "".join(f'-H "{k}: {v}" ' for k, v in copied_headers(client).items())


def _python_headers(client: Client) -> str:
    """:func:`copied_headers` as a Python expression (the token from the environment)."""
    parts = [f"{k!r}: " + (f"'token ' + os.environ[{TOKEN_VAR!r}]" if v.endswith(TOKEN_VAR) else repr(v))
             for k, v in copied_headers(client).items()]
    return "{" + ", ".join(parts) + "}"


class Endpoint(dict):
    """A deployed model version: its description (a dict) and its endpoint card."""

    def __init__(self, client: Client, described: dict) -> None:
        super().__init__(described)
        self.client = client

    @property
    def name(self) -> str:
        return self["name"]

    @property
    def apps(self) -> list[str]:
        return list(self.get("apps") or [])

    @property
    def url(self) -> str | None:
        """The query endpoint of the first application this model serves (None: not linked)."""
        return f"{self.client.url}/{self.apps[0]}/predict" if self.apps else None

    def snippets(self, x: Any = None) -> dict[str, str]:
        """Copy-ready ``curl``, ``python`` and ``v2`` calls (the token comes from $CLIPPER_NB_TOKEN)."""
        if not self.apps:
            return {}
        app, body = self.apps[0], json.dumps({"input": x if x is not None else _example(self)})
        auth = curl_auth(self.client)
        host = self.client.url.split("://", 1)[-1]
        return {
            "curl": f"curl -X POST {self.url} {auth}-H 'Content-Type: application/json' -d '{body}'",
            "python": (f"import os, clipper_nb\nc = clipper_nb.connect({self.client.url!r}, "
                       f"token=os.environ.get({TOKEN_VAR!r}))\nc.predict({app!r}, {body[10:-1]})"),
            "v2": (f"import os, numpy as np, tritonclient.http as tc\nt = tc.InferenceServerClient({host!r})\n"
                   f"x = tc.InferInput('input', [1, {_width(self)}], 'FP64'); x.set_data_from_numpy(np.zeros((1, "
                   f"{_width(self)})))\nt.infer({app!r}, [x], headers={_python_headers(self.client)})"
                   ".as_numpy('output')"),
        }

    def logs(self, tail: int = 20_000) -> str:
        """What each replica printed (the last ``tail`` bytes each), tracebacks included."""
        return self.client.logs(self.name, tail=tail)

    def dashboard(self, **options: Any) -> Any:
        """The live dashboard widget of the first application this model serves."""
        if not self.apps:
            raise ValueError(f"model {self.name!r} serves no application: deploy it with app=NAME")
        return self.client.dashboard(self.apps[0], **options)

    def rollback(self, version: str | int) -> Endpoint:
        return Endpoint(self.client, self.client.rollback(self.name, version))

    def undeploy(self) -> dict:
        return self.client.undeploy(self.name)

    def __repr__(self) -> str:
        where = self.url or "not linked to an application"
        return f"<Endpoint {self.name} v{self.get('version')}: {where} ({self.get('replicas_up', 0)}/" \
               f"{self.get('replicas', 0)} replicas up)>"

    def _repr_html_(self) -> str:
        e = html.escape
        rows = "".join(f"<tr><td>{r['replica']}</td><td>{e(str(r['state']))}</td><td>{e(str(r.get('device')))}"
                       f"</td><td>{e(str(r.get('backend', '')))}</td></tr>" for r in self._replicas())
        created = self.get("app_created")
        note = (f"<p>created application <b>{e(created['name'])}</b> (SLO {created['slo_ms']:g} ms)</p>"
                if created else "")
        code = "".join(f"<p style='margin:6px 0 2px'>{label}</p><pre style='white-space:pre-wrap;margin:0'>"
                       f"{e(text)}</pre>" for label, text in self.snippets().items())
        dash = f"{self.client.url}/dashboard"
        return (f"<div class='clipper-endpoint' style='font-family:sans-serif;border:1px solid #ccc;padding:8px'>"
                f"<b>{e(self.name)}</b> v{e(str(self.get('version')))} · <code>{e(self.url or '(no app)')}</code>"
                f"{note}<table><tr><th>replica</th><th>state</th><th>device</th><th>backend</th></tr>{rows}"
                f"</table>{code}<p>token: <code>${TOKEN_VAR}</code> · <a href='{e(dash)}' target='_blank'>"
                f"dashboard</a> · <code>.logs()</code> <code>.dashboard()</code> <code>.rollback(v)</code> "
                f"<code>.undeploy()</code></p></div>")

    def _replicas(self) -> list[dict]:
        try:
            return [r for r in self.client.status().to_dict("records") if r["model"] == self.name]
        except Exception:  # noqa: BLE001 - the card shows what it can; the deploy itself succeeded
            return []


def _width(ep: Endpoint) -> int:
    shape = ep.get("input_shape") or [1]
    return int(shape[-1]) if shape else 1


def _example(ep: Endpoint) -> list:
    return [0.0] * _width(ep)


def with_progress(label: str, work: Callable[[], Any], every_s: float = 0.5) -> Any:
    """Run ``work()``; in a notebook, show ``label`` with the seconds elapsed meanwhile."""
    try:
        from IPython import get_ipython  # optional: plain scripts have no display
        from IPython.display import display
    except ImportError:
        return work()
    shell = get_ipython()
    if shell is None or not hasattr(shell, "kernel"):
        return work()
    handle = display(f"{label} …", display_id=True)
    start, done = time.monotonic(), threading.Event()

    def tick() -> None:
        while not done.wait(every_s):
            handle.update(f"{label} … {time.monotonic() - start:.1f} s")

    threading.Thread(target=tick, daemon=True).start()
    try:
        result = work()
    except BaseException:
        done.set()
        handle.update(f"{label}: failed after {time.monotonic() - start:.1f} s")
        raise
    done.set()
    handle.update(f"{label}: done in {time.monotonic() - start:.1f} s")
    return result

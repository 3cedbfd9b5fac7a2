"""``clipper-nb demo``: the whole path on an embedded default, in about half a minute.

Starts a server in this process on a free port with its own state directory, trains
and deploys a scikit-learn and a torch model, queries them over HTTP, prints a table
and stops everything. Any ``--ClipperNB.knob=value`` applies to that server.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from typing import Any

import numpy as np
from traitlets import Integer
from traitlets.config import Application

from clipper_nb.config import ClipperNB
from clipper_nb.frontend.server import Server
from clipper_nb.kernel.client import Client

__all__ = ["DemoApp", "run_demo"]


def _train():
    import torch
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression

    X, y = load_digits(return_X_y=True)
    X = X / 16.0
    lr = LogisticRegression(max_iter=500).fit(X[:1500], y[:1500])
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10))
    opt = torch.optim.Adam(net.parameters(), lr=0.01)
    xt, yt = torch.tensor(X[:1500], dtype=torch.float32), torch.tensor(y[:1500])
    for _ in range(200):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(xt), yt).backward()
        opt.step()
    return X[1500:], y[1500:], lr, net


def run_demo(replicas: int = 1, queries: int = 200, **knobs: Any) -> int:
    """Train, deploy, query and print; 0 when both models answered well. ``knobs``: ClipperNB traits."""
    X, y, lr, net = _train()
    rows = []
    with tempfile.TemporaryDirectory(prefix="clipper-nb-demo-") as state_dir:
        with Server(**{**knobs, "state_dir": state_dir}, port=0).start_in_thread() as server:
            client = Client(server.url, token=server.token)
            print(f"clipper-nb demo server on {server.url}")
            client.deploy(lr, "digits-lr", app="digits-sklearn", slo_ms=50, replicas=replicas)
            client.deploy(net, "digits-mlp", app="digits-torch", slo_ms=50, replicas=replicas,
                          input_type="floats")
            for app, model in (("digits-sklearn", "digits-lr"), ("digits-torch", "digits-mlp")):
                latencies, correct, answers = [], 0, []
                for i in range(queries):
                    t = time.perf_counter()
                    out = client.predict(app, X[i % len(X)].tolist())
                    latencies.append((time.perf_counter() - t) * 1000)
                    pred = out["output"]
                    if isinstance(pred, list):  # the torch model answers logits
                        pred = int(np.argmax(pred))
                    correct += int(pred == y[i % len(X)]) and not out["default"]
                    answers.append(pred)
                batch = client.predict_batch(app, X[:100].tolist())
                info = client.model(model)
                rows.append((model, info["kind"], info["replicas_up"], statistics.median(latencies),
                             correct / queries, len(batch), answers[:5]))
    print()
    print(f"{'model':<12} {'kind':<8} {'replicas':>8} {'p50 ms':>7} {'accuracy':>8} {'batch':>6}  first predictions")
    for model, kind, up, p50, acc, nbatch, first in rows:
        print(f"{model:<12} {kind:<8} {up:>8} {p50:>7.2f} {acc:>8.3f} {nbatch:>6}  {first}")
    ok = all(r[2] == replicas and r[4] > 0.8 and r[5] == 100 for r in rows)
    print("\ndemo", "passed" if ok else "FAILED")
    return 0 if ok else 1


class DemoApp(Application):
    """``clipper-nb demo``."""

    name = "clipper-nb-demo"
    description = "Start a server, deploy a scikit-learn and a torch model, query them over HTTP, print a table."
    classes = [ClipperNB]
    aliases = {"replicas": "DemoApp.replicas", "queries": "DemoApp.queries"}

    replicas = Integer(1, min=1, help="Replicas of each model.").tag(config=True)
    queries = Integer(200, min=1, help="Queries sent to each application.").tag(config=True)

    def start(self) -> int:
        knobs = ClipperNB(parent=self).trait_values(config=True)
        knobs.pop("state_dir")  # the demo always uses a fresh temporary one
        return run_demo(replicas=self.replicas, queries=self.queries, **knobs)

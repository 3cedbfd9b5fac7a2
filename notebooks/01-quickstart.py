# %% [markdown]
# # 01 · Quickstart: from a trained model to a REST endpoint
#
# [Clipper](https://www.usenix.org/conference/nsdi17/technical-sessions/presentation/crankshaw)
# (NSDI 2017) puts a serving layer between applications and models: applications send
# queries to an **application** endpoint, Clipper routes them to **models** running in
# their own processes (**replicas**), and answers within the application's latency
# objective (**SLO**). clipper-nb rebuilds it inside Jupyter: the server that runs this
# notebook also serves your models.
#
# In this notebook you will train a classifier, deploy it with one magic, query it over
# HTTP (Python `requests` and `curl`), watch it live on the dashboard, deploy a second
# version and roll back to the first.

# %%
# %load_ext clipper_nb
import clipper_nb

c = clipper_nb.connect()   # the Jupyter server that started this kernel, else one started here
c

# %% [markdown]
# ## Train a model
#
# The handwritten digits shipped with scikit-learn: 8×8 images as 64 features.

# %%
import numpy as np
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split

X, y = load_digits(return_X_y=True)
X_train, X_test, y_train, y_test = train_test_split(X / 16, y, test_size=300, random_state=0)
clf = LogisticRegression(max_iter=2000).fit(X_train, y_train)
print(f"test accuracy in the notebook: {clf.score(X_test, y_test):.3f}")

# %% [markdown]
# ## Deploy it
#
# `%clipper deploy` pickles the live object, starts a worker process that loads it, and
# links it to the application `quickstart` (created here with a 100 ms SLO: the paper's
# experiments use 20 ms on a dedicated server; this notebook may share two cores with
# other work, so we leave headroom). It prints the endpoint and a ready-to-copy `curl`
# line.

# %%
# %clipper deploy clf --name quickstart-clf --app quickstart --slo 100ms

# %% [markdown]
# ## Query it over HTTP
#
# The query API is Clipper's: `POST <prefix>/<app>/predict` with `{"input": [...]}`. Inside
# Jupyter it sits behind Jupyter's authentication; `c.headers` holds what a raw HTTP call
# must send to pass it (the token, never printed here; or, under a token-less Jupyter,
# the XSRF cookie and header Jupyter asks of a POST).

# %%
import requests

answer = requests.post(f"{c.url}/quickstart/predict", json={"input": X_test[0].tolist()},
                       headers=c.headers, timeout=10).json()
print(answer, "| true label:", y_test[0])

# %% [markdown]
# The same from a shell with `curl`: IPython fills in the `{...}` parts from Python, so
# the token goes to curl without appearing in the notebook. A batch of inputs goes in
# one request as `input_batch`.

# %%
import json
import shlex

query = shlex.quote(json.dumps({"input_batch": X_test[:3].round(3).tolist()}))
auth = " ".join("-H " + shlex.quote(f"{name}: {value}") for name, value in c.headers.items())
# !curl -s -X POST {c.url}/quickstart/predict {auth} -H "Content-Type: application/json" -d {query}

# %% [markdown]
# ## Watch it live
#
# The dashboard polls the server's metrics: latency percentiles against the SLO,
# queries per second, the batch sizes AIMD picks, cache hit rate. Its load generator
# sends Poisson traffic from this kernel; we drive it from code for a few seconds (the
# toggle and the QPS slider do the same by hand).

# %%
import asyncio

dash = c.dashboard("quickstart", load_inputs=X_test.round(3).tolist())
dash

# %%
dash.load.start(qps=50)
await asyncio.sleep(4)          # the kernel stays free: the dashboard updates meanwhile
dash.load.stop()
await dash.load.wait()
light_load = dash.load.last_result
print(light_load.summary_line())


# %% [markdown]
# ## A second version, and a rollback
#
# Deploying under the same model name makes a new **version**; it replaces the running
# one once its replicas have loaded, and every version stays stored. Here version 2 is
# a worse model (trained on 60 examples), which the served accuracy shows; one magic
# rolls back.

# %%
def served_accuracy():
    """Accuracy of the application's answers on the test set."""
    # Every row is a query with the 100 ms SLO, and a row that misses it is answered
    # with the application's default output ("default": true), never late. A replica
    # that has just started is slow on its first calls and starts with small batches
    # (AIMD grows them), so we ask again for the rows that got the default.
    outputs = [None] * len(X_test)
    for attempt in range(30):
        todo = [i for i, out in enumerate(outputs) if out is None]
        if not todo:
            break
        for start in range(0, len(todo), 30):
            chunk = todo[start:start + 30]
            for i, answer in zip(chunk, c.predict_batch("quickstart", X_test[chunk])):
                if not answer["default"]:
                    outputs[i] = answer["output"]
    return float(np.mean([out == label for out, label in zip(outputs, y_test)]))

acc_v1 = served_accuracy()
weak = LogisticRegression(max_iter=2000).fit(X_train[:60], y_train[:60])
# %clipper deploy weak --name quickstart-clf --app quickstart
acc_v2 = served_accuracy()
# %clipper rollback quickstart-clf 1
acc_rolled_back = served_accuracy()
print(f"served accuracy: v1 {acc_v1:.3f}, v2 {acc_v2:.3f}, after rollback {acc_rolled_back:.3f}")
# %clipper models

# %% [markdown]
# ## Summary
#
# Our numbers next to the paper's. The latency row is measured above (open-loop load
# at 50 queries/s).

# %%
from _nbhelpers import summary_table   # _nbhelpers.py, next to the notebooks

summary = summary_table(
    ours={
        "p99 latency at 50 q/s (ms)": round(light_load.p99_ms, 1),
        "served accuracy v1 / v2 / after rollback": f"{acc_v1:.3f} / {acc_v2:.3f} / "
                                                    f"{acc_rolled_back:.3f}",
    },
    paper={
        "p99 latency at 50 q/s (ms)": "under the 20 ms SLO of the paper's experiments",
        "served accuracy v1 / v2 / after rollback": "versions and rollback are part of Clipper's "
                                                    "model management",
    },
)
summary

# %% [markdown]
# ## Clean up
#
# Stop the dashboard (it keeps its last picture) and remove what this notebook deployed.

# %%
dash.stop()
# %clipper undeploy quickstart-clf
c.delete_app("quickstart")

# %% [markdown]
# # 05 · Straggler mitigation
#
# An ensemble (Exp4) asks every linked model. Its latency is then the latency of the
# *slowest* model, and with many models some model is almost always having a slow
# moment (a garbage collection, a noisy neighbour, a cold cache): the tail of the
# ensemble is the tail of the worst.
#
# Clipper never waits for stragglers: when the application's deadline comes, it
# answers with the models that have replied (their weighted vote, with a lower
# confidence) and lets the late ones finish into the cache. The paper: ensemble p99
# of **17-23 ms with mitigation vs 129-156 ms without**.
#
# The confidence is the agreement over the whole ensemble: the weight of the models
# whose answer agrees, over the weight of every model the query was sent to. A model
# that missed the deadline counts as disagreeing ("3 of 4 agree" is 0.75, even when the
# three that replied agree with each other), so an app's `confidence_threshold` can
# catch answers that stragglers left thin.

# %%
# %load_ext clipper_nb
import clipper_nb

c = clipper_nb.connect()   # finds the Jupyter server that started this kernel: no URL, no token to type
c

# %%
import numpy as np
import pandas as pd

from _nbhelpers import clipper_load, summary_table   # _nbhelpers.py, next to the notebooks

def sometimes_slow(batch):
    """Usually 2 ms per call; 4% of calls straggle for 150 ms."""
    import random
    import time
    time.sleep(0.150 if random.random() < 0.04 else 0.002)
    return [int(row[0] * 10) % 10 for row in batch]

members = [f"member-{i}" for i in range(4)]     # four replicas of the ensemble, each its own model
for name in members:
    c.deploy(sometimes_slow, name)

# %% [markdown]
# Two applications link the same four models with the Exp4 policy and a 20 ms SLO; one
# waits for every model (`straggler_mitigation=False`). The cache is off so that both
# see the same work.

# %%
for app, mitigate in [("ensemble", True), ("ensemble-waits", False)]:
    c.register_app(app, policy="exp4", models=members, slo_ms=20, cache=False,
                   straggler_mitigation=mitigate)
rows = np.random.default_rng(0).random((4096, 8)).round(4).tolist()

loads = {}
for app in ["ensemble", "ensemble-waits"]:
    loads[app] = clipper_load(app, "--concurrency 4 --duration 3s --input rows")   # %clipper load ... --wait
pd.DataFrame({app: {"queries/s": round(r.qps), "p50 (ms)": round(r.p50_ms, 1), "p99 (ms)": round(r.p99_ms, 1),
                    "defaults": r.defaults} for app, r in loads.items()}).T

# %% [markdown]
# What a mitigated answer looks like: when a model misses the deadline, the answer
# names it in `models_missing`, and the missing model counts against its confidence.
# The four members always agree here (they compute the same function), so a complete
# answer has confidence 1.0 and an answer missing k of the 4 equally weighted models
# has (4 - k) / 4. (A query none of the members answered in time gets the default
# output, without a confidence.)

# %%
answers = []
for x in rows[:600]:                 # until 20 answers lacked a model, or 600 queries
    answers.append(c.predict("ensemble", x))
    if sum(bool(a.get("models_missing")) for a in answers) >= 20:
        break
answered = [a for a in answers if not a["default"]]
partial = [a for a in answered if a.get("models_missing")]
print(f"{len(partial)} of {len(answered)} answers were given without a straggling model "
      f"({len(answers) - len(answered)} of {len(answers)} queries got the default output)")
partial[:1]

# %%
by_missing = pd.DataFrame({
    "models missing": [len(a.get("models_missing", ())) for a in answered],
    "confidence": [a["confidence"] for a in answered],
}).groupby("models missing")["confidence"].agg(["size", "mean", "max"]).rename(
    columns={"size": "answers", "mean": "mean confidence", "max": "highest confidence"}).round(3)
by_missing

# %% [markdown]
# ## Summary

# %%
summary = summary_table(
    ours={
        "ensemble p99 with straggler mitigation (ms)": round(loads["ensemble"].p99_ms, 1),
        "ensemble p99 waiting for every model (ms)": round(loads["ensemble-waits"].p99_ms, 1),
        "highest confidence of an answer missing a model":
            round(max(a["confidence"] for a in partial), 2) if partial else "no answer missed a model",
    },
    paper={
        "ensemble p99 with straggler mitigation (ms)": "17-23",
        "ensemble p99 waiting for every model (ms)": "129-156",
        "highest confidence of an answer missing a model": "agreement over the ensemble: a missing "
                                                          "model does not agree (3 of 4: 0.75)",
    },
)
summary

# %% [markdown]
# ## Clean up

# %%
for app in ["ensemble", "ensemble-waits"]:
    c.delete_app(app)
for name in members:
    c.undeploy(name)

# %% [markdown]
# # 03 · The prediction cache
#
# Clipper caches `Predict(model, version, x) -> y` in front of every model. Three
# things come out of one cache:
#
# 1. **Hits**: popular queries are answered without touching the model.
# 2. **Deduplication**: the cache's request/fetch is non-blocking, so identical
#    queries that arrive while the first is still being computed share one evaluation.
# 3. **Feedback joins**: Clipper's `update(app, x, label)` needs each model's
#    prediction for `x` to compute its loss; the prediction is usually still in the
#    cache from when the query was answered, so feedback costs no model evaluation.
#    The paper: **6.7k → 10.9k updates/s** with the cache.

# %%
# %load_ext clipper_nb
import clipper_nb

c = clipper_nb.connect()   # finds the Jupyter server that started this kernel: no URL, no token to type
c

# %%
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pandas as pd

from _nbhelpers import clipper_load, summary_table   # _nbhelpers.py, next to the notebooks

def model_metrics(model):
    """The server's metrics of a model (empty until it has seen a query)."""
    return c.metrics()["models"].get(model, {"rows_per_s": [], "cache": {"hits": 0, "misses": 0}})

def model_rows(model):
    """Rows the model's workers have computed, from the server's metrics."""
    time.sleep(1.1)  # the metrics count complete seconds
    return int(sum(model_metrics(model)["rows_per_s"]))


# %% [markdown]
# ## Hit rate under a skewed workload
#
# Real query streams are skewed: a few inputs are asked for again and again. We draw
# queries from a Zipf distribution over 2,000 distinct inputs and serve them with a
# model that costs 10 ms per call, first with the cache on, then with it off (an
# application setting that takes effect at once).

# %%
def scorer(batch):
    """10 ms per call + 0.1 ms per row; returns the row sums."""
    import time
    time.sleep(0.010 + 0.0001 * len(batch))
    return [float(sum(row)) for row in batch]

# %clipper deploy scorer --app scores --slo 100ms

rng = np.random.default_rng(0)
pool = rng.random((2000, 16)).round(4)
ranks = (rng.zipf(1.2, size=20_000) - 1) % len(pool)     # rank 0 is the most popular input
zipf_rows = pool[ranks].tolist()
print(f"{len(set(ranks))} distinct inputs among {len(ranks)} queries")


# %%
def cache_counts():
    return model_metrics("scorer")["cache"]

cache_table = {}
for cache_on in (True, False):
    c.update_app("scores", cache=cache_on)
    before = cache_counts()
    r = clipper_load("scores", "--concurrency 4 --batch-size 16 --duration 2s --input zipf_rows")
    after = cache_counts()
    hits, misses = after["hits"] - before["hits"], after["misses"] - before["misses"]
    cache_table["cache on" if cache_on else "cache off"] = {
        "goodput (rows/s)": round(r.goodput), "p99 (ms)": round(r.p99_ms, 1),
        "hit rate": round(hits / max(1, hits + misses), 3)}
cache_table = pd.DataFrame(cache_table).T
cache_table


# %% [markdown]
# ## Identical queries in flight share one evaluation
#
# A deliberately slow model (half a second per call), deployed with the cell magic
# `%%clipper deploy` (it deploys the function the cell defines). We send 16 identical
# queries at the same moment, then 16 distinct ones, and ask the server how many rows
# the model computed each time.

# %%
# %%clipper deploy --app slow --slo 5s
def very_slow(batch):
    import time
    time.sleep(0.5)
    return [float(sum(row)) for row in batch]


# %%
def burst(inputs):
    """Send every input at once, one thread (and connection) each."""
    with ThreadPoolExecutor(len(inputs)) as pool:
        return list(pool.map(lambda x: clipper_nb.connect().predict("slow", x), inputs))

burst([[0.5, 0.5]])                      # warm up: the worker's first call
rows_before = model_rows("very_slow")
same = burst([[1.0, 2.0]] * 16)
rows_same = model_rows("very_slow") - rows_before
distinct = burst([[float(i), 3.0] for i in range(16)])
rows_distinct = model_rows("very_slow") - rows_before - rows_same
print(f"16 identical queries: {rows_same} row(s) computed; 16 distinct queries: {rows_distinct} rows")


# %% [markdown]
# ## Feedback joined through the cache
#
# Feedback carries an input and its true label. The selection layer needs every linked
# model's prediction for that input: from the cache when the input was queried
# recently, else computed again. We time 600 feedback messages (8 at a time) for
# inputs the application has just answered, and 600 for inputs it has never seen.
# Two models of 20 ms per call are linked under Exp4 (notebook 04).

# %%
def expert(batch):
    import time
    time.sleep(0.020)
    return [int(row[0] * 10) % 10 for row in batch]

c.register_app("feedback-demo", slo_ms=1000, policy="exp4")
c.deploy(expert, "expert-a", app="feedback-demo")
c.deploy(expert, "expert-b", app="feedback-demo")

def send_feedback(inputs, labels, threads=8):
    """Feedback for every input; returns updates per second."""
    def work(part):
        client = clipper_nb.connect()
        for i in part:
            client.feedback("feedback-demo", inputs[i], labels[i])
    start = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(work, [range(k, len(inputs), threads) for k in range(threads)]))
    return len(inputs) / (time.perf_counter() - start)

fb_inputs = rng.random((1200, 16)).round(4).tolist()
fb_labels = [int(x[0] * 10) % 10 for x in fb_inputs]
seen, unseen = slice(0, 600), slice(600, 1200)
c.predict_batch("feedback-demo", fb_inputs[seen])     # the application answers these first
rows_0 = model_rows("expert-a")
cached_rate = send_feedback(fb_inputs[seen], fb_labels[seen])
rows_1 = model_rows("expert-a")
recompute_rate = send_feedback(fb_inputs[unseen], fb_labels[unseen])
rows_2 = model_rows("expert-a")
evaluations = (rows_1 - rows_0, rows_2 - rows_1)
print(f"feedback through the cache: {cached_rate:.0f} updates/s, {evaluations[0]} model evaluations; "
      f"recomputed: {recompute_rate:.0f} updates/s, {evaluations[1]} evaluations (per model)")

# %% [markdown]
# How much the cache saves depends on what a model evaluation costs: here every
# recomputation waits for a 20 ms call (shared by the rows batched with it); in the
# paper it was a cheaper model on a much faster frontend, hence bigger absolute rates
# and a smaller ratio.
#
# ## Summary

# %%
summary = summary_table(
    ours={
        "feedback, predictions in the cache (updates/s)": round(cached_rate),
        "feedback, predictions recomputed (updates/s)": round(recompute_rate),
        "feedback speed-up from the cache (×)": round(cached_rate / recompute_rate, 2),
        "model evaluations per model for 600 feedbacks, cached / not": "{} / {}".format(*evaluations),
        "rows computed for 16 identical concurrent queries": rows_same,
        "cache hit rate, Zipf(1.2) over 2,000 inputs": cache_table.loc["cache on", "hit rate"],
    },
    paper={
        "feedback, predictions in the cache (updates/s)": "10.9k",
        "feedback, predictions recomputed (updates/s)": "6.7k",
        "feedback speed-up from the cache (×)": "1.63",
        "model evaluations per model for 600 feedbacks, cached / not": "feedback joins the cached "
                                                                        "predictions",
        "rows computed for 16 identical concurrent queries": "one evaluation (non-blocking request/fetch)",
        "cache hit rate, Zipf(1.2) over 2,000 inputs": "frequent queries are served from the cache",
    },
)
summary

# %% [markdown]
# ## Clean up

# %%
for model in ["scorer", "very_slow", "expert-a", "expert-b"]:
    c.undeploy(model)
for app in ["scores", "slow", "feedback-demo"]:
    c.delete_app(app)

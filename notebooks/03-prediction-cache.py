# %% [markdown]
# # 03 · The prediction cache
#
# Clipper caches `Predict(model, version, x) -> y` in front of every model. Three
# things come out of one cache:
#
# 1. **Hits**: popular queries are answered without touching the model. The cache is
#    bounded; when it is full, **CLOCK** picks what to evict (the paper: "an LRU
#    eviction policy ... using the standard CLOCK algorithm").
# 2. **Deduplication**: the cache's request/fetch is non-blocking, so identical
#    queries that arrive while the first is still being computed share one evaluation.
# 3. **Feedback joins**: Clipper's `update(app, x, label)` needs each model's
#    prediction for `x` to compute its loss; the prediction is usually still in the
#    cache from when the query was answered, so feedback costs no model evaluation.
#    The paper: **6.7k → 10.9k updates/s** with the cache (1.63×).
#
# Which numbers are live measurements on a server and which come from driving the
# cache class in this kernel is said at each step.

# %%
# %load_ext clipper_nb
import clipper_nb
from _nbhelpers import fresh_names, machine

c = clipper_nb.connect()   # finds the Jupyter server that started this kernel: no URL, no token to type
print("measured on:", machine())
# The apps and models this notebook creates keep the names the text uses where the server has none of
# them; else they get a suffix such as "-2" (an app or model of yours stays untouched).
SCORES, SCORER, SLOW, VERY_SLOW = fresh_names(c, "scores", "scorer", "slow", "very_slow").values()
c

# %%
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pandas as pd

import _lesson03 as lesson   # _lesson03.py, next to the notebooks: Zipf streams, CLOCK runs, a closed-loop client
from _nbhelpers import Exercises, clipper_load, figure, show_static, spread, summary_table

def model_metrics(model, server=None):
    """The server's metrics of a model (empty until it has seen a query)."""
    return (server or c).metrics()["models"].get(model, {"rows_per_s": [], "cache": {"hits": 0, "misses": 0}})

def model_rows(model):
    """Rows the model's workers have computed, from the server's metrics."""
    time.sleep(1.1)  # the metrics count complete seconds
    return int(sum(model_metrics(model)["rows_per_s"]))


# %% [markdown]
# ## Hit rate under a skewed workload (live)
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

# %clipper deploy scorer --name {SCORER} --app {SCORES} --slo 100ms

rng = np.random.default_rng(0)
pool = rng.random((2000, 16)).round(4)
ranks = (rng.zipf(1.2, size=20_000) - 1) % len(pool)     # rank 0 is the most popular input
zipf_rows = pool[ranks].tolist()
print(f"{len(set(ranks))} distinct inputs among {len(ranks)} queries")


# %%
def cache_counts():
    return model_metrics(SCORER)["cache"]

cache_table = {}
for cache_on in (True, False):
    c.update_app(SCORES, cache=cache_on)
    before = cache_counts()
    r = clipper_load(SCORES, "--concurrency 4 --batch-size 16 --duration 2s --input zipf_rows")
    after = cache_counts()
    hits, misses = after["hits"] - before["hits"], after["misses"] - before["misses"]
    cache_table["cache on" if cache_on else "cache off"] = {
        "goodput (rows/s)": round(r.goodput), "p99 (ms)": round(r.p99_ms, 1),
        "hit rate": round(hits / max(1, hits + misses), 3),
        "evictions": after.get("evictions", 0) - before.get("evictions", 0)}
cache_table = pd.DataFrame.from_dict(cache_table, orient="index")
cache_table

# %% [markdown]
# The server's cache holds 32 MiB per model version; one cached prediction of a float
# takes about 144 bytes (`lesson.ENTRY_BYTES`: the output plus bookkeeping), so 2,000
# inputs fill 0.3 MB and nothing was evicted (the last column): the only misses were
# each input's first query. To see CLOCK at work the cache must be smaller than what is asked for.
#
# ## CLOCK: what a full cache keeps
#
# CLOCK keeps the entries in a ring with one **reference bit** each. A hit sets the bit.
# To make room, the **hand** sweeps the ring: an entry whose bit is set loses the bit
# and is passed over (its *second chance*); the first entry whose bit is already clear
# is evicted. It approximates LRU with no reordering on a hit. Below is the real cache
# class (`clipper_nb.abstraction.cache.PredictionCache`) holding four entries, driven
# in this kernel: `*` marks a set bit, `^` the hand after each access.

# %%
print("\n".join(lesson.clock_trace("ABCAEAFBG", entries=4)))

# %% [markdown]
# `A` was hit twice, so when `F` needs room the hand clears `A`'s bit and evicts `B`
# instead. `A` survives that sweep, but not the next one unless it is hit again.
#
# **Hit rate against cache size and skew** (simulation in this kernel: the same cache
# class driven by a Zipf stream, no server). Each curve: 10,000 queries to fill the
# cache, then the hit rate over 20,000 more. Next to CLOCK, an exact LRU and the best
# any cache of that size can do on such a stream (always holding the most popular
# inputs: the sum of their probabilities).

# %%
N_INPUTS, WARMUP, MEASURED = 2000, 10_000, 20_000
SKEWS = (0.7, 1.0, 1.3)
SIZES = (25, 50, 100, 200, 400, 800, 1600)          # entries; bytes = entries x lesson.ENTRY_BYTES
streams = {s: lesson.zipf_stream(N_INPUTS, s, WARMUP + MEASURED, seed=1) for s in SKEWS}
sweep = pd.DataFrame([
    {"skew": s, "entries": k,
     "CLOCK": lesson.clock_hit_rate(streams[s], k, WARMUP),
     "LRU": lesson.lru_hit_rate(streams[s], k, WARMUP),
     "best possible": lesson.best_hit_rate(N_INPUTS, s, k)}
    for s in SKEWS for k in SIZES])
sweep.pivot(index="entries", columns="skew", values="CLOCK").round(3)

# %% [markdown]
# **Live check through a server with a small cache.** The cache size is a server
# setting (`cache_mb`), so we start a second clipper-nb server in this kernel with room
# for 400 predictions, deploy a cheap model on it, and send a Zipf(1.0) stream over
# HTTP in batches of 25 rows. The server's metrics count hits, misses and evictions;
# the simulation gets the same stream. (A live hit rate depends only on the order of
# the queries, not on the machine's speed, so the two should agree.)

# %%
import tempfile

SMALL_ENTRIES, LIVE_SKEW = 400, 1.0
small_dir = tempfile.TemporaryDirectory()
small = clipper_nb.Server(state_dir=small_dir.name, port=0,
                          cache_mb=(SMALL_ENTRIES * lesson.ENTRY_BYTES + 1) / 2**20).start_in_thread()
c_small = clipper_nb.connect(small.url, token=small.token)

def row_sum(batch):
    return [float(sum(row)) for row in batch]

c_small.deploy(row_sum, "row-sum", app="zipf-small", slo_ms=2000)

live_pool = np.random.default_rng(2).random((N_INPUTS, 8)).round(4)
SEGMENT = 1200
live_stream = lesson.zipf_stream(N_INPUTS, LIVE_SKEW, 4 * SEGMENT, seed=3)   # 1 segment to fill, 3 to measure
simulated = lesson.PredictionCache(max_bytes=SMALL_ENTRIES * lesson.ENTRY_BYTES)
live_runs = []
for segment in range(4):
    part = live_stream[segment * SEGMENT:(segment + 1) * SEGMENT]
    before = model_metrics("row-sum", c_small)["cache"]
    for i in range(0, len(part), 25):
        c_small.predict_batch("zipf-small", live_pool[part[i:i + 25]])
    after = model_metrics("row-sum", c_small)["cache"]
    sim_before = (simulated.hits, simulated.misses, simulated.evictions)
    for key in map(int, part):
        if not simulated.get(key)[0]:
            simulated.put(key, 1.0, size=lesson.ENTRY_BYTES - lesson.ENTRY_OVERHEAD)
    live_hits, live_misses = after["hits"] - before.get("hits", 0), after["misses"] - before.get("misses", 0)
    live_runs.append({"segment": segment, "live hit rate": live_hits / (live_hits + live_misses),
                      "simulated hit rate": (simulated.hits - sim_before[0]) / len(part),
                      "live evictions": after["evictions"] - before.get("evictions", 0),
                      "simulated evictions": simulated.evictions - sim_before[2]})
live_runs = pd.DataFrame(live_runs).set_index("segment")
small_cache = small.engine.deployments["row-sum"].cache    # the server runs in this kernel: its cache object
print(f"the server's cache now: {len(small_cache)} entries, {small_cache.bytes:,} of {small_cache.max_bytes:,} bytes")
small.stop_thread()
small_dir.cleanup()
live_runs.round(3)

# %%
measured_live = live_runs.loc[1:]
live_clock = float(measured_live["live hit rate"].median())
sim_clock = float(measured_live["simulated hit rate"].median())
lru_live_size = lesson.lru_hit_rate(live_stream, SMALL_ENTRIES, SEGMENT)

fig, ax = figure(7.0, 3.6)
colors = dict(zip(SKEWS, ["tab:blue", "tab:orange", "tab:green"]))
for s in SKEWS:
    part = sweep[sweep["skew"] == s]
    ax.plot(part.entries, part.CLOCK, "o-", color=colors[s], label=f"CLOCK, Zipf({s})")
    ax.plot(part.entries, part.LRU, "x", color=colors[s], markersize=8)
    ax.plot(part.entries, part["best possible"], ":", color=colors[s])
ax.plot([SMALL_ENTRIES] * 3, measured_live["live hit rate"], "*", color="black", markersize=11,
        label=f"live server, {SMALL_ENTRIES} entries, Zipf({LIVE_SKEW})")
ax.set_xscale("log")
ax.set_xlabel(f"cache size (entries of {lesson.ENTRY_BYTES} bytes), {N_INPUTS:,} distinct inputs")
ax.set_ylabel("hit rate")
ax.set_ylim(0, 1)
ax.set_title("CLOCK (lines), exact LRU (x), best possible (dotted)")
ax.legend(fontsize=8, loc="lower right")
show_static(fig)

# %% [markdown]
# Read the figure: a more skewed stream needs far fewer entries for the same hit rate;
# CLOCK sits on or just above exact LRU at every size (its one bit per entry costs nothing in
# hit rate here), both some way below the best possible (they hold recent inputs, not
# the most popular ones); and the live server with a 400-entry cache lands where the
# simulation said, evicting about as many entries.
#
# ## Identical queries in flight share one evaluation (live)
#
# A deliberately slow model (half a second per call), deployed with the cell magic
# `%%clipper deploy` (it deploys the function the cell defines). We send 16 identical
# queries at the same moment, then 16 distinct ones, and ask the server how many rows
# the model computed each time.

# %%
# %%clipper deploy --name {VERY_SLOW} --app {SLOW} --slo 5s
def very_slow(batch):
    import time
    time.sleep(0.5)
    return [float(sum(row)) for row in batch]


# %%
def burst(inputs):
    """Send every input at once, one thread (and connection) each."""
    with ThreadPoolExecutor(len(inputs)) as pool:
        return list(pool.map(lambda x: clipper_nb.connect().predict(SLOW, x), inputs))

burst([[0.5, 0.5]])                      # warm up: the worker's first call
rows_before = model_rows(VERY_SLOW)
same = burst([[1.0, 2.0]] * 16)
rows_same = model_rows(VERY_SLOW) - rows_before
distinct = burst([[float(i), 3.0] for i in range(16)])
rows_distinct = model_rows(VERY_SLOW) - rows_before - rows_same
print(f"16 identical queries: {rows_same} row(s) computed; 16 distinct queries: {rows_distinct} rows")


# %% [markdown]
# ## Feedback joined through the cache: a 4-model ensemble at saturation (live)
#
# Feedback carries an input and its true label. Under Exp4 (notebook 04) every linked
# model's prediction for that input is needed: from the cache when the application
# answered the input recently, else computed again by all four models. We link four
# models to an application and keep **16 feedback messages in flight** (a closed loop
# over HTTP from this kernel, enough to keep the frontend and the two cores busy), first
# for 120 inputs the application has just answered and 120 it has never seen (in
# halves, in the order cached, new, new, cached); one warm-up round, then 4 measured rounds.
#
# The paper does not say what its models cost, and the gain depends on it, so we run
# the experiment with models that burn **0, 0.1 and 0.4 ms of CPU per row**. At
# saturation what counts is CPU: a model that only waits (a sleep) leaves its core to
# the frontend, and a cost per *batch* is shared by the rows batched together, which
# grow with the load.

# %%
def make_expert(cost_s):
    """A model that burns cost_s of CPU per row and answers a digit."""
    def expert(batch):
        import time
        end = time.process_time() + cost_s * len(batch)
        while time.process_time() < end:
            pass
        return [int(row[0] * 10) % 10 for row in batch]
    return expert

COSTS_MS, IN_FLIGHT, N_FEEDBACK, ROUNDS = (0, 0.1, 0.4), 16, 120, 4
fb_rng = np.random.default_rng(4)
feedback_runs = []
for cost in COSTS_MS:
    base = f"feedback-{cost:g}ms".replace(".", "_")
    app, *experts = fresh_names(c, base, *[f"expert{k}-{base}" for k in range(4)]).values()
    c.register_app(app, slo_ms=1000, policy="exp4")
    for name in experts:
        c.deploy(make_expert(cost / 1000), name, app=app)
    for rnd in range(ROUNDS + 1):                       # round 0 warms up
        xs = fb_rng.random((2 * N_FEEDBACK, 16)).round(4).tolist()
        bodies = [{"input": x, "label": int(x[0] * 10) % 10} for x in xs]
        c.predict_batch(app, xs[:N_FEEDBACK])           # answered: all four predictions are in the cache
        seen, unseen, half = bodies[:N_FEEDBACK], bodies[N_FEEDBACK:], N_FEEDBACK // 2
        seconds, evaluations = {"cached": 0.0, "recomputed": 0.0}, {"cached": 0, "recomputed": 0}
        # cached, recomputed, recomputed, cached: a machine that slows down during a round slows both alike
        for kind, part in (("cached", seen[:half]), ("recomputed", unseen[:half]),
                           ("recomputed", unseen[half:]), ("cached", seen[half:])):
            misses = model_metrics(experts[0])["cache"]["misses"]
            rate, _ = await lesson.closed_loop(c.url, c.headers, f"{app}/update", part, IN_FLIGHT)
            seconds[kind] += len(part) / rate
            evaluations[kind] += model_metrics(experts[0])["cache"]["misses"] - misses
        # The ceiling of the HTTP path: predictions answered from the cache, same client, same 16 in flight.
        hit_predicts, _ = await lesson.closed_loop(c.url, c.headers, f"{app}/predict",
                                                   [{"input": x} for x in xs[:N_FEEDBACK]], IN_FLIGHT)
        if rnd:
            cached, recomputed = N_FEEDBACK / seconds["cached"], N_FEEDBACK / seconds["recomputed"]
            feedback_runs.append({"cost (ms/row)": cost, "round": rnd, "cached (updates/s)": cached,
                                  "recomputed (updates/s)": recomputed, "gain": cached / recomputed,
                                  "evaluations, cached": evaluations["cached"],
                                  "evaluations, recomputed": evaluations["recomputed"],
                                  "cache-hit predictions (q/s)": hit_predicts})
    for name in experts:
        c.undeploy(name)
    c.delete_app(app)
feedback_runs = pd.DataFrame(feedback_runs)
feedback_runs.groupby("cost (ms/row)").median().drop(columns="round").round(2)

# %% [markdown]
# **Why the gain grows with the models' cost.** At saturation the two cores are busy
# all the time, so the time one feedback takes the system is *1 / rate*. A cached
# feedback costs the frontend's work (HTTP, looking up four predictions, the Exp4
# update); an uncached one costs that, plus handing the input to four worker processes
# and taking four answers back, plus four times the model's CPU per row. So
#
# gain = (time per uncached feedback) / (time per cached one) = 1 + extra / (time per cached one),
#
# and only *extra* depends on the models. We measure it per cost and fit a line. (The
# slope says how much of the machine we had: four models burn 4 × cost of CPU per
# feedback, which two free cores absorb in 2 × cost of time; other work on the same
# cores makes it steeper.)

# %%
per_cost = feedback_runs.groupby("cost (ms/row)").median()
extra_ms = 1000 / per_cost["recomputed (updates/s)"] - 1000 / per_cost["cached (updates/s)"]
extra_0, extra_per_ms = lesson.fit_line(per_cost.index, extra_ms)
cached_each_ms = 1000 / float(feedback_runs["cached (updates/s)"].median())

def predicted_gain(cost_ms):
    """1 + (fitted extra time of an uncached feedback) / (time of a cached one), both in ms of the system's time."""
    return 1 + (extra_0 + extra_per_ms * cost_ms) / cached_each_ms

print(f"a cached feedback takes the system {cached_each_ms:.2f} ms (1 / rate); an uncached one takes "
      f"{extra_0:+.2f} ms + {extra_per_ms:.1f} x (CPU per row) longer "
      "(2 x cost if both cores were ours alone)")
gains = {cost: feedback_runs.loc[feedback_runs["cost (ms/row)"] == cost, "gain"] for cost in COSTS_MS}

fig, axes = figure(10.0, 3.4, ncols=2)
ax1, ax2 = axes[0]
for column, color in (("cached (updates/s)", "tab:green"), ("recomputed (updates/s)", "tab:red")):
    groups = feedback_runs.groupby("cost (ms/row)")[column]
    ax1.errorbar(per_cost.index, groups.median(), yerr=[groups.median() - groups.min(), groups.max() - groups.median()],
                 fmt="o-", color=color, capsize=3, label=column.split(" (")[0])
ax1.set_xlabel("model cost (ms of CPU per row)")
ax1.set_ylabel("feedback (updates/s)")
ax1.set_ylim(0, None)
ax1.legend(fontsize=8)
ax1.set_title(f"4-model ensemble, {IN_FLIGHT} in flight")
xs_line = np.linspace(0, max(COSTS_MS) * 1.2, 50)
ax2.plot(feedback_runs["cost (ms/row)"], feedback_runs["gain"], "o", alpha=0.5, label="each round")
ax2.plot(xs_line, [predicted_gain(x) for x in xs_line], "-", color="black", label="1 + extra / cached, fitted")
ax2.axhline(1.63, color="tab:purple", linestyle="--", label="paper: 1.63x")
ax2.set_xlabel("model cost (ms of CPU per row)")
ax2.set_ylabel("gain from the cache (x)")
ax2.set_ylim(0, None)
ax2.legend(fontsize=8)
show_static(fig)

# %% [markdown]
# The absolute rates are far below the paper's 10.9k updates/s. The last column of the
# table above shows why: predictions answered straight from the cache, sent by the same
# client with the same 16 in flight, run at about the same rate as cached feedback. The
# ceiling is the cost of one HTTP request through this Python frontend and client, on
# two shared cores, not the feedback join. What carries over is the ratio, and the
# ratio depends on the models: with free models (0 ms) the cache saves only the
# hand-off to four worker processes, so the gain is smallest there (and the most
# shaken by other work on the machine); it grows with the models' CPU per row. The
# summary puts each of the three gains next to the paper's 1.63×.
#
# ## Summary

# %%
machine_line = machine()
at_0ms = feedback_runs[feedback_runs["cost (ms/row)"] == 0]
clock_400, lru_400 = lesson.clock_hit_rate(live_stream, SMALL_ENTRIES, SEGMENT), lru_live_size
fb_setup = (f"4 models of {{:g}} ms CPU per row under Exp4, closed loop of {IN_FLIGHT} feedbacks in flight over HTTP "
            f"from the kernel, {N_FEEDBACK} per round; {machine_line}; paper: a 4-model ensemble at saturation, "
            "model cost not stated")
gain_rows = {cost: f"feedback gain from the cache, models of {cost:g} ms CPU per row" for cost in COSTS_MS}
live_row = f"CLOCK hit rate through the server, {SMALL_ENTRIES}-entry cache, Zipf({LIVE_SKEW:.1f})"
lru_row = f"CLOCK vs exact LRU hit rate, {SMALL_ENTRIES} entries, Zipf({LIVE_SKEW:.1f})"
summary = summary_table(
    ours={
        "feedback, predictions in the cache": spread(at_0ms["cached (updates/s)"], "{:,.0f}", " updates/s"),
        "feedback, predictions recomputed": spread(at_0ms["recomputed (updates/s)"], "{:,.0f}", " updates/s"),
        **{gain_rows[cost]: spread(gains[cost], "{:.2f}", "x") for cost in COSTS_MS},
        "model evaluations per model per 120 feedbacks, cached / not":
            "{:.0f} / {:.0f}".format(feedback_runs["evaluations, cached"].max(),
                                     feedback_runs["evaluations, recomputed"].min()),
        "rows computed for 16 identical concurrent queries": rows_same,
        "cache hit rate, Zipf(1.2) over 2,000 inputs, cache never full":
            f"{cache_table.loc['cache on', 'hit rate']:.0%}",
        live_row: spread(100 * measured_live["live hit rate"], "{:.1f}", "%") + f"; simulated {sim_clock:.1%}",
        lru_row: f"{clock_400:.1%} vs {lru_400:.1%}",
    },
    paper={
        "feedback, predictions in the cache": "10,900 updates/s",
        "feedback, predictions recomputed": "6,700 updates/s",
        **{gain_rows[cost]: "1.63x" for cost in COSTS_MS},
        "model evaluations per model per 120 feedbacks, cached / not": "feedback joins the cached predictions",
        "rows computed for 16 identical concurrent queries": "one evaluation (non-blocking request/fetch)",
        "cache hit rate, Zipf(1.2) over 2,000 inputs, cache never full": "frequent queries are served from the cache",
        live_row: "not measured in the paper (checks our simulation of the cache)",
        lru_row: "LRU eviction, implemented with CLOCK",
    },
    setup={
        "feedback, predictions in the cache": fb_setup.format(0) + "; cache-hit predictions through the same "
            f"client run at {spread(at_0ms['cache-hit predictions (q/s)'], '{:,.0f}', ' q/s')}: the HTTP path "
            "is the ceiling (measured above)",
        "feedback, predictions recomputed": fb_setup.format(0),
        gain_rows[0]: fb_setup.format(0),
        gain_rows[0.1]: fb_setup.format(0.1),
        gain_rows[0.4]: fb_setup.format(0.4) + "; the gain grows with the model's cost: an uncached feedback "
            f"takes {extra_0:.2f} ms + {extra_per_ms:.1f} x cost longer (fitted above)",
        "model evaluations per model per 120 feedbacks, cached / not": "cache misses of one of the 4 models "
            "during the cached and the uncached rounds (most over the rounds / fewest)",
        "rows computed for 16 identical concurrent queries": "same (a 500 ms model, 16 threads at once)",
        "cache hit rate, Zipf(1.2) over 2,000 inputs, cache never full": "32 MiB cache, nothing evicted: misses "
            "are first queries only; %clipper load, 4 clients x 16 rows, 2 s",
        live_row: f"a second server in the kernel with cache_mb for {SMALL_ENTRIES} entries, {SEGMENT}-query "
            "segments after one to fill it, batches of 25 rows over HTTP",
        lru_row: "simulation in the kernel (the server's cache class vs an ordered dict) on the live check's stream",
    },
)
summary

# %% [markdown]
# ## Exercises
#
# Work them out from the figures and tables above, then check with
# `exercises.check(KEY, answer)`. The cache class and the Zipf stream are in
# `_lesson03.py` (`lesson.zipf_stream`, `lesson.clock_hit_rate`) if you want to simulate.

# %%
def as_number(answer):
    try:
        return float(answer)
    except (TypeError, ValueError):
        return None

def within(reference, low, high, unit=""):
    """A check that accepts answers within [reference*low, reference*high]."""
    def check(answer):
        if as_number(answer) is None:
            return False, "answer with a number"
        ok = reference() * low <= as_number(answer) <= reference() * high
        return ok, f"the notebook's value is {reference():.3g}{unit}; answers within {low:.0%}-{high:.0%} of it hold"
    return check

def sim_hit_rate_100():
    return lesson.clock_hit_rate(lesson.zipf_stream(N_INPUTS, 0.8, WARMUP + MEASURED, seed=5), 100, WARMUP)

def entries_for_90():
    return lesson.entries_for(0.9, N_INPUTS, streams[1.3], WARMUP)

exercises = Exercises()
exercises.add("1", "A CLOCK cache of 100 entries serves a Zipf(0.8) stream over 2,000 inputs (after it has filled). "
              "Predict its hit rate (a fraction, e.g. 0.5) from the figure; then simulate it.",
              lambda a: (as_number(a) is not None and abs(as_number(a) - sim_hit_rate_100()) <= 0.05,
                         f"simulated: {sim_hit_rate_100():.3f}; answers within 0.05 hold"), sim_hit_rate_100)
exercises.add("2", "How many entries does CLOCK need for a 90% hit rate on the Zipf(1.3) stream of the sweep?",
              within(entries_for_90, 0.75, 1.33, " entries"), entries_for_90)
exercises.add("3", "Why does the feedback gain grow with the models' cost? (a) cache lookups get slower; "
              "(b) an uncached feedback also pays the four models' CPU for its row, which grows with their cost, "
              "while a cached feedback's work does not; (c) more feedback messages fail. Answer a, b or c.",
              lambda a: (str(a).strip().lower() == "b", "b: at saturation the gain is the ratio of the system's "
                         "time per feedback, and only the uncached one contains the models' work"), "b")
exercises.add("4", "Predict the gain for models of 1 ms CPU per row (same 16 in flight) from the fitted extra time "
              "and the cached time printed above; then deploy four such models and measure it.",
              within(lambda: predicted_gain(1.0), 0.8, 1.25, "x"), lambda: predicted_gain(1.0))
exercises

# %%
exercises.check("3", "b")      # a worked example

# %% [markdown]
# ## Clean up

# %%
for model in [SCORER, VERY_SLOW]:     # only what this notebook created
    c.undeploy(model)
for app in [SCORES, SLOW]:
    c.delete_app(app)

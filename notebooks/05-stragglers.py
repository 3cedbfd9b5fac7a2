# %% [markdown]
# # 05 · Straggler mitigation
#
# An ensemble (Exp4) asks every linked model. If it waits for all of them, its latency
# is the latency of the *slowest* one, and with many models some model is almost
# always having a slow moment (a garbage collection, a noisy neighbour, a cold cache):
# the tail of the ensemble is the tail of the worst.
#
# Clipper never waits for stragglers: at the application's deadline it answers with
# the models that have replied (their weighted vote) and lets the late ones finish
# into the cache. That keeps the tail at the deadline, but it is not free: an answer
# missing a model is made by a smaller ensemble, so it is less often right, and its
# confidence says so. This notebook measures all three sides of the trade, on the live
# system, for ensembles of 2, 4, 8 and 16 models:
#
# * **latency**: the p99, against an end-to-end SLO of 20 ms;
# * **SLO attainment and goodput**: the share (and rate) of queries answered with a real
#   prediction within the SLO;
# * **accuracy**: the ensemble's members are real scikit-learn classifiers of
#   different quality, so a missing member costs accuracy.
#
# The paper sweeps the ensemble size (2 to 16 models): without mitigation the p99 grows
# with the ensemble; with it, the p99 stays at the SLO while the share of the ensemble
# that misses the deadline grows. It reports an ensemble p99 of **17-23 ms with mitigation vs
# 129-156 ms without**.

# %%
# %load_ext clipper_nb
import clipper_nb

from _nbhelpers import fresh_names

c = clipper_nb.connect()   # finds the Jupyter server that started this kernel: no URL, no token to type
# The apps and models this notebook creates (member-0 ... member-15, alone-0 ..., ensemble-...) keep
# those names where the server has none of them; else all get a suffix such as "-2" (an app or model
# of yours stays untouched). NAMES maps the text's name to the server's.
NAMES = fresh_names(c, *[f"member-{i}" for i in range(16)], *[f"alone-{r}" for r in range(3)],
                    *[f"ensemble-{k}-{mode}" for k in (2, 4, 8, 16) for mode in ("mitigates", "waits")])
c

# %%
import numpy as np
import pandas as pd

import _lesson05 as lesson                        # this notebook's helpers (_lesson05.py, next to it)
from _nbhelpers import Exercises, figure, machine, show_static, spread, summary_table, within

print("measured on:", machine())

# %% [markdown]
# ## Sixteen members of different quality, and an honest straggler
#
# The members are scikit-learn classifiers on the digits data set (8×8 images), each
# trained on its own random 16 of the 64 pixels, so they range from poor to good: a
# logistic regression, a Gaussian naive Bayes and a nearest-centroid classifier, in turn.
# The ensemble's vote is better than most of them. Each member is deployed as the
# *scores* of its fitted model in numpy (weights, means, variances: `scores` below, checked
# against scikit-learn's own `predict`), so its worker does not import scikit-learn: a
# member then deploys in well under a second instead of about 2 s on this machine.
#
# Their latency is simulated inside the model, **per call** (one call is one batch):
# usually about 2 ms (lognormal, median 2 ms); with probability `P_SLOW` = 3 % the call
# *straggles* for a heavy-tailed (Pareto, shape 2) time of at least 20 ms, median 28 ms,
# capped at 250 ms. Nothing else is injected: every latency below is measured at the
# client, with queueing, batching, HTTP and the 2-core machine's own noise on top. Each
# member counts its calls, straggles and busy time and prints the counts to its log,
# which we read back.

# %%
import warnings

from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.naive_bayes import GaussianNB
from sklearn.neighbors import NearestCentroid

P_SLOW = 0.03          # probability that one call (one batch) straggles


def scores(kind, params, X):
    """Per-class scores of a fitted model from its numpy parameters; the class is the argmax."""
    if kind == "linear":                       # LogisticRegression: X W^T + b
        return X @ params["coef"].T + params["intercept"]
    d = X[:, None, :] - params["centres"]     # GaussianNB (class means, variances) or NearestCentroid
    if kind == "gaussian":
        return np.log(params["prior"]) - 0.5 * (d ** 2 / params["var"] + np.log(2 * np.pi * params["var"])).sum(-1)
    return -(d ** 2).sum(-1)


def straggling(kind, params, cols, p_slow=P_SLOW, fast_ms=lesson.FAST_MS, fast_sigma=lesson.FAST_SIGMA,
               slow_min_ms=lesson.SLOW_MIN_MS, slow_alpha=lesson.SLOW_ALPHA, slow_cap_ms=lesson.SLOW_CAP_MS):
    """A deployable member: the model (`kind`, `params`) on pixel columns `cols`, with the latency model above."""
    stats = {"calls": 0, "slow": 0, "busy_ms": 0.0, "slow_ms": 0.0}

    def predict(batch):
        import json
        import os
        import random
        import time
        if "rng" not in stats:   # one generator per replica process (forked workers must not share one)
            stats["rng"] = random.Random(os.getpid() * 7919 + time.time_ns())
        rng = stats["rng"]
        t0 = time.perf_counter()
        slow = rng.random() < p_slow
        if slow:
            ms = min(slow_min_ms * rng.paretovariate(slow_alpha), slow_cap_ms)
        else:
            ms = fast_ms * rng.lognormvariate(0.0, fast_sigma)
        time.sleep(ms / 1000)
        out = [int(v) for v in scores(kind, params, np.asarray(batch)[:, cols]).argmax(1)]
        took = (time.perf_counter() - t0) * 1000
        stats["calls"] += 1
        stats["busy_ms"] += took
        if slow:
            stats["slow"] += 1
            stats["slow_ms"] += took
        if slow or stats["calls"] % 50 == 0:
            print(json.dumps({k: v for k, v in stats.items() if k != "rng"}), flush=True)
        return out

    return predict


def export(est):
    """(kind, numpy parameters) of a fitted estimator, for `scores`."""
    if isinstance(est, LogisticRegression):
        return "linear", {"coef": est.coef_, "intercept": est.intercept_}
    if isinstance(est, GaussianNB):
        return "gaussian", {"centres": est.theta_, "var": est.var_, "prior": est.class_prior_}
    return "centroid", {"centres": est.centroids_}


X, y = load_digits(return_X_y=True)
X = X / 16.0
X_train, X_query, y_train, y_query = train_test_split(X, y, test_size=0.5, random_state=0)
X_query = X_query.round(4)

rng = np.random.default_rng(0)
names, members = [], {}
for i in range(16):
    cols = np.sort(rng.choice(64, size=16, replace=False))
    with warnings.catch_warnings():   # NearestCentroid notes pixels that are constant within a class
        warnings.simplefilter("ignore", UserWarning)
        est = [LogisticRegression(max_iter=300), GaussianNB(), NearestCentroid()][i % 3].fit(X_train[:, cols], y_train)
    kind, params = export(est)
    assert (scores(kind, params, X_query[:, cols]).argmax(1) == est.predict(X_query[:, cols])).all()
    names.append(NAMES[f"member-{i}"])
    members[names[-1]] = (type(est).__name__, kind, params, cols)

for name, (_, kind, params, cols) in members.items():
    c.deploy(straggling(kind, params, cols), name)

predictions = {m: scores(kind, params, X_query[:, cols]).argmax(1) for m, (_, kind, params, cols) in members.items()}


def vote(ms):
    """The equal-weight vote of members `ms` on the query rows (what Exp4 answers before any feedback)."""
    return np.array([np.bincount(col, minlength=10).argmax() for col in np.array([predictions[m] for m in ms]).T])


offline = pd.DataFrame({"model": [members[m][0] for m in names],
                        "accuracy": [np.mean(predictions[m] == y_query) for m in names]}, index=names)
for k in (2, 4, 8, 16):
    offline.loc[f"vote of members 0-{k - 1}"] = ["ensemble", np.mean(vote(names[:k]) == y_query)]
offline.round(3)

# %% [markdown]
# What "3 % of calls straggle" means for a replica that is kept busy: a straggling call
# is long, so it takes far more than 3 % of the replica's time, and every query that
# arrives meanwhile waits behind it. The share of *busy time* spent straggling is the
# latency model's own arithmetic (a Monte Carlo below); the share of *queries* that find
# a member late comes from the live runs further down.

# %%
pd.DataFrame({p: lesson.straggle_stats(p, calls=20_000) for p in [0.01, 0.02, 0.03, 0.05]}).T.rename_axis(
    "P_SLOW per call").round(3)

# %% [markdown]
# ## The sweep: ensembles of 2, 4, 8 and 16, with and without mitigation
#
# Each configuration is an app linking the first *k* members with Exp4 (the cache off,
# so every query is computed). `straggler_mitigation=False` waits for every model;
# the default answers at the app's deadline. Two client threads in the kernel send one
# query at a time each (closed loop) for 0.7 s; three runs per configuration,
# interleaved. (Two, not more: with 16 member processes, the server and the clients on 2
# cores, more clients make the CPU, not the stragglers, the main cause of lateness.)
#
# **Deadline vs SLO.** The end-to-end SLO is 20 ms at the client. The app's deadline
# (`slo_ms`) is the server's: it starts when the query reaches the server and ends when
# the answer leaves it; the trip back through HTTP, JSON and the client's threads comes
# on top. So the apps use a 15 ms deadline, which leaves room for that trip (measured
# below). "Alone" is one member in an app with no deadline in effect (1 s), to show the
# tail of a single model under the same load.

# %%
SLO_MS, DEADLINE_MS, CLIENTS, RUN_S, RUNS, SIZES = 20, 15, 2, 0.7, 3, [2, 4, 8, 16]

apps = {}
for r in range(RUNS):
    apps[("alone", r)] = NAMES[f"alone-{r}"]
    c.register_app(apps[("alone", r)], models=[names[r]], slo_ms=1000, cache=False)
for k in SIZES:
    for mitigate in (True, False):
        apps[(k, mitigate)] = NAMES[f"ensemble-{k}-{'mitigates' if mitigate else 'waits'}"]
        c.register_app(apps[(k, mitigate)], policy="exp4", models=names[:k], slo_ms=DEADLINE_MS,
                       cache=False, straggler_mitigation=mitigate)

runs, answers = [], {}
for r in range(RUNS):
    plan = [("alone", r, None)] + [(k, r, m) for k in SIZES for m in (True, False)]
    for k, r_, mitigate in plan:
        app = apps[("alone", r)] if k == "alone" else apps[(k, mitigate)]
        res = lesson.closed_loop(c.url, c.headers, app, X_query, y_query, concurrency=CLIENTS,
                                 duration_s=RUN_S, slo_ms=SLO_MS, seed=len(runs))
        size = 1 if k == "alone" else k
        runs.append({"ensemble": size, "mode": "alone" if k == "alone" else ("mitigates" if mitigate else "waits"),
                     "run": r, "queries": res["queries"], "p50 (ms)": res["p50_ms"], "p99 (ms)": res["p99_ms"],
                     "mean (ms)": float(np.mean([a[0] for a in res["answers"]])) if res["answers"] else np.nan,
                     "within SLO": res["slo_attainment"], "goodput (q/s)": res["goodput"],
                     "accuracy": res["accuracy"], "defaults": res["defaults"],
                     "missing": np.mean([len(a[5]) for a in res["answers"]]) / size})
        answers.setdefault((size, "alone" if k == "alone" else mitigate), []).extend(res["answers"])
runs = pd.DataFrame(runs)
sweep = runs.groupby(["ensemble", "mode"]).agg(
    queries=("queries", "sum"), **{"p99 (ms)": ("p99 (ms)", "median"), "p50 (ms)": ("p50 (ms)", "median"),
                                    "within SLO": ("within SLO", "median"), "goodput (q/s)": ("goodput (q/s)", "median"),
                                    "accuracy": ("accuracy", "median"), "missing": ("missing", "median"),
                                    "defaults": ("defaults", "sum")})
sweep.round(3)   # medians of 3 runs; `runs` has every run

# %% [markdown]
# The trip back, measured: an answer that lacked a model and took at least the deadline
# waited for it at the server, so its client-side latency minus the deadline is the
# trip through HTTP, JSON and the client (there and back). (An answer can also lack a
# model *before* the deadline: a member whose queue could not make the deadline drops
# the query at once.)

# %%
at_deadline = [a[0] for k in SIZES for a in answers[(k, True)] if a[5] and not a[4] and a[0] >= DEADLINE_MS]
trip_ms = float(np.median(at_deadline)) - DEADLINE_MS if at_deadline else 3.0
print(f"{len(at_deadline)} answers waited for the deadline; they reached the client a median "
      f"{trip_ms:.1f} ms after it" + (f" (p90 {np.percentile(at_deadline, 90) - DEADLINE_MS:.1f} ms)" if at_deadline else ""))

# %% [markdown]
# ## How often is a member late, really?
#
# Each member counted its calls, straggles and busy time (read from its log). The
# client saw, in the 16-model runs with mitigation, for what share of queries each
# member was missing. One straggling call makes a member late for every query that
# queued behind it, and on 2 cores a member is also late when the machine is busy.

# %%
late = {m: np.mean([m in a[5] for a in answers[(16, True)]]) for m in names}
unknown = dict.fromkeys(["calls", "slow", "busy_ms", "slow_ms"], np.nan)   # a member whose log has no counts yet
per_member = pd.DataFrame({m: lesson.member_stats(c.logs(m, tail=4000)) or unknown for m in names}).T
per_member["calls that straggled"] = per_member["slow"] / per_member["calls"]
per_member["busy time straggling"] = per_member["slow_ms"] / per_member["busy_ms"]
per_member["queries it was late for (16 models, mitigated)"] = pd.Series(late)
per_member = per_member[["calls", "calls that straggled", "busy time straggling",
                         "queries it was late for (16 models, mitigated)"]]
per_member.round(3)

# %% [markdown]
# ## What a mitigated answer looks like
#
# When a model misses the deadline, the answer names it in `models_missing`, and the
# missing model counts against its confidence: the confidence is the weight of the
# models whose answer agrees with the vote, over the weight of *every* model the query
# was sent to. With 4 equally weighted models, an answer missing *k* of them has a
# confidence of at most (4 − *k*)/4, even when the ones that replied agree. And because
# the members differ in quality, answers missing models are also less often right.

# %%
four = pd.DataFrame(answers[(4, True)], columns=lesson.ANSWER_FIELDS)
four = four[~four["default"]]
four["models missing"] = four["models_missing"].map(len)
four["right"] = four["output"] == four["label"]
by_missing = four.groupby("models missing").agg(
    answers=("right", "size"), accuracy=("right", "mean"),
    **{"mean confidence": ("confidence", "mean"), "highest confidence": ("confidence", "max")})
by_missing["bound (4 - k) / 4"] = [(4 - k) / 4 for k in by_missing.index]
partial = four[four["models missing"] > 0]
example = partial.iloc[0] if len(partial) else None
print("one answer missing a model:", None if example is None else
      {"output": int(example["output"]), "confidence": float(example["confidence"]),
       "models_missing": list(example["models_missing"])})
by_missing.round(3)

# %% [markdown]
# ## The same setup without the CPU: a simulation
#
# On 2 cores, 16 member processes, the server and the clients also compete for the CPU,
# so part of the lateness above is the machine's, not the stragglers'. A discrete-event
# simulation (`lesson.simulate_ensemble`, pure Python) runs the same latency model per
# call with no CPU contention: one replica per member running whatever has queued as one
# batch, 2 closed-loop clients, the same 15 ms deadline, and the trip measured above
# added to every answer. It is the floor of what the live system can do; the plot puts
# it beside the live runs (dashed).

# %%
SIM_SIZES = [1, 2, 4, 8, 12, 16]
sim = pd.DataFrame([{"ensemble": k, "mode": "mitigates" if m else "waits",
                     **lesson.simulate_ensemble(k, p_slow=P_SLOW, deadline_ms=DEADLINE_MS, mitigate=m,
                                                clients=CLIENTS, queries=1500, overhead_ms=trip_ms, slo_ms=SLO_MS)}
                    for k in SIM_SIZES for m in (True, False)])
sim.pivot(index="ensemble", columns="mode", values=["p99_ms", "missing", "slo_attainment"]).round(3)

# %%
from matplotlib.ticker import NullFormatter, ScalarFormatter

fig, axes = figure(15, 3.4, ncols=4)
axes = axes.ravel()
live = runs[runs["mode"] != "alone"]
for mode, colour in [("mitigates", "tab:blue"), ("waits", "tab:red")]:
    part = live[live["mode"] == mode]
    s = sim[sim["mode"] == mode]
    for ax, col, scol, scale in [(axes[0], "p99 (ms)", "p99_ms", 1), (axes[1], "missing", "missing", 100),
                                 (axes[2], "goodput (q/s)", "goodput", 1), (axes[3], "accuracy", None, 1)]:
        ax.scatter(part["ensemble"], part[col] * scale, color=colour, s=14, alpha=0.6)
        med = part.groupby("ensemble")[col].median() * scale
        ax.plot(med.index, med.values, color=colour, marker="o", label=f"{mode} (live)")
        if scol:
            ax.plot(s["ensemble"], s[scol] * scale, color=colour, ls="--", alpha=0.7, label=f"{mode} (simulated)")
alone = runs[runs["mode"] == "alone"]
axes[0].scatter(alone["ensemble"], alone["p99 (ms)"], color="black", marker="x", label="one model alone")
axes[0].axhline(SLO_MS, color="grey", ls=":", label="SLO 20 ms")
axes[0].set(yscale="log", xlabel="models in the ensemble", ylabel="p99 latency (ms)", title="tail latency")
axes[0].yaxis.set_major_formatter(ScalarFormatter())
axes[0].yaxis.set_minor_formatter(NullFormatter())
axes[0].set_yticks([10, 20, 50, 100, 200, 500])
axes[1].set(xlabel="models in the ensemble", ylabel="% of the ensemble missing", title="missing the deadline")
axes[2].set(xlabel="models in the ensemble", ylabel="answers in 20 ms, per s", title="goodput")
axes[3].set(xlabel="models in the ensemble", ylabel="share answered right", title="accuracy (defaults wrong)")
for ax in axes:
    ax.set_xscale("log", base=2)
    ax.set_xticks([1, 2, 4, 8, 16], ["1", "2", "4", "8", "16"])
axes[3].legend(*axes[0].get_legend_handles_labels(), fontsize=7, loc="lower right")
show_static(fig)

# %% [markdown]
# Reading the plot: waiting for every model, the p99 grows with the ensemble (more
# members, more chances that one is in a straggle) and goodput falls, since every
# client waits for the slowest member. With mitigation the median run's p99 stays near
# the SLO and the goodput stays up. A single run's mitigated p99 can still run past the
# deadline, although the server answers at the deadline: 16 member processes, the server
# and the clients share 2 cores (with whatever else the machine runs), and when the CPU
# is busy the answer itself waits for it. The simulation, which has no CPU to wait for,
# stays at the deadline plus the trip. The share of the ensemble missing from an answer
# tends to grow on this machine for the same reason (the simulation keeps it about flat). The accuracy is the price of mitigation:
# a mitigated answer is a vote of fewer members, and the vote of few members is worse
# (see the offline table at the top).
#
# Note that one model *alone* has a worse tail than the mitigated ensemble: it has no
# deadline here, so its p99 is its own straggles plus the queries queued behind them.

# %% [markdown]
# ## Summary
#
# Measured on the machine printed at the top; 3 runs of 0.7 s per configuration (median
# first, then the range).

# %%
def cells(size, mode, col, fmt, unit, scale=1):
    values = runs[(runs["ensemble"] == size) & (runs["mode"] == mode)][col] * scale
    return spread(values, fmt, unit)


def of(size, mode):
    return runs[(runs["ensemble"] == size) & (runs["mode"] == mode)]


def pooled_p99(size, mitigate):
    return float(np.percentile([a[0] for a in answers[(size, mitigate)]], 99))


def pooled_mean(size, mitigate):
    return float(np.mean([a[0] for a in answers[(size, mitigate)]]))


# Ratios: the leading number from all runs together (mean goodput, p99 of the pooled answers), then the
# range of the per-run ratios (run r of one setting against run r of the other).
goodput_pairs = of(4, "mitigates")["goodput (q/s)"].values / np.maximum(of(4, "waits")["goodput (q/s)"].values, 1e-9)
goodput_ratio = (f"{of(4, 'mitigates')['goodput (q/s)'].mean() / max(of(4, 'waits')['goodput (q/s)'].mean(), 1e-9):.1f}x "
                 f"(runs {goodput_pairs.min():.1f}-{goodput_pairs.max():.1f}, {RUNS} pairs)")
# The mean, not the p99: a few hundred answers per run put both p99s in the stragglers'
# own tail (one straggle of up to 250 ms decides them), while the mean shows what waiting
# for more members costs: a query waits for the slowest of them.
growth_pairs = of(16, "waits")["mean (ms)"].values / of(2, "waits")["mean (ms)"].values
growth = (f"{pooled_mean(16, False) / pooled_mean(2, False):.1f}x (pooled answers of {RUNS} runs each; "
          f"runs {growth_pairs.min():.1f}-{growth_pairs.max():.1f})")
ours_setup = (f"{machine()}; 2 closed-loop clients in the kernel; members: scikit-learn models on digits "
              f"(run as numpy), 3 % of calls "
              f"straggle (Pareto, >= 20 ms); app deadline 15 ms for an end-to-end SLO of 20 ms")
summary = summary_table(
    ours={
        "ensemble p99 with straggler mitigation, 4 models": cells(4, "mitigates", "p99 (ms)", "{:.0f}", " ms"),
        "ensemble p99 waiting for every model, 4 models": cells(4, "waits", "p99 (ms)", "{:.0f}", " ms"),
        "p99 of one model alone (no deadline)": cells(1, "alone", "p99 (ms)", "{:.0f}", " ms"),
        "answers within the 20 ms SLO, 4 models, mitigation": cells(4, "mitigates", "within SLO", "{:.0f}", " %", 100),
        "answers within the 20 ms SLO, 4 models, waiting": cells(4, "waits", "within SLO", "{:.0f}", " %", 100),
        "goodput, mitigation over waiting, 4 models": goodput_ratio,
        "accuracy, 4 models, mitigation": cells(4, "mitigates", "accuracy", "{:.0f}", " %", 100),
        "accuracy, 4 models, waiting": cells(4, "waits", "accuracy", "{:.0f}", " %", 100),
        "share of the ensemble missing, 16 models, mitigation": cells(16, "mitigates", "missing", "{:.0f}", " %", 100),
        "mean latency waiting for every model, 16 models over 2 models": growth,
        "ensemble p99 with straggler mitigation, 16 models": cells(16, "mitigates", "p99 (ms)", "{:.0f}", " ms"),
        "simulated p99 with mitigation, 16 models":
            f"{sim[(sim['ensemble'] == 16) & (sim['mode'] == 'mitigates')]['p99_ms'].iloc[0]:.0f} ms (simulation)",
        "a member's busy time spent straggling (3 % of calls straggle)":
            spread(per_member["busy time straggling"].dropna() * 100, "{:.0f}", " %").replace("runs", "members")
            if per_member["busy time straggling"].notna().any() else "no member log had counts",
        "highest confidence of an answer missing a model, 4 models":
            round(float(partial["confidence"].max()), 2) if len(partial) else "no answer missed a model",
    },
    paper={
        "ensemble p99 with straggler mitigation, 4 models": "17 ms to 23 ms",
        "ensemble p99 waiting for every model, 4 models": "129 ms to 156 ms",
        "p99 of one model alone (no deadline)": "not reported (the paper's stragglers are its cluster's own)",
        "answers within the 20 ms SLO, 4 models, mitigation": "not reported: the p99 stays at the 20 ms SLO",
        "answers within the 20 ms SLO, 4 models, waiting": "not reported: the p99 grows past the SLO",
        "goodput, mitigation over waiting, 4 models": "not reported",
        "accuracy, 4 models, mitigation": "the vote of the models that replied: a smaller ensemble's accuracy",
        "accuracy, 4 models, waiting": "the full ensemble's accuracy",
        "share of the ensemble missing, 16 models, mitigation": "plotted against the ensemble size (2-16): it rises as the ensemble grows",
        "mean latency waiting for every model, 16 models over 2 models": "plotted against the ensemble size (2-16): it grows with the ensemble",
        "ensemble p99 with straggler mitigation, 16 models": "17 ms to 23 ms",
        "simulated p99 with mitigation, 16 models": "17 ms to 23 ms",
        "a member's busy time spent straggling (3 % of calls straggle)": "not modelled: real stragglers",
        "highest confidence of an answer missing a model, 4 models":
            "agreement over the ensemble: a missing model does not agree (3 of 4: 0.75)",
    },
    setup={
        "ensemble p99 with straggler mitigation, 4 models": ours_setup,
        "ensemble p99 waiting for every model, 4 models": ours_setup + "; the p99 is measured, no delay is fixed",
        "p99 of one model alone (no deadline)": "one member in a 1 s-deadline app, same load (3 members, 1 run each)",
        "answers within the 20 ms SLO, 4 models, mitigation": "share of queries answered with a real prediction "
                                                              "within 20 ms at the client; " + ours_setup,
        "answers within the 20 ms SLO, 4 models, waiting": "same measure; the app waits for all 4 members",
        "goodput, mitigation over waiting, 4 models": "answers within 20 ms per second, mean of 3 runs each",
        "accuracy, 4 models, mitigation": "share of queries answered right (a default counts wrong); members "
                                          "of different quality, so a missing member costs accuracy",
        "accuracy, 4 models, waiting": "same measure; every member answers every query",
        "share of the ensemble missing, 16 models, mitigation": "mean share of the 16 members absent from an "
                                                                "answer; 16 worker processes on 2 cores",
        "mean latency waiting for every model, 16 models over 2 models": "mean of the pooled answers of 3 runs; paper: 2 to 16 models",
        "ensemble p99 with straggler mitigation, 16 models": ours_setup + "; 16 member processes on 2 cores",
        "simulated p99 with mitigation, 16 models": "discrete-event simulation of this setup (no CPU contention), "
                                                    "not a live run; the trip to the client as measured",
        "a member's busy time spent straggling (3 % of calls straggle)": "counted by each member in its replica "
                                                                         "(log); median over the 16 members",
        "highest confidence of an answer missing a model, 4 models": "same definition; 4 equally weighted members",
    },
)
summary

# %% [markdown]
# **What the rows say.** The paper's 17-23 ms and 129-156 ms are its cluster's numbers
# for its own stragglers; ours come from a straggler model we chose (3 % of calls), so the
# waiting p99 depends on that choice and on this machine. What carries over is the
# finding: the mitigated tail stays near the deadline (in the median run: a run that
# catches the 2 cores busy gets a CPU tail of its own, which the simulation leaves out) while the waiting
# tail grows with the ensemble, and the price of mitigation is paid in accuracy and
# confidence, not in latency. The SLO and goodput rows say what the p99 hides: how many
# queries an application actually gets answered in time.
#
# ## Exercises
#
# The exercises use the pure-Python pieces (the latency model, the simulation and the
# library's own `combine_outputs`), so their answers do not depend on this machine.

# %%
from clipper_nb.selection.policies import combine_outputs


def busy_share(p):
    return lesson.straggle_stats(p, calls=20_000)["busy time slow"]


def first_size_over(limit_ms, p=P_SLOW, sizes=(1, 2, 3, 4, 6, 8, 12, 16)):
    for k in sizes:
        if lesson.simulate_ensemble(k, p_slow=p, deadline_ms=DEADLINE_MS, mitigate=False, clients=CLIENTS,
                                    queries=1500, overhead_ms=3.0, slo_ms=SLO_MS)["p99_ms"] > limit_ms:
            return k
    return None


def missing_at(deadline_ms):
    return lesson.simulate_ensemble(8, p_slow=P_SLOW, deadline_ms=deadline_ms, clients=CLIENTS, queries=1500,
                                    overhead_ms=3.0, slo_ms=SLO_MS)["missing"]


exercises = Exercises()
exercises.add("1", "Straggle probability per call vs time: with `P_SLOW = 0.02` (2 % of calls straggle), what share "
              "of a busy replica's time is spent in straggling calls (a fraction, 0-1)? Use `lesson.straggle_stats`.",
              within(0.24, 0.31, "share of busy time straggling"),
              lambda: busy_share(0.02))
exercises.add("2", "Simulate waiting for every model (`lesson.simulate_ensemble(k, mitigate=False, overhead_ms=3.0)`, "
              "other arguments as in the notebook) for k = 1, 2, 3, 4, 6, 8, 12, 16: what is the smallest k whose "
              "p99 is over 110 ms?",
              within(6, 6, "smallest ensemble with p99 > 110 ms"),
              lambda: first_size_over(110))
exercises.add("3", "Confidence: a query goes to 5 equally weighted models; 3 answer 'cat', 1 answers 'dog' and 1 "
              "misses the deadline. What confidence does `combine_outputs` give the answer?",
              within(0.599, 0.601, "confidence"),
              lambda: combine_outputs({"a": "cat", "b": "cat", "c": "cat", "d": "dog"},
                                      dict.fromkeys("abcde", 0.2), list("abcde")).confidence)
exercises.add("4", "Deadline: rerun the 8-model simulation with mitigation and a deadline of 5 ms instead of 15 ms "
              "(`lesson.simulate_ensemble(8, deadline_ms=5, overhead_ms=3.0, ...)`, other arguments as in the "
              "notebook). What share of the ensemble is missing from an answer, on average (a fraction)? With 15 ms: 0.10.",
              within(0.22, 0.32, "share of the ensemble missing"),
              lambda: missing_at(5))
exercises

# %% [markdown]
# A worked example: exercise 1 with the notebook's own `P_SLOW` = 3 % (not the
# exercise's 2 %), so the check says "not yet". Change the probability and check again.

# %%
_ = exercises.check("1", busy_share(P_SLOW))

# %% [markdown]
# ## Clean up

# %%
for app in apps.values():
    c.delete_app(app)
for name in names:
    c.undeploy(name)

# %% [markdown]
# # 02 · Adaptive batching (the paper's Fig. 3-5)
#
# A model call has a fixed cost (the RPC, moving data into the framework, launching
# kernels) and a cost per input. Evaluating queries in **batches** pays the fixed cost
# once per batch, so throughput grows with the batch size, and so does the latency of
# each batch. Clipper picks, per replica, the largest batch that still meets the
# latency objective, with **AIMD**: grow the maximum batch by a fixed step while
# batches finish in time, cut it by 10% when one does not. **Delayed batching** waits
# a moment (2 ms) for a batch to fill when the queue is short, like Nagle's algorithm:
# only while more queries are expected within it (from the arrival rate, and right after
# a batch returns while its callers send their next queries), and only for a model whose
# batch takes longer than the round trip to it. A delay saves model calls; a model
# cheaper than the trip to it has almost nothing to save, and waiting would idle the
# frontend.
#
# The paper: AIMD gives up to **25× the throughput** of no batching for a linear SVM at
# a 20 ms SLO, and a 2 ms batch delay **3.3×** for a linear SVM, both measured at
# saturation. Here we measure the same quantities on the live system, and where our
# number differs we show the measurement that says why.
#
# *How we measure.* Each configuration is its own model and application, with the
# prediction cache off (notebook 03 is about the cache). The load is **open loop**:
# `%clipper load APP --qps R` sends single-row queries at Poisson arrival times, at a
# rate that does not slow down when the server does (a closed loop of N clients does:
# see *Little's law* below). We count **goodput per row**: rows answered with a real
# prediction within the SLO (one query = one row, so a late row costs one row, not a
# whole 16-row request). We sweep the offered load, because a system's throughput is
# where its goodput stops following the load. Every run is short (0.4 s), and the
# numbers that go into the final table are repeated three times, median and range.

# %%
# %load_ext clipper_nb
import clipper_nb

from _nbhelpers import fresh_names   # _nbhelpers.py, next to the notebooks

c = clipper_nb.connect()   # finds the Jupyter server that started this kernel: no URL, no token to type
# Each configuration's model and app, by the names the text uses; where the server already has one
# of them (yours stays untouched), all get a suffix such as "-2" (and the tables show those names).
NAMES = fresh_names(c, "sleepy-off", "sleepy-fixed8", "sleepy-aimd", "svm-off", "svm-nodelay", "svm-aimd")
SLEEPY_OFF, SLEEPY_FIXED8, SLEEPY_AIMD, SVM_OFF, SVM_NODELAY, SVM_AIMD = NAMES.values()
c

# %%
import asyncio
import time

import numpy as np
import pandas as pd
from IPython.display import display

from _nbhelpers import figure, machine, show_static, spread, summary_table   # _nbhelpers.py, next to the notebooks
import _lesson02 as lesson   # this notebook's helpers: open-loop runs, CPU per query, a small AIMD simulation

print("measured on:", machine())
rows = np.random.default_rng(0).random((1024, 64)).round(3).tolist()   # what the load sends

def sleepy(batch):
    """A model with a large fixed cost: 10 ms per call + 0.2 ms per row."""
    import time
    time.sleep(0.010 + 0.0002 * len(batch))
    return [0] * len(batch)

def deploy_variant(name, model, slo_ms, **batching):
    """Model and application `name`; the cache is off to measure the model, not the cache."""
    c.register_app(name, slo_ms=slo_ms, cache=False)
    c.deploy(model, name, app=name, **batching)

def sweep(apps, rates, passes=3, seconds=0.4):
    """`passes` open-loop sweeps over `rates` (q/s), the apps taking turns at each rate; an app
    leaves a pass once its goodput falls below half the offered load. One row per run."""
    return pd.DataFrame(lesson.passes(apps, rates, passes, seconds, lesson.processes(c)))

def peak_goodputs(runs):
    """Each app's peak goodput in each pass (rows: passes)."""
    return runs.pivot_table(index="pass", columns="app", values="goodput (rows/s)", aggfunc="max")

def plot_passes(ax, runs, rates, title):
    for k, (app, g) in enumerate(runs.groupby("app", sort=False)):
        for p, gp in g.groupby("pass"):
            ax.plot(gp["offered (q/s)"], gp["goodput (rows/s)"], "o-", color=f"C{k}", alpha=0.7,
                    label=app if p == 1 else None)
    ax.plot([min(rates), max(rates)], [min(rates), max(rates)], ":", color="grey", label="goodput = offered load")
    ax.set(xlabel="offered load (single-row queries/s, Poisson)", ylabel="goodput (rows/s within the SLO)",
           title=title, xscale="log", yscale="log")
    ax.legend(fontsize=8)

CPU_COLS = ["frontend CPU ms/q", "worker CPU ms/q", "load generator CPU ms/q"]
SHOW = ["pass", "app", "offered (q/s)", "goodput (rows/s)", "within SLO", "p99 (ms)", *CPU_COLS,
        "machine busy (cores)"]


# %% [markdown]
# ## Batching off, fixed, adaptive: goodput against offered load
#
# `max_batch_size=1` turns batching off; `batch_size=8` fixes it; with neither, AIMD
# adapts it to the SLO (`%clipper deploy sleepy --max-batch-size 1` and
# `--batch-size 8` do the same from the magic). The SLO is 100 ms: AIMD aims each batch
# at half of it (50 ms), which this model's single row (10.2 ms) fits easily.

# %%
SLEEPY_SLO_MS = 100
deploy_variant(SLEEPY_OFF, sleepy, SLEEPY_SLO_MS, max_batch_size=1)
deploy_variant(SLEEPY_FIXED8, sleepy, SLEEPY_SLO_MS, batch_size=8)
deploy_variant(SLEEPY_AIMD, sleepy, SLEEPY_SLO_MS)
SLEEPY_RATES = [100, 200, 400, 800]
sleepy_runs = sweep([SLEEPY_OFF, SLEEPY_FIXED8, SLEEPY_AIMD], SLEEPY_RATES)
sleepy_peaks = peak_goodputs(sleepy_runs)
aimd_vs_off_sleepy = list(sleepy_peaks[SLEEPY_AIMD] / sleepy_peaks[SLEEPY_OFF].clip(lower=1))
fixed_vs_off_sleepy = list(sleepy_peaks[SLEEPY_FIXED8] / sleepy_peaks[SLEEPY_OFF].clip(lower=1))
fig, ax = figure(7, 3.2)
plot_passes(ax, sleepy_runs, SLEEPY_RATES, f"10 ms-per-call model, SLO {SLEEPY_SLO_MS} ms, open loop (3 passes)")
show_static(fig)
sleepy_peaks.assign(**{"AIMD / off": np.round(aimd_vs_off_sleepy, 1), "fixed 8 / off": np.round(fixed_vs_off_sleepy, 1)})

# %% [markdown]
# Three passes over 100, 200, 400 and 800 q/s, the three variants taking turns at each
# rate (so that a busy moment of a shared machine hits them alike); a variant leaves a
# pass once its goodput falls below half the offered load. The table gives each
# variant's peak goodput per pass and the ratios per pass. Every run is in
# `sleepy_runs[SHOW]`, with the CPU time per query of each process.
#
# With batching off the replica answers at most 1 / 10.2 ms = 98 rows/s whatever the
# load: the rest wait past their deadline (the server answers those with the default
# output instead of computing them late). A fixed batch of 8 amortises the 10 ms over
# 8 rows: at most 8 / 11.6 ms = 690 rows/s. AIMD grows the batch with the queue, so its
# goodput follows the offered load up to the top of the sweep. Past saturation an open
# loop keeps sending, the queue outgrows every deadline and goodput collapses, which is
# why a variant leaves the pass there.

# %% [markdown]
# ## A real model: a linear SVM at the paper's 20 ms SLO
#
# The paper's headline is a linear SVM. We fit one on the digits and deploy its
# decision function `argmax(x·Wᵀ + b)`, exactly what `LinearSVC.predict` computes, as a
# small numpy function: the worker then starts in a second instead of importing
# scikit-learn (deploying `svm` itself works the same way). Three variants: batching
# off, AIMD without a batch delay, and AIMD with the default 2 ms delay. The SLO is the
# paper's 20 ms, and we sweep the offered load (300 to 1900 q/s, three passes as above)
# past saturation; the quantity the paper reports is the throughput at saturation, here
# the **peak goodput** of each pass. Each run also records the CPU time per query of the
# frontend, the model's worker and the load generator (this kernel), from `psutil`
# (`svm_runs[SHOW]` lists every run).

# %%
from sklearn.datasets import load_digits
from sklearn.svm import LinearSVC

X, y = load_digits(return_X_y=True)
svm = LinearSVC(dual=False).fit(X / 16, y)
W, b = svm.coef_, svm.intercept_

def linear_svm(batch):
    return (np.asarray(batch) @ W.T + b).argmax(axis=1)

assert (linear_svm(X / 16) == svm.predict(X / 16)).all()
rows = (X / 16).round(4).tolist()
SVM_SLO_MS = 20
deploy_variant(SVM_OFF, linear_svm, SVM_SLO_MS, max_batch_size=1)
deploy_variant(SVM_NODELAY, linear_svm, SVM_SLO_MS, batch_delay_ms=0)
deploy_variant(SVM_AIMD, linear_svm, SVM_SLO_MS)   # the default: AIMD and a 2 ms batch delay
SVM_RATES = [300, 600, 900, 1300, 1900]
svm_runs = sweep([SVM_OFF, SVM_NODELAY, SVM_AIMD], SVM_RATES)
svm_peaks = peak_goodputs(svm_runs)
svm_peak_rates = svm_runs.loc[svm_runs.groupby(["app", "pass"])["goodput (rows/s)"].idxmax()].pivot_table(
    index="pass", columns="app", values="offered (q/s)")
aimd_vs_off_svm = list(svm_peaks[SVM_AIMD] / svm_peaks[SVM_OFF].clip(lower=1))
delay_vs_none = list(svm_peaks[SVM_AIMD] / svm_peaks[SVM_NODELAY].clip(lower=1))
fig, ax = figure(7, 3.2)
plot_passes(ax, svm_runs, SVM_RATES, f"linear SVM, SLO {SVM_SLO_MS} ms, open loop (3 passes)")
show_static(fig)
svm_peaks.assign(**{"AIMD / off": np.round(aimd_vs_off_svm, 2), "2 ms delay / no delay": np.round(delay_vs_none, 2)})

# %% [markdown]
# ### Where the time goes at saturation
#
# The SVM's own compute is microseconds, so a replica without batching spends its
# time on the fixed cost of a call: a ZeroMQ round trip and numpy framing through a
# Python frontend (the paper's frontend was C++). Batching shares that cost among the
# rows of a batch. What it cannot share is the frontend's own work per query (HTTP,
# JSON, an asyncio task), and the frontend is one Python process: one core at most.
# So batching can raise goodput from what batching off reaches up to, at best, one
# core divided by the frontend's CPU time per query. One more second of each AIMD
# variant at the rate where the one without a delay peaked measures that CPU time,
# how busy the frontend was, and the mean batch each replica ran (the server's
# per-second metrics):

# %%
procs = lesson.processes(c)
sat_rate = float(svm_peak_rates[SVM_NODELAY].median())
saturation = [lesson.run_open(app, sat_rate, 1.0, procs) for app in [SVM_NODELAY, SVM_AIMD]]
time.sleep(1.1)
lesson.attach_batches(c, saturation)
at_sat = pd.DataFrame(saturation).set_index("app")
display(at_sat[["offered (q/s)", "goodput (rows/s)", "within SLO", "p99 (ms)", "mean batch", *CPU_COLS,
                "frontend busy (% of a core)", "machine busy (cores)"]])

frontend_ms = float(at_sat["frontend CPU ms/q"].median())
off_peak = float(svm_peaks[SVM_OFF].median())
frontend_ceiling = 1000 / frontend_ms
why = pd.Series({
    "batching off: peak goodput (rows/s, median of 3 passes)": round(off_peak),
    "frontend CPU per query at saturation (ms)": round(frontend_ms, 2),
    "frontend ceiling: 1 core / frontend CPU per query (q/s)": round(frontend_ceiling),
    "most batching can gain here: ceiling / batching off (x)": round(frontend_ceiling / max(1, off_peak), 1),
    "AIMD / batching off, peak goodput (x, median of 3 passes)": round(float(np.median(aimd_vs_off_svm)), 1),
    "frontend busy at saturation (% of one core), no delay / 2 ms delay":
        f"{at_sat.loc[SVM_NODELAY, 'frontend busy (% of a core)']:.0f} / "
        f"{at_sat.loc[SVM_AIMD, 'frontend busy (% of a core)']:.0f}",
    "mean batch at saturation, no delay / 2 ms delay":
        f"{at_sat.loc[SVM_NODELAY, 'mean batch']} / {at_sat.loc[SVM_AIMD, 'mean batch']}",
}, name="linear SVM, SLO 20 ms")
why.to_frame()

# %% [markdown]
# Batching off serves one query per call, and each call's round trip is stretched by
# a busy event loop; the frontend's own CPU per query caps every variant at one core
# divided by that time. The ratio of the two bounds what batching can gain here (the
# table's "most batching can gain" row), against the paper's 25×, where a C++ frontend
# spent far less per query than a call's fixed cost (exercise 4 puts numbers on it).
# The measured gain sits below that bound: a single-threaded event loop queues the
# bursts of Poisson arrivals, so latency can pass a 20 ms SLO before the frontend's
# core is fully busy (the *frontend busy* row shows how busy it got), and the load
# generator and the worker share the same cores (*machine busy*). A linear SVM's batch
# costs the worker less than the round trip to it (the CPU row: about 0.01 ms of worker
# time per query), so the server does not hold its batches for the 2 ms delay at all
# (the mean batch row barely moves): a fuller batch would not lower the frontend's
# per-query cost, which is the limit here. Its ratio stays near 1, not the paper's
# 3.3×, where each call paid a large fixed cost in the serving framework. Each pass's peak also moves with whatever else the machine runs,
# which is what the per-pass ranges in the final table show.
#
# Where a query's CPU time goes, per process, at the highest rate every variant kept up
# with in all passes (every row computed):

# %%
def keeps_up(rate):
    g = svm_runs[svm_runs["offered (q/s)"] == rate].groupby("app")["goodput (rows/s)"].median()
    return len(g) == 3 and bool((g >= 0.85 * rate).all())

cpu_rate = max([r for r in SVM_RATES if keeps_up(r)], default=SVM_RATES[0])
cpu = svm_runs[svm_runs["offered (q/s)"] == cpu_rate].groupby("app", sort=False)[
    CPU_COLS + ["machine busy (cores)"]].median()
fig, ax = figure(6, 2.4)
left = np.zeros(len(cpu))
for k, col in enumerate(CPU_COLS):
    ax.barh(cpu.index, cpu[col], left=left, color=f"C{k}", label=col.replace(" CPU ms/q", ""))
    left += cpu[col].to_numpy()
ax.set(xlabel="CPU ms per query", title=f"where a query's CPU time goes, at {cpu_rate} q/s")
ax.legend(fontsize=8)
show_static(fig)
cpu

# %% [markdown]
# ## Little's law: why a closed loop measured the delay as a loss
#
# A closed loop of N clients, each sending its next query when the last one returns,
# always has N queries in flight; Little's law (in-flight = throughput × latency) then
# fixes its throughput at **N / mean latency**. A delay that adds 2 ms to each query's
# latency therefore *lowers* a closed loop's throughput even when the server could
# carry more: the clients simply send less. An open loop offers the same load whatever
# the latency, so it measures what the server can carry. 0.6 s of 16 closed-loop
# clients on each delay variant shows it:

# %%
from IPython.utils.capture import capture_output

closed = {}
for app in [SVM_NODELAY, SVM_AIMD]:
    with capture_output():
        r = lesson.clipper_load(app, "--concurrency 16 --duration 0.6s --input rows")   # %clipper load {app} ... --wait
    closed[app] = {"clients": 16, "mean latency (ms)": round(r.mean_ms, 2), "measured (q/s)": round(r.qps),
                   "16 / mean latency (q/s)": round(16 / (r.mean_ms / 1000))}
closed = pd.DataFrame(closed).T
closed

# %% [markdown]
# The measured closed-loop throughput is 16 divided by the mean latency, to within the
# load generator's own gaps: the clients, not the server, set it, and whichever variant
# has the longer mean latency gets the lower throughput. An earlier version of this
# notebook compared the delay variants this way and reported a "0.7× gain" of delayed
# batching, which was 16 / 7.2 ms against 16 / 5.0 ms: a statement about latency, not
# about what the server can carry. The open-loop sweep above is the paper's measurement.
# (The closed loop's rate may even exceed the open loop's peak goodput: 16 clients never
# send a burst, so queues never build, while Poisson arrivals do burst.)

# %% [markdown]
# ## The AIMD saw-tooth
#
# The controller is pure logic (`clipper_nb.abstraction.batching.AIMDController`), so we can step
# it by hand against the `sleepy` model's cost (with 10% noise), always giving it a full
# batch (saturation): the cap climbs by up to 4 rows (at most 10% of the cap) per batch
# that fits the objective and drops by 10% (at least one row) when one does not, a
# saw-tooth just below the largest batch that fits. Halfway we tighten the SLO from 100
# to 25 ms, as the slider below does on the live server. The dashed lines mark the
# optimal cap, the largest batch whose noise-free time fits the objective (half the
# SLO): (50 ms − 10 ms) / 0.2 ms = 200 rows, then (12.5 − 10) / 0.2 = 12 rows. The
# controller settles a little below it: every batch over the objective is cut back,
# and with 10% noise a batch near the optimum often is.

# %%
from bokeh.io import output_notebook, show
from bokeh.plotting import figure as bokeh_figure
from bokeh.resources import INLINE
from clipper_nb.abstraction.batching import AIMDController, objective_for_slo

output_notebook(INLINE, hide_banner=True)
rng = np.random.default_rng(1)
ctl = AIMDController(objective_for_slo(SLEEPY_SLO_MS / 1000, 0.002))
caps = []
for step in range(300):
    if step == 150:
        ctl.set_objective(objective_for_slo(0.025, 0.002))
    size = ctl.limit()
    ctl.observe(size, (0.010 + 0.0002 * size) * rng.lognormal(0, 0.1))
    caps.append(ctl.limit())
best_100, best_25 = lesson.best_batch(0.010, 0.0002, 0.100), lesson.best_batch(0.010, 0.0002, 0.025)
p = bokeh_figure(height=250, width=650, x_axis_label="batch", y_axis_label="AIMD batch cap",
                 title="AIMD: +min(4, 10%) while batches fit the objective, ×0.9 when one does not")
p.line(list(range(len(caps))), caps, line_width=2)
p.line([0, 150], [best_100] * 2, line_dash="dashed", color="firebrick")
p.line([150, 300], [best_25] * 2, line_dash="dashed", color="firebrick")
show(p)

fig, ax = figure(7, 2.8)
ax.plot(caps, lw=1.5, label="AIMD cap")
ax.hlines([best_100, best_25], [0, 150], [150, 300], colors="firebrick", linestyles="dashed",
          label="optimal cap (noise-free batch time = objective)")
ax.set(xlabel="batch", ylabel="batch cap (rows)", title="AIMD saw-tooth: SLO 100 ms, then 25 ms")
ax.legend(fontsize=8)
show_static(fig)
print(f"settled cap: {lesson.settled_cap(caps[:150]):.0f} (optimal {best_100}) at 100 ms, "
      f"{lesson.settled_cap(caps[150:]):.0f} (optimal {best_25}) at 25 ms")

# %% [markdown]
# ## Moving the SLO on the live server
#
# `SLOTuner` shows an application's latency against its SLO and each replica's batch
# cap, with an SLO slider. A background `%clipper load` (no `--wait`) keeps 64 rows in
# flight; after 2 seconds we set the slider to 25 ms (exactly what dragging it does)
# and read the replica's cap from `%clipper status` before and after.

# %%
from clipper_nb.widgets import SLOTuner

rows = np.random.default_rng(2).random((1024, 64)).round(3).tolist()
tuner = SLOTuner(SLEEPY_AIMD, client=c)
tuner


# %%
def batch_cap(model):
    return int(c.status().set_index("model").loc[model, "batch_cap"])

# %clipper load {SLEEPY_AIMD} --concurrency 4 --batch-size 16 --duration 5s --input rows
await asyncio.sleep(2)        # the kernel is free meanwhile: the tuner's plots update
cap_at_100ms = batch_cap(SLEEPY_AIMD)
tuner.slo.value = 25
await tuner.settle()
await asyncio.sleep(2)
cap_at_25ms = batch_cap(SLEEPY_AIMD)
print(f"batch cap: {cap_at_100ms} at a 100 ms SLO, {cap_at_25ms} at 25 ms")


# %% [markdown]
# At 100 ms the cap is bounded by the load (AIMD grows only after a *full* batch, and
# 64 rows in flight never fill a batch of 200). At 25 ms the batch objective (half the
# SLO, so that a query's wait for the running batch plus its own batch fit the SLO) is
# 12.5 ms, and 10 ms + 0.2 ms × 12 rows is about what fits.
#
# ## Latency against batch size, live
#
# Every second the server records each replica's mean batch size and mean batch
# latency. Over everything this notebook sent to the `sleepy` models (open-loop sweeps,
# the 64 rows in flight above), those seconds trace the model's cost curve; the
# horizontal lines are AIMD's objective at the two SLOs, and where the cost curve
# crosses one is the optimal cap. The SVM's batches (right) take about a millisecond,
# mostly the fixed cost of a call (RPC and framing), far inside its 10 ms objective;
# they stay at a few rows because, at the rates the frontend delivers, only a few
# queries arrive during a call, and what limits the SVM is the frontend's per-query
# cost seen above.

# %%
await asyncio.sleep(2.2)    # the background load has ended; its last seconds are complete
fig, axes = figure(10, 3.2, ncols=2)
ax1, ax2 = axes[0]
for model in [SLEEPY_OFF, SLEEPY_FIXED8, SLEEPY_AIMD]:
    pts = np.array(lesson.batch_points(c, model) or [(np.nan, np.nan)])
    ax1.plot(pts[:, 0], pts[:, 1], "o", ms=4, alpha=0.7, label=model)
n = np.arange(1, 81)
ax1.plot(n, 10 + 0.2 * n, "k-", lw=1, label="10 ms + 0.2 ms × rows (the model's sleep)")
for slo, colour in [(100, "firebrick"), (25, "darkorange")]:
    ax1.axhline(objective_for_slo(slo / 1000, 0.002) * 1000, color=colour, ls="--",
                label=f"AIMD objective at SLO {slo} ms")
ax1.set(xlabel="mean batch size in a second (rows)", ylabel="mean batch latency (ms)", ylim=(0, 55),
        title="sleepy: latency grows with the batch")
ax1.legend(fontsize=7)
for model in [SVM_OFF, SVM_NODELAY, SVM_AIMD]:
    pts = np.array(lesson.batch_points(c, model) or [(np.nan, np.nan)])
    ax2.plot(pts[:, 0], pts[:, 1], "o", ms=4, alpha=0.7, label=model)
ax2.axhline(objective_for_slo(SVM_SLO_MS / 1000, 0.002) * 1000, color="firebrick", ls="--",
            label=f"AIMD objective at SLO {SVM_SLO_MS} ms")
ax2.set(xlabel="mean batch size in a second (rows)", ylabel="mean batch latency (ms)", ylim=(0, 12),
        title="linear SVM: ~1 ms calls, batches stay small")
ax2.legend(fontsize=7)
show_static(fig)

# %% [markdown]
# ## Summary
#
# Every row compares the same kind of quantity; the third column says how our setup
# differs from the paper's. Ratios are per run (run *i* of one variant against run *i*
# of the other), median and range of three.

# %%
MACHINE = machine()
svm_nodelay_peak = at_sat.loc[SVM_NODELAY]
svm_delay_peak = at_sat.loc[SVM_AIMD]
open_loop = f"open loop, Poisson single-row queries, goodput per row, 0.4 s runs on {MACHINE}"
summary = summary_table(
    ours={
        "AIMD vs no batching, linear SVM: peak goodput (×)": spread(aimd_vs_off_svm, "{:.1f}", "x"),
        "delayed batching 2 ms vs none, linear SVM: peak goodput (×)": spread(delay_vs_none, "{:.2f}", "x"),
        "mean batch at saturation, no delay / 2 ms delay": f"{svm_nodelay_peak['mean batch']:.1f} / "
                                                          f"{svm_delay_peak['mean batch']:.1f}",
        "CPU per query, AIMD: frontend + load generator / worker (ms)":
            f"{at_sat.loc[SVM_AIMD, 'frontend CPU ms/q'] + at_sat.loc[SVM_AIMD, 'load generator CPU ms/q']:.2f}"
            f" ms / {at_sat.loc[SVM_AIMD, 'worker CPU ms/q']:.2f} ms",
        "AIMD vs no batching, 10 ms-per-call model, per row (×)": spread(aimd_vs_off_sleepy, "{:.1f}", "x"),
        "fixed batch of 8 vs no batching, 10 ms-per-call model, per row (×)": spread(fixed_vs_off_sleepy,
                                                                                      "{:.1f}", "x"),
        "AIMD batch cap, SLO 100 ms -> 25 ms": f"{cap_at_100ms} -> {cap_at_25ms}",
    },
    paper={
        "AIMD vs no batching, linear SVM: peak goodput (×)": "25x",
        "delayed batching 2 ms vs none, linear SVM: peak goodput (×)": "3.3x",
        "mean batch at saturation, no delay / 2 ms delay": "not reported; the delay lets batches fill",
        "CPU per query, AIMD: frontend + load generator / worker (ms)":
            "not reported; a C++ frontend on its own server",
        "AIMD vs no batching, 10 ms-per-call model, per row (×)": "the gain grows with the fixed cost per call",
        "fixed batch of 8 vs no batching, 10 ms-per-call model, per row (×)": "throughput grows with the batch "
                                                                              "size until the SLO binds",
        "AIMD batch cap, SLO 100 ms -> 25 ms": "the cap follows the SLO (additive increase, 10% cut)",
    },
    setup={
        "AIMD vs no batching, linear SVM: peak goodput (×)":
            "same SLO (20 ms) and quantity (throughput at saturation: peak goodput over a sweep of 300, "
            f"600, 900, 1300, 1900 q/s, 3 passes), median peaks at {svm_peak_rates[SVM_OFF].median():.0f} (off) "
            f"and {svm_peak_rates[SVM_AIMD].median():.0f} q/s (AIMD"
            f"{', the top of the sweep' if svm_peak_rates[SVM_AIMD].median() >= max(SVM_RATES) else ''}); "
            f"{open_loop}; a single-threaded "
            "Python frontend, the load generator and the worker share the cores; the frontend's CPU per "
            f"query ({frontend_ms:.2f} ms, one core: {frontend_ceiling:.0f} q/s) bounds the gain at "
            f"{frontend_ceiling / max(1, off_peak):.1f}x here; paper: C++ frontend, clients on other machines",
        "delayed batching 2 ms vs none, linear SVM: peak goodput (×)":
            f"same delay, SLO 20 ms, peak goodput over the sweep (3 passes); {open_loop}; at saturation the "
            "frontend's per-query CPU, which a fuller batch does not lower, is the limit (the CPU row); "
            "paper: C++ frontend",
        "mean batch at saturation, no delay / 2 ms delay":
            "the server's per-second metrics over 1 s at the rate where the no-delay variant peaked "
            f"({sat_rate:.0f} q/s, open loop)",
        "CPU per query, AIMD: frontend + load generator / worker (ms)":
            f"psutil CPU time / queries answered, 1 s at {sat_rate:.0f} q/s (the no-delay variant's peak); "
            f"{MACHINE}",
        "AIMD vs no batching, 10 ms-per-call model, per row (×)":
            f"synthetic model (10 ms + 0.2 ms/row), SLO 100 ms, peak goodput over a sweep of 100, 200, 400, 800 "
            f"q/s (3 passes; the sweep's top, 800 q/s, bounds AIMD's peak); {open_loop}",
        "fixed batch of 8 vs no batching, 10 ms-per-call model, per row (×)":
            f"synthetic model, SLO 100 ms, peak goodput over the same sweep (3 passes); {open_loop}",
        "AIMD batch cap, SLO 100 ms -> 25 ms": "live replica, closed loop of 4 × 16-row requests, SLO moved "
                                               "with the SLOTuner slider",
    },
)
summary

# %% [markdown]
# ## Exercises
#
# The first uses this notebook's measurement; the others use the real AIMD controller in
# a small simulation (`_lesson02.py`), so they run in a second and need no server.

# %%
from _nbhelpers import Exercises

exercises = Exercises()
delay_closed = closed.loc[SVM_AIMD]
exercises.add(
    "1", f"Little's law. 16 closed-loop clients saw a mean latency of {delay_closed['mean latency (ms)']} ms "
         "on `svm-aimd` (the table above). What throughput (q/s) must they have measured?",
    lambda a: (a is not None and abs(a - 16 / (delay_closed["mean latency (ms)"] / 1000))
               <= 0.05 * 16 / (delay_closed["mean latency (ms)"] / 1000),
               "throughput = clients in flight / mean latency"),
    lambda: 16 / (delay_closed["mean latency (ms)"] / 1000))
exercises.add(
    "2", "AIMD at another SLO. Step the controller against the sleepy model at a 40 ms SLO with "
         "`lesson.aimd_caps(0.010, 0.0002, 0.040)`: where does the cap settle "
         "(`lesson.settled_cap`)? And what is the optimal (noise-free) cap?",
    lambda a: (a is not None and 0.7 * lesson.best_batch(0.010, 0.0002, 0.040) <= a
               <= lesson.best_batch(0.010, 0.0002, 0.040),
               "objective 20 ms: (20 - 10) / 0.2 = 50 rows fit without noise; 10% noise keeps the cap a little "
               "below"),
    lambda: lesson.settled_cap(lesson.aimd_caps(0.010, 0.0002, 0.040)))
exercises.add(
    "3", "Batching off. Offered 400 single-row q/s, what goodput (rows/s) can the 10 ms + 0.2 ms/row model "
         "reach with `max_batch_size=1`? Check with "
         "`lesson.simulate_goodput(0.010, 0.0002, 400, 0.1, max_batch=1)`, then try `max_batch=8` and `None` "
         "(AIMD).",
    lambda a: (a is not None and 85 <= a <= 105, "one row per call: at most 1 / 10.2 ms = 98 rows/s"),
    lambda: lesson.simulate_goodput(0.010, 0.0002, 400, 0.1, max_batch=1))
exercises.add(
    "4", f"A faster frontend. Batching off peaked at {off_peak:.0f} rows/s (`off_peak`). Suppose the frontend "
         "spent only 0.05 ms of CPU per query (a C++ frontend), all else as measured: what would its ceiling "
         "(1 core / CPU per query) be, and so at most how many times batching off's goodput could batching reach?",
    lambda a: (a is not None and abs(a - 20000 / max(1, off_peak)) <= 0.1 * 20000 / max(1, off_peak),
               "1 core / 0.05 ms = 20,000 q/s, over batching off's peak: the paper's regime"),
    lambda: (1000 / 0.05) / max(1, off_peak))
exercises

# %%
exercises.check("3", 1 / 0.0102)   # a worked example: the arithmetic answer

# %% [markdown]
# ## Clean up

# %%
tuner.stop()
for name in NAMES.values():   # only what this notebook created
    c.undeploy(name)
    c.delete_app(name)

# %% [markdown]
# # 07 · A PyTorch model: devices, batch sizes and replicas
#
# A `torch.nn.Module` deploys like any model. `device="auto"` (the default) puts each
# replica on a GPU when the worker sees one (`cuda:N`, round robin) and on the CPU
# otherwise; `device="cuda:1"` or `"cpu"` pins it. Neural networks are where batching
# pays most: one forward pass over 64 rows costs little more than over one, on a GPU
# above all. Replicas add throughput when there is hardware to run them on: the paper
# scales one model across GPUs, each replica on a GPU of its own, and gets 3.96× the
# throughput of one replica with four.
#
# The original Clipper release never shipped GPU support (its issue #338); here it is
# one argument.
#
# What this notebook measures, live: throughput and goodput with batching off, a fixed batch and AIMD;
# one replica against more; and, around every run, **where the CPU time goes** (the
# frontend, each replica, the load generator, everything else on the machine), read
# from Linux's `/proc`. That CPU budget, not an assertion, is what explains how much a
# second replica can add on this machine.

# %%
# %load_ext clipper_nb
import clipper_nb

from _nbhelpers import fresh_names, machine

c = clipper_nb.connect()   # finds the Jupyter server that started this kernel: no URL, no token to type
print("measured on:", machine())
# Each configuration's model and app (mlp-nobatch, mlp-fixed16, mlp-aimd, mlp-aimd-more) keeps that
# name where the server has none of them; else all get a suffix such as "-2" (an app or model of
# yours stays untouched). NAMES maps the text's name to the server's.
NAMES = fresh_names(c, "mlp-nobatch", "mlp-fixed16", "mlp-aimd", "mlp-aimd-more")
c

# %%
import os
import time

import numpy as np
import pandas as pd
import torch
from sklearn.datasets import load_digits

from _nbhelpers import (Exercises, clipper_load, figure, show_static, spread,   # _nbhelpers.py, next to the notebooks
                        summary_table, within)

X, y = load_digits(return_X_y=True)
X = (X / 16).astype(np.float32)
torch.manual_seed(0)
net = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.ReLU(),
                          torch.nn.Linear(256, 256), torch.nn.ReLU(), torch.nn.Linear(256, 10))
optimizer = torch.optim.Adam(net.parameters(), lr=3e-3)
Xt, yt = torch.from_numpy(X), torch.from_numpy(y)
torch.set_num_threads(1)    # this kernel shares the cores with the server and its workers
for epoch in range(40):                      # full-batch training: a second or two
    optimizer.zero_grad()
    loss = torch.nn.functional.cross_entropy(net(Xt), yt)
    loss.backward()
    optimizer.step()
net.eval()

GPUS = torch.cuda.device_count()
CORES = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
# With GPUs, one replica per GPU (up to the paper's 4); without, 2 CPU replicas.
REPLICAS = min(4, GPUS) if GPUS >= 2 else 2
print(f"training accuracy {(net(Xt).argmax(1) == yt).float().mean():.3f}; "
      f"this kernel sees {GPUS} GPU(s) and {CORES} CPU cores")
print(f"GPU path: {REPLICAS} replicas on cuda:0..{min(GPUS, REPLICAS) - 1}" if GPUS else
      "no GPU on this machine: every replica runs on the CPU (one thread each); the GPU rows below say so")


# %% [markdown]
# The module answers logits; the class is their `argmax`. A small wrapper module does
# that inside the worker, so the application answers a digit (a class defined in the
# notebook is pickled by value: the worker needs no file of ours).
#
# The wrapper also gives each CPU replica **one thread**, as Clipper gives each model
# container a core: by default torch spreads every matrix product over all cores, and
# on a small machine the replicas' threads then fight each other and the frontend.
# `__setstate__` runs when the worker unpickles the model, so only the worker is
# affected; on a GPU it changes nothing.

# %%
class Classifier(torch.nn.Module):
    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(x).argmax(dim=1)

    def __setstate__(self, state):
        super().__setstate__(state)
        torch.set_num_threads(1)     # one core per CPU replica

model = Classifier(net).eval()
rows = X.round(4).tolist()
CONFIGS = {"batching off, 1 replica": (NAMES["mlp-nobatch"], dict(max_batch_size=1)),
           "fixed batch of 16, 1 replica": (NAMES["mlp-fixed16"], dict(batch_size=16)),
           "AIMD, 1 replica": (NAMES["mlp-aimd"], {}),
           f"AIMD, {REPLICAS} replicas": (NAMES["mlp-aimd-more"], {})}
for name, batching in CONFIGS.values():
    c.register_app(name, slo_ms=100, cache=False)
    c.deploy(model, name, app=name, device="auto", **batching)

# %% [markdown]
# The fourth application serves the same model with more replicas: 2 on a machine
# without GPUs; one per GPU, up to 4, on a machine with several.

# %%
MORE_APP = NAMES["mlp-aimd-more"]
# %clipper scale {MORE_APP} {REPLICAS}
MORE = f"AIMD, {REPLICAS} replicas"
status = c.status()
status = status[status["model"].isin(NAMES.values())]   # this notebook's replicas only
device = ", ".join(sorted(set(status["device"])))
print("the replicas run on:", device)
status[["model", "replica", "state", "device", "batch_cap"]]


# %% [markdown]
# ## Goodput and the CPU budget
#
# Each application gets a 1 s warm-up (a fresh replica's first calls are slow), then
# **3 rounds**; in each round every configuration runs for 1 s in turn, so that the
# configurations share whatever else the machine was doing at the time (it is shared,
# and its load drifts). The load: 16 clients in a closed loop, each request 16 rows of
# the digits, SLO 100 ms. Around each run the notebook reads the CPU seconds of every
# process that serves (`_lesson07.py`, next to the notebook):
#
# * **frontend**: the process that answers HTTP, batches and dispatches (the Jupyter
#   server here, or `clipper-nb serve`), found as the parent of the replicas' workers;
# * **replica N**: each worker process, by the pid `c.status()` reports;
# * **load generator**: this kernel, where `%clipper load` runs;
# * **everything else**: the machine's busy time (`/proc/stat`) minus those: other
#   programs sharing the machine.
#
# CPU seconds divided by wall seconds is **cores in use**: 1.0 is one core kept busy.
# Afterwards the server's own metrics (`c.metrics()`) give each configuration's mean
# batch size and time per batch.

# %%
from IPython.utils.capture import capture_output

from _lesson07 import batches, measure_cpu, serving_processes   # kernel-side helpers of this notebook

RUNS, OPTIONS = 3, "--concurrency 16 --batch-size 16 --input rows"
runs, windows = [], {}

def measure(config, app, processes, run):
    """One run of 1 s on ``app`` with the CPU time of every serving process around it."""
    with capture_output():                     # the progress line: one summary line per run instead
        result, cores = measure_cpu(lambda: clipper_load(app, f"{OPTIONS} --duration 1s"), processes)
    replicas = sum(v for k, v in cores.items() if k.startswith("replica"))
    predictions = result.rows_per_s - result.defaults / result.duration_s    # rows a model answered, any latency
    runs.append({"config": config, "run": run, "predictions/s": predictions, "goodput (rows/s)": result.goodput,
                 "p99 (ms)": result.p99_ms, "frontend": cores["frontend"], "replicas": replicas,
                 "load generator": cores["load generator (this kernel)"],
                 "everything else": cores["everything else"], "whole machine": cores["whole machine"]})
    print(f"run {run} {config:>28}: {predictions:5.0f} predictions/s, goodput {result.goodput:5.0f} rows/s, "
          f"p99 {result.p99_ms:5.1f} ms | "
          f"cores: frontend {cores['frontend']:.2f}, replicas {replicas:.2f}, load generator "
          f"{cores['load generator (this kernel)']:.2f}, everything else {cores['everything else']:.2f}")

processes = {}
for config, (app, _) in CONFIGS.items():
    with capture_output():
        clipper_load(app, f"{OPTIONS} --duration 1s")              # %clipper load {app} {options} --wait
    processes[config] = serving_processes(c.status(), app)
start = time.time()
for run in range(1, RUNS + 1):
    for config, (app, _) in CONFIGS.items():
        measure(config, app, processes[config], run)
windows = {config: (app, start, time.time()) for config, (app, _) in CONFIGS.items()}

# %% [markdown]
# The per-configuration medians, with the server's batch statistics over the same
# seconds. "cores" columns are cores in use; the machine has `CORES` of them.

# %%
time.sleep(1.2)                                   # the server reports complete seconds only
metrics = c.metrics()
runs_table = pd.DataFrame(runs)
cpu = runs_table.groupby("config", sort=False)[["predictions/s", "goodput (rows/s)", "p99 (ms)", "frontend", "replicas",
                                                "load generator", "everything else", "whole machine"]].median()
for config, (app, t0, t1) in windows.items():
    for k, v in batches(metrics, app, t0, t1).items():
        cpu.loc[config, k] = v
cpu = cpu.loc[list(CONFIGS)]
cpu.round(2)

# %% [markdown]
# The same data as a picture (a static PNG, so a saved copy of the notebook keeps it):
# throughput and goodput per configuration with the range of the 3 runs, and what the machine's cores
# were doing meanwhile.

# %%
fig, axes = figure(11, 3.6, ncols=2)
ax_goodput, ax_cpu = axes[0]
labels = [k.replace(", ", "\n") for k in CONFIGS]
x = np.arange(len(CONFIGS))
for offset, column, color in [(-0.2, "predictions/s", "#8c8c8c"), (0.2, "goodput (rows/s)", "#4c72b0")]:
    values = [runs_table.loc[runs_table["config"] == k, column] for k in CONFIGS]
    ax_goodput.bar(x + offset, [v.median() for v in values], width=0.4, color=color, label=column, capsize=3,
                   yerr=[[v.median() - v.min() for v in values], [v.max() - v.median() for v in values]])
ax_goodput.set_xticks(x, labels)
ax_goodput.set_ylabel("rows/s")
ax_goodput.legend(fontsize=8)
ax_goodput.set_title("throughput and goodput: median and range of 3 runs", fontsize=10)
bottom = np.zeros(len(CONFIGS))
for part, color in [("frontend", "#dd8452"), ("replicas", "#4c72b0"), ("load generator", "#55a868"),
                    ("everything else", "#bbbbbb")]:
    ax_cpu.bar(labels, cpu[part].values, bottom=bottom, label=part, color=color)
    bottom += cpu[part].values
ax_cpu.axhline(CORES, color="black", linestyle="--", linewidth=1)
ax_cpu.text(len(CONFIGS) - 0.5, CORES, f" {CORES} cores", va="bottom", ha="right", fontsize=9)
ax_cpu.set_ylabel("cores in use (CPU s per s)")
ax_cpu.set_title("where the CPU time went (median run)", fontsize=10)
ax_cpu.legend(fontsize=8, ncol=4, loc="upper center", bbox_to_anchor=(0.5, -0.2))
for ax in (ax_goodput, ax_cpu):
    ax.tick_params(axis="x", labelsize=7)
show_static(fig)

# %% [markdown]
# **Reading it.** A replica adds throughput only if (1) the replica is the bottleneck:
# one replica is busy all the time and work queues for it; and (2) there is idle
# hardware for the next one. The next cell reads both conditions off the measurements
# above instead of asserting them (its sentences are computed from `cpu`, so they describe
# this run, whatever the machine was doing).

# %%
one, more = cpu.loc["AIMD, 1 replica"], cpu.loc[MORE]
ours_one = one["frontend"] + one["replicas"] + one["load generator"]
print(f"1. Is one replica the bottleneck? With 1 replica it used {one['replicas']:.2f} cores (1.0 = one core busy "
      f"all the time) for {one['predictions/s']:.0f} predictions/s, in batches of {one['mean batch (rows)']:.0f} "
      f"rows taking {one['time per batch (ms)']:.0f} ms each. "
      + ("It was busy most of the time: a second one could take work off it." if one["replicas"] > 0.8 else
         "It was idle much of the time: the rows reached it more slowly than it could serve them."))
print(f"2. Is there idle hardware? The frontend used {one['frontend']:.2f} cores and the load generator "
      f"{one['load generator']:.2f}, so serving took {ours_one:.2f} cores; other programs took "
      f"{one['everything else']:.2f}; the whole machine was busy {one['whole machine']:.2f} of {CORES} cores. "
      + ("No core was idle: a second replica can only take CPU time from the frontend, the load generator, the "
         "first replica or the other programs." if one["whole machine"] > 0.9 * CORES else
         f"{CORES - one['whole machine']:.2f} cores were idle for more replicas."))
others = runs_table["everything else"].median()
if others > 0.3:
    print(f"NOTE: other programs used {others:.2f} of the {CORES} cores during these runs (median): the serving "
          f"processes got what was left, 1 s runs then swing widely (see the ranges), and an AIMD replica that "
          f"waits for a core sees slow batches and shrinks its batch cap. Rerun on an idle machine to compare "
          f"with the paper.")
print(f"3. With {REPLICAS} replicas: {more['predictions/s']:.0f} predictions/s (median; 1 replica: "
      f"{one['predictions/s']:.0f}), the replicas together used {more['replicas']:.2f} cores, batches of "
      f"{more['mean batch (rows)']:.0f} rows; the whole machine {more['whole machine']:.2f} of {CORES} cores.")

# %% [markdown]
# The paper's setup meets both conditions: each replica has a GPU of its own and the
# frontend a machine of its own, and its throughput grows near-linearly to 3.96× with
# 4 replicas; it too stopped scaling once the network, not the GPUs, was the
# bottleneck. Where a machine is shared (as the "everything else" column shows when other
# programs run), the runs swing widely: the ranges in the table say by how much. On a
# machine with GPUs this notebook runs one replica per GPU (`REPLICAS`), and the same
# table shows whether they scale.
#
# ## Summary

# %%
def per_run(config, column):
    return runs_table.loc[runs_table["config"] == config, column].to_numpy()

# Ratios within a round: the two runs shared whatever else the machine was doing then.
batching_gain = per_run("AIMD, 1 replica", "goodput (rows/s)") / np.maximum(
    1, per_run("batching off, 1 replica", "goodput (rows/s)"))
replica_gain = per_run(MORE, "predictions/s") / np.maximum(1, per_run("AIMD, 1 replica", "predictions/s"))
machine_line = machine()
gpu_note = (f"{GPUS} GPU(s) here: replicas on {device}" if GPUS else
            "no GPU on this machine (torch.cuda.device_count() = 0): CPU replicas, one thread each")
budget = (f"measured with 1 replica: frontend {one['frontend']:.2f}, replica {one['replicas']:.2f}, load generator "
          f"{one['load generator']:.2f}, everything else {one['everything else']:.2f} cores of {CORES} "
          f"(whole machine {one['whole machine']:.2f}); mean batch {one['mean batch (rows)']:.0f} rows with 1 "
          f"replica, {more['mean batch (rows)']:.0f} with {REPLICAS}")
PAPER_SCALING = {2: "~2x at 2 replicas on its near-linear curve (3.96x with 4 GPU replicas)",
                 3: "~3x at 3 replicas on its near-linear curve (3.96x with 4 GPU replicas)",
                 4: "3.96x with 4 GPU replicas"}
LOAD_SETUP = "16 clients in a closed loop, 16 rows per request, SLO 100 ms, 3 runs of 1 s"
summary = summary_table(
    ours={
        "device the replicas run on": device if GPUS else f"{device} (no GPU on this machine)",
        "AIMD vs batching off (× goodput)": spread(batching_gain, "{:.1f}", "x"),
        f"{REPLICAS} replicas vs 1, AIMD (× throughput)": spread(replica_gain, "{:.2f}", "x"),
        f"{REPLICAS} replicas vs 1, scaling efficiency (throughput ratio / replicas)":
            spread(100 * replica_gain / REPLICAS, "{:.0f}", "%"),
    },
    paper={
        "device the replicas run on": "GPU models in containers (Clipper's release lacked GPU support, #338)",
        "AIMD vs batching off (× goodput)": "batching gives the largest gains where calls have a high "
                                            "fixed cost (25× for a linear SVM; no MLP on CPU measured)",
        f"{REPLICAS} replicas vs 1, AIMD (× throughput)": PAPER_SCALING[REPLICAS],
        f"{REPLICAS} replicas vs 1, scaling efficiency (throughput ratio / replicas)":
            "99% (3.96x with 4 GPU replicas)",
    },
    setup={
        "device the replicas run on": f"{gpu_note}; paper: a GPU per replica; {machine_line}",
        "AIMD vs batching off (× goodput)": f"a torch MLP (64-256-256-10) on one CPU thread, {LOAD_SETUP}, "
                                            f"ratio per round; other programs on the machine meanwhile: everything "
                                            f"else {runs_table['everything else'].median():.2f} cores (median of all "
                                            f"runs); paper: per-model throughput of its benchmark models",
        f"{REPLICAS} replicas vs 1, AIMD (× throughput)":
            f"predictions/s (rows a model answered, whatever the latency), ratio within each round; {REPLICAS} {'GPU' if GPUS else 'CPU'} replicas sharing {CORES} cores with the frontend, the load "
            f"generator and other programs; {LOAD_SETUP}; {budget}; paper: 4 GPU replicas, each on a GPU of its "
            f"own, frontend on its own machine, 10 Gbps network",
        f"{REPLICAS} replicas vs 1, scaling efficiency (throughput ratio / replicas)":
            f"same runs; with {REPLICAS} replicas the replicas used {more['replicas']:.2f} cores and the whole machine "
            f"{more['whole machine']:.2f} of {CORES} (1 replica: {one['replicas']:.2f} and {one['whole machine']:.2f}); "
            f"paper: 4 GPU replicas, a GPU each",
    },
)
summary

# %% [markdown]
# ## Exercises
#
# A back-of-the-envelope model of the CPU budget: each row a model answers costs the
# frontend, the replica and the load generator some CPU time (cores in use divided by
# predictions per second, from `cpu` above); on a machine with `CORES` cores nothing goes
# faster than the free cores divided by that cost per row, however many replicas serve.

# %%

def ours_with_one():
    return one["frontend"] + one["replicas"] + one["load generator"]

def ms_per_1000_rows():
    """CPU milliseconds 1,000 predictions cost the frontend, the replica and the load generator (1 replica)."""
    return 1e6 * ours_with_one() / max(1.0, one["predictions/s"])

def predicted_ratio():
    """The REPLICAS-vs-1 throughput the CPU budget allows: (free cores) / (cores we use), at most REPLICAS."""
    free = max(0.0, CORES - one["everything else"])
    return min(float(REPLICAS), free / max(ours_with_one(), 1e-9))

def cores_for_paper_scaling():
    """Cores the frontend and the load generator need for 4x the 1-replica throughput (models on 4 GPUs)."""
    return 4 * (one["frontend"] + one["load generator"])

exercises = Exercises()
exercises.add("1", "Cost per row: from `cpu` (row 'AIMD, 1 replica'), how many CPU milliseconds do 1,000 "
              "predictions cost the frontend, the replica and the load generator together?",
              within(0.85 * ms_per_1000_rows(), 1.15 * ms_per_1000_rows(), "CPU ms per 1,000 predictions"),
              ms_per_1000_rows)
exercises.add("2", f"Predict the throughput ratio of {REPLICAS} replicas vs 1 from the CPU budget alone: the cores "
              f"not used by 'everything else' ({CORES} minus that column), divided by the cores our three processes "
              f"use with 1 replica, capped at {REPLICAS} ({REPLICAS} replicas at most multiply a replica-bound "
              f"throughput by {REPLICAS}). Compare it with the measured ratio in `summary`: what does the budget "
              f"leave out?",
              within(predicted_ratio() - 0.1, predicted_ratio() + 0.1, f"predicted {REPLICAS}-vs-1 ratio"),
              predicted_ratio)
exercises.add("3", "The paper's setup moves the model onto GPUs, but every row still passes through the frontend "
              "and the load generator. If their CPU cost per row stays as measured with 1 replica, how many "
              "cores would the two need for 4 GPU replicas to reach 4x the 1-replica throughput?",
              within(0.85 * cores_for_paper_scaling(), 1.15 * cores_for_paper_scaling(), "cores needed"),
              cores_for_paper_scaling)
exercises

# %% [markdown]
# A worked example for exercise 1, reading the table (check it, then try 2 and 3):

# %%
aimd = cpu.loc["AIMD, 1 replica"]
cores_used = aimd["frontend"] + aimd["replicas"] + aimd["load generator"]
answer = 1e6 * cores_used / aimd["predictions/s"]
print(f"{cores_used:.2f} cores for {aimd['predictions/s']:.0f} predictions/s: {answer:.0f} CPU ms per 1,000")
exercises.check("1", answer);

# %% [markdown]
# ## Clean up

# %%
for name, _ in CONFIGS.values():
    c.undeploy(name)
    c.delete_app(name)

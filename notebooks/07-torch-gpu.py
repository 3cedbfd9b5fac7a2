# %% [markdown]
# # 07 · A PyTorch model: devices, batch sizes and replicas
#
# A `torch.nn.Module` deploys like any model. `device="auto"` (the default) puts each
# replica on a GPU when the worker sees one (`cuda:N`, round robin) and on the CPU
# otherwise; `device="cuda:1"` or `"cpu"` pins it. Neural networks are where batching
# pays most: one forward pass over 64 rows costs little more than over one, on a GPU
# above all. Replicas add throughput when there is hardware to run them on (the
# paper scales a model across GPUs).
#
# The original Clipper release never shipped GPU support (its issue #338); here it is
# one argument.

# %%
# %load_ext clipper_nb
import clipper_nb

c = clipper_nb.connect()   # finds the Jupyter server that started this kernel: no URL, no token to type
c

# %%
import numpy as np
import pandas as pd
import torch
from sklearn.datasets import load_digits

from _nbhelpers import clipper_load, load_stats, summary_table   # _nbhelpers.py, next to the notebooks

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
print(f"training accuracy {(net(Xt).argmax(1) == yt).float().mean():.3f}; "
      f"this kernel sees {torch.cuda.device_count()} GPU(s)")


# %% [markdown]
# The module answers logits; the class is their `argmax`. A small wrapper module does
# that inside the worker, so the application answers a digit (a class defined in the
# notebook is pickled by value: the worker needs no file of ours).
#
# The wrapper also gives each CPU replica **one thread**, as Clipper gives each model
# container a core: by default torch spreads every matrix product over all cores, and
# on a small machine the replicas' threads then fight each other and the frontend
# (on two busy cores we measured batches 5× slower with two threads than with one).
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
for name, batching in [("mlp-nobatch", dict(max_batch_size=1)), ("mlp-fixed16", dict(batch_size=16)),
                       ("mlp-aimd", {})]:
    c.register_app(name, slo_ms=100, cache=False)
    c.deploy(model, name, app=name, device="auto", **batching)
c.status()[["model", "replica", "state", "device", "batch_cap"]]


# %%
def load(app):
    # A fresh replica's first calls are slow (allocations, caches): warm up, then measure.
    options = "--concurrency 4 --batch-size 16 --input rows"
    clipper_load(app, f"{options} --duration 1s")              # %clipper load {app} {options} --wait
    return load_stats(clipper_load(app, f"{options} --duration 2s"))

results = {"batching off, 1 replica": load("mlp-nobatch"),
           "fixed batch of 16, 1 replica": load("mlp-fixed16"),
           "AIMD, 1 replica": load("mlp-aimd")}
# %clipper scale mlp-aimd 2
results["AIMD, 2 replicas"] = load("mlp-aimd")
device = ", ".join(sorted(set(c.status()["device"])))
torch_table = pd.DataFrame(results).T
torch_table

# %% [markdown]
# On a machine with two CPU cores, a second CPU replica competes with the frontend and
# the first replica for the same cores, so it adds little; on a machine with GPUs each
# replica gets its own device.
#
# ## Summary

# %%
goodput = torch_table["goodput (rows/s)"]
summary = summary_table(
    ours={
        "device the replicas run on": device,
        "AIMD vs batching off (× goodput)": round(goodput["AIMD, 1 replica"] /
                                                  max(1, goodput["batching off, 1 replica"]), 1),
        "2 replicas vs 1, AIMD (× goodput)": round(goodput["AIMD, 2 replicas"] /
                                                   max(1, goodput["AIMD, 1 replica"]), 2),
    },
    paper={
        "device the replicas run on": "GPU models in containers (Clipper's release lacked GPU support, #338)",
        "AIMD vs batching off (× goodput)": "batching gives the largest gains where calls have a high "
                                            "fixed cost (25× for a linear SVM)",
        "2 replicas vs 1, AIMD (× goodput)": "near-linear scaling with GPU replicas",
    },
)
summary

# %% [markdown]
# ## Clean up

# %%
for name in ["mlp-nobatch", "mlp-fixed16", "mlp-aimd"]:
    c.undeploy(name)
    c.delete_app(name)

# %% [markdown]
# # 04 · Model selection: Exp3, Exp4 and ensemble confidence (Fig. 8)
#
# An application can link several models. Clipper's **selection layer** learns from
# feedback which to trust, separately for each application:
#
# * **Exp3** answers each query with *one* model, drawn with probability from its
#   weight; feedback updates only that model: `w ← w · exp(−η · loss / p)`.
# * **Exp4** asks *every* model and answers their weighted vote; feedback updates each
#   model with its own loss: `w ← w · exp(−η · loss)`.
#
# The paper's Fig. 8: five models, the best one starts returning noise for a while.
# Both policies soon move weight away from it, and back after it heals, so the
# application's error stays close to the best model's, where serving the formerly best
# model alone would be wrong most of the time while it is broken.
#
# We replay that on the live system with five synthetic classifiers whose errors are
# deterministic functions of the query, so the run is reproducible.

# %%
# %load_ext clipper_nb
import clipper_nb

c = clipper_nb.connect()   # finds the Jupyter server that started this kernel: no URL, no token to type
c

# %%
import asyncio

import numpy as np
import pandas as pd

from _nbhelpers import summary_table   # _nbhelpers.py, next to the notebooks

N_CLASSES = 10

def true_label(q):
    return int(np.random.default_rng((0, q)).integers(N_CLASSES))

class NoisyClassifier:
    """Wrong on a share `error` of queries (confusing the class with one of the next two,
    as models confuse similar digits); returns noise for queries in `broken`."""
    def __init__(self, seed, error, broken=None):
        self.seed, self.error, self.broken = seed, error, broken

    def predict_one(self, q):
        rng = np.random.default_rng((self.seed + 1, q))
        if self.broken and self.broken[0] <= q < self.broken[1]:
            return int(rng.integers(N_CLASSES))                    # noise
        if rng.random() < self.error:
            return (true_label(q) + 1 + int(rng.integers(2))) % N_CLASSES
        return true_label(q)

    def __call__(self, batch):
        return [self.predict_one(int(row[0])) for row in batch]

N, BROKEN = 600, (150, 350)
ERRORS = [0.10, 0.20, 0.25, 0.30, 0.35]
models = [f"m{i}" for i in range(5)]
for i, name in enumerate(models):
    c.deploy(NoisyClassifier(i, ERRORS[i], BROKEN if i == 0 else None), name)
c.models()[["name", "version", "kind", "replicas_up"]]

# %% [markdown]
# Two applications link the same five models, one per policy. The learning rate η = 0.3
# and a floor on how far a weight can fall (e⁻⁵ of the best) let a short run show both
# the fall and the recovery. The SLO is generous: latency is not the subject here.
# We fill the models' caches first with one batched request, so the per-query loop
# below measures selection, not model time.

# %%
options = dict(eta=0.3, log_weight_floor=-5.0)
c.register_app("fig8-exp4", policy="exp4", models=models, slo_ms=5000, **options)
c.register_app("fig8-exp3", policy="exp3", models=models, slo_ms=5000, **options)
queries = [[float(q)] for q in range(N)]
_ = c.predict_batch("fig8-exp4", queries)

# %% [markdown]
# `WeightsView` plots the policy's weights as feedback arrives. The loop runs in a
# thread (`asyncio.to_thread`) so the kernel stays free to update the widget.

# %%
from clipper_nb.widgets import WeightsView

weights_view = WeightsView("fig8-exp4", client=c)
weights_view


# %%
def replay(app):
    """Predict, then send the true label as feedback, for every query in order."""
    client = clipper_nb.connect()
    steps = []
    for q in range(N):
        answer = client.predict(app, queries[q])
        fb = client.feedback(app, queries[q], true_label(q))
        steps.append({"q": q, "wrong": answer["output"] != true_label(q), **{
            f"{m} wrong": fb["losses"][m] for m in models}, "weight m0": fb["weights"]["m0"]})
    return pd.DataFrame(steps).set_index("q")

exp4, exp3 = await asyncio.gather(asyncio.to_thread(replay, "fig8-exp4"),
                                  asyncio.to_thread(replay, "fig8-exp3"))

# %%
from bokeh.io import output_notebook, show
from bokeh.palettes import Category10
from bokeh.plotting import figure
from bokeh.resources import INLINE

output_notebook(INLINE, hide_banner=True)
rolling = pd.DataFrame({"Exp4": exp4["wrong"], "Exp3": exp3["wrong"],
                        "m0 alone (fails)": exp4["m0 wrong"], "m1 alone": exp4["m1 wrong"]}
                       ).astype(float).rolling(50, min_periods=10).mean()
p = figure(height=280, width=700, x_axis_label="query", y_axis_label="error (rolling 50)",
           title=f"m0 returns noise for queries {BROKEN[0]}-{BROKEN[1]}")
for color, column in zip(Category10[4], rolling.columns):
    p.line(rolling.index, rolling[column], legend_label=column, color=color, line_width=2)
p.legend.location = "top_left"
show(p)

# %%
errors = pd.Series({"Exp4": exp4["wrong"].mean(), "Exp3": exp3["wrong"].mean(),
                    **{f"{m} alone": exp4[f"{m} wrong"].mean() for m in models}}, name="error").round(3)
after_break = exp4.loc[BROKEN[0]:BROKEN[1] - 1, "weight m0"]
queries_to_drop = int((after_break < 0.1).idxmax() - BROKEN[0]) if (after_break < 0.1).any() else None
print(f"Exp4's weight on m0: {exp4.loc[BROKEN[0], 'weight m0']:.2f} when it breaks, below 0.1 after "
      f"{queries_to_drop} noisy queries, {exp4['weight m0'].iloc[-1]:.2f} at the end")
errors.to_frame()

# %% [markdown]
# ## Agreement is confidence
#
# Exp4's answer carries a **confidence**: the weight of the models that voted for it.
# With equal weights (a tiny η), that is the share of the five models that agree. The
# paper shows that queries on which the models agree are far more often right, so an
# application can ask for a fallback (or a human) when confidence is low. We query
# 2,000 fresh inputs in one batched request and group the answers by agreement.

# %%
c.register_app("agreement", policy="exp4", models=models, slo_ms=5000, eta=0.001)
fresh = list(range(N, N + 2000))
answers = c.predict_batch("agreement", [[float(q)] for q in fresh])
by_agreement = pd.DataFrame({
    "models agreeing": [round(a["confidence"] * 5) for a in answers],
    "wrong": [a["output"] != true_label(q) for a, q in zip(answers, fresh)],
}).groupby("models agreeing")["wrong"].agg(["size", "mean"]).rename(
    columns={"size": "queries", "mean": "error"}).sort_index(ascending=False).round(3)
overall_error = float(np.mean([a["output"] != true_label(q) for a, q in zip(answers, fresh)]))
by_agreement

# %% [markdown]
# ## Summary

# %%
all_agree = by_agreement.loc[5, "error"]
split = by_agreement.index <= 3
few_agree = (by_agreement.loc[split, "error"] * by_agreement.loc[split, "queries"]).sum() / \
    by_agreement.loc[split, "queries"].sum()
summary = summary_table(
    ours={
        "Exp4 error, best model broken for a third of the run": errors["Exp4"],
        "Exp3 error, same run": errors["Exp3"],
        "best single model, same run": errors[[f"{m} alone" for m in models]].min(),
        "formerly best model alone (m0)": errors["m0 alone"],
        "Exp4 weight on m0 < 0.1 after (noisy queries)": queries_to_drop,
        "error when all 5 models agree / 3 or fewer / overall": f"{all_agree:.3f} / {few_agree:.3f} / "
                                                                f"{overall_error:.3f}",
    },
    paper={
        "Exp4 error, best model broken for a third of the run": "stays near the best model's error "
                                                                "through the failure (Fig. 8)",
        "Exp3 error, same run": "recovers too, more slowly: it learns from one model per query",
        "best single model, same run": "the reference both policies approach",
        "formerly best model alone (m0)": "a static choice keeps serving the broken model",
        "Exp4 weight on m0 < 0.1 after (noisy queries)": "weight moves off the failing model quickly",
        "error when all 5 models agree / 3 or fewer / overall": "far lower when the models agree: "
                                                                "agreement is a confidence score",
    },
)
summary

# %% [markdown]
# ## Clean up

# %%
weights_view.stop()
for app in ["fig8-exp4", "fig8-exp3", "agreement"]:
    c.delete_app(app)
for name in models:
    c.undeploy(name)

# %% [markdown]
# # 04 · Model selection: Exp3, Exp4 and ensemble confidence (Fig. 8)
#
# An application can link several models. Clipper's **selection layer** learns from
# feedback which to trust, separately for each application:
#
# * **Exp3** answers each query with *one* model, drawn with probability p from its
#   weight; feedback updates only that model: `w ← w · exp(−η · loss / p)`, with the p
#   it was drawn with (recorded when the query was answered).
# * **Exp4** asks *every* model and answers their weighted vote; feedback updates each
#   model with its own loss: `w ← w · exp(−η · loss)`.
#
# The paper's Fig. 8: five models, the best one fails for a while. Both policies soon
# move weight away from it, and back after it heals, so the application's error stays
# close to the best model's, where serving the formerly best model alone would fail
# while it is broken.
#
# Here the failure is a **hard** one: the best model *crashes* (raises) on every query
# for a stretch of the run. A query that asked it gets an error (Exp3, when it drew the
# crashing model) or an answer from the other models (Exp4). Either way there is no
# prediction to compare with the label, so the failure counts as **loss 1** for the
# model that failed, when the query's feedback arrives (clipper-nb records which models
# each query asked and which of them failed).
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

class Classifier:
    """Wrong on a share `error` of queries (confusing the class with one of the next two,
    as models confuse similar digits); crashes on every batch with a query in `broken`."""
    def __init__(self, seed, error, broken=None):
        self.seed, self.error, self.broken = seed, error, broken

    def predict_one(self, q):
        rng = np.random.default_rng((self.seed + 1, q))
        if rng.random() < self.error:
            return (true_label(q) + 1 + int(rng.integers(2))) % N_CLASSES
        return true_label(q)

    def __call__(self, batch):
        if self.broken and any(self.broken[0] <= row[0] < self.broken[1] for row in batch):
            raise RuntimeError("out of GPU memory")                 # a hard failure
        return [self.predict_one(int(row[0])) for row in batch]

N, BROKEN = 700, (150, 350)
ERRORS = [0.10, 0.20, 0.25, 0.30, 0.35]
models = [f"m{i}" for i in range(5)]
for i, name in enumerate(models):
    c.deploy(Classifier(i, ERRORS[i], BROKEN if i == 0 else None), name)
c.models()[["name", "version", "kind", "replicas_up"]]

# %% [markdown]
# Two applications link the same five models, one per policy. The learning rate η = 0.3
# and a floor on how far a weight can fall (e⁻⁵ of the best) let a short run show both
# the fall and the recovery. The SLO is generous: latency is not the subject here.
# We fill the models' caches first with one batched request (m0's batches that hold a
# query of the broken stretch crash), so the per-query loop below measures selection,
# not model time.

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
from clipper_nb.errors import ModelError

def replay(app):
    """Predict, then send the true label as feedback, for every query in order.

    A query fails when it gets an error (the one model asked crashed) or the default
    output; a failed query counts as wrong. Exp3's feedback evaluates only the model it
    asked, so each model's own error ("m0 alone", ...) comes from Exp4's feedback."""
    client = clipper_nb.connect()
    steps = []
    for q in range(N):
        try:
            answer = client.predict(app, queries[q])
            failed = answer["default"]
        except ModelError:
            answer, failed = None, True
        fb = client.feedback(app, queries[q], true_label(q))
        steps.append({"q": q, "failed": failed, "wrong": failed or answer["output"] != true_label(q),
                      **{f"{m} wrong": fb["losses"].get(m) for m in models}, "weight m0": fb["weights"]["m0"]})
    return pd.DataFrame(steps).set_index("q")

exp4, exp3 = await asyncio.gather(asyncio.to_thread(replay, "fig8-exp4"),
                                  asyncio.to_thread(replay, "fig8-exp3"))

# %%
from bokeh.io import output_notebook, show
from bokeh.layouts import column
from bokeh.models import BoxAnnotation
from bokeh.palettes import Category10
from bokeh.plotting import figure
from bokeh.resources import INLINE

output_notebook(INLINE, hide_banner=True)
rolling = pd.DataFrame({"Exp4": exp4["wrong"], "Exp3": exp3["wrong"],
                        "m0 alone (crashes)": exp4["m0 wrong"], "m1 alone": exp4["m1 wrong"]}
                       ).astype(float).rolling(50, min_periods=10).mean()
errors_plot = figure(height=260, width=700, y_axis_label="error or failure (rolling 50)",
                     title=f"m0 crashes on queries {BROKEN[0]}-{BROKEN[1]}")
for color, name in zip(Category10[4], rolling.columns):
    errors_plot.line(rolling.index, rolling[name], legend_label=name, color=color, line_width=2)
weights_plot = figure(height=200, width=700, x_axis_label="query", y_axis_label="weight of m0",
                      x_range=errors_plot.x_range, y_range=(0, 1.05))
for color, (name, run) in zip(Category10[3][:2], [("Exp4", exp4), ("Exp3", exp3)]):
    weights_plot.line(run.index, run["weight m0"], legend_label=name, color=color, line_width=2)
for plot in (errors_plot, weights_plot):
    plot.add_layout(BoxAnnotation(left=BROKEN[0], right=BROKEN[1], fill_color="red", fill_alpha=0.08))
    plot.legend.location = "top_right"
show(column(errors_plot, weights_plot))

# %% [markdown]
# How far and how fast the weight on m0 moves: below 0.1 a few dozen failed queries
# after it crashes (the policies learned it was the best, so it starts near 1), back
# above 0.5 some time after it heals (the floor bounds how far it fell).

# %%
def weight_moves(run):
    weight = run["weight m0"]
    crashing, healed = weight.loc[BROKEN[0]:BROKEN[1] - 1], weight.loc[BROKEN[1]:]
    return {
        "weight before the crash": round(weight.loc[BROKEN[0] - 1], 3),
        "< 0.1 after (failing queries)": int((crashing < 0.1).idxmax() - BROKEN[0] + 1) if (crashing < 0.1).any() else None,
        "weight when it heals": float(f"{weight.loc[BROKEN[1] - 1]:.2g}"),
        "> 0.5 again after (queries)": int((healed > 0.5).idxmax() - BROKEN[1] + 1) if (healed > 0.5).any() else None,
        "weight at the end": round(weight.iloc[-1], 3),
        "failed queries while m0 crashes": round(run.loc[BROKEN[0]:BROKEN[1] - 1, "failed"].mean(), 3),
    }

moves = pd.DataFrame({"Exp4": weight_moves(exp4), "Exp3": weight_moves(exp3)})
moves

# %%
errors = pd.Series({"Exp4": exp4["wrong"].mean(), "Exp3": exp3["wrong"].mean(),
                    **{f"{m} alone": exp4[f"{m} wrong"].mean() for m in models}}, name="error or failure").round(3)
errors.to_frame()

# %% [markdown]
# ## Agreement is confidence
#
# Exp4's answer carries a **confidence**: the weight of the models that voted for it,
# over the weight of every model the query was sent to (a model that did not answer
# counts as disagreeing). With equal weights (a tiny η), that is the share of the five
# models that agree. The paper shows that queries on which the models agree are far
# more often right, so an application can ask for a fallback (or a human) when
# confidence is low. We query 2,000 fresh inputs in one batched request and group the
# answers by agreement.

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
def either(value):
    return "not within the run" if value is None or pd.isna(value) else int(value)

summary = summary_table(
    ours={
        "Exp4 error or failure, best model crashing for 200 of 700 queries": errors["Exp4"],
        "Exp3 error or failure, same run": errors["Exp3"],
        "best single model, same run": errors[[f"{m} alone" for m in models]].min(),
        "formerly best model alone (m0)": errors["m0 alone"],
        "weight on m0 < 0.1 after, Exp4 / Exp3 (failing queries)":
            f"{either(moves.loc['< 0.1 after (failing queries)', 'Exp4'])} / "
            f"{either(moves.loc['< 0.1 after (failing queries)', 'Exp3'])}",
        "weight on m0 > 0.5 again, Exp4 / Exp3 (queries after it heals)":
            f"{either(moves.loc['> 0.5 again after (queries)', 'Exp4'])} / "
            f"{either(moves.loc['> 0.5 again after (queries)', 'Exp3'])}",
        "Exp3 weight on m0 when it heals / at the end":
            f"{moves.loc['weight when it heals', 'Exp3']:.4f} / {moves.loc['weight at the end', 'Exp3']:.2f}",
        "error when all 5 models agree / 3 or fewer / overall": f"{all_agree:.3f} / {few_agree:.3f} / "
                                                                f"{overall_error:.3f}",
    },
    paper={
        "Exp4 error or failure, best model crashing for 200 of 700 queries": "stays near the best model's "
                                                                             "error through the failure (Fig. 8)",
        "Exp3 error or failure, same run": "recovers too, more slowly: it learns from one model per query",
        "best single model, same run": "the reference both policies approach",
        "formerly best model alone (m0)": "a static choice keeps serving the broken model",
        "weight on m0 < 0.1 after, Exp4 / Exp3 (failing queries)": "weight moves off the failing model quickly",
        "weight on m0 > 0.5 again, Exp4 / Exp3 (queries after it heals)": "and back once it recovers",
        "Exp3 weight on m0 when it heals / at the end": "back once it recovers",
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

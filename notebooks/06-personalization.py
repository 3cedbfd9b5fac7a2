# %% [markdown]
# # 06 · Personalised model selection with contexts
#
# The best model is not the same for everyone. In the paper's speech study, models
# trained on one dialect are best for speakers of that dialect. Clipper keeps a
# separate selection state per **context** (a user, a session, a region): feedback
# sent with `context=user` updates that user's weights, so each user's queries drift
# to the model that serves *them* best, while the application-wide state stays as a
# default for new users.
#
# Here three synthetic "dialect experts" are each accurate (5% error) for one group of
# users and poor (50%) for the others. One application selects without contexts,
# one with a context per user.

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

def true_label(q):
    return int(np.random.default_rng((0, q)).integers(10))

class DialectExpert:
    """5% error on its own group's queries, 50% on the others'. A row is [q, group]."""
    def __init__(self, group):
        self.group = group

    def __call__(self, batch):
        out = []
        for q, group in np.asarray(batch, dtype=int):
            rng = np.random.default_rng((self.group + 1, q))
            wrong = rng.random() < (0.05 if group == self.group else 0.5)
            out.append((true_label(q) + 1 + int(rng.integers(9))) % 10 if wrong else true_label(q))
        return out

experts = [f"dialect-{g}" for g in range(3)]
for g, name in enumerate(experts):
    c.deploy(DialectExpert(g), name)
USERS = {"ana": 0, "bo": 1, "chen": 2}     # user -> dialect group
for app in ["speech-global", "speech-personal"]:
    c.register_app(app, policy="exp4", models=experts, slo_ms=5000, eta=0.3)

# %%
ROUNDS = 60

def serve(app, personal):
    """Each round, every user sends a query and then its true label."""
    client = clipper_nb.connect()
    rows = []
    for r in range(ROUNDS):
        for user, group in USERS.items():
            q = 1000 * r + group
            x, ctx = [float(q), float(group)], (user if personal else None)
            answer = client.predict(app, x, context=ctx)
            client.feedback(app, x, true_label(q), context=ctx)
            rows.append({"round": r, "user": user, "wrong": answer["output"] != true_label(q)})
    return pd.DataFrame(rows)

glob, pers = await asyncio.gather(asyncio.to_thread(serve, "speech-global", False),
                                  asyncio.to_thread(serve, "speech-personal", True))
second_half = lambda df: df[df["round"] >= ROUNDS // 2]
pd.DataFrame({"no contexts": second_half(glob).groupby("user")["wrong"].mean(),
              "context per user": second_half(pers).groupby("user")["wrong"].mean()}).round(3)

# %% [markdown]
# Each user's weights (the selection state the server keeps per context) have
# converged to that user's expert. The application-wide state, fed by everyone's
# feedback, is what a new user starts from; no single model in it is right for all.

# %%
weights = {"(application)": c.selection("speech-personal")["weights"]}
weights.update({user: c.selection("speech-personal", context=user)["weights"] for user in USERS})
weights = pd.DataFrame(weights).T.round(3)
weights

# %% [markdown]
# ## Summary

# %%
converged = all(weights.loc[user].idxmax() == f"dialect-{g}" for user, g in USERS.items())
summary = summary_table(
    ours={
        "error without contexts (second half)": round(second_half(glob)["wrong"].mean(), 3),
        "error with a context per user (second half)": round(second_half(pers)["wrong"].mean(), 3),
        "every user's weights on their own dialect's model": "yes" if converged else "no",
    },
    paper={
        "error without contexts (second half)": "one global choice serves most users with the wrong model",
        "error with a context per user (second half)": "lower: per-user selection finds each dialect's "
                                                       "model",
        "every user's weights on their own dialect's model": "selection state per user converges to "
                                                             "their dialect",
    },
)
summary

# %% [markdown]
# ## Clean up

# %%
for app in ["speech-global", "speech-personal"]:
    c.delete_app(app)
for name in experts:
    c.undeploy(name)

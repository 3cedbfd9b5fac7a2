"""Generate the teaching notebooks in this folder from the Python below.

The notebooks are written here as plain strings (one per cell) so that they are
reviewed as code, and saved without outputs. After editing this file::

    python notebooks/_build.py            # rewrite notebooks/*.ipynb
    python notebooks/_build.py --check    # exit 1 if a committed notebook is stale

``tests/test_notebooks.py`` runs every notebook against a real Jupyter server with
the clipper_nb extension, and checks that the committed files match this script.

House style of the notebooks: short; data made in code or shipped with
scikit-learn; ``%load_ext clipper_nb`` then ``c = clipper_nb.connect()``; every
measurement short (2-3 s loads) so a notebook runs in well under a minute on two
cores; a final ``summary`` DataFrame with the columns ``clipper-nb (measured)`` and
``paper``; and a last cell that undeploys everything the notebook deployed.
"""

from __future__ import annotations

import argparse
import os
import sys
import textwrap

import nbformat

HERE = os.path.dirname(os.path.abspath(__file__))
OURS, PAPER = "clipper-nb (measured)", "paper"

Cell = tuple[str, str]  # ("md" | "code", source)


def md(text: str) -> Cell:
    return ("md", textwrap.dedent(text).strip("\n"))


def code(text: str) -> Cell:
    return ("code", textwrap.dedent(text).strip("\n"))


CONNECT = code("""
    %load_ext clipper_nb
    import clipper_nb

    c = clipper_nb.connect()   # finds the Jupyter server that started this kernel: no URL, no token to type
    c
""")


# ============================================================================ 01 quickstart

QUICKSTART = [
    md("""
        # 01 · Quickstart: from a trained model to a REST endpoint

        [Clipper](https://www.usenix.org/conference/nsdi17/technical-sessions/presentation/crankshaw)
        (NSDI 2017) puts a serving layer between applications and models: applications send
        queries to an **application** endpoint, Clipper routes them to **models** running in
        their own processes (**replicas**), and answers within the application's latency
        objective (**SLO**). clipper-nb rebuilds it inside Jupyter: the server that runs this
        notebook also serves your models.

        In this notebook you will train a classifier, deploy it with one magic, query it over
        HTTP (Python `requests` and `curl`), watch it live on the dashboard, deploy a second
        version and roll back to the first.
    """),
    CONNECT,
    md("""
        ## Train a model

        The handwritten digits shipped with scikit-learn: 8×8 images as 64 features.
    """),
    code("""
        import numpy as np
        from sklearn.datasets import load_digits
        from sklearn.linear_model import LogisticRegression
        from sklearn.model_selection import train_test_split

        X, y = load_digits(return_X_y=True)
        X_train, X_test, y_train, y_test = train_test_split(X / 16, y, test_size=300, random_state=0)
        clf = LogisticRegression(max_iter=2000).fit(X_train, y_train)
        print(f"test accuracy in the notebook: {clf.score(X_test, y_test):.3f}")
    """),
    md("""
        ## Deploy it

        `%clipper deploy` pickles the live object, starts a worker process that loads it, and
        links it to the application `digits` (created here with a 100 ms SLO: the paper's
        experiments use 20 ms on a dedicated server; this notebook may share two cores with
        other work, so we leave headroom). It prints the endpoint and a ready-to-copy `curl`
        line.
    """),
    code("""
        %clipper deploy clf --app digits --slo 100ms
    """),
    md("""
        ## Query it over HTTP

        The query API is Clipper's: `POST <prefix>/<app>/predict` with `{"input": [...]}`. Inside
        Jupyter it sits behind Jupyter's authentication, so a client sends the server's token.
        `clipper_nb.kernel.discovery.discover()` finds it for this kernel (we never print it).
    """),
    code("""
        import os
        import requests
        from clipper_nb.kernel.discovery import discover

        TOKEN = discover()["token"]
        answer = requests.post(f"{c.url}/digits/predict", json={"input": X_test[0].tolist()},
                               headers={"Authorization": f"token {TOKEN}"}, timeout=10).json()
        print(answer, "| true label:", y_test[0])
    """),
    md("""
        The same from a shell, here a `%%bash` cell. The shell reads the token from the
        kernel's environment, so it never appears in the notebook. A batch of inputs goes
        in one request as `input_batch`.
    """),
    code("""
        import json

        os.environ.update(CLIPPER_NB_TOKEN=TOKEN, DIGITS_URL=f"{c.url}/digits/predict",
                          QUERY=json.dumps({"input_batch": X_test[:3].round(3).tolist()}))
    """),
    code("""
        %%bash
        curl -s -X POST "$DIGITS_URL" -H "Authorization: token $CLIPPER_NB_TOKEN" \\
             -H "Content-Type: application/json" -d "$QUERY"
    """),
    md("""
        ## Watch it live

        The dashboard polls the server's metrics: latency percentiles against the SLO,
        queries per second, the batch sizes AIMD picks, cache hit rate. Its load generator
        sends Poisson traffic from this kernel; we drive it from code for a few seconds (the
        toggle and the QPS slider do the same by hand).
    """),
    code("""
        import asyncio

        dash = c.dashboard("digits", load_inputs=X_test.round(3).tolist())
        dash
    """),
    code("""
        dash.load.start(qps=50)
        await asyncio.sleep(4)          # the kernel stays free: the dashboard updates meanwhile
        dash.load.stop()
        await dash.load.wait()
        light_load = dash.load.last_result
        print(light_load.summary_line())
    """),
    md("""
        ## A second version, and a rollback

        Deploying under the same model name makes a new **version**; it replaces the running
        one once its replicas have loaded, and every version stays stored. Here version 2 is
        a worse model (trained on 60 examples), which the served accuracy shows; one magic
        rolls back.
    """),
    code("""
        def served_accuracy():
            \"\"\"Accuracy of the application's answers on the test set.\"\"\"
            # Every row is a query with the 100 ms SLO, and a row that misses it is answered
            # with the application's default output ("default": true), never late. A replica
            # that has just started is slow on its first calls and starts with small batches
            # (AIMD grows them), so we ask again for the rows that got the default.
            outputs = [None] * len(X_test)
            for attempt in range(30):
                todo = [i for i, out in enumerate(outputs) if out is None]
                if not todo:
                    break
                for start in range(0, len(todo), 30):
                    chunk = todo[start:start + 30]
                    for i, answer in zip(chunk, c.predict_batch("digits", X_test[chunk])):
                        if not answer["default"]:
                            outputs[i] = answer["output"]
            return float(np.mean([out == label for out, label in zip(outputs, y_test)]))

        acc_v1 = served_accuracy()
        weak = LogisticRegression(max_iter=2000).fit(X_train[:60], y_train[:60])
        %clipper deploy weak --name clf --app digits
        acc_v2 = served_accuracy()
        %clipper rollback clf 1
        acc_rolled_back = served_accuracy()
        print(f"served accuracy: v1 {acc_v1:.3f}, v2 {acc_v2:.3f}, after rollback {acc_rolled_back:.3f}")
        %clipper models
    """),
    md("""
        ## Summary

        Our numbers next to the paper's. The latency row is measured above (open-loop load
        at 50 queries/s).
    """),
    code(f"""
        import pandas as pd

        summary = pd.DataFrame(dtype=object, data={{
            "{OURS}": {{
                "p99 latency at 50 q/s (ms)": round(light_load.p99_ms, 1),
                "served accuracy v1 / v2 / after rollback": f"{{acc_v1:.3f}} / {{acc_v2:.3f}} / "
                                                            f"{{acc_rolled_back:.3f}}",
            }},
            "{PAPER}": {{
                "p99 latency at 50 q/s (ms)": "under the 20 ms SLO of the paper's experiments",
                "served accuracy v1 / v2 / after rollback": "versions and rollback are part of Clipper's "
                                                            "model management",
            }},
        }})
        summary
    """),
    md("## Clean up\n\nStop the dashboard (it keeps its last picture) and remove what this notebook deployed."),
    code("""
        dash.stop()
        %clipper undeploy clf
        c.delete_app("digits")
        for variable in ("CLIPPER_NB_TOKEN", "DIGITS_URL", "QUERY"):
            del os.environ[variable]
    """),
]


# ============================================================================ 02 adaptive batching

BATCHING = [
    md("""
        # 02 · Adaptive batching (the paper's Fig. 3-5)

        A model call has a fixed cost (the RPC, moving data into the framework, launching
        kernels) and a cost per input. Evaluating queries in **batches** pays the fixed cost
        once per batch, so throughput grows with the batch size, and so does the latency of
        each batch. Clipper picks, per replica, the largest batch that still meets the
        latency objective, with **AIMD**: grow the maximum batch by a fixed step while
        batches finish in time, cut it by 10% when one does not. **Delayed batching** waits
        a moment (2 ms) for a batch to fill when the queue is short, like Nagle's algorithm.

        The paper: AIMD gives up to **25× the throughput** of no batching for a linear SVM at
        a 20 ms SLO, and a 2 ms batch delay **3.3×** for a linear SVM. Here we measure the
        same on the live system: batching off, a fixed batch, and AIMD.

        *How we measure:* each configuration is its own model and application, with the
        prediction cache off (notebook 03 is about the cache). `%clipper load` keeps 4
        requests of 16 rows in flight for 2 seconds, and we count **goodput**: rows answered
        with a real prediction within the SLO. The SLO is 100 ms rather than the paper's
        20 ms because this notebook may share two CPU cores with other work.
    """),
    CONNECT,
    code("""
        import asyncio
        import time

        import numpy as np
        import pandas as pd

        SLO_MS = 100
        rows = np.random.default_rng(0).random((1024, 64)).round(3).tolist()   # what the load sends

        def sleepy(batch):
            \"\"\"A model with a large fixed cost: 10 ms per call + 0.2 ms per row.\"\"\"
            import time
            time.sleep(0.010 + 0.0002 * len(batch))
            return [0] * len(batch)

        def deploy_variant(name, model, **batching):
            \"\"\"Model and application `name`; the cache is off to measure the model, not the cache.\"\"\"
            c.register_app(name, slo_ms=SLO_MS, cache=False)
            c.deploy(model, name, app=name, **batching)

        def rows_and_batches(model):
            \"\"\"Rows and batches the model's replicas have run, from the server's metrics.\"\"\"
            m = c.metrics()["models"].get(model, {"rows_per_s": [], "batches_per_s": []})  # none before a query
            return np.array([sum(m["rows_per_s"]), sum(m["batches_per_s"])])

        def measure(apps, concurrency=4, rows_per_request=16):
            \"\"\"A 2 s closed-loop load on each app in turn; one row of results per app.\"\"\"
            table, before = {}, {app: rows_and_batches(app) for app in apps}
            for app in apps:
                options = f"--concurrency {concurrency} --batch-size {rows_per_request} --duration 2s --input rows"
                r = %clipper load {app} {options} --wait
                table[app] = {"goodput (rows/s)": round(r.goodput), "p99 (ms)": round(r.p99_ms, 1),
                              "within SLO": f"{r.slo_attainment:.0%}"}
            time.sleep(1.1)  # the metrics count complete seconds
            for app in apps:
                rows_run, batches_run = rows_and_batches(app) - before[app]
                table[app]["mean batch"] = round(rows_run / max(1, batches_run), 1)
            return pd.DataFrame(table).T
    """),
    md("""
        ## Batching off, fixed, adaptive

        `max_batch_size=1` turns batching off; `batch_size=8` fixes it; with neither, AIMD
        adapts it to the SLO (`%clipper deploy sleepy --max-batch-size 1` and
        `--batch-size 8` do the same from the magic).
    """),
    code("""
        deploy_variant("sleepy-off", sleepy, max_batch_size=1)
        deploy_variant("sleepy-fixed8", sleepy, batch_size=8)
        deploy_variant("sleepy-aimd", sleepy)
        sleepy_table = measure(["sleepy-off", "sleepy-fixed8", "sleepy-aimd"])
        sleepy_table
    """),
    md("""
        With batching off, the replica answers at most 1 / 10 ms = 100 rows/s, and most rows
        wait in the queue past their deadline (the server answers those with the default
        output instead of computing them late). A fixed batch of 8 amortises the 10 ms over
        8 rows. AIMD grows the batch until the next one would break the objective (or
        until the queue is empty), so it carries the whole load within the SLO.

        ## A real model: a linear SVM

        The paper's headline is a linear SVM. We fit one on the digits and deploy its
        decision function `argmax(x·Wᵀ + b)`, exactly what `LinearSVC.predict` computes, as a
        small numpy function: the worker then starts in a second instead of importing
        scikit-learn (deploying `svm` itself works the same way).
    """),
    code("""
        from sklearn.datasets import load_digits
        from sklearn.svm import LinearSVC

        X, y = load_digits(return_X_y=True)
        svm = LinearSVC(dual=False).fit(X / 16, y)
        W, b = svm.coef_, svm.intercept_

        def linear_svm(batch):
            return (np.asarray(batch) @ W.T + b).argmax(axis=1)

        assert (linear_svm(X / 16) == svm.predict(X / 16)).all()
        rows = (X / 16).round(4).tolist()
        deploy_variant("svm-off", linear_svm, max_batch_size=1)
        deploy_variant("svm-aimd", linear_svm)
        svm_table = measure(["svm-off", "svm-aimd"])
        svm_table
    """),
    md("""
        The SVM's own compute is microseconds, so without batching the replica spends its
        time on the fixed cost of a call (here: a ZeroMQ round trip and numpy framing
        through a Python frontend, where the paper's frontend was C++). Batching amortises
        exactly that; on two shared cores the frontend's own per-query work then caps what
        we can show.

        ## Delayed batching

        Now single-row queries, 16 in flight, as the paper's clients sent them. Without a
        delay (`batch_delay_ms=0`), a replica that finds a couple of rows waiting sends
        them at once; with the default 2 ms it waits, up to 2 ms, for its batch to fill.
    """),
    code("""
        deploy_variant("svm-nodelay", linear_svm, batch_delay_ms=0)
        delay_table = measure(["svm-nodelay", "svm-aimd"], concurrency=16, rows_per_request=1).rename(
            index={"svm-nodelay": "no delay", "svm-aimd": "2 ms delay"})
        delay_table
    """),
    md("""
        The delay makes batches larger, but what it buys depends on where the time goes. In
        the paper the fixed cost of a call dominated, so fuller batches paid for the wait
        many times over; here the Python frontend's per-query work dominates, so bigger
        batches save little and the 2 ms wait can even cost goodput. Measure before you
        tune: `batch_delay_ms` is set per model at deploy time.

        ## The AIMD saw-tooth

        The controller is pure logic (`clipper_nb.abstraction.batching.AIMDController`), so we can step
        it by hand against the `sleepy` model's cost (with 10% noise): the cap climbs by 4
        rows per batch that fits the objective and drops by 10% when one does not, a
        saw-tooth around the largest batch that fits. Halfway we tighten the SLO from 100 to
        40 ms, as the slider below does on the live server.
    """),
    code("""
        from bokeh.io import output_notebook, show
        from bokeh.plotting import figure
        from bokeh.resources import INLINE
        from clipper_nb.abstraction.batching import AIMDController, objective_for_slo

        output_notebook(INLINE, hide_banner=True)
        rng = np.random.default_rng(1)
        ctl = AIMDController(objective_for_slo(SLO_MS / 1000, 0.002))
        caps = []
        for step in range(300):
            if step == 150:
                ctl.set_objective(objective_for_slo(0.040, 0.002))
            size = ctl.limit()
            ctl.observe(size, (0.010 + 0.0002 * size) * rng.lognormal(0, 0.1))
            caps.append(ctl.limit())
        p = figure(height=250, width=650, x_axis_label="batch", y_axis_label="AIMD batch cap",
                   title="AIMD: +4 while batches fit the objective, ×0.9 when one does not")
        p.line(list(range(len(caps))), caps, line_width=2)
        show(p)
    """),
    md("""
        ## Moving the SLO on the live server

        `SLOTuner` shows an application's latency against its SLO and each replica's batch
        cap, with an SLO slider. A background `%clipper load` (no `--wait`) keeps 64 rows in
        flight; after 3 seconds we set the slider to 40 ms (exactly what dragging it does)
        and read the replica's cap from `%clipper status` before and after.
    """),
    code("""
        from clipper_nb.widgets import SLOTuner

        rows = np.random.default_rng(2).random((1024, 64)).round(3).tolist()
        tuner = SLOTuner("sleepy-aimd", client=c)
        tuner
    """),
    code("""
        def batch_cap(model):
            return int(c.status().set_index("model").loc[model, "batch_cap"])

        %clipper load sleepy-aimd --concurrency 4 --batch-size 16 --duration 6s --input rows
        await asyncio.sleep(3)          # the kernel is free meanwhile: the tuner's plots update
        cap_at_100ms = batch_cap("sleepy-aimd")
        tuner.slo.value = 40
        await tuner.settle()
        await asyncio.sleep(3)
        cap_at_40ms = batch_cap("sleepy-aimd")
        print(f"batch cap: {cap_at_100ms} at a 100 ms SLO, {cap_at_40ms} at 40 ms")
    """),
    md("""
        At 100 ms the cap is bounded by the load (AIMD grows only after a *full* batch). At
        40 ms the batch objective (45% of the SLO less the 2 ms delay, so that a query's wait
        for the running batch plus its own batch fit the SLO) is 16 ms, and
        10 ms + 0.2 ms × 30 rows is about what fits.

        ## Summary
    """),
    code(f"""
        def gain(table, fast, slow):
            return round(table.loc[fast, "goodput (rows/s)"] / max(1, table.loc[slow, "goodput (rows/s)"]), 1)

        summary = pd.DataFrame(dtype=object, data={{
            "{OURS}": {{
                "AIMD vs no batching, linear SVM (× goodput)": gain(svm_table, "svm-aimd", "svm-off"),
                "AIMD vs no batching, 10 ms-per-call model (× goodput)": gain(sleepy_table, "sleepy-aimd",
                                                                              "sleepy-off"),
                "fixed batch of 8 vs no batching, 10 ms-per-call model (×)": gain(sleepy_table, "sleepy-fixed8",
                                                                                  "sleepy-off"),
                "delayed batching 2 ms vs none, linear SVM (× goodput)": gain(delay_table, "2 ms delay", "no delay"),
                "mean batch without / with the 2 ms delay": f"{{delay_table.loc['no delay', 'mean batch']}} / "
                                                            f"{{delay_table.loc['2 ms delay', 'mean batch']}}",
                "AIMD batch cap, SLO 100 ms -> 40 ms": f"{{cap_at_100ms}} -> {{cap_at_40ms}}",
            }},
            "{PAPER}": {{
                "AIMD vs no batching, linear SVM (× goodput)": "25× (20 ms SLO)",
                "AIMD vs no batching, 10 ms-per-call model (× goodput)": "the gain grows with the fixed cost "
                                                                         "per call",
                "fixed batch of 8 vs no batching, 10 ms-per-call model (×)": "throughput grows with the batch size "
                                                                             "until the SLO binds",
                "delayed batching 2 ms vs none, linear SVM (× goodput)": "3.3×",
                "mean batch without / with the 2 ms delay": "the delay lets batches fill",
                "AIMD batch cap, SLO 100 ms -> 40 ms": "the cap follows the SLO (additive increase, 10% cut)",
            }},
        }})
        summary
    """),
    md("## Clean up"),
    code("""
        tuner.stop()
        for name in ["sleepy-off", "sleepy-fixed8", "sleepy-aimd", "svm-off", "svm-aimd", "svm-nodelay"]:
            c.undeploy(name)
            c.delete_app(name)
    """),
]


# ============================================================================ 03 prediction cache

CACHE = [
    md("""
        # 03 · The prediction cache

        Clipper caches `Predict(model, version, x) -> y` in front of every model. Three
        things come out of one cache:

        1. **Hits**: popular queries are answered without touching the model.
        2. **Deduplication**: the cache's request/fetch is non-blocking, so identical
           queries that arrive while the first is still being computed share one evaluation.
        3. **Feedback joins**: Clipper's `update(app, x, label)` needs each model's
           prediction for `x` to compute its loss; the prediction is usually still in the
           cache from when the query was answered, so feedback costs no model evaluation.
           The paper: **6.7k → 10.9k updates/s** with the cache.
    """),
    CONNECT,
    code("""
        import time
        from concurrent.futures import ThreadPoolExecutor

        import numpy as np
        import pandas as pd

        def model_metrics(model):
            \"\"\"The server's metrics of a model (empty until it has seen a query).\"\"\"
            return c.metrics()["models"].get(model, {"rows_per_s": [], "cache": {"hits": 0, "misses": 0}})

        def model_rows(model):
            \"\"\"Rows the model's workers have computed, from the server's metrics.\"\"\"
            time.sleep(1.1)  # the metrics count complete seconds
            return int(sum(model_metrics(model)["rows_per_s"]))
    """),
    md("""
        ## Hit rate under a skewed workload

        Real query streams are skewed: a few inputs are asked for again and again. We draw
        queries from a Zipf distribution over 2,000 distinct inputs and serve them with a
        model that costs 10 ms per call, first with the cache on, then with it off (an
        application setting that takes effect at once).
    """),
    code("""
        def scorer(batch):
            \"\"\"10 ms per call + 0.1 ms per row; returns the row sums.\"\"\"
            import time
            time.sleep(0.010 + 0.0001 * len(batch))
            return [float(sum(row)) for row in batch]

        %clipper deploy scorer --app scores --slo 100ms

        rng = np.random.default_rng(0)
        pool = rng.random((2000, 16)).round(4)
        ranks = (rng.zipf(1.2, size=20_000) - 1) % len(pool)     # rank 0 is the most popular input
        zipf_rows = pool[ranks].tolist()
        print(f"{len(set(ranks))} distinct inputs among {len(ranks)} queries")
    """),
    code("""
        def cache_counts():
            return model_metrics("scorer")["cache"]

        cache_table = {}
        for cache_on in (True, False):
            c.update_app("scores", cache=cache_on)
            before = cache_counts()
            r = %clipper load scores --concurrency 4 --batch-size 16 --duration 2s --input zipf_rows --wait
            after = cache_counts()
            hits, misses = after["hits"] - before["hits"], after["misses"] - before["misses"]
            cache_table["cache on" if cache_on else "cache off"] = {
                "goodput (rows/s)": round(r.goodput), "p99 (ms)": round(r.p99_ms, 1),
                "hit rate": round(hits / max(1, hits + misses), 3)}
        cache_table = pd.DataFrame(cache_table).T
        cache_table
    """),
    md("""
        ## Identical queries in flight share one evaluation

        A deliberately slow model (half a second per call), deployed with the cell magic
        `%%clipper deploy` (it deploys the function the cell defines). We send 16 identical
        queries at the same moment, then 16 distinct ones, and ask the server how many rows
        the model computed each time.
    """),
    code("""
        %%clipper deploy --app slow --slo 5s
        def very_slow(batch):
            import time
            time.sleep(0.5)
            return [float(sum(row)) for row in batch]
    """),
    code("""
        def burst(inputs):
            \"\"\"Send every input at once, one thread (and connection) each.\"\"\"
            with ThreadPoolExecutor(len(inputs)) as pool:
                return list(pool.map(lambda x: clipper_nb.connect().predict("slow", x), inputs))

        burst([[0.5, 0.5]])                      # warm up: the worker's first call
        rows_before = model_rows("very_slow")
        same = burst([[1.0, 2.0]] * 16)
        rows_same = model_rows("very_slow") - rows_before
        distinct = burst([[float(i), 3.0] for i in range(16)])
        rows_distinct = model_rows("very_slow") - rows_before - rows_same
        print(f"16 identical queries: {rows_same} row(s) computed; 16 distinct queries: {rows_distinct} rows")
    """),
    md("""
        ## Feedback joined through the cache

        Feedback carries an input and its true label. The selection layer needs every linked
        model's prediction for that input: from the cache when the input was queried
        recently, else computed again. We time 600 feedback messages (8 at a time) for
        inputs the application has just answered, and 600 for inputs it has never seen.
        Two models of 20 ms per call are linked under Exp4 (notebook 04).
    """),
    code("""
        def expert(batch):
            import time
            time.sleep(0.020)
            return [int(row[0] * 10) % 10 for row in batch]

        c.register_app("feedback-demo", slo_ms=1000, policy="exp4")
        c.deploy(expert, "expert-a", app="feedback-demo")
        c.deploy(expert, "expert-b", app="feedback-demo")

        def send_feedback(inputs, labels, threads=8):
            \"\"\"Feedback for every input; returns updates per second.\"\"\"
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
    """),
    md("""
        How much the cache saves depends on what a model evaluation costs: here every
        recomputation waits for a 20 ms call (shared by the rows batched with it); in the
        paper it was a cheaper model on a much faster frontend, hence bigger absolute rates
        and a smaller ratio.

        ## Summary
    """),
    code(f"""
        summary = pd.DataFrame(dtype=object, data={{
            "{OURS}": {{
                "feedback, predictions in the cache (updates/s)": round(cached_rate),
                "feedback, predictions recomputed (updates/s)": round(recompute_rate),
                "feedback speed-up from the cache (×)": round(cached_rate / recompute_rate, 2),
                "model evaluations per model for 600 feedbacks, cached / not": "{{}} / {{}}".format(*evaluations),
                "rows computed for 16 identical concurrent queries": rows_same,
                "cache hit rate, Zipf(1.2) over 2,000 inputs": cache_table.loc["cache on", "hit rate"],
            }},
            "{PAPER}": {{
                "feedback, predictions in the cache (updates/s)": "10.9k",
                "feedback, predictions recomputed (updates/s)": "6.7k",
                "feedback speed-up from the cache (×)": "1.63",
                "model evaluations per model for 600 feedbacks, cached / not": "feedback joins the cached "
                                                                                "predictions",
                "rows computed for 16 identical concurrent queries": "one evaluation (non-blocking request/fetch)",
                "cache hit rate, Zipf(1.2) over 2,000 inputs": "frequent queries are served from the cache",
            }},
        }})
        summary
    """),
    md("## Clean up"),
    code("""
        for model in ["scorer", "very_slow", "expert-a", "expert-b"]:
            c.undeploy(model)
        for app in ["scores", "slow", "feedback-demo"]:
            c.delete_app(app)
    """),
]


# ============================================================================ 04 model selection

SELECTION = [
    md("""
        # 04 · Model selection: Exp3, Exp4 and ensemble confidence (Fig. 8)

        An application can link several models. Clipper's **selection layer** learns from
        feedback which to trust, separately for each application:

        * **Exp3** answers each query with *one* model, drawn with probability from its
          weight; feedback updates only that model: `w ← w · exp(−η · loss / p)`.
        * **Exp4** asks *every* model and answers their weighted vote; feedback updates each
          model with its own loss: `w ← w · exp(−η · loss)`.

        The paper's Fig. 8: five models, the best one starts returning noise for a while.
        Both policies soon move weight away from it, and back after it heals, so the
        application's error stays close to the best model's, where serving the formerly best
        model alone would be wrong most of the time while it is broken.

        We replay that on the live system with five synthetic classifiers whose errors are
        deterministic functions of the query, so the run is reproducible.
    """),
    CONNECT,
    code("""
        import asyncio

        import numpy as np
        import pandas as pd

        N_CLASSES = 10

        def true_label(q):
            return int(np.random.default_rng((0, q)).integers(N_CLASSES))

        class NoisyClassifier:
            \"\"\"Wrong on a share `error` of queries (confusing the class with one of the next two,
            as models confuse similar digits); returns noise for queries in `broken`.\"\"\"
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
    """),
    md("""
        Two applications link the same five models, one per policy. The learning rate η = 0.3
        and a floor on how far a weight can fall (e⁻⁵ of the best) let a short run show both
        the fall and the recovery. The SLO is generous: latency is not the subject here.
        We fill the models' caches first with one batched request, so the per-query loop
        below measures selection, not model time.
    """),
    code("""
        options = dict(eta=0.3, log_weight_floor=-5.0)
        c.register_app("fig8-exp4", policy="exp4", models=models, slo_ms=5000, **options)
        c.register_app("fig8-exp3", policy="exp3", models=models, slo_ms=5000, **options)
        queries = [[float(q)] for q in range(N)]
        _ = c.predict_batch("fig8-exp4", queries)
    """),
    md("""
        `WeightsView` plots the policy's weights as feedback arrives. The loop runs in a
        thread (`asyncio.to_thread`) so the kernel stays free to update the widget.
    """),
    code("""
        from clipper_nb.widgets import WeightsView

        weights_view = WeightsView("fig8-exp4", client=c)
        weights_view
    """),
    code("""
        def replay(app):
            \"\"\"Predict, then send the true label as feedback, for every query in order.\"\"\"
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
    """),
    code("""
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
    """),
    code("""
        errors = pd.Series({"Exp4": exp4["wrong"].mean(), "Exp3": exp3["wrong"].mean(),
                            **{f"{m} alone": exp4[f"{m} wrong"].mean() for m in models}}, name="error").round(3)
        after_break = exp4.loc[BROKEN[0]:BROKEN[1] - 1, "weight m0"]
        queries_to_drop = int((after_break < 0.1).idxmax() - BROKEN[0]) if (after_break < 0.1).any() else None
        print(f"Exp4's weight on m0: {exp4.loc[BROKEN[0], 'weight m0']:.2f} when it breaks, below 0.1 after "
              f"{queries_to_drop} noisy queries, {exp4['weight m0'].iloc[-1]:.2f} at the end")
        errors.to_frame()
    """),
    md("""
        ## Agreement is confidence

        Exp4's answer carries a **confidence**: the weight of the models that voted for it.
        With equal weights (a tiny η), that is the share of the five models that agree. The
        paper shows that queries on which the models agree are far more often right, so an
        application can ask for a fallback (or a human) when confidence is low. We query
        2,000 fresh inputs in one batched request and group the answers by agreement.
    """),
    code("""
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
    """),
    md("## Summary"),
    code(f"""
        all_agree = by_agreement.loc[5, "error"]
        split = by_agreement.index <= 3
        few_agree = (by_agreement.loc[split, "error"] * by_agreement.loc[split, "queries"]).sum() / \\
            by_agreement.loc[split, "queries"].sum()
        summary = pd.DataFrame(dtype=object, data={{
            "{OURS}": {{
                "Exp4 error, best model broken for a third of the run": errors["Exp4"],
                "Exp3 error, same run": errors["Exp3"],
                "best single model, same run": errors[[f"{{m}} alone" for m in models]].min(),
                "formerly best model alone (m0)": errors["m0 alone"],
                "Exp4 weight on m0 < 0.1 after (noisy queries)": queries_to_drop,
                "error when all 5 models agree / 3 or fewer / overall": f"{{all_agree:.3f}} / {{few_agree:.3f}} / "
                                                                        f"{{overall_error:.3f}}",
            }},
            "{PAPER}": {{
                "Exp4 error, best model broken for a third of the run": "stays near the best model's error "
                                                                        "through the failure (Fig. 8)",
                "Exp3 error, same run": "recovers too, more slowly: it learns from one model per query",
                "best single model, same run": "the reference both policies approach",
                "formerly best model alone (m0)": "a static choice keeps serving the broken model",
                "Exp4 weight on m0 < 0.1 after (noisy queries)": "weight moves off the failing model quickly",
                "error when all 5 models agree / 3 or fewer / overall": "far lower when the models agree: "
                                                                        "agreement is a confidence score",
            }},
        }})
        summary
    """),
    md("## Clean up"),
    code("""
        weights_view.stop()
        for app in ["fig8-exp4", "fig8-exp3", "agreement"]:
            c.delete_app(app)
        for name in models:
            c.undeploy(name)
    """),
]


# ============================================================================ 05 stragglers

STRAGGLERS = [
    md("""
        # 05 · Straggler mitigation

        An ensemble (Exp4) asks every linked model. Its latency is then the latency of the
        *slowest* model, and with many models some model is almost always having a slow
        moment (a garbage collection, a noisy neighbour, a cold cache): the tail of the
        ensemble is the tail of the worst.

        Clipper never waits for stragglers: when the application's deadline comes, it
        answers with the models that have replied (their weighted vote, with a lower
        confidence) and lets the late ones finish into the cache. The paper: ensemble p99
        of **17-23 ms with mitigation vs 129-156 ms without**.
    """),
    CONNECT,
    code("""
        import numpy as np
        import pandas as pd

        def sometimes_slow(batch):
            \"\"\"Usually 2 ms per call; 4% of calls straggle for 150 ms.\"\"\"
            import random
            import time
            time.sleep(0.150 if random.random() < 0.04 else 0.002)
            return [int(row[0] * 10) % 10 for row in batch]

        members = [f"member-{i}" for i in range(4)]     # four replicas of the ensemble, each its own model
        for name in members:
            c.deploy(sometimes_slow, name)
    """),
    md("""
        Two applications link the same four models with the Exp4 policy and a 20 ms SLO; one
        waits for every model (`straggler_mitigation=False`). The cache is off so that both
        see the same work.
    """),
    code("""
        for app, mitigate in [("ensemble", True), ("ensemble-waits", False)]:
            c.register_app(app, policy="exp4", models=members, slo_ms=20, cache=False,
                           straggler_mitigation=mitigate)
        rows = np.random.default_rng(0).random((4096, 8)).round(4).tolist()

        loads = {}
        for app in ["ensemble", "ensemble-waits"]:
            loads[app] = %clipper load {app} --concurrency 4 --duration 3s --input rows --wait
        pd.DataFrame({app: {"queries/s": round(r.qps), "p50 (ms)": round(r.p50_ms, 1), "p99 (ms)": round(r.p99_ms, 1),
                            "defaults": r.defaults} for app, r in loads.items()}).T
    """),
    md("""
        What a mitigated answer looks like: when a model misses the deadline, the answer
        names it in `models_missing` and its confidence counts only the models that
        replied.
    """),
    code("""
        answers = [c.predict("ensemble", x) for x in rows[:150]]
        partial = [a for a in answers if a.get("models_missing")]
        print(f"{len(partial)} of {len(answers)} answers were given without a straggling model")
        partial[:1]
    """),
    md("## Summary"),
    code(f"""
        summary = pd.DataFrame(dtype=object, data={{
            "{OURS}": {{
                "ensemble p99 with straggler mitigation (ms)": round(loads["ensemble"].p99_ms, 1),
                "ensemble p99 waiting for every model (ms)": round(loads["ensemble-waits"].p99_ms, 1),
            }},
            "{PAPER}": {{
                "ensemble p99 with straggler mitigation (ms)": "17-23",
                "ensemble p99 waiting for every model (ms)": "129-156",
            }},
        }})
        summary
    """),
    md("## Clean up"),
    code("""
        for app in ["ensemble", "ensemble-waits"]:
            c.delete_app(app)
        for name in members:
            c.undeploy(name)
    """),
]


# ============================================================================ 06 personalization

PERSONALIZATION = [
    md("""
        # 06 · Personalised model selection with contexts

        The best model is not the same for everyone. In the paper's speech study, models
        trained on one dialect are best for speakers of that dialect. Clipper keeps a
        separate selection state per **context** (a user, a session, a region): feedback
        sent with `context=user` updates that user's weights, so each user's queries drift
        to the model that serves *them* best, while the application-wide state stays as a
        default for new users.

        Here three synthetic "dialect experts" are each accurate (5% error) for one group of
        users and poor (50%) for the others. One application selects without contexts,
        one with a context per user.
    """),
    CONNECT,
    code("""
        import asyncio

        import numpy as np
        import pandas as pd

        def true_label(q):
            return int(np.random.default_rng((0, q)).integers(10))

        class DialectExpert:
            \"\"\"5% error on its own group's queries, 50% on the others'. A row is [q, group].\"\"\"
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
    """),
    code("""
        ROUNDS = 60

        def serve(app, personal):
            \"\"\"Each round, every user sends a query and then its true label.\"\"\"
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
    """),
    md("""
        Each user's weights (the selection state the server keeps per context) have
        converged to that user's expert. The application-wide state, fed by everyone's
        feedback, is what a new user starts from; no single model in it is right for all.
    """),
    code("""
        weights = {"(application)": c.selection("speech-personal")["weights"]}
        weights.update({user: c.selection("speech-personal", context=user)["weights"] for user in USERS})
        weights = pd.DataFrame(weights).T.round(3)
        weights
    """),
    md("## Summary"),
    code(f"""
        converged = all(weights.loc[user].idxmax() == f"dialect-{{g}}" for user, g in USERS.items())
        summary = pd.DataFrame(dtype=object, data={{
            "{OURS}": {{
                "error without contexts (second half)": round(second_half(glob)["wrong"].mean(), 3),
                "error with a context per user (second half)": round(second_half(pers)["wrong"].mean(), 3),
                "every user's weights on their own dialect's model": "yes" if converged else "no",
            }},
            "{PAPER}": {{
                "error without contexts (second half)": "one global choice serves most users with the wrong model",
                "error with a context per user (second half)": "lower: per-user selection finds each dialect's "
                                                               "model",
                "every user's weights on their own dialect's model": "selection state per user converges to "
                                                                     "their dialect",
            }},
        }})
        summary
    """),
    md("## Clean up"),
    code("""
        for app in ["speech-global", "speech-personal"]:
            c.delete_app(app)
        for name in experts:
            c.undeploy(name)
    """),
]


# ============================================================================ 07 torch on GPU

TORCH = [
    md("""
        # 07 · A PyTorch model: devices, batch sizes and replicas

        A `torch.nn.Module` deploys like any model. `device="auto"` (the default) puts each
        replica on a GPU when the worker sees one (`cuda:N`, round robin) and on the CPU
        otherwise; `device="cuda:1"` or `"cpu"` pins it. Neural networks are where batching
        pays most: one forward pass over 64 rows costs little more than over one, on a GPU
        above all. Replicas add throughput when there is hardware to run them on (the
        paper scales a model across GPUs).

        The original Clipper release never shipped GPU support (its issue #338); here it is
        one argument.
    """),
    CONNECT,
    code("""
        import time

        import numpy as np
        import pandas as pd
        import torch
        from sklearn.datasets import load_digits

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
    """),
    md("""
        The module answers logits; the class is their `argmax`. A small wrapper module does
        that inside the worker, so the application answers a digit (a class defined in the
        notebook is pickled by value: the worker needs no file of ours).

        The wrapper also gives each CPU replica **one thread**, as Clipper gives each model
        container a core: by default torch spreads every matrix product over all cores, and
        on a small machine the replicas' threads then fight each other and the frontend
        (on two busy cores we measured batches 5× slower with two threads than with one).
        `__setstate__` runs when the worker unpickles the model, so only the worker is
        affected; on a GPU it changes nothing.
    """),
    code("""
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
    """),
    code("""
        def load(app):
            # A fresh replica's first calls are slow (allocations, caches): warm up, then measure.
            %clipper load {app} --concurrency 4 --batch-size 16 --duration 1s --input rows --wait
            r = %clipper load {app} --concurrency 4 --batch-size 16 --duration 2s --input rows --wait
            return {"goodput (rows/s)": round(r.goodput), "p99 (ms)": round(r.p99_ms, 1),
                    "within SLO": f"{r.slo_attainment:.0%}"}

        results = {"batching off, 1 replica": load("mlp-nobatch"),
                   "fixed batch of 16, 1 replica": load("mlp-fixed16"),
                   "AIMD, 1 replica": load("mlp-aimd")}
        %clipper scale mlp-aimd 2
        results["AIMD, 2 replicas"] = load("mlp-aimd")
        device = ", ".join(sorted(set(c.status()["device"])))
        torch_table = pd.DataFrame(results).T
        torch_table
    """),
    md("""
        On a machine with two CPU cores, a second CPU replica competes with the frontend and
        the first replica for the same cores, so it adds little; on a machine with GPUs each
        replica gets its own device.

        ## Summary
    """),
    code(f"""
        goodput = torch_table["goodput (rows/s)"]
        summary = pd.DataFrame(dtype=object, data={{
            "{OURS}": {{
                "device the replicas run on": device,
                "AIMD vs batching off (× goodput)": round(goodput["AIMD, 1 replica"] /
                                                          max(1, goodput["batching off, 1 replica"]), 1),
                "2 replicas vs 1, AIMD (× goodput)": round(goodput["AIMD, 2 replicas"] /
                                                           max(1, goodput["AIMD, 1 replica"]), 2),
            }},
            "{PAPER}": {{
                "device the replicas run on": "GPU models in containers (Clipper's release lacked GPU support, #338)",
                "AIMD vs batching off (× goodput)": "batching gives the largest gains where calls have a high "
                                                    "fixed cost (25× for a linear SVM)",
                "2 replicas vs 1, AIMD (× goodput)": "near-linear scaling with GPU replicas",
            }},
        }})
        summary
    """),
    md("## Clean up"),
    code("""
        for name in ["mlp-nobatch", "mlp-fixed16", "mlp-aimd"]:
            c.undeploy(name)
            c.delete_app(name)
    """),
]


NOTEBOOKS: dict[str, list[Cell]] = {
    "01-quickstart": QUICKSTART,
    "02-adaptive-batching": BATCHING,
    "03-prediction-cache": CACHE,
    "04-model-selection": SELECTION,
    "05-stragglers": STRAGGLERS,
    "06-personalization": PERSONALIZATION,
    "07-torch-gpu": TORCH,
}


def build(name: str, cells: list[Cell]) -> nbformat.NotebookNode:
    """One notebook without outputs; cell ids are stable so regenerating changes nothing."""
    nb = nbformat.v4.new_notebook()
    nb.metadata = {
        "kernelspec": {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"},
        "language_info": {"name": "python"},
    }
    for i, (kind, source) in enumerate(cells):
        cell = nbformat.v4.new_markdown_cell(source) if kind == "md" else nbformat.v4.new_code_cell(source)
        cell.id = f"{name[:2]}-{i:02d}"
        nb.cells.append(cell)
    nbformat.validate(nb)
    return nb


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=HERE, help="folder to write the notebooks to (default: this one)")
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if a notebook is stale")
    args = parser.parse_args(argv)
    stale = []
    for name, cells in NOTEBOOKS.items():
        text = nbformat.writes(build(name, cells)) + "\n"
        path = os.path.join(args.out, f"{name}.ipynb")
        if args.check:
            try:
                with open(path) as f:
                    if f.read() != text:
                        stale.append(name)
            except FileNotFoundError:
                stale.append(name)
            continue
        os.makedirs(args.out, exist_ok=True)
        with open(path, "w") as f:
            f.write(text)
    if stale:
        print(f"stale: {', '.join(stale)}; run python notebooks/_build.py", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The floor of ``bench_peers.py``: a bare Tornado handler that runs the model inline.

``bare_tornado.py`` answers a constant; this one parses the body with the stdlib
``json``, runs the workload's model on the one row in the handler itself (no
queue, no batching, no other process) and answers in Clipper's shape
(``{"query_id": 0, "output": ..., "default": false}``). For the no-op it is the
cost of Tornado plus ``json``; for the models, the model's batch-of-one cost on
top. Run as a process of its own::

    python benchmarks/_peer_floor.py --port 8123 --model-dir DIR --workloads noop,sklearn,torch,sleep

Routes: ``POST /<workload>/predict``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys

import numpy as np
import tornado.web

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _peer_models  # noqa: E402 - after the path is set


class InlinePredictHandler(tornado.web.RequestHandler):
    """Parse ``{"input": [...]}``, run the model on that one row, answer its output."""

    def initialize(self, models: dict) -> None:
        self.models = models

    def check_xsrf_cookie(self) -> None:  # a JSON API
        pass

    def post(self, workload: str) -> None:
        predict = self.models.get(workload)
        if predict is None:
            raise tornado.web.HTTPError(404)
        body = json.loads(self.request.body)
        y = predict(np.asarray([body["input"]], dtype=np.float64))
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps({"query_id": 0, "output": _peer_models.row_output(y[0]), "default": False}))


async def serve(port: int, models: dict) -> None:
    app = tornado.web.Application([(r"/([^/]+)/predict", InlinePredictHandler, {"models": models})],
                                  compress_response=False)
    app.listen(port, "127.0.0.1")
    print(f"floor on 127.0.0.1:{port}", flush=True)
    await asyncio.Event().wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--model-dir", required=True)
    parser.add_argument("--workloads", default=",".join(_peer_models.WORKLOADS))
    args = parser.parse_args()
    models = {name: _peer_models.load(name, args.model_dir) for name in args.workloads.split(",")}
    asyncio.run(serve(args.port, models))


if __name__ == "__main__":
    main()

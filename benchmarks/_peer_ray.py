"""Ray Serve driver for ``bench_peers.py`` (runs in Ray's own virtualenv).

Starts a fresh local Ray (``address="local"``: never joins a cluster someone else
started; ``num_cpus=1``) with its own temp dir, then Ray Serve on
``127.0.0.1:<port>`` with one deployment per workload at route ``/<workload>``, one
replica each, ``@serve.batch(max_batch_size=64, batch_wait_timeout_s=0.002)``, and
``max_ongoing_requests`` high enough that the batcher, not the replica's admission
limit, decides batch sizes. Access logs are off (as clipper-nb runs with
``--log-level warning``). Prints ``READY`` once every deployment answers, then waits
until its stdin closes (or ``--max-life-s``), and shuts Serve and Ray down.

    python _peer_ray.py --port 8000 --model-dir DIR --workloads noop,torch --temp-dir DIR
"""

from __future__ import annotations

import argparse
import os
import sys
import threading

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _peer_models  # noqa: E402 - after the path is set


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--model-dir", required=True)
    parser.add_argument("--workloads", default=",".join(_peer_models.WORKLOADS))
    parser.add_argument("--temp-dir", required=True)
    parser.add_argument("--max-batch-size", type=int, default=64)
    parser.add_argument("--batch-wait-s", type=float, default=0.002)
    parser.add_argument("--max-ongoing", type=int, default=256)
    parser.add_argument("--max-life-s", type=float, default=3600.0)
    args = parser.parse_args()

    import ray
    from ray import serve
    from starlette.requests import Request
    from starlette.responses import Response

    here = os.path.dirname(os.path.abspath(__file__))
    ray.init(address="local", num_cpus=1, include_dashboard=False, _temp_dir=args.temp_dir,
             runtime_env={"env_vars": {"PYTHONPATH": here, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}},
             log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": args.port},
                logging_config={"enable_access_log": False, "log_level": "WARNING"})

    @serve.deployment(num_replicas=1, max_ongoing_requests=args.max_ongoing, ray_actor_options={"num_cpus": 0},
                      logging_config={"enable_access_log": False, "log_level": "WARNING"})
    class Peer:
        def __init__(self, workload: str, model_dir: str) -> None:
            import _peer_models as models

            self.models = models
            self.predict = models.load(workload, model_dir)

        @serve.batch(max_batch_size=args.max_batch_size, batch_wait_timeout_s=args.batch_wait_s)
        async def run(self, rows: list[np.ndarray]) -> list:
            y = self.predict(np.stack(rows))
            return [self.models.row_output(v) for v in y]

        async def __call__(self, request: Request) -> Response:
            body = await request.json()
            out = await self.run(np.asarray(body["input"], dtype=np.float64))
            import json

            return Response(json.dumps({"query_id": 0, "output": out, "default": False}),
                            media_type="application/json")

    for name in args.workloads.split(","):
        serve.run(Peer.options(name=f"peer-{name}").bind(name, args.model_dir), name=name,
                  route_prefix=f"/{name}", blocking=False)
    print("READY", flush=True)

    stop = threading.Event()

    def watch_stdin() -> None:
        sys.stdin.read()  # returns when the benchmark closes our stdin (or dies)
        stop.set()

    threading.Thread(target=watch_stdin, daemon=True).start()
    stop.wait(args.max_life_s)
    try:
        serve.shutdown()
    finally:
        ray.shutdown()


if __name__ == "__main__":
    main()

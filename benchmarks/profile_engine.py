"""Profile clipper-nb's own query path: Engine.predict with N queries in flight, no HTTP.

The frontend's cost per query is Tornado's (the bare floor) plus this. Running the
Engine in process, with a real no-op worker, leaves out the HTTP layer and the load
generator, so what cProfile shows is the engine, cache, queue, batcher, RPC and
metrics alone::

    python benchmarks/profile_engine.py                 # CPU us per query, 5 rounds
    python benchmarks/profile_engine.py --profile 30    # and cProfile's top 30 by cumulative time
    python benchmarks/profile_engine.py --hits          # one repeated input: the cache-hit path
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import os
import pstats
import statistics
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _workloads import noop_model  # noqa: E402 - after the path is set

from clipper_nb.frontend.server import Server  # noqa: E402
from clipper_nb.kernel.client import Client  # noqa: E402


async def profile(queries: int, in_flight: int, rounds: int, hits: bool, top: int) -> None:
    with tempfile.TemporaryDirectory(prefix="clipper-profile-") as state:
        server = Server(state_dir=state, port=0, token="profile", public_predict=True)
        await server.start()
        try:
            client = Client(server.url, token=server.token)
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(None, lambda: client.deploy(noop_model, "noop", app="noop", slo_ms=1000))
            engine = server.engine
            assert engine is not None
            rng = np.random.default_rng(0)
            per_query, profiler = [], cProfile.Profile()
            for r in range(rounds):
                xs = rng.random((1 if hits else queries, 784)).round(6).tolist()

                async def client_loop(k: int) -> None:
                    for i in range(k, queries, in_flight):
                        await engine.predict("noop", xs[i % len(xs)])

                if top and r == rounds - 1:
                    profiler.enable()
                cpu = time.process_time()
                await asyncio.gather(*(client_loop(k) for k in range(in_flight)))
                per_query.append((time.process_time() - cpu) / queries * 1e6)
                profiler.disable()
            print(f"{'cache hits' if hits else 'cache misses'}, {in_flight} in flight: CPU per query "
                  f"{statistics.median(per_query):.0f} us (median of {rounds}: {[round(v) for v in per_query]})")
            if top:
                pstats.Stats(profiler).sort_stats("cumulative").print_stats(top)
        finally:
            await server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=2000, help="queries per round")
    parser.add_argument("--in-flight", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--hits", action="store_true", help="repeat one input (every query a cache hit)")
    parser.add_argument("--profile", type=int, default=0, metavar="N",
                        help="cProfile the last round and print the top N functions")
    args = parser.parse_args()
    asyncio.run(profile(args.queries, args.in_flight, args.rounds, args.hits, args.profile))


if __name__ == "__main__":
    main()

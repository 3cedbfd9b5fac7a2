"""``clipper-nb``: serve, demo and load."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys


def _serve(args: argparse.Namespace) -> int:
    from clipper_nb.frontend.server import Server

    logging.basicConfig(level=getattr(logging, args.log_level.upper()), format="%(asctime)s %(name)s %(message)s")
    token = args.token or os.environ.get("CLIPPER_NB_TOKEN") or None
    server = Server(state_dir=args.state_dir, host=args.host, port=args.port, token=token,
                    public_predict=args.public_predict, default_slo_ms=args.default_slo_ms,
                    cache_bytes=int(args.cache_mb * (1 << 20)), batch_delay_ms=args.batch_delay_ms,
                    fork_server=not args.no_fork_server)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, lambda: asyncio.ensure_future(server.stop()))
        await server.start(wait_ready=False)
        print(f"clipper-nb serving on {server.url} (state in {os.path.abspath(args.state_dir)})", flush=True)
        if not token:  # generated: the only place it is ever shown
            print(f"management token: {server.token}", flush=True)
        print(f"query API: {'open to anonymous callers' if args.public_predict else 'needs the token'}", flush=True)
        assert server._stopped is not None
        await server._stopped.wait()

    asyncio.run(main())
    return 0


def _demo(args: argparse.Namespace) -> int:
    from clipper_nb.demo import run_demo

    return run_demo(replicas=args.replicas, queries=args.queries)


def _load(argv: list[str]) -> int:
    from clipper_nb.kernel.loadgen import cli_main

    return cli_main(argv)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "load":  # the load generator parses its own arguments
        return _load(argv[1:])
    parser = argparse.ArgumentParser(prog="clipper-nb", description="Clipper prediction serving for notebooks")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run a standalone frontend (query, management and metrics APIs)")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    serve.add_argument("--port", type=int, default=1337)
    serve.add_argument("--state-dir", default="clipper-state", help="where apps, models and artifacts live")
    serve.add_argument("--token", default=None, help="management token (generated and printed when not given)")
    serve.add_argument("--public-predict", action="store_true",
                       help="let anonymous callers use the query API (/<app>/predict, /<app>/update)")
    serve.add_argument("--default-slo-ms", type=float, default=100.0)
    serve.add_argument("--cache-mb", type=float, default=32.0, help="prediction cache size per model version")
    serve.add_argument("--batch-delay-ms", type=float, default=2.0, help="delayed batching timeout")
    serve.add_argument("--no-fork-server", action="store_true",
                       help="start each worker as a fresh interpreter instead of forking a pre-warmed one")
    serve.add_argument("--log-level", default="info")
    serve.set_defaults(func=_serve)

    demo = sub.add_parser("demo", help="start a server, deploy a scikit-learn and a torch model, query them")
    demo.add_argument("--replicas", type=int, default=1)
    demo.add_argument("--queries", type=int, default=200)
    demo.set_defaults(func=_demo)

    sub.add_parser("load", help="load generator: clipper-nb load APP --url URL --qps 500 --duration 30s")
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())

"""``clipper-nb``: serve, demo and load.

Each subcommand is its own traitlets ``Application``, imported only when chosen (traitlets
resolves the dotted names below), so ``clipper-nb load`` never pays for the engine and
``clipper-nb serve`` never for torch::

    clipper-nb serve --help-all        # every knob (c.ClipperNB.*) and serve setting
    clipper-nb demo --replicas=2
    clipper-nb load APP --url URL --qps 500 --duration 30s
"""

from __future__ import annotations

import os
import sys
from typing import Any

from traitlets import Unicode
from traitlets.config import Application

from clipper_nb import __version__
from clipper_nb.errors import ClipperError

__all__ = ["ClipperNBApp", "LoadApp", "StatusApp", "main"]


class LoadApp(Application):
    """``clipper-nb load``: the load generator, which parses its own (argparse) arguments."""

    name = "clipper-nb-load"
    description = "Load generator: clipper-nb load APP --url URL --qps 500 --duration 30s (--help for more)."

    def initialize(self, argv: Any = None) -> None:
        self.load_argv = list(sys.argv[2:] if argv is None else argv)

    def start(self) -> int:
        from clipper_nb.kernel.loadgen import cli_main  # aiohttp and numpy: only for this subcommand

        return cli_main(self.load_argv)


class StatusApp(Application):
    """``clipper-nb status``: the replica table ``client.status()`` shows, on a terminal."""

    name = "clipper-nb-status"
    description = "Print every replica of a running server (model, version, state, pid, device, batch cap, ...)."
    version = __version__
    url = Unicode("", help="The server's URL (default: $CLIPPER_NB_URL, else http://127.0.0.1:1337).").tag(
        config=True)
    token = Unicode("", help="The server's token (default: $CLIPPER_NB_TOKEN).").tag(config=True)
    aliases = {"url": "StatusApp.url", "token": "StatusApp.token"}

    def start(self) -> int:
        from clipper_nb.kernel.client import Client  # requests and pandas: only for this subcommand

        url = self.url or os.environ.get("CLIPPER_NB_URL") or "http://127.0.0.1:1337"
        client = Client(url, token=self.token or os.environ.get("CLIPPER_NB_TOKEN"))
        try:
            apps, replicas = client.apps(), client.status()
        except ClipperError as e:
            print(f"clipper-nb status: {e}", file=sys.stderr)
            return 1
        print(f"clipper-nb at {client.url}: {len(apps)} application(s), {len(replicas)} replica(s)")
        if len(replicas):
            print(replicas.to_string(index=False))
        return 0


class ClipperNBApp(Application):
    """The ``clipper-nb`` command: one subcommand per job."""

    name = "clipper-nb"
    version = __version__
    description = "Clipper prediction serving for notebooks."
    aliases: dict = {}  # every option belongs to a subcommand
    flags: dict = {}
    subcommands = {
        "serve": ("clipper_nb.frontend.serve.ServeApp",
                  "Run a standalone frontend (query, management and metrics APIs); --help-all lists every knob."),
        "demo": ("clipper_nb.demo.DemoApp",
                 "Start a server, deploy a scikit-learn and a torch model, query them."),
        "load": ("clipper_nb.cli.LoadApp",
                 "Load generator: clipper-nb load APP --url URL --qps 500 --duration 30s."),
        "status": ("clipper_nb.cli.StatusApp",
                   "Print the replicas of a running server: clipper-nb status --url URL --token T."),
    }

    def start(self) -> int:
        if self.subapp is None:
            self.print_subcommands()
            self.exit(2)
        return self.subapp.start() or 0


def main(argv: list[str] | None = None) -> int:
    """Run ``clipper-nb ARGS``; returns the exit status."""
    app = ClipperNBApp()
    app.initialize(sys.argv[1:] if argv is None else argv)
    return app.start()


if __name__ == "__main__":
    sys.exit(main())

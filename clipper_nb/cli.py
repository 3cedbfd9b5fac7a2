"""``clipper-nb``: serve, demo and load.

Each subcommand is its own traitlets ``Application``, imported only when chosen (traitlets
resolves the dotted names below), so ``clipper-nb load`` never pays for the engine and
``clipper-nb serve`` never for torch::

    clipper-nb serve --help-all        # every knob (c.ClipperNB.*) and serve setting
    clipper-nb demo --replicas=2
    clipper-nb load APP --url URL --qps 500 --duration 30s
"""

from __future__ import annotations

import sys
from typing import Any

from traitlets.config import Application

__all__ = ["ClipperNBApp", "LoadApp", "main"]


class LoadApp(Application):
    """``clipper-nb load``: the load generator, which parses its own (argparse) arguments."""

    name = "clipper-nb-load"
    description = "Load generator: clipper-nb load APP --url URL --qps 500 --duration 30s (--help for more)."

    def initialize(self, argv: Any = None) -> None:
        self.load_argv = list(sys.argv[2:] if argv is None else argv)

    def start(self) -> int:
        from clipper_nb.kernel.loadgen import cli_main  # aiohttp and numpy: only for this subcommand

        return cli_main(self.load_argv)


class ClipperNBApp(Application):
    """The ``clipper-nb`` command: one subcommand per job."""

    name = "clipper-nb"
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

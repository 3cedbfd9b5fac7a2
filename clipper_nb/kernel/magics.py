"""``%clipper``: deploy and manage the live objects of a notebook from IPython.

``%load_ext clipper_nb`` registers one line/cell magic with subcommands::

    %clipper deploy clf --app digits --slo 20ms --replicas 2
    %%clipper deploy --app echo          # the last function the cell defines
    %clipper query digits X[0]
    %clipper apps / models / status      # pandas DataFrames

The server is found with no input inside Jupyter (see :mod:`clipper_nb.kernel.discovery`);
elsewhere ``%clipper connect URL --token T`` or ``%clipper start``. A user mistake is
one line (IPython's ``UsageError``), never a traceback, and the token is never
printed: curl lines read it from ``$CLIPPER_NB_TOKEN``.
"""

from __future__ import annotations

import ast
import asyncio
import json
import math
import os
import re
import threading
import time
from typing import Any, Callable

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_cell_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments, parse_argstring

from clipper_nb.kernel import discovery
from clipper_nb.kernel.client import Client, connect
from clipper_nb.kernel.endpoint import curl_auth
from clipper_nb.errors import ClipperError, Forbidden, Unauthorized
from clipper_nb.kernel.loadgen import guess_inputs, parse_duration, parse_ms, run_load

#: Bounds of ``%clipper load`` so a typo cannot flood the machine for hours.
MAX_LOAD_S = 600.0
MAX_LOAD_QPS = 50_000.0
MAX_LOAD_CONCURRENCY = 256
#: Inputs up to this many features are spelled out in the curl line.
_CURL_INLINE_FEATURES = 32


def _one_line(e: BaseException) -> str:
    """A ClipperError (or any error) as one readable line: message (last line of cause)."""
    if isinstance(e, ClipperError):
        text = e.message
        cause_lines = [ln.strip() for ln in str(e.cause or "").splitlines() if ln.strip()]
        if cause_lines and cause_lines[-1] not in text:
            text += f" ({cause_lines[-1]})"
        if isinstance(e, (Unauthorized, Forbidden)):
            text += " — reconnect with %clipper connect URL --token T"
    else:
        text = f"{type(e).__name__}: {e}"
    text = re.sub(r"\s+", " ", text).strip()
    return text if len(text) <= 600 else text[:597] + "..."


def _resources(text: str | None) -> dict[str, float] | None:
    """``--resources gpu_node=1,CPU=2`` as ``{"gpu_node": 1.0, "CPU": 2.0}``."""
    if not text:
        return None
    out = {}
    for item in text.split(","):
        key, _, amount = (part.strip() for part in item.partition("="))
        try:
            if not key:
                raise ValueError(item)
            out[key] = float(amount)
        except ValueError:
            raise UsageError(f"--resources takes NAME=AMOUNT[,NAME=AMOUNT...], e.g. gpu_node=1; got {item!r}") from None
    return out


def _literal(text: str | None) -> Any:
    """``--default 0`` -> 0, ``--default '"spam"'`` -> "spam", ``--default spam`` -> "spam"."""
    if text is None:
        return None
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


class _LoadCommands:
    """``%clipper load`` and ``%clipper dashboard``: watching an application under load."""

    loads: dict[str, "_LoadRun"]
    _client: Callable[[], Client]
    _eval: Callable[[str, str], Any]

    # ================================================================== load
    @magic_arguments(name="%clipper load")
    @argument("app")
    @argument("--qps", type=float, help="open loop: Poisson arrivals at this rate")
    @argument("--concurrency", type=int, help="closed loop: this many queries in flight (default 8)")
    @argument("--duration", default="30s", help=f"e.g. 30s (at most {MAX_LOAD_S:.0f}s)")
    @argument("--input", dest="input_expr", help="expression for the inputs to cycle through (a list of rows); "
              "default: zeros shaped like the app's model input")
    @argument("--batch-size", type=int, help="rows per request")
    @argument("--slo", help="count goodput against this latency (default: the app's SLO)")
    @argument("--wait", action="store_true", help="block until done and return the LoadResult")
    @argument("--stop", action="store_true", help="stop the running load on APP")
    def _load(self, args: Any, cell: str | None) -> Any:
        """Background load on an application, with a progress line; never more than one per app."""
        running = self.loads.get(args.app)
        if args.stop:
            if running is None or not running.thread.is_alive():
                raise UsageError(f"no load is running on {args.app!r}")
            running.stop()
            return None
        if running is not None and running.thread.is_alive():
            raise UsageError(f"a load is already running on {args.app!r}: %clipper load {args.app} --stop")
        duration = parse_duration(args.duration)
        _check_bounds(args, duration)
        client = self._client()
        app = client.app(args.app)
        inputs = self._load_inputs(client, app, args.input_expr)
        slo_ms = parse_ms(args.slo) if args.slo else app.get("slo_ms")
        run = _LoadRun(args.app, duration)
        self.loads[args.app] = run
        run.start(lambda progress, stop: run_load(
            client.url, args.app, inputs, concurrency=args.concurrency, qps=args.qps, duration_s=duration,
            batch_size=args.batch_size, slo_ms=slo_ms, token=client._token, progress=progress, stop=stop))
        if not args.wait:
            return None
        try:
            run.thread.join()
        except KeyboardInterrupt:
            run.stop()
            run.thread.join()
        if run.error is not None:
            raise UsageError(f"the load on {args.app!r} failed: {_one_line(run.error)}")
        return run.result

    def _load_inputs(self, client: Client, app: dict, expr: str | None) -> list:
        import numpy as np

        if expr:
            value = self._eval(expr, "the load inputs")
            rows = value.tolist() if isinstance(value, np.ndarray) else list(value)
            if rows and not isinstance(rows[0], (list, tuple, dict, str)):
                rows = [rows]  # one flat input, not a list of them
            return rows
        rows = guess_inputs(client, app)
        if rows is not None:
            return rows
        raise UsageError(f"cannot tell the input shape of {app['name']!r}: pass --input EXPR (a list of inputs)")

    # ================================================================== widgets
    @magic_arguments(name="%clipper dashboard")
    @argument("app")
    def _dashboard(self, args: Any, cell: str | None) -> Any:
        """Live dashboard widget of an application (latency, throughput, batch sizes, selection)."""
        client = self._client()
        try:
            return client.dashboard(args.app)
        except (ImportError, AttributeError) as e:
            raise UsageError("the dashboard needs clipper_nb.widgets.Dashboard, which this installation lacks "
                             f"({type(e).__name__}: {e}); use %clipper status and client.metrics()") from None


class _ConnectionCommands:
    """``%clipper connect``, ``start`` and ``stop``: which server the magics talk to."""

    client: Client | None
    _discovered: bool

    @property
    def embedded(self) -> discovery.EmbeddedServer | None:
        """The server ``%clipper start`` (or a connect() that found none) started, while it runs."""
        return discovery.embedded()

    def _client(self) -> Client:
        if self.client is None:
            try:
                self.client = connect()
            except ClipperError as e:
                raise UsageError("no clipper-nb server found: run %clipper start, or "
                                 "%clipper connect URL --token T (inside Jupyter, enable the clipper_nb "
                                 "server extension)") from e
            self._discovered = True
        return self.client

    # ================================================================== connection
    @magic_arguments(name="%clipper connect")
    @argument("url", help="e.g. http://127.0.0.1:1337 (serve) or http://host:8888/clipper (Jupyter)")
    @argument("--token", help="the server's token (default: $CLIPPER_NB_TOKEN)")
    def _connect(self, args: Any, cell: str | None) -> None:
        """Use a clipper-nb server that is already running."""
        token = args.token or os.environ.get("CLIPPER_NB_TOKEN")
        client = Client(args.url, token=token)
        health = client.health()
        self.client, self._discovered = client, False
        discovery.remember(client.url, token)
        print(f"connected to {client.url}: {health['apps']} apps, {health['models']} models, "
              f"{health['replicas_up']} replicas up")

    @magic_arguments(name="%clipper start")
    @argument("--port", type=int, help="port on 127.0.0.1 (default: a free one)")
    @argument("--state-dir", help="keep apps and models here (default: a temporary folder deleted at exit)")
    @argument("--public-predict", action="store_true", help="let anonymous callers use the query API")
    def _start(self, args: Any, cell: str | None) -> None:
        """Start a clipper-nb server in the background; it stops when this kernel exits."""
        if self.embedded is not None:
            print(f"already running at {self.embedded.url} (%clipper stop first)")
            return
        server = discovery.start_embedded(state_dir=args.state_dir, port=args.port,
                                          public_predict=args.public_predict)
        self.client, self._discovered = Client(server.url, token=server.token), False
        print(f"clipper-nb serving at {server.url} (state in {server.state_dir}); it stops when this kernel exits")

    @magic_arguments(name="%clipper stop")
    def _stop(self, args: Any, cell: str | None) -> None:
        """Stop the server %clipper start started (and every worker it runs)."""
        server = self.embedded
        if server is None:
            raise UsageError("no server started by %clipper start is running")
        url = server.url
        server.stop()
        if self.client is not None and self.client.url == url:
            self.client = None
        print(f"stopped the clipper-nb server at {url}")


@magics_class
class ClipperMagics(_ConnectionCommands, _LoadCommands, Magics):
    """The ``%clipper`` magic; one instance per IPython shell."""

    def __init__(self, shell: Any) -> None:
        super().__init__(shell)
        self.client: Client | None = None
        self._discovered = False  # the client came from discovery: re-discover if it goes away
        self.loads: dict[str, _LoadRun] = {}

    # ================================================================== dispatch
    @line_cell_magic
    def clipper(self, line: str, cell: str | None = None) -> Any:
        command, _, rest = line.strip().partition(" ")
        sub = _COMMANDS.get(command)
        if sub is None:
            raise UsageError(f"unknown %clipper command {command!r}" if command else "%clipper needs a command"
                             f"; one of: {', '.join(_COMMANDS)} (see %clipper?)")
        if cell is not None and command != "deploy":
            raise UsageError("only deploy works as a cell magic: %%clipper deploy --app NAME")
        args = parse_argstring(sub, rest)
        try:
            return self._run(sub, args, cell)
        except ClipperError as e:
            if self._discovered and e.message.startswith("cannot reach"):
                self.client = None  # the Jupyter server restarted: find it again, once
                try:
                    return self._run(sub, args, cell)
                except ClipperError as again:
                    raise UsageError(_one_line(again)) from None
            raise UsageError(_one_line(e)) from None
        except (ValueError, TimeoutError) as e:
            raise UsageError(_one_line(e)) from None

    def _run(self, sub: Callable, args: Any, cell: str | None) -> Any:
        import requests

        try:
            return sub(self, args, cell)
        except requests.RequestException as e:  # a timeout or a dropped connection
            raise ClipperError(f"the request to clipper-nb failed: {type(e).__name__}", str(e)) from None

    def _eval(self, expr: str, what: str) -> Any:
        ns = self.shell.user_ns
        if expr.isidentifier():
            if expr not in ns:
                raise UsageError(f"no variable {expr!r} in the notebook ({what})")
            return ns[expr]
        try:
            return self.shell.ev(expr)
        except Exception as e:  # noqa: BLE001 - any error in the user's expression is theirs to fix
            raise UsageError(f"cannot evaluate {expr!r} ({what}): {type(e).__name__}: {e}") from None

    # ================================================================== deploy
    @magic_arguments(name="%clipper deploy")
    @argument("var", nargs="?", help="variable (or expression) holding the model: a scikit-learn estimator, a "
              "torch.nn.Module or a function batch -> outputs. In a %%clipper cell, omit it to deploy the last "
              "function the cell defines.")
    @argument("--app", help="application to serve it under (registered when missing, then linked)")
    @argument("--name", help="model name (default: the variable or function name)")
    @argument("--version", help="version label (default: the next integer)")
    @argument("--slo", help="latency objective of a new app, e.g. 20ms")
    @argument("--replicas", type=int, default=1, help="worker processes (default 1)")
    @argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    @argument("--method", help="method to serve, e.g. predict_proba (default: predict / forward)")
    @argument("--batch-size", type=int, help="fixed batch size (turns adaptive batching off)")
    @argument("--max-batch-size", type=int, help="cap of the adaptive batch size (1: no batching)")
    @argument("--default", dest="default_output", help="default output of a new app, as a Python literal")
    @argument("--input-type", help="floats (default), ints, float32, strings, bytes or json")
    @argument("--backend", help="where replicas run: process (worker processes on the server) or ray (Ray actors "
              "on the server's Ray cluster); default: the model's current one, else the server's default_backend")
    @argument("--resources", help="custom Ray resources per replica, e.g. gpu_node=1 or gpu_node=1,CPU=2 (with "
              "--backend ray)")
    @argument("--timeout", default="300s", help="how long to wait for the replicas to load (default 300s)")
    def _deploy(self, args: Any, cell: str | None) -> None:
        """Deploy a live object and print its endpoint with a ready-to-copy curl line."""
        obj, default_name = self._deploy_target(args, cell)
        name = args.name or default_name
        if not name:
            raise UsageError(f"cannot name a model after {args.var!r}: pass --name NAME")
        slo_ms = parse_ms(args.slo) if args.slo else None
        client = self._client()
        t0 = time.monotonic()
        model = client.deploy(obj, name, version=args.version, app=args.app, replicas=args.replicas,
                              device=args.device, method=args.method, batch_size=args.batch_size,
                              max_batch_size=args.max_batch_size, slo_ms=slo_ms, input_type=args.input_type,
                              default_output=_literal(args.default_output), backend=args.backend,
                              resources=_resources(args.resources), timeout=parse_duration(args.timeout))
        took = time.monotonic() - t0
        print(f"deployed {name} version {model['version']} ({model.get('kind')}): "
              f"{model.get('replicas_up')}/{model.get('replicas')} replicas up in {took:.1f} s")
        if not args.app:
            print(f"not linked to an application: %clipper deploy {args.var or name} --app APP, "
                  f"or client.link(APP, {name!r})")
            return
        self._print_endpoint(client, args.app, model)

    def _deploy_target(self, args: Any, cell: str | None) -> tuple[Any, str | None]:
        if cell is None:
            if not args.var:
                raise UsageError("name what to deploy: %clipper deploy VAR --app NAME")
            return self._eval(args.var, "the model to deploy"), (args.var if args.var.isidentifier() else None)
        code = self.shell.transform_cell(cell)
        try:
            tree = ast.parse(code)
        except SyntaxError as e:
            raise UsageError(f"the cell has a syntax error on line {e.lineno}: {e.msg}") from None
        functions = [n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
        if not functions and not args.var:
            raise UsageError("the cell defines no function: write `def predict(inputs): return [...]` "
                             "(one output per input) in it")
        result = self.shell.run_cell(cell, store_history=False)
        if not result.success:
            raise UsageError("the cell raised an error (shown above): fix it and run the cell again")
        if args.var:
            return self._eval(args.var, "the model to deploy"), args.var if args.var.isidentifier() else None
        return self.shell.user_ns[functions[-1]], functions[-1]

    def _print_endpoint(self, client: Client, app: str, model: dict) -> None:
        created = model.get("app_created")
        if created:
            print(f"created application {created['name']!r} (SLO {created['slo_ms']:g} ms, policy "
                  f"{created['policy']})")
        endpoint = f"{client.url}/{app}/predict"
        print(f"endpoint: POST {endpoint}")
        body = json.dumps({"input": "INPUT"})
        sample = _sample_input(model.get("input_shape"), model.get("input_type"))
        auth = "" if _predict_is_public(endpoint) else curl_auth(client)
        if sample is None:
            data = "'" + body.replace('"INPUT"', "<input>") + "'"
        elif isinstance(sample, str):  # a shell expansion building a long vector
            data = '"{\\"input\\": [' + sample + ']}"'
        else:
            data = "'" + body.replace('"INPUT"', json.dumps(sample)) + "'"
        print(f"curl -X POST {endpoint} -H 'Content-Type: application/json' {auth}-d {data}")
        if "Authorization" in auth:
            where = ("the token `jupyter server list` shows" if client.url.endswith("/clipper")
                     else "the server's token (or %clipper start --public-predict)")
            print(f"($CLIPPER_NB_TOKEN: {where})")

    # ================================================================== read
    @magic_arguments(name="%clipper apps")
    def _apps(self, args: Any, cell: str | None) -> Any:
        """Applications as a DataFrame."""
        return self._client().apps()

    @magic_arguments(name="%clipper models")
    def _models(self, args: Any, cell: str | None) -> Any:
        """Models (current version, replicas up, apps) as a DataFrame."""
        return self._client().models()

    @magic_arguments(name="%clipper status")
    def _status(self, args: Any, cell: str | None) -> Any:
        """One row per replica: state, pid, device, batch cap, restarts, last error."""
        return self._client().status()

    @magic_arguments(name="%clipper query")
    @argument("app")
    @argument("expr", nargs="+", help="Python expression for the input, e.g. X[0]")
    @argument("--context", help="selection context (user/session key)")
    @argument("--batch", action="store_true", help="EXPR is a batch of inputs: one answer per row")
    def _query(self, args: Any, cell: str | None) -> Any:
        """Query an application with the value of EXPR; returns the answer dict."""
        x = self._eval(" ".join(args.expr), "the input")
        client = self._client()
        if args.batch:
            return client.predict_batch(args.app, x, context=args.context)
        return client.predict(args.app, x, context=args.context)

    @magic_arguments(name="%clipper feedback")
    @argument("app")
    @argument("expr_and_label", nargs="+", metavar="EXPR LABEL", help="input expression, then label expression")
    @argument("--context", help="selection context (user/session key)")
    def _feedback(self, args: Any, cell: str | None) -> Any:
        """Send the true LABEL for input EXPR (Clipper's update); returns losses and weights."""
        if len(args.expr_and_label) < 2:
            raise UsageError("feedback needs an input and a label: %clipper feedback APP EXPR LABEL")
        x = self._eval(" ".join(args.expr_and_label[:-1]), "the input")
        label = self._eval(args.expr_and_label[-1], "the label")
        return self._client().feedback(args.app, x, label, context=args.context)

    @magic_arguments(name="%clipper logs")
    @argument("model")
    @argument("--tail", type=int, default=20_000, help="bytes from the end of each replica's log")
    def _logs(self, args: Any, cell: str | None) -> None:
        """What a model's replicas printed, tracebacks included (token holders only)."""
        print(self._client().logs(args.model, tail=args.tail))

    # ================================================================== manage
    @magic_arguments(name="%clipper slo")
    @argument("app")
    @argument("latency", help="e.g. 50ms or 0.05s")
    def _slo(self, args: Any, cell: str | None) -> None:
        """Change an application's latency objective."""
        app = self._client().set_slo(args.app, parse_ms(args.latency))
        print(f"{args.app}: SLO {app['slo_ms']:g} ms")

    @magic_arguments(name="%clipper scale")
    @argument("model")
    @argument("replicas", type=int)
    def _scale(self, args: Any, cell: str | None) -> None:
        """Run N replicas of a model (waits until new ones are up)."""
        m = self._client().scale(args.model, args.replicas)
        print(f"{args.model}: {m['replicas_up']}/{m['replicas']} replicas up")

    @magic_arguments(name="%clipper rollback")
    @argument("model")
    @argument("version")
    def _rollback(self, args: Any, cell: str | None) -> None:
        """Serve an earlier version of a model again."""
        m = self._client().rollback(args.model, args.version)
        print(f"{args.model}: serving version {m['version']} ({m['replicas_up']}/{m['replicas']} replicas up)")

    @magic_arguments(name="%clipper undeploy")
    @argument("model")
    def _undeploy(self, args: Any, cell: str | None) -> None:
        """Stop a model's replicas, unlink it and delete its versions."""
        self._client().undeploy(args.model)
        print(f"{args.model}: undeployed")

_COMMANDS: dict[str, Callable] = {
    "deploy": ClipperMagics._deploy, "apps": ClipperMagics._apps, "models": ClipperMagics._models,
    "status": ClipperMagics._status, "logs": ClipperMagics._logs, "query": ClipperMagics._query,
    "feedback": ClipperMagics._feedback,
    "slo": ClipperMagics._slo, "scale": ClipperMagics._scale, "rollback": ClipperMagics._rollback,
    "undeploy": ClipperMagics._undeploy, "load": ClipperMagics._load, "dashboard": ClipperMagics._dashboard,
    "connect": ClipperMagics._connect, "start": ClipperMagics._start, "stop": ClipperMagics._stop,
}

ClipperMagics.clipper.__doc__ = (
    "Deploy and manage notebook models on clipper-nb: %clipper COMMAND [options].\n\n"
    "Inside Jupyter the server's clipper_nb extension is found automatically; elsewhere use\n"
    "%clipper start (a background server for this kernel) or %clipper connect URL --token T.\n"
    "Durations and latencies take units: 20ms, 0.5s, 30s, 2m.\n\nCommands:\n\n"
    + "\n".join(sub.__doc__ for sub in _COMMANDS.values())
)


def _check_bounds(args: Any, duration: float) -> None:
    if not 0 < duration <= MAX_LOAD_S:
        raise UsageError(f"--duration must be between 0 and {MAX_LOAD_S:.0f}s")
    if args.qps is not None and args.concurrency is not None:
        raise UsageError("give --qps (open loop) or --concurrency (closed loop), not both")
    if args.qps is not None and not 0 < args.qps <= MAX_LOAD_QPS:
        raise UsageError(f"--qps must be between 0 and {MAX_LOAD_QPS:.0f}")
    if args.concurrency is not None and not 1 <= args.concurrency <= MAX_LOAD_CONCURRENCY:
        raise UsageError(f"--concurrency must be between 1 and {MAX_LOAD_CONCURRENCY}")
    if args.batch_size is not None and args.batch_size < 1:
        raise UsageError("--batch-size must be at least 1")


def _sample_input(shape: list[int] | None, input_type: str | None) -> Any:
    """A zero input of the model's shape for the curl line (a shell expansion when long)."""
    if input_type in ("strings",):
        return "hello"
    if not shape or input_type in ("bytes", "json"):
        return None
    n = math.prod(shape)
    zero = 0 if input_type in ("ints", "integers") else 0.0
    if len(shape) == 1 and n <= _CURL_INLINE_FEATURES:
        return [zero] * n
    if len(shape) == 1:
        return f"$(printf '0,%.0s' $(seq {n - 1}))0"
    return None


def _predict_is_public(endpoint: str) -> bool:
    """Does the query API answer anyone? (A malformed query: 400 if so; 401 or 403, Jupyter's
    XSRF refusal included, if not.)"""
    import requests

    try:
        return requests.post(endpoint, data=b"{}", headers={"Content-Type": "application/json"},
                             timeout=2).status_code == 400
    except requests.RequestException:
        return False


class _LoadRun:
    """One ``%clipper load``: run_load on a thread of its own with a progress display.

    A thread (not the kernel's loop) so that it works the same in a kernel, in terminal
    IPython and with ``--wait``; the progress line is updated in place by display id.
    """

    def __init__(self, app: str, duration: float) -> None:
        self.app = app
        self.duration = duration
        self.thread = threading.Thread(target=self._main, name=f"clipper-load-{app}", daemon=True)
        self.result: Any = None
        self.error: BaseException | None = None
        self._factory: Callable | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._handle: Any = None
        self._last_shown = 0.0

    def start(self, factory: Callable) -> None:
        from IPython.display import display

        self._factory = factory
        self._handle = display(_Progress(self.app, self.duration, {}), display_id=True)
        self.thread.start()

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)

    def _main(self) -> None:
        async def main() -> Any:
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            assert self._factory is not None
            return await self._factory(self._progress, self._stop)

        try:
            self.result = asyncio.run(main())
        except BaseException as e:  # noqa: BLE001 - reported by --wait and in the display
            self.error = e
        final = _Progress(self.app, self.duration, {}, result=self.result, error=self.error)
        if self._handle is not None:
            self._handle.update(final)

    def _progress(self, p: dict) -> None:
        now = time.monotonic()
        if now - self._last_shown < 1.0 or self._handle is None:
            return  # once a second is plenty, and keeps terminal IPython readable
        self._last_shown = now
        self._handle.update(_Progress(self.app, self.duration, p))


class _Progress:
    """A progress line (text) or bar (HTML) for ``%clipper load``."""

    def __init__(self, app: str, duration: float, p: dict, result: Any = None,
                 error: BaseException | None = None) -> None:
        self.app, self.duration, self.p, self.result, self.error = app, duration, p, result, error

    def __repr__(self) -> str:
        if self.error is not None:
            return f"load {self.app}: failed: {_one_line(self.error)}"
        if self.result is not None:
            return f"load {self.app}: done: {self.result.summary_line()}"
        p = self.p
        if not p:
            return f"load {self.app}: starting ({self.duration:g} s)"
        p99 = p.get("p99_ms")
        p99_text = f"{p99:.1f} ms" if isinstance(p99, float) and math.isfinite(p99) else "-"
        return (f"load {self.app}: {p['elapsed_s']:.0f}/{self.duration:g} s, {p['requests']} requests, "
                f"{p['qps']:.0f} q/s, p99 {p99_text}, errors {p['errors']}")

    def _repr_html_(self) -> str:
        from html import escape

        done = self.duration if (self.result is not None or self.error is not None) else self.p.get("elapsed_s", 0)
        return (f'<progress value="{min(done, self.duration):.1f}" max="{self.duration:g}" '
                f'style="width:20em"></progress> <code>{escape(repr(self))}</code>')


def load_ipython_extension(ipython: Any) -> None:
    """``%load_ext clipper_nb``."""
    ipython.register_magics(ClipperMagics)

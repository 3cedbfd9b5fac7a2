"""Load generator for the Clipper query API (``POST /<app>/predict``).

Two load shapes, as in DESIGN.md §7 "Measuring":

* **closed loop** (``concurrency=N``): N workers each send back-to-back, so N
  queries are always in flight and mean latency = N / throughput (Little's law);
* **open loop** (``qps=R``): Poisson arrivals at rate R, each its own task, so the
  offered load does not drop when the server slows down — the only honest way to
  show behaviour past saturation.

The result counts **goodput**: rows per second that are real predictions (not a
default output, not an error) answered within the SLO.

Example::

    from clipper_nb.kernel.loadgen import run_load_sync
    r = run_load_sync("http://127.0.0.1:8080", "digits", [[0.0] * 784],
                      concurrency=16, duration_s=5, slo_ms=20)
    print(r.summary_line())

From a shell: ``clipper-nb load digits --url URL --qps 500 --duration 30s --slo 20ms
--features 784``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import secrets
import sys
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Mapping, Sequence

import aiohttp
import numpy as np

__all__ = ["LoadResult", "guess_inputs", "random_inputs", "run_load", "run_load_sync", "cli_main", "parse_duration",
           "parse_ms"]

#: Open loop: arrivals beyond this many outstanding requests are dropped and counted
#: as errors (status 0) rather than piling up without bound past saturation.
MAX_OUTSTANDING = 10_000
#: Open loop: sockets opened at most; further requests wait in aiohttp's pool, and
#: that wait counts in their latency (measured from the arrival time).
_OPEN_LOOP_CONNECTIONS = 1024
_PROGRESS_EVERY_S = 0.5
#: Status recorded for requests that got no HTTP answer (refused, timed out, dropped).
NO_RESPONSE = 0


@dataclass
class LoadResult:
    """Summary of one load run. Latency figures cover successful requests only.

    ``rows`` counts every row sent in a finished request (errors included), so an
    error lowers ``slo_attainment``; ``status_counts`` maps HTTP status to request
    count, with 0 for requests that got no HTTP answer.
    """

    requests: int
    rows: int
    errors: int
    defaults: int
    duration_s: float
    qps: float
    rows_per_s: float
    goodput: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    mean_ms: float
    slo_ms: float | None
    slo_attainment: float | None
    status_counts: dict[int, int] = field(default_factory=dict)
    first_error: str | None = None

    def summary_line(self) -> str:
        """One human-readable line: throughput, errors, latency, SLO and goodput."""
        line = (f"{self.requests} requests ({self.rows} rows) in {self.duration_s:.2f} s: "
                f"{self.qps:.1f} q/s, {self.rows_per_s:.1f} rows/s, errors {self.errors}, "
                f"defaults {self.defaults} | latency p50 {self.p50_ms:.2f} ms, "
                f"p95 {self.p95_ms:.2f} ms, p99 {self.p99_ms:.2f} ms, mean {self.mean_ms:.2f} ms")
        if self.slo_ms is not None and self.slo_attainment is not None:
            line += f" | SLO {self.slo_ms:g} ms attained {100 * self.slo_attainment:.1f}%"
        line += f" | goodput {self.goodput:.1f} rows/s"
        if self.first_error:
            line += f" | first error: {self.first_error}"
        return line

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict: NaN (no successful request) becomes None, keys are str."""
        d = asdict(self)
        for k, v in d.items():
            if isinstance(v, float) and not math.isfinite(v):
                d[k] = None
        d["status_counts"] = {str(k): v for k, v in self.status_counts.items()}
        return d


class _Recorder:
    """Accumulates per-request outcomes; single-threaded (one event loop), no locks."""

    def __init__(self, slo_ms: float | None) -> None:
        self.slo_ms = slo_ms
        self.latencies_ms: list[float] = []
        self.requests = self.rows = self.errors = self.defaults = self.good_rows = 0
        self.status_counts: dict[int, int] = {}
        self.first_error: str | None = None

    def error(self, status: int, rows: int, message: str) -> None:
        self.requests += 1
        self.rows += rows
        self.errors += 1
        self.status_counts[status] = self.status_counts.get(status, 0) + 1
        if self.first_error is None:
            self.first_error = message

    def answer(self, status: int, body: bytes, rows: int, latency_ms: float) -> None:
        """Classify one HTTP answer: an error, or rows with some default outputs."""
        if status >= 400:
            self.error(status, rows, f"HTTP {status}: {_error_text(body)}")
            return
        try:
            doc = json.loads(body)
            preds = doc["batch_predictions"] if "batch_predictions" in doc else [doc]
            defaults = sum(1 for p in preds if p.get("default"))
            if len(preds) != rows:
                raise ValueError(f"{len(preds)} predictions for {rows} rows")
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            self.error(status, rows, f"HTTP {status} but unreadable answer: {exc}")
            return
        self.requests += 1
        self.rows += rows
        self.defaults += defaults
        self.status_counts[status] = self.status_counts.get(status, 0) + 1
        self.latencies_ms.append(latency_ms)
        if self.slo_ms is None or latency_ms <= self.slo_ms:
            self.good_rows += rows - defaults

    def result(self, duration_s: float) -> LoadResult:
        lat = np.asarray(self.latencies_ms, dtype=float)
        p50, p95, p99 = np.percentile(lat, [50, 95, 99]) if lat.size else (math.nan,) * 3
        per_s = 1.0 / duration_s if duration_s > 0 else 0.0
        return LoadResult(
            requests=self.requests, rows=self.rows, errors=self.errors, defaults=self.defaults,
            duration_s=duration_s, qps=self.requests * per_s, rows_per_s=self.rows * per_s,
            goodput=self.good_rows * per_s, p50_ms=float(p50), p95_ms=float(p95),
            p99_ms=float(p99), mean_ms=float(lat.mean()) if lat.size else math.nan,
            slo_ms=self.slo_ms,
            slo_attainment=(self.good_rows / self.rows if self.rows else 0.0)
            if self.slo_ms is not None else None,
            status_counts=dict(sorted(self.status_counts.items())), first_error=self.first_error)


def _error_text(body: bytes) -> str:
    try:
        doc = json.loads(body)
        return f"{doc.get('error')}: {doc.get('cause')}"
    except (ValueError, AttributeError):
        return body[:200].decode("utf-8", "replace")


def _jsonable(obj: Any) -> Any:
    # numpy arrays and scalars are the common inputs from a notebook
    if isinstance(obj, (np.ndarray, np.generic)):
        return obj.tolist()
    raise TypeError(f"input of type {type(obj).__name__} is not JSON-serialisable")


def _encode_bodies(inputs: Sequence[Any], batch_size: int | None,
                   context: str | None) -> list[bytes]:
    """Serialise every request body once, so the hot loop only picks bytes."""
    extra = {"context": context} if context is not None else {}
    if batch_size is None:
        return [json.dumps({"input": x, **extra}, default=_jsonable).encode() for x in inputs]
    n = len(inputs)
    # ceil(n / batch_size) bodies; the last one wraps around to the first inputs
    return [json.dumps({"input_batch": [inputs[(s + j) % n] for j in range(batch_size)], **extra},
                       default=_jsonable).encode() for s in range(0, n, batch_size)]


async def run_load(url: str, app: str, inputs: Sequence[Any], *, concurrency: int | None = None,
                   qps: float | None = None, duration_s: float = 10.0,
                   max_requests: int | None = None, batch_size: int | None = None,
                   slo_ms: float | None = None, token: str | None = None,
                   context: str | None = None, timeout_s: float = 30.0, seed: int = 0,
                   progress: Callable[[dict], None] | None = None,
                   stop: asyncio.Event | None = None,
                   max_outstanding: int = MAX_OUTSTANDING) -> LoadResult:
    """Drive ``POST {url}/{app}/predict`` and summarise what came back.

    Give ``concurrency`` (closed loop) or ``qps`` (open loop, Poisson arrivals drawn
    from ``seed``), not both; neither means ``concurrency=8``. ``inputs`` are cycled
    through; with ``batch_size`` each request carries ``input_batch`` of that many
    rows. The run stops at ``duration_s``, after ``max_requests`` or when ``stop`` is
    set, whichever comes first; requests then in flight are awaited (each is bounded
    by ``timeout_s``). ``progress`` gets ``{elapsed_s, requests, errors, qps, p99_ms}``
    (the last two over the latest interval) about every 0.5 s.
    """
    if qps is None and concurrency is None:
        concurrency = 8
    _check_load_args(inputs, concurrency, qps, batch_size, duration_s, timeout_s)
    run = _LoadRun(f"{url.rstrip('/')}/{app}/predict", _encode_bodies(inputs, batch_size, context),
                   rows=batch_size or 1, rec=_Recorder(slo_ms), token=token,
                   stop=stop if stop is not None else asyncio.Event(), duration_s=duration_s,
                   max_requests=max_requests)
    reporter = asyncio.create_task(_report(run.rec, run.start, progress)) if progress else None
    limit = concurrency if concurrency is not None else min(max_outstanding, _OPEN_LOOP_CONNECTIONS)
    connector = aiohttp.TCPConnector(limit=limit, limit_per_host=0, ttl_dns_cache=None)
    try:
        async with aiohttp.ClientSession(connector=connector,
                                         timeout=aiohttp.ClientTimeout(total=timeout_s)) as session:
            if concurrency is not None:
                pending = {asyncio.create_task(run.closed_worker(session, k, concurrency))
                           for k in range(concurrency)}
            else:
                pending = await run.open_generator(session, qps, seed, max_outstanding)  # type: ignore[arg-type]
            if pending:
                # every request is bounded by timeout_s; the margin covers scheduling
                _, late = await asyncio.wait(pending, timeout=timeout_s + 1.0)
                for task in late:
                    task.cancel()
                    run.rec.error(NO_RESPONSE, run.rows, "still in flight after the drain timeout")
        duration = time.perf_counter() - run.start
    finally:
        if reporter is not None:
            reporter.cancel()
            try:
                await reporter  # re-raises a failure of the progress callback
            except asyncio.CancelledError:
                pass
    return run.rec.result(duration)


def _check_load_args(inputs: Sequence[Any], concurrency: int | None, qps: float | None,
                     batch_size: int | None, duration_s: float, timeout_s: float) -> None:
    if concurrency is not None and qps is not None:
        raise ValueError("give either concurrency (closed loop) or qps (open loop), not both")
    if concurrency is not None and concurrency < 1:
        raise ValueError(f"concurrency must be >= 1, got {concurrency}")
    if qps is not None and not qps > 0:
        raise ValueError(f"qps must be > 0, got {qps}")
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if not len(inputs):
        raise ValueError("inputs is empty: give at least one input to send")
    if not duration_s > 0 or not timeout_s > 0:
        raise ValueError("duration_s and timeout_s must be > 0")


class _LoadRun:
    """One run's request loops: a closed loop of workers, or an open-loop Poisson schedule."""

    def __init__(self, target: str, bodies: list[bytes], *, rows: int, rec: _Recorder, token: str | None,
                 stop: asyncio.Event, duration_s: float, max_requests: int | None) -> None:
        self.target, self.bodies, self.rows, self.rec, self.stop = target, bodies, rows, rec, stop
        self.headers = {"Content-Type": "application/json"}
        if token:
            self.headers["Authorization"] = f"token {token}"
        else:  # token-less Jupyter checks XSRF on POST: a matching cookie and header pass it
            xsrf = secrets.token_hex(16)
            self.headers.update({"X-XSRFToken": xsrf, "Cookie": f"_xsrf={xsrf}"})
        self.max_requests = max_requests
        self.start = time.perf_counter()
        self.deadline = self.start + duration_s
        self.issued = 0

    def may_issue(self, now: float | None = None) -> bool:
        # The open loop passes the scheduled arrival time: a loop running behind on a
        # busy machine still sends the whole (seeded, reproducible) schedule, late.
        return (not self.stop.is_set() and (time.perf_counter() if now is None else now) < self.deadline
                and (self.max_requests is None or self.issued < self.max_requests))

    async def send(self, session: aiohttp.ClientSession, body: bytes, t0: float) -> None:
        try:
            async with session.post(self.target, data=body, headers=self.headers) as resp:
                payload = await resp.read()
                status = resp.status
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            self.rec.error(NO_RESPONSE, self.rows, f"{type(exc).__name__}: {exc} ({self.target})")
            return
        self.rec.answer(status, payload, self.rows, (time.perf_counter() - t0) * 1e3)

    async def closed_worker(self, session: aiohttp.ClientSession, offset: int, concurrency: int) -> None:
        i = offset
        while self.may_issue():
            self.issued += 1
            await self.send(session, self.bodies[i % len(self.bodies)], time.perf_counter())
            i += concurrency  # workers interleave so all bodies get used

    async def open_generator(self, session: aiohttp.ClientSession, qps: float, seed: int,
                             max_outstanding: int) -> set[asyncio.Task[None]]:
        rng = np.random.default_rng(seed)
        tasks: set[asyncio.Task[None]] = set()
        arrival = self.start
        burst = 0
        while True:
            arrival += float(rng.exponential(1.0 / qps))
            # sleep in short slices so `stop` is noticed even at a low rate
            while (delay := arrival - time.perf_counter()) > 0 and not self.stop.is_set():
                await asyncio.sleep(min(delay, 0.05))
                burst = 0
            if not self.may_issue(arrival):
                return tasks
            self.issued += 1
            if len(tasks) >= max_outstanding:
                self.rec.error(NO_RESPONSE, self.rows, f"over {max_outstanding} requests outstanding")
            else:
                # latency from the scheduled arrival, not the send, so a late loop
                # shows up in the numbers instead of hiding (coordinated omission)
                task = asyncio.create_task(self.send(session, self.bodies[self.issued % len(self.bodies)], arrival))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            burst += 1
            if burst >= 64:  # behind schedule: yield so responses get read too
                burst = 0
                await asyncio.sleep(0)


async def _report(rec: _Recorder, start: float, progress: Callable[[dict], None]) -> None:
    seen, last = 0, start
    while True:
        await asyncio.sleep(_PROGRESS_EVERY_S)
        now = time.perf_counter()
        recent = rec.latencies_ms[seen:]
        seen += len(recent)
        progress({"elapsed_s": now - start, "requests": rec.requests, "errors": rec.errors,
                  "qps": len(recent) / (now - last) if now > last else 0.0,
                  "p99_ms": float(np.percentile(recent, 99)) if recent else math.nan})
        last = now


def run_load_sync(*args: Any, **kwargs: Any) -> LoadResult:
    """Blocking :func:`run_load` (same arguments) for scripts; not for a running loop."""
    return asyncio.run(run_load(*args, **kwargs))


_UNITS_S = {"ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def _parse_with_units(text: str | float, plain_unit: str, what: str) -> float:
    raw = str(text).strip().lower()
    for unit in sorted(_UNITS_S, key=len, reverse=True):  # "ms" before "m" and "s"
        if raw.endswith(unit):
            number, scale = raw[: -len(unit)], _UNITS_S[unit]
            break
    else:
        number, scale = raw, _UNITS_S[plain_unit]
    try:
        value = float(number) * scale
    except ValueError:
        raise ValueError(f"cannot read {what} {text!r}: write e.g. '30s', '500ms' or '2m'") from None
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{what} must be a non-negative number, got {text!r}")
    return value


def parse_duration(text: str | float) -> float:
    """Seconds from '30s', '500ms', '2m', '1h' or a plain number of seconds."""
    return _parse_with_units(text, "s", "duration")


def parse_ms(text: str | float) -> float:
    """Milliseconds from '20ms', '0.5s' or a plain number of milliseconds."""
    return _parse_with_units(text, "ms", "latency") * 1e3


def _fetch_slo_ms(url: str, app: str, token: str) -> float | None:
    """The app's SLO from the management API, or None when it cannot be read."""
    req = urllib.request.Request(f"{url.rstrip('/')}/api/apps/{app}",
                                 headers={"Authorization": f"token {token}"})
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            doc = json.loads(resp.read())
        doc = doc.get("app", doc) if isinstance(doc, dict) else {}
        return float(doc["slo_ms"]) if doc.get("slo_ms") is not None else None
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None  # an SLO is a nicety here; the load runs without one


#: Floats a default random input set holds (64 features: 7,812 distinct rows; at least 1,024 rows).
DISTINCT_FLOATS = 500_000


def random_inputs(shape: Sequence[int], distinct: int | None = None, seed: int = 0) -> list:
    """Random float inputs of ``shape`` for a load: ``distinct`` of them (default
    ``DISTINCT_FLOATS`` floats' worth, at least 1,024), so a load exercises the batcher and
    not only the prediction cache. The one default of ``clipper-nb load``, ``%clipper
    load`` and the dashboard's load toggle."""
    size = max(1, math.prod(shape))
    n = distinct or max(1024, DISTINCT_FLOATS // size)
    return np.random.default_rng(seed).random((max(1, n), *shape)).round(6).tolist()


def guess_inputs(client: Any, app: Mapping[str, Any], seed: int = 0) -> list | None:
    """:func:`random_inputs` of the input shape of ``app``'s first linked model that
    declares one (``client`` asks the server); None when none does."""
    for model in app.get("models") or []:
        shape = client.model(model).get("input_shape")
        if shape:
            return random_inputs(shape, seed=seed)
    return None


def _build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="clipper-nb load",
                                description="Send prediction queries to APP and report latency, "
                                            "throughput, SLO attainment and goodput.")
    p.add_argument("app", metavar="APP", help="the application to query (POST <url>/APP/predict)")
    p.add_argument("--url", default=os.environ.get("CLIPPER_NB_URL"),
                   help="server base URL (default: $CLIPPER_NB_URL)")
    p.add_argument("--token", default=os.environ.get("CLIPPER_NB_TOKEN"),
                   help="the server's token (default: $CLIPPER_NB_TOKEN); with it the app's SLO and "
                        "input shape are read from the server")
    shape = p.add_mutually_exclusive_group()
    shape.add_argument("--qps", type=float, help="open loop: Poisson arrivals at this rate")
    shape.add_argument("--concurrency", type=int, help="closed loop: queries in flight (default 8)")
    p.add_argument("--duration", type=parse_duration, default=10.0, help="e.g. 30s, 2m (default 10s)")
    p.add_argument("--max-requests", type=int, help="stop after this many requests (default: only --duration)")
    p.add_argument("--batch-size", type=int, help="rows per request (sends input_batch)")
    p.add_argument("--slo", type=parse_ms, help="latency objective, e.g. 20ms "
                                                "(default: the app's, read with --token)")
    p.add_argument("--context", help="selection context sent with every query")
    p.add_argument("--timeout", type=parse_duration, default=30.0, help="per request (default 30s)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the random inputs and of the open loop's arrivals (default 0)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--input", help="one input as JSON, e.g. '[1.0, 2.0]'")
    src.add_argument("--input-file", help="a JSON file holding a list of inputs")
    src.add_argument("--features", type=int, metavar="D",
                     help="random float vectors of dimension D (default, with --token: the app's model's)")
    p.add_argument("--distinct", type=int, default=None,
                   help="how many random vectors --features cycles through; repeats hit the prediction "
                        f"cache (default: {DISTINCT_FLOATS:,} floats' worth, at least 1,024 vectors, so a "
                        "load exercises the batcher, not the cache)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--quiet", action="store_true", help="no live progress line")
    return p


def _load_inputs(args: argparse.Namespace) -> list[Any]:
    if args.input is not None:
        return [json.loads(args.input)]
    if args.input_file is not None:
        with open(args.input_file, encoding="utf-8") as f:
            data = json.load(f)
        if not isinstance(data, list) or not data:
            raise ValueError(f"{args.input_file} must hold a non-empty JSON list of inputs")
        return data
    features = args.features if args.features is not None else _fetch_features(args.url, args.app, args.token)
    if features is not None:
        return random_inputs((features,), args.distinct, args.seed)
    raise ValueError("say what to send: --input JSON, --input-file F.json or --features D "
                     "(or give --token, and the model's feature count is read from the server)")


def _fetch_features(url: str, app: str, token: str | None) -> int | None:
    """The feature count of ``app``'s first linked model that declares an input shape."""
    if not token:
        return None
    get = lambda path: json.loads(urllib.request.urlopen(urllib.request.Request(  # noqa: E731
        f"{url.rstrip('/')}/{path}", headers={"Authorization": f"token {token}"}), timeout=5).read())
    try:
        for model in get(f"api/apps/{app}").get("models") or []:
            shape = get(f"api/models/{model}").get("input_shape")
            if shape and len(shape) == 1:
                return int(shape[0])
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        pass  # the caller then asks for --features
    return None


def cli_main(argv: list[str] | None = None) -> int:
    """``clipper-nb load APP --url URL ...``: run load, print the summary; 0 on success.

    ``argv`` holds the arguments after ``load`` (a leading ``load`` is tolerated).
    Exits 1 when every request failed, 2 on bad arguments.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) >= 2 and argv[0] == "load" and not argv[1].startswith("-"):
        argv = argv[1:]
    parser = _build_parser()
    args = parser.parse_args(argv)
    if not args.url:
        parser.error("--url is required (or set CLIPPER_NB_URL)")
    try:
        inputs = _load_inputs(args)
    except (OSError, ValueError) as exc:
        parser.error(str(exc))
    slo = args.slo
    if slo is None and args.token:
        slo = _fetch_slo_ms(args.url, args.app, args.token)

    def show(p: dict) -> None:
        sys.stderr.write(f"\r{p['elapsed_s']:6.1f} s  {p['requests']:8d} requests  "
                         f"{p['errors']:6d} errors  {p['qps']:9.1f} q/s  p99 {p['p99_ms']:8.2f} ms ")
        sys.stderr.flush()

    try:
        result = run_load_sync(args.url, args.app, inputs, concurrency=args.concurrency, qps=args.qps,
                               duration_s=args.duration, max_requests=args.max_requests,
                               batch_size=args.batch_size, slo_ms=slo, token=args.token,
                               context=args.context, timeout_s=args.timeout, seed=args.seed,
                               progress=None if args.quiet else show)
    except ValueError as exc:
        parser.error(str(exc))
    if not args.quiet:
        sys.stderr.write("\n")
    print(json.dumps(result.to_dict()) if args.json else result.summary_line())
    return 1 if result.requests and result.errors == result.requests else 0

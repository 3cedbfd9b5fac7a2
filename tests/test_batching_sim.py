"""One replica under Poisson load, simulated (no sleeping): AIMD and delayed batching
as they behave over thousands of batches.

A small discrete-event harness drives the real :class:`AIMDController` and the real
:class:`BatchQueue` (whose delay is :func:`dispatch_time`) with a synthetic model whose batch of ``n`` rows takes ``fixed +
per_row x n`` seconds, times seeded Gaussian noise. Each query is on time when its
answer leaves within the SLO of its arrival; a query the drop rule refuses (the
expected batch latency says it cannot make it) counts as missed. These tests pin the
rules of Clipper NSDI'17 §4.3 as clipper-nb implements them (see the module docstring
of ``clipper_nb.abstraction.batching``). ``benchmarks/sim_aimd.py`` runs the same
harness against the old rules, for the before/after table.

``simulate`` is a pure event loop around the live queue (``SimQueue``, a ``BatchQueue``):
each arrival is its ``put`` at the arrival's time, each finished batch its ``answered``,
the delay its ``next_dispatch`` and each cut its ``_cut``, so delayed batching sees what it
sees live (the arrival rate, the returning callers, and whether they do come back:
``callers_return``). ``Policy(returning=False)`` turns the returning-callers rule off.
``simulate_queue`` drives the same queue through ``get_batch`` and a replica loop shaped
like the live one on a virtual-clock asyncio loop, under a closed loop (``ClosedLoop``:
callers that ask again when answered) or Poisson arrivals (to cross-check ``simulate``).
Both are deterministic for a seed.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import math
import random
import selectors
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest

from clipper_nb.abstraction import batching
from clipper_nb.abstraction.batching import (RATE_WINDOW, AIMDController, BatchQueue, QueuedQuery, arrival_rate,
                                             objective_for_slo)

SLO = 0.020
DELAY = 0.002  # the default batch delay (ClipperNB.batch_delay_ms)
#: ``BatchQueue.next_dispatch`` waits for a returned batch's callers while its average share
#: of callers back within the delay (``callers_return``) is at least this
GATE = 0.5


@dataclass(frozen=True)
class Model:
    """A batch of ``n`` rows takes ``fixed_s + per_row_s x n`` in the model, times noise;
    the round trip adds ``rpc_s`` (frontend and RPC), which the batch size does not change."""

    fixed_s: float
    per_row_s: float
    noise: float = 0.05
    rpc_s: float = 0.0002

    def compute_s(self, n: int, rng: random.Random) -> float:
        return (self.fixed_s + self.per_row_s * n) * max(0.5, rng.gauss(1.0, self.noise))

    def best_size(self, objective_s: float) -> int:
        """The largest batch whose noise-free model time is within ``objective_s``."""
        return max(1, math.floor((objective_s - self.fixed_s) / self.per_row_s + 1e-9))


LARGE_FIXED = Model(0.005, 0.000050)   # the issue's model: 5 ms + 50 us per row
LINEAR = Model(0.0002, 0.000100)       # almost all per-row cost
KERNEL_SVM = Model(0.002, 0.003)       # small best batch: 2 ms + 3 ms per row


class _Nobody:
    """The future of a simulated query: nobody awaits it (``simulate`` records answers itself)."""

    __slots__ = ()

    def done(self) -> bool:
        return False

    def set_result(self, value: object) -> None:
        pass

    def set_exception(self, exc: BaseException) -> None:
        pass

    def cancel(self) -> bool:
        return False


NOBODY = _Nobody()


class SimQueue(BatchQueue):
    """The live queue, recording each cut as ``(cut time, oldest queued arrival, when the
    replica was last free)``. ``returning=False`` turns the returning-callers rule off (its
    ``answered`` then keeps only ``delay_pays``); ``gated=False`` pins ``callers_return`` at 1
    (the rule on for every batch, as before the queue measured whether callers come back)."""

    def __init__(self, clock: Callable[[], float], returning: bool = True,
                 on_expired: Callable[[QueuedQuery], None] | None = None, gated: bool = True) -> None:
        super().__init__(on_expired, clock=clock)
        self.rule = returning
        self.gated = gated
        self.freed_at = -math.inf
        self.cuts: list[tuple[float, float, float]] = []

    def answered(self, n: int, delay_pays: bool = True) -> None:
        self.freed_at = self.clock()
        if self.rule:
            super().answered(n, delay_pays)
            if not self.gated:
                self.callers_return = 1.0
        else:
            self.delay_pays = delay_pays

    @property
    def head(self) -> QueuedQuery:
        """The oldest queued query (no retries here: the queue is in arrival order)."""
        return self._items[0]

    def _cut(self, max_size: int, expected_latency_s: float, now: float | None = None) -> list[QueuedQuery]:
        if self._items:
            self.cuts.append((self.clock(), self._items[0].arrival, self.freed_at))
        return super()._cut(max_size, expected_latency_s, now)


class Policy:
    """The batching rules the replica follows: clipper-nb's, by default.

    ``objective_s`` and ``fixed`` configure the real controller; ``dispatch`` is the real
    delayed-batching decision (``BatchQueue.next_dispatch``). ``returning=False`` turns the
    returning-callers rule off (the queue is never told of a returned batch: the rate rule
    alone, as before that rule); ``gated = False`` applies it whether or not callers come
    back (``SimQueue``). Subclasses (here and in benchmarks/sim_aimd.py) swap in other rules.
    """

    returning = True
    gated = True

    def __init__(self, slo_s: float, delay_s: float, fixed: int | None = None, returning: bool = True) -> None:
        self.delay_s = delay_s
        self.returning = returning
        self.ctl = AIMDController(objective_for_slo(slo_s, delay_s), fixed=fixed, cap=4)

    def limit(self) -> int:
        return self.ctl.limit()

    def objective(self) -> float:
        return self.ctl.objective()

    def observe(self, n: int, latency_s: float, compute_s: float) -> None:
        self.ctl.observe(n, latency_s, compute_s)

    def expected(self, idle_s: float) -> float:
        return self.ctl.expected_latency_s(idle_s)

    def dispatch(self, now: float, queue: SimQueue, looked_at: float, expected: float) -> float:
        """When to cut, if nothing arrives first: ``queue`` is the live queue, ``looked_at``
        when the replica started this wait (the legacy rule's starting point)."""
        return queue.next_dispatch(now, self.limit(), self.delay_s, expected)


class PaperDelay(Policy):
    """The paper's delayed batching: wait ``delay_s`` from the first query's arrival
    unless the batch fills (no rate estimate, no deadline cut)."""

    def dispatch(self, now, queue, looked_at, expected):
        if len(queue) >= self.limit():
            return now
        return max(now, queue.head.arrival + self.delay_s)


@dataclass
class Result:
    """What one simulated run measured (queries arriving after the warm-up only)."""

    window_s: float
    queries: int = 0
    on_time: int = 0
    late: int = 0      # put in a batch, answered after the deadline
    dropped: int = 0   # refused by the drop rule
    latencies: list[float] = field(default_factory=list)
    #: one row per batch after the warm-up: (size, model time, over the objective, limit before, limit after)
    batches: list[tuple[int, float, bool, int, int]] = field(default_factory=list)
    #: batches after the warm-up after whose answer the queue waits for returning callers
    #: (``callers_return >= GATE``: the rule is on; off, ``callers_return`` stays 1)
    gated_open: int = 0

    @property
    def attainment(self) -> float:
        return self.on_time / max(1, self.queries)

    @property
    def goodput(self) -> float:
        return self.on_time / self.window_s

    @property
    def gate_open(self) -> float:
        """The share of batches after which the returning-callers rule applied."""
        return self.gated_open / max(1, len(self.batches))

    @property
    def late_fraction(self) -> float:
        return self.late / max(1, self.on_time + self.late)

    @property
    def over_fraction(self) -> float:
        return sum(1 for b in self.batches if b[2]) / max(1, len(self.batches))

    def p(self, q: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else math.inf

    def mean_limit(self) -> float:
        return sum(b[3] for b in self.batches) / max(1, len(self.batches))

    def mean_batch(self) -> float:
        return sum(b[0] for b in self.batches) / max(1, len(self.batches))

    def record(self, arrival: float, deadline: float, end: float) -> None:
        """A query that arrived at ``arrival`` was answered at ``end``."""
        self.latencies.append(end - arrival)
        if end <= deadline:
            self.on_time += 1
        else:
            self.late += 1


class _Replica:
    """The simulation's state: arrivals not yet seen, the live queue, the clock."""

    def __init__(self, arrivals: list[float], policy: Policy, slo_s: float, warmup_s: float, end_s: float) -> None:
        self.pending = collections.deque(arrivals)
        self.slo_s, self.warmup_s = slo_s, warmup_s
        self.now = 0.0
        self.result = Result(end_s - warmup_s)
        self.queue = SimQueue(lambda: self.now, returning=policy.returning, on_expired=self.expired,
                              gated=policy.gated)

    def expired(self, q: QueuedQuery) -> None:
        self.result.dropped += q.arrival >= self.warmup_s

    def advance(self, t: float) -> None:
        """Move the clock to ``t``, putting each arrival on the way at its own time."""
        while self.pending and self.pending[0] <= t:
            self.admit_next()
        self.now = max(self.now, t)

    def admit_next(self) -> None:
        t = self.now = self.pending.popleft()
        self.queue.put(QueuedQuery(None, NOBODY, t + self.slo_s))
        if t >= self.warmup_s:
            self.result.queries += 1

    def wait_for_cut(self, policy: Policy, expected: float) -> None:
        """Delayed batching: move the clock to the cut, admitting arrivals on the way and
        asking the rule again after each (as ``BatchQueue._delay`` does)."""
        looked_at = self.now
        while True:
            at = policy.dispatch(self.now, self.queue, looked_at, expected)
            if at <= self.now:
                return
            if self.pending and self.pending[0] <= at:
                self.admit_next()
                if self.now >= at - batching._TIMER_SLACK_S:
                    return  # BatchQueue._delay: close enough to the cut, not asked again
                continue
            self.now = at
            return

    def cut(self, limit: int, expected: float) -> list[QueuedQuery]:
        """``BatchQueue.get_batch``'s cut: expired queries are dropped (``expired``)."""
        batch = self.queue._cut(limit, expected, self.now)
        if batch:
            self.queue.caught_up = False
        return batch

    def answer(self, batch: list[QueuedQuery], end: float) -> None:
        for q in batch:
            if q.arrival >= self.warmup_s:
                self.result.record(q.arrival, q.deadline, end)


def poisson(rate: float, end_s: float, rng: random.Random) -> list[float]:
    times, t = [], 0.0
    while True:
        t += rng.expovariate(rate)
        if t >= end_s:
            return times
        times.append(t)


def simulate(model: Model, policy: Policy, rate: float, slo_s: float = SLO, queries: int = 10_000,
             warmup_s: float = 0.5, seed: int = 1, end_s: float | None = None) -> Result:
    """Run one replica on Poisson arrivals at ``rate`` q/s for about ``queries`` queries
    after ``warmup_s`` (at least 1 s; or until ``end_s``), then until its queue is
    empty; measure the queries that arrive after the warm-up."""
    if end_s is None:
        end_s = warmup_s + max(1.0, queries / rate)
    rng = random.Random(seed)
    sim = _Replica(poisson(rate, end_s, rng), policy, slo_s, warmup_s, end_s)
    last_end = 0.0
    while sim.pending or sim.queue:
        sim.advance(sim.now)
        if not sim.queue:
            sim.advance(sim.pending[0])
            continue
        expected = policy.expected(sim.now - last_end)
        sim.wait_for_cut(policy, expected)
        sim.advance(sim.now)
        limit = policy.limit()
        batch = sim.cut(limit, expected)
        if not batch:
            continue
        compute = model.compute_s(len(batch), rng)
        sim.advance(sim.now + compute + model.rpc_s)  # puts while the batch ran: before answered()
        last_end = sim.now
        policy.observe(len(batch), compute + model.rpc_s, compute)
        sim.answer(batch, sim.now)
        sim.queue.answered(len(batch), delay_pays=compute > model.rpc_s)
        if batch[0].arrival >= warmup_s:
            sim.result.batches.append((len(batch), compute, compute > policy.objective(), limit, policy.limit()))
            sim.result.gated_open += sim.queue.callers_return >= GATE
    return sim.result


def capacity(model: Model, make: Callable[[], Policy], slo_s: float = SLO, lo: float = 20.0,
             hi: float = 40_000.0, iters: int = 14, target: float = 0.99) -> float:
    """The highest Poisson rate (bisection, geometric) at which ``target`` of the
    queries are answered within the SLO."""
    if simulate(model, make(), lo, slo_s).attainment < target:
        return 0.0
    for _ in range(iters):
        mid = math.sqrt(lo * hi)
        if simulate(model, make(), mid, slo_s).attainment >= target:
            lo = mid
        else:
            hi = mid
    return lo


@functools.cache
def best_fixed(model: Model, slo_s: float = SLO, delay_s: float = DELAY, returning: bool = True) -> tuple[int, float]:
    """The fixed batch size with the highest capacity, and that capacity (a sweep)."""
    top = model.best_size(slo_s)
    sizes = sorted({max(1, round(top * f)) for f in (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)})
    results = [(capacity(model, lambda n=n: Policy(slo_s, delay_s, fixed=n, returning=returning), slo_s), n)
               for n in sizes]
    cap, n = max(results)
    return n, cap


OVERLOAD = {LARGE_FIXED: 15_000.0, LINEAR: 15_000.0, KERNEL_SVM: 400.0}   # 1.5-3x what each can serve
MODERATE = {LARGE_FIXED: 3_000.0, LINEAR: 3_000.0, KERNEL_SVM: 45.0}      # about a third of capacity


# ---- the live queue on a virtual clock: closed loops (and open loops, to cross-check) ---------
#
# ``simulate_queue`` drives the real ``BatchQueue`` (``get_batch``, ``put``, ``answered``:
# the returning-callers rule exactly as the live queue runs it) in an asyncio loop whose clock
# jumps to the next timer instead of sleeping, with one replica loop shaped like
# ``replica_loop.ReplicaLoops._loop`` (get a batch, run it, observe, answer, ``answered``).

SLEEP = Model(0.005, 0.000020, rpc_s=0.0003)   # the live benchmarks' sleep model, ~0.3 ms round trip


@dataclass(frozen=True)
class ClosedLoop:
    """``clients`` callers, each sending a request of ``rows`` queries (one put each) and
    its next one ``rtt_s`` (the answer's way back and the next request's way in) plus an
    exponential think time of mean ``think_s`` after all of its rows were answered. They
    start at seeded random times within ``stagger_s``."""

    clients: int
    rows: int = 1
    think_s: float = 0.0
    rtt_s: float = 0.0003
    stagger_s: float = 0.005

    @property
    def in_flight(self) -> int:
        return self.clients * self.rows


class _VirtualSelector(selectors.DefaultSelector):
    """Never blocks: a wait of ``timeout`` moves the virtual clock on by it."""

    now = 0.0

    def select(self, timeout: float | None = None):
        if timeout is None:
            raise RuntimeError("the simulation would wait forever")
        self.now += timeout
        return super().select(0)


class _VirtualLoop(asyncio.SelectorEventLoop):
    def __init__(self) -> None:
        self._clock = _VirtualSelector()
        super().__init__(self._clock)

    def time(self) -> float:
        return self._clock.now


async def _serve(queue: SimQueue, policy: Policy, model: Model, rng: random.Random, result: Result,
                 warmup_s: float) -> None:
    """One replica's loop, as ``ReplicaLoops._loop``, ``_call`` and ``_answer`` run it."""
    loop = asyncio.get_running_loop()
    last_end = 0.0

    def expected() -> float:
        return policy.expected(loop.time() - last_end)

    while True:
        limit = policy.limit()
        items = await queue.get_batch(limit, policy.delay_s, expected)
        compute = model.compute_s(len(items), rng)
        await asyncio.sleep(compute + model.rpc_s)
        last_end = loop.time()
        policy.observe(len(items), compute + model.rpc_s, compute)
        for q in items:
            q.future.set_result(None)
            if q.arrival >= warmup_s:
                result.record(q.arrival, q.deadline, last_end)
        queue.answered(len(items), delay_pays=compute > model.rpc_s)
        if items[0].arrival >= warmup_s:
            result.batches.append((len(items), compute, compute > policy.objective(), limit, policy.limit()))
            result.gated_open += queue.callers_return >= GATE


async def _client(queue: SimQueue, load: ClosedLoop, slo_s: float, end_s: float, rng: random.Random,
                  result: Result, warmup_s: float) -> None:
    """One closed-loop caller: a request, all of its answers, ``rtt_s`` + think time, again."""
    loop = asyncio.get_running_loop()
    await asyncio.sleep(rng.uniform(0.0, load.stagger_s))
    while (now := loop.time()) < end_s:
        futures = [loop.create_future() for _ in range(load.rows)]
        for f in futures:
            queue.put(QueuedQuery(0.0, f, now + slo_s))
        result.queries += load.rows if now >= warmup_s else 0
        await asyncio.gather(*futures, return_exceptions=True)
        await asyncio.sleep(load.rtt_s + (rng.expovariate(1.0 / load.think_s) if load.think_s > 0 else 0.0))


async def _open_loop(queue: SimQueue, times: list[float], slo_s: float, result: Result, warmup_s: float) -> None:
    """Poisson arrivals, one query each, then every answer."""
    loop = asyncio.get_running_loop()
    futures = []
    for t in times:
        await asyncio.sleep(t - loop.time())
        futures.append(loop.create_future())
        queue.put(QueuedQuery(0.0, futures[-1], t + slo_s))
        result.queries += t >= warmup_s
    await asyncio.gather(*futures, return_exceptions=True)


async def _run_queue(model: Model, policy: Policy, load: ClosedLoop | float, slo_s: float, end_s: float,
                     warmup_s: float, seed: int) -> tuple[Result, SimQueue]:
    loop = asyncio.get_running_loop()
    result = Result(end_s - warmup_s)

    def expired(q: QueuedQuery) -> None:
        result.dropped += q.arrival >= warmup_s

    queue = SimQueue(loop.time, returning=policy.returning, on_expired=expired, gated=policy.gated)
    rng = random.Random(seed + 1000)
    replica = loop.create_task(_serve(queue, policy, model, random.Random(seed), result, warmup_s))
    if isinstance(load, ClosedLoop):
        await asyncio.gather(*(_client(queue, load, slo_s, end_s, rng, result, warmup_s) for _ in range(load.clients)))
    else:
        await _open_loop(queue, poisson(load, end_s, rng), slo_s, result, warmup_s)
    replica.cancel()
    await asyncio.gather(replica, return_exceptions=True)
    return result, queue


def simulate_queue(model: Model, policy: Policy, load: ClosedLoop | float, slo_s: float = SLO,
                   seconds: float = 2.0, warmup_s: float = 0.5, seed: int = 1) -> tuple[Result, SimQueue]:
    """Run the live ``BatchQueue`` and one replica under ``load`` (a closed loop, or a
    Poisson rate in q/s) for ``warmup_s + seconds`` of virtual time, then until every
    query is answered; measure the queries sent after the warm-up (and return the queue,
    whose ``cuts`` say when each batch left)."""
    loop = _VirtualLoop()
    try:
        return loop.run_until_complete(_run_queue(model, policy, load, slo_s, warmup_s + seconds, warmup_s, seed))
    finally:
        loop.close()


def extra_waits(queue: SimQueue, delay_s: float, warmup_s: float = 0.5) -> tuple[list[float], list[float]]:
    """Per cut after the warm-up: how long past ``oldest arrival + delay`` the batch left,
    and how long past both that and the moment the replica was free (what delayed
    batching itself held it; the rest is the wait for the batch in progress)."""
    cuts = [c for c in queue.cuts if c[1] >= warmup_s]
    return ([cut - (oldest + delay_s) for cut, oldest, _ in cuts],
            [cut - max(oldest + delay_s, freed) for cut, oldest, freed in cuts])


@functools.cache
def best_fixed_closed(model: Model, load: ClosedLoop, sizes: tuple[int, ...] = (), slo_s: float = SLO,
                      delay_s: float = DELAY) -> tuple[int, bool, float]:
    """The fixed batch size, and rule (returning callers on or off), with the highest
    goodput under ``load``: ``(size, rule, goodput)``. ``sizes``: those tried (default:
    1/2, 3/4 and all of the queries in flight: a larger one is never full)."""
    n = load.in_flight
    sizes = sizes or tuple(sorted({max(1, n // 2), max(1, 3 * n // 4), n}))
    runs = [(simulate_queue(model, Policy(slo_s, delay_s, fixed=k, returning=rule), load, slo_s)[0].goodput, k, rule)
            for k in sizes for rule in (True, False)]
    goodput, k, rule = max(runs)
    return k, rule, goodput


MODELS = [pytest.param(LARGE_FIXED, id="large-fixed"), pytest.param(LINEAR, id="linear"),
          pytest.param(KERNEL_SVM, id="svm")]
RULES = [pytest.param(True, id="live-rules"), pytest.param(False, id="rate-rule")]


# ---- AIMD ------------------------------------------------------------------------------------


def test_objective_and_model_are_what_the_issue_measured():
    """The harness's premises: half the SLO is 10 ms, the best batch within it is 100
    rows for 5 ms + 50 us/row and 2 rows for the kernel-SVM-like model."""
    assert objective_for_slo(SLO, DELAY) == pytest.approx(0.010)
    assert LARGE_FIXED.best_size(0.010) == 100 and KERNEL_SVM.best_size(0.010) == 2


def test_a_large_fixed_cost_model_reaches_the_capacity_of_the_best_fixed_batch():
    """5 ms + 50 us/row at a 20 ms SLO: AIMD serves at least 95% of the rate the best
    fixed batch size serves with 99% of queries on time (8,400 against 8,542 q/s, 0.98; it
    served 60% before: 5.2k against 8.5k q/s, its objective 7 ms, a third of the SLO)."""
    n, best = best_fixed(LARGE_FIXED)
    aimd = capacity(LARGE_FIXED, lambda: Policy(SLO, DELAY))
    assert aimd >= 0.95 * best, (aimd, best, n)


@pytest.mark.parametrize(("model", "returning"), [
    pytest.param(LINEAR, True, id="linear-live-rules"),
    pytest.param(LINEAR, False, id="linear-rate-rule"),
    pytest.param(KERNEL_SVM, True, id="svm-live-rules"),
])
def test_aimd_reaches_the_capacity_of_the_best_fixed_batch(model, returning):
    """Measured, AIMD against the best fixed size under the same rules: the live rules
    9,490 against 9,490 q/s (linear), 108 against 110 (SVM); the rate rule alone 9,512
    against 9,548 (linear; SVM 110 against 112, not run: it takes 6 s). Before the queue measured whether callers come back
    (the rule applied after every batch) the linear model fell to 8,742 against 9,433
    (0.93): the rule held each batch up to the delay for callers an open loop does not have."""
    n, best = best_fixed(model, returning=returning)
    aimd = capacity(model, lambda: Policy(SLO, DELAY, returning=returning))
    assert aimd >= 0.95 * best, (aimd, best, n)


def test_a_5ms_delay_does_not_collapse_the_cap():
    """With a 5 ms delay the old objective (0.45 x 20 - 5 = 4 ms) fell below the model's
    single row (5.05 ms): the cap stuck at 1 and 91 q/s got through. The delay no longer
    comes off the objective, so the cap and the goodput match those of a 2 ms delay."""
    assert objective_for_slo(SLO, 0.005) == pytest.approx(0.010)
    slow = simulate(LARGE_FIXED, Policy(SLO, 0.005), OVERLOAD[LARGE_FIXED])
    usual = simulate(LARGE_FIXED, Policy(SLO, DELAY), OVERLOAD[LARGE_FIXED])
    assert slow.mean_limit() >= 0.8 * LARGE_FIXED.best_size(0.010), slow.mean_limit()
    assert slow.goodput >= 0.95 * usual.goodput >= 8_000, (slow.goodput, usual.goodput)
    assert capacity(LARGE_FIXED, lambda: Policy(SLO, 0.005)) >= 8_000


@pytest.mark.parametrize("rate", [100.0, OVERLOAD[KERNEL_SVM], 15_000.0])
def test_a_model_whose_best_batch_is_small_rarely_goes_over_the_objective(rate):
    """2 ms + 3 ms/row, a 10 ms objective: 2 rows fit (8 ms), 3 do not (11 ms). The fixed
    step of 4 swung the cap 1 <-> 5 with 92% of batches over; now the cap stays at 2
    and tries 3 once in ``PROBE_EVERY`` full batches."""
    r = simulate(KERNEL_SVM, Policy(SLO, DELAY), rate, end_s=10.0)
    assert len(r.batches) > 500
    assert r.over_fraction < 0.10, r.over_fraction
    assert 1.8 <= r.mean_limit() <= 2.3 or rate == 100.0, r.mean_limit()


@pytest.mark.parametrize("model", [LARGE_FIXED, LINEAR, KERNEL_SVM], ids=["large-fixed", "linear", "svm"])
@pytest.mark.parametrize("load", ["moderate", "overload"])
def test_every_backoff_lowers_the_integer_cap(model, load):
    rate = (MODERATE if load == "moderate" else OVERLOAD)[model]
    r = simulate(model, Policy(SLO, DELAY), rate)
    backoffs = [(before, after) for _, _, over, before, after in r.batches if over]
    assert backoffs or load == "moderate"
    assert all(after < before or before == 1 for before, after in backoffs), backoffs


@pytest.mark.parametrize("model", [LARGE_FIXED, LINEAR, KERNEL_SVM], ids=["large-fixed", "linear", "svm"])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_few_queries_admitted_at_overload_finish_late(model, seed):
    """The drop estimate is a high quantile of recent batches, not the fastest: at
    overload every query of a batch sits at the deadline edge, and the fastest of 8 let
    6% (here 18-23%) of them finish late."""
    r = simulate(model, Policy(SLO, DELAY), OVERLOAD[model], seed=seed)
    assert r.late_fraction < 0.02, r.late_fraction
    assert r.goodput >= (8_500 if model is not KERNEL_SVM else 200), r.goodput


def test_the_svm_at_extreme_overload_is_late_rarely():
    """At 15k q/s against ~120 q/s of capacity each batch's queries all sit at the deadline
    edge: a probe of a larger batch must be expected to take longer than the recent ones."""
    r = simulate(KERNEL_SVM, Policy(SLO, DELAY), 15_000.0, queries=100_000)
    assert r.late_fraction < 0.02, r.late_fraction


# ---- delayed batching ------------------------------------------------------------------------


def test_a_lone_query_after_an_idle_period_does_not_wait_for_the_delay():
    """At 5 q/s with a 50 ms delay the paper's rule adds the delay to every query."""
    model = Model(0.001, 0.0001, noise=0.0, rpc_s=0.0)
    ours = simulate(model, Policy(1.0, 0.050), 5.0, slo_s=1.0, queries=200)
    paper = simulate(model, PaperDelay(1.0, 0.050), 5.0, slo_s=1.0, queries=200)
    assert ours.p(0.99) < 0.005 and paper.p(0.5) > 0.050, (ours.p(0.99), paper.p(0.5))


@pytest.mark.parametrize(("model", "returning"), [
    pytest.param(LARGE_FIXED, True, id="large-fixed-live-rules"),
    pytest.param(KERNEL_SVM, True, id="svm-live-rules"),
    pytest.param(LARGE_FIXED, False, id="large-fixed-rate-rule"),
    pytest.param(LINEAR, False, id="linear-rate-rule"),
    pytest.param(KERNEL_SVM, False, id="svm-rate-rule"),
])
def test_at_moderate_load_p99_is_no_worse_than_the_papers_rule(model, returning):
    """The delay runs from the oldest arrival (as in the paper), ends early when no
    further query is expected: p99 at moderate load is at most the paper's rule's
    (the old rule, counting from when the replica looked, gave 5.5 ms for 3.6 ms).
    Measured against the paper's 12.74, 3.49, 13.65 ms: the rate rule 12.72, 3.09, 13.19;
    the live rules 12.91 and 13.19 ms (15.34 and 14.73 before the queue measured whether
    callers come back). The live rules with the linear model (5.46 ms) are not here: the
    returning-callers rule still holds its batches
    (``test_where_callers_seem_to_come_back_open_loop_p99_rises_at_most``)."""
    ours = simulate(model, Policy(SLO, DELAY, returning=returning), MODERATE[model]).p(0.99)
    paper = simulate(model, PaperDelay(SLO, DELAY), MODERATE[model]).p(0.99)
    assert ours <= 1.02 * paper, (ours, paper)


def test_the_delay_still_batches_a_linear_model_at_moderate_load():
    """... and it is still a delay: with it, batches of the linear model are larger than
    without (the point of delayed batching), at a p99 within the paper's."""
    with_delay = simulate(LINEAR, Policy(SLO, DELAY), MODERATE[LINEAR])
    without = simulate(LINEAR, Policy(SLO, 0.0), MODERATE[LINEAR])
    mean = lambda r: sum(b[0] for b in r.batches) / len(r.batches)
    assert mean(with_delay) >= 2 * mean(without), (mean(with_delay), mean(without))


def test_the_rate_estimate_follows_the_load():
    rng = random.Random(3)
    times = poisson(2_000.0, 1.0, rng)
    window = collections.deque(times, maxlen=RATE_WINDOW)
    assert 1_400 <= arrival_rate(window, times[-1]) <= 2_800
    assert arrival_rate(window, times[-1] + 1.0) < 40  # a second of silence: the rate is gone


# ---- the live queue: returning callers ---------------------------------------------------------

CLOSED_LOOPS = [ClosedLoop(2, rows=8), ClosedLoop(16)]
CLOSED_IDS = ["2x8", "16x1"]


def test_the_live_queue_harness_is_deterministic():
    runs = [simulate_queue(SLEEP, Policy(SLO, DELAY), ClosedLoop(16, think_s=0.001), seconds=0.5) for _ in range(2)]
    assert runs[0][0] == runs[1][0] and runs[0][1].cuts == runs[1][1].cuts


@pytest.mark.parametrize("load", CLOSED_LOOPS, ids=CLOSED_IDS)
def test_in_a_closed_loop_returning_callers_keep_batches_full(load):
    """2 callers of 8-row requests, or 16 of one row, on the sleep model (5 ms + 20 us/row):
    with the rule AIMD serves about what the best fixed batch size does (measured 1.00)
    in batches of all 16 queries in flight; without it the queries split into two half
    batches that alternate for good (8 rows, 0.54 of the goodput), as measured live. Every
    caller is back within the delay: the queue keeps the rule after every batch."""
    _, _, best = best_fixed_closed(SLEEP, load)
    live = simulate_queue(SLEEP, Policy(SLO, DELAY), load)[0]
    off = simulate_queue(SLEEP, Policy(SLO, DELAY, returning=False), load)[0]
    assert live.gate_open == 1.0, live.gate_open
    assert live.goodput >= 0.95 * best, (live.goodput, best)
    assert live.mean_batch() >= 0.95 * load.in_flight, live.mean_batch()
    assert live.attainment >= 0.999 and live.p(0.99) <= SLO / 2, (live.attainment, live.p(0.99))
    assert off.mean_batch() <= 0.6 * load.in_flight and off.goodput <= 0.7 * live.goodput, \
        (off.mean_batch(), off.goodput)


def test_returning_callers_pay_with_think_time_too():
    """16 callers that think 1 ms on average (exponential) before their next query: some
    come back after the delay, so the rule holds most batches the whole delay, and still
    serves more than the rate rule alone (measured 1,798 against 1,454 q/s, as before the
    queue measured whether callers come back). About 60% of them are back within the delay
    (``callers_return`` ends at 0.63): the queue keeps the rule after every batch."""
    load = ClosedLoop(16, think_s=0.001)
    live, queue = simulate_queue(SLEEP, Policy(SLO, DELAY), load)
    assert live.gate_open == 1.0 and queue.callers_return >= GATE, (live.gate_open, queue.callers_return)
    off = simulate_queue(SLEEP, Policy(SLO, DELAY, returning=False), load)[0]
    assert live.goodput >= 1.15 * off.goodput, (live.goodput, off.goodput)
    assert live.attainment >= 0.999, live.attainment


@pytest.mark.parametrize("load", [*CLOSED_LOOPS, ClosedLoop(16, think_s=0.001)], ids=[*CLOSED_IDS, "16x1-think"])
def test_returning_callers_hold_a_batch_at_most_the_delay(load):
    """Without think time no batch leaves after its oldest query's arrival + the delay.
    With it, a query that arrived while a batch ran waits for that batch, then up to the
    delay more (past ``oldest arrival + delay`` by up to 5.9 ms of a 2 ms delay, measured:
    the audit's bound does not hold); but what delayed batching itself holds a batch, past
    both ``oldest arrival + delay`` and the moment the replica was free, is never more than
    the delay, and without the rule it is nothing."""
    _, queue = simulate_queue(SLEEP, Policy(SLO, DELAY), load)
    over, held = extra_waits(queue, DELAY)
    assert max(held) <= DELAY + 1e-9, max(held)
    if not load.think_s:
        assert max(over) <= 1e-9, max(over)
    _, queue = simulate_queue(SLEEP, Policy(SLO, DELAY, returning=False), load)
    assert max(extra_waits(queue, DELAY)[1]) <= 1e-9


@pytest.mark.parametrize("returning", RULES)
@pytest.mark.parametrize("model", MODELS)
def test_the_open_loop_harness_mirrors_the_live_queue(model, returning):
    """``simulate`` (a pure event loop) and ``simulate_queue`` (``get_batch`` on a virtual
    asyncio loop) agree on Poisson arrivals at moderate load: p99 within 5%, mean batch
    within 10%, and the share of batches after which the returning-callers rule applied
    within 0.05 (measured, live rules: 0.7% / 0.6%, 98% / 97%, 0.1% / 0.1%)."""
    rate = MODERATE[model]
    pure = simulate(model, Policy(SLO, DELAY, returning=returning), rate)
    live = simulate_queue(model, Policy(SLO, DELAY, returning=returning), rate, seconds=10_000 / rate)[0]
    assert live.p(0.99) == pytest.approx(pure.p(0.99), rel=0.05), (live.p(0.99), pure.p(0.99))
    assert live.mean_batch() == pytest.approx(pure.mean_batch(), rel=0.10), (live.mean_batch(), pure.mean_batch())
    assert live.gate_open == pytest.approx(pure.gate_open, abs=0.05), (live.gate_open, pure.gate_open)


@pytest.mark.parametrize("model", [pytest.param(LARGE_FIXED, id="large-fixed"), pytest.param(KERNEL_SVM, id="svm"),
                                   pytest.param(SLEEP, id="sleep")])
def test_the_returning_rule_leaves_open_loop_p99_alone(model):
    """Open-loop Poisson arrivals at moderate load have no callers that come back: about a
    third of a batch arrives within the delay after it, the queue stops waiting for them
    (the rule applies after 1% of batches or none) and p99 is within 2% of the rate rule
    alone's: 12.95 against 12.87 ms (5 ms + 50 us/row, 3k q/s), 12.53 against 12.53 (SVM,
    45 q/s), 11.73 against 11.60 (sleep model, 3k q/s). Applied after every batch, the rule
    held 90-100% of them the whole delay: p99 15.56, 14.45 and 13.78 ms."""
    rate = MODERATE.get(model, 3_000.0)
    live, queue = simulate_queue(model, Policy(SLO, DELAY), rate, seconds=3.0)
    off = simulate_queue(model, Policy(SLO, DELAY, returning=False), rate, seconds=3.0)[0]
    assert live.gate_open <= 0.05, live.gate_open
    assert live.p(0.99) <= 1.02 * off.p(0.99), (live.p(0.99), off.p(0.99))
    assert max(extra_waits(queue, DELAY)[1]) <= DELAY + 1e-9
    assert live.attainment >= 0.999, live.attainment


@pytest.mark.parametrize(("model", "rate", "bound"), [
    pytest.param(LINEAR, 3_000.0, 1.5, id="linear-3k"),
    pytest.param(LINEAR, 7_000.0, 4.5, id="linear-7k"),
    pytest.param(LARGE_FIXED, 1_000.0, 1.0, id="large-fixed-1k"),
])
def test_where_callers_seem_to_come_back_open_loop_p99_rises_at_most(model, rate, bound):
    """Where the delay brings about as many Poisson arrivals as a batch holds, they pass for
    its callers and the queue keeps waiting for them. The linear model's batches take about
    a millisecond, under the 2 ms delay: at 3k q/s the rule applies after 97% of batches
    and p99 is 5.58 against 3.13 ms (+1.22 delays); at 7k after 49%, 13.47 against 5.32 ms
    (+4.08 delays: held batches grow, and so does the next one's wait). With small batches
    of a slow model the share is noisy: 5 ms + 50 us/row at 1k q/s, 14% and 12.89 against
    11.35 ms (+0.77 delays; also 500 q/s: 12.54 against 11.00). All still on time. Pinned:
    p99 rises at most ``bound`` delays, no batch is held past the delay, nothing is late."""
    live, queue = simulate_queue(model, Policy(SLO, DELAY), rate, seconds=3.0)
    off = simulate_queue(model, Policy(SLO, DELAY, returning=False), rate, seconds=3.0)[0]
    assert live.p(0.99) <= off.p(0.99) + bound * DELAY, (live.p(0.99), off.p(0.99))
    assert max(extra_waits(queue, DELAY)[1]) <= DELAY + 1e-9
    assert live.attainment >= 0.999 and off.attainment >= 0.999, (live.attainment, off.attainment)

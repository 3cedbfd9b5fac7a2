"""AIMD and delayed batching, simulated: clipper-nb's rules against the old ones.

Run by hand (a few seconds, no server)::

    python benchmarks/sim_aimd.py

It drives the discrete-event harness of ``tests/test_batching_sim.py`` (one replica,
Poisson arrivals, a synthetic ``fixed + per_row x n`` model with seeded noise) with

* ``new``: ``clipper_nb.abstraction.batching`` as it is;
* ``legacy``: the rules before the NSDI'17 §4.3 review, copied below *for comparison
  only* (objective ``0.45 x SLO - delay``, a fixed step of 4, ``x 0.9`` backoff, drop
  estimate = the fastest of the last 8 batches, the delay counted from when the replica
  looks at the queue);
* ``new, ungated``: the same, with the returning-callers rule applied after every batch
  (as before the queue measured whether a batch's callers come back, ``callers_return``);
* ``new, no ret.``: the same without the returning-callers rule (the rate rule alone);
* ``paper delay``: the new controller with the paper's delay rule (from the first
  query's arrival, no rate estimate), the reference for p99 at moderate load.

and prints one table: capacity (the highest Poisson rate with 99% of queries on time),
goodput and late share at overload, the cap with a 5 ms delay, and p99 at moderate load.
Then two tables of the live ``BatchQueue`` driven on a virtual clock (``simulate_queue``):
closed loops (callers that send their next request when their answer arrives) and Poisson
arrivals, with the returning-callers rule (gated, as it is; ungated, as it was) and without.
"""

from __future__ import annotations

import collections
import itertools
import os
import sys
from dataclasses import dataclass, field

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))

# tests/ is not a package: the harness is imported after the path is set
from test_batching_sim import (DELAY, KERNEL_SVM, LARGE_FIXED, LINEAR, MODERATE, OVERLOAD, SLEEP, SLO,  # noqa: E402
                               ClosedLoop, Model, PaperDelay, Policy, best_fixed, best_fixed_closed, capacity,
                               extra_waits, simulate, simulate_queue)

# ---- legacy: the old rules, copied verbatim in substance, for comparison only -----------------

LEGACY_SLO_FRACTION = 0.45
LEGACY_STEP = 4.0
LEGACY_RECENT_BATCHES = 8
LEGACY_TIMER_SLACK_S = 0.0002


def legacy_objective_for_slo(slo_s: float, delay_s: float = 0.0) -> float:
    return max(0.0005, slo_s * LEGACY_SLO_FRACTION - delay_s)


@dataclass
class LegacyAIMDController:
    """The old controller: fixed step, x 0.9 backoff, minimum-of-8 drop estimate."""

    objective_s: float
    cap: float = 4.0
    max_cap: int = 4096
    fixed: int | None = None
    history: collections.deque = field(default_factory=lambda: collections.deque(maxlen=256))
    batches: int = 0

    def limit(self) -> int:
        return self.fixed if self.fixed is not None else max(1, min(int(self.cap), self.max_cap))

    def observe(self, size: int, latency_s: float, compute_s: float | None = None) -> None:
        self.batches += 1
        if self.batches > 1:
            self.history.append((size, latency_s))
        if self.fixed is not None:
            return
        signal = latency_s if compute_s is None else compute_s
        if signal > self.objective_s:
            self.cap = max(1.0, self.cap * 0.9)
        elif size >= self.limit():
            self.cap = min(float(self.max_cap), self.cap + LEGACY_STEP)

    def expected_latency_s(self, idle_s: float = 0.0) -> float:
        if idle_s > 1.0 or not self.history:
            return 0.0
        return min(lat for _, lat in itertools.islice(reversed(self.history), LEGACY_RECENT_BATCHES))


class LegacyPolicy(Policy):
    """The old controller and the old delay: from when the replica looks at the queue."""

    def __init__(self, slo_s: float, delay_s: float, fixed: int | None = None) -> None:
        self.delay_s = delay_s
        self.ctl = LegacyAIMDController(legacy_objective_for_slo(slo_s, delay_s), fixed=fixed)

    def objective(self) -> float:
        return self.ctl.objective_s

    def dispatch(self, now, queue, looked_at, expected):
        if len(queue) >= self.limit() or self.delay_s <= 0:
            return now
        until = min(looked_at + self.delay_s, queue.head.deadline - expected - LEGACY_TIMER_SLACK_S)
        return until if until - now > LEGACY_TIMER_SLACK_S else now


# ---- the table ---------------------------------------------------------------------------------

def RateRulePolicy(slo_s: float, delay_s: float, fixed: int | None = None) -> Policy:
    """The new rules without the returning-callers rule (the rate rule alone)."""
    return Policy(slo_s, delay_s, fixed, returning=False)


class UngatedPolicy(Policy):
    """The new rules with the returning-callers rule after every batch, whether or not its
    callers come back (``callers_return`` pinned at 1: the queue before it measured that)."""

    gated = False


POLICIES = {"legacy": LegacyPolicy, "new": Policy, "new, ungated": UngatedPolicy, "new, no ret.": RateRulePolicy,
            "paper delay": PaperDelay}
MODELS = {"5 ms + 50 us/row": LARGE_FIXED, "0.2 ms + 100 us/row": LINEAR, "2 ms + 3 ms/row (SVM)": KERNEL_SVM}


def row(name: str, model: Model, delay_s: float = DELAY) -> dict[str, float]:
    make = POLICIES[name]
    over = simulate(model, make(SLO, delay_s), OVERLOAD[model])
    return {
        "capacity": capacity(model, lambda: make(SLO, delay_s)),
        "goodput": over.goodput,
        "late": over.late_fraction,
        "over_obj": over.over_fraction,
        "cap": over.mean_limit(),
        "p99": simulate(model, make(SLO, delay_s), MODERATE[model]).p(0.99),
        "p99_nodelay": simulate(model, make(SLO, 0.0), MODERATE[model]).p(0.99),
    }


def main() -> None:
    print(f"one replica, Poisson load, SLO {SLO * 1000:g} ms, batch delay {DELAY * 1000:g} ms unless said.\n"
          "capacity: highest rate with 99% of queries within the SLO (drops count as misses); "
          "goodput, late share of admitted queries, batches over the objective and mean cap at overload; "
          "p99 at moderate load (ms)")
    header = (f"{'model (overload, moderate q/s)':<38}{'rules':<15}{'capacity':>9}{'goodput':>9}{'late':>7}"
              f"{'over obj':>9}{'cap':>7}{'p99':>7}{'p99 no delay':>13}")
    print(header)
    print("-" * len(header))
    for label, model in MODELS.items():
        label = f"{label} ({OVERLOAD[model]:g}, {MODERATE[model]:g})"
        for name in POLICIES:
            r = row(name, model)
            print(f"{label:<38}{name:<15}{r['capacity']:>9.0f}{r['goodput']:>9.0f}{r['late']:>7.1%}"
                  f"{r['over_obj']:>9.1%}{r['cap']:>7.1f}{r['p99'] * 1000:>7.2f}{r['p99_nodelay'] * 1000:>13.2f}")
        n, cap = best_fixed(model)
        print(f"{label:<38}{f'best fixed {n}':<15}{cap:>9.0f}")
    print("\n5 ms batch delay, 5 ms + 50 us/row:")
    for name in ("legacy", "new"):
        r = row(name, LARGE_FIXED, delay_s=0.005)
        print(f"  {name:<8} capacity {r['capacity']:>6.0f} q/s, goodput at overload {r['goodput']:>6.0f} q/s, "
              f"mean cap at overload {r['cap']:.1f}")
    closed_loop_table()
    open_loop_live_table()


# ---- the live queue: closed loops, and the returning-callers rule in an open loop ---------------

CLOSED = {"2x8": ClosedLoop(2, rows=8), "16x1": ClosedLoop(16), "16x1, 1 ms think": ClosedLoop(16, think_s=0.001),
          "16x1, 4 ms think": ClosedLoop(16, think_s=0.004), "4x8": ClosedLoop(4, rows=8)}
#: the returning-callers rule: as it is (gated by ``callers_return``), as it was, and off
RULES = {"gated": Policy, "ungated": UngatedPolicy, "rate only": RateRulePolicy}


def quantiles(values: list[float]) -> str:
    """``share  p50/p99/max`` of the positive ``values`` (ms), or ``never``."""
    pos = sorted(v for v in values if v > 1e-9)
    if not pos:
        return f"{'never':>24}"
    at = lambda q: pos[min(len(pos) - 1, int(q * len(pos)))] * 1000  # noqa: E731
    return f"{len(pos) / len(values):>5.0%} {at(0.5):>5.2f}/{at(0.99):>5.2f}/{pos[-1] * 1000:>5.2f}"


def closed_loop_table() -> None:
    print("\nclosed loop, the live BatchQueue on a virtual clock: callers x rows per request, each sending again "
          "0.3 ms after its answer (+ think time); sleep model 5 ms + 20 us/row, SLO 20 ms, delay 2 ms, 2 s.\n"
          "AIMD goodput against the best fixed batch size (gated or no rule); gate: share of batches after which "
          "the returning-callers rule applied (callers_return >= 0.5); past oldest+delay: cuts that left after "
          "their oldest query's arrival + the delay (share, p50/p99/max ms); held: the most delayed batching held "
          "a batch past both that and the moment the replica was free (ms)")
    header = (f"{'load':<18}{'rule':<11}{'goodput':>8}{'batch':>7}{'cap':>6}{'p99':>7}{'/best':>7}{'gate':>6}"
              f"{'past oldest+delay':>26}{'held':>7}")
    print(header)
    print("-" * len(header))
    for label, load in CLOSED.items():
        n, rule, best = best_fixed_closed(SLEEP, load)
        for name, make in RULES.items():
            r, queue = simulate_queue(SLEEP, make(SLO, DELAY), load)
            over, held = extra_waits(queue, DELAY)
            gate = f"{r.gate_open:>6.0%}" if make is not RateRulePolicy else f"{'-':>6}"
            print(f"{label:<18}{name:<11}{r.goodput:>8.0f}{r.mean_batch():>7.1f}"
                  f"{r.mean_limit():>6.1f}{r.p(0.99) * 1000:>7.2f}{r.goodput / best:>7.2f}{gate}{quantiles(over):>26}"
                  f"{max(0.0, max(held)) * 1000:>7.2f}")
        print(f"{label:<18}{'best fixed':<11}{best:>8.0f}{n:>7}{'':>6}{'':>7}{'':>7}{'':>6}  "
              f"({'gated' if rule else 'rate only'})")


#: open-loop rows: moderate load, then where the gate stays (partly) open
OPEN = [("5 ms + 50 us/row", LARGE_FIXED, MODERATE[LARGE_FIXED]), ("0.2 ms + 100 us/row", LINEAR, MODERATE[LINEAR]),
        ("2 ms + 3 ms/row (SVM)", KERNEL_SVM, MODERATE[KERNEL_SVM]), ("5 ms + 20 us/row (sleep)", SLEEP, 3_000.0),
        ("0.2 ms + 100 us/row", LINEAR, 1_000.0), ("0.2 ms + 100 us/row", LINEAR, 7_000.0),
        ("5 ms + 50 us/row", LARGE_FIXED, 1_000.0), ("5 ms + 20 us/row (sleep)", SLEEP, 1_000.0)]


def open_loop_live_table() -> None:
    print("\nopen loop (Poisson) through the live BatchQueue: p99 (ms) and mean batch with the returning-callers rule "
          "gated (as it is), ungated (as it was) and off (rate only); gate: share of batches after which the "
          "gated rule applied; held: share of batches it held past both the oldest arrival + delay and the "
          "moment the replica was free, and the most (ms)")
    header = (f"{'model (q/s)':<34}{'p99 gated':>10}{'ungated':>8}{'rate':>7}{'batch g.':>9}{'ung.':>6}{'rate':>6}"
              f"{'gate':>6}{'held':>6}{'max':>6}")
    print(header)
    print("-" * len(header))
    for label, model, rate in OPEN:
        live, queue = simulate_queue(model, Policy(SLO, DELAY), rate, seconds=10_000 / rate)
        old = simulate_queue(model, UngatedPolicy(SLO, DELAY), rate, seconds=10_000 / rate)[0]
        off = simulate_queue(model, RateRulePolicy(SLO, DELAY), rate, seconds=10_000 / rate)[0]
        held = extra_waits(queue, DELAY)[1]
        share = sum(1 for h in held if h > 1e-9) / max(1, len(held))
        print(f"{f'{label} ({rate:g})':<34}{live.p(0.99) * 1000:>10.2f}{old.p(0.99) * 1000:>8.2f}"
              f"{off.p(0.99) * 1000:>7.2f}{live.mean_batch():>9.1f}{old.mean_batch():>6.1f}{off.mean_batch():>6.1f}"
              f"{live.gate_open:>6.0%}{share:>6.0%}{max(held) * 1000:>6.2f}")


if __name__ == "__main__":
    main()

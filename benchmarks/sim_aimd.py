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
* ``paper delay``: the new controller with the paper's delay rule (from the first
  query's arrival, no rate estimate), the reference for p99 at moderate load.

and prints one table: capacity (the highest Poisson rate with 99% of queries on time),
goodput and late share at overload, the cap with a 5 ms delay, and p99 at moderate load.
"""

from __future__ import annotations

import collections
import itertools
import os
import sys
from dataclasses import dataclass, field

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))

# tests/ is not a package: the harness is imported after the path is set
from test_batching_sim import (DELAY, KERNEL_SVM, LARGE_FIXED, LINEAR, MODERATE, OVERLOAD, SLO, Model,  # noqa: E402
                               PaperDelay, Policy, best_fixed, capacity, simulate)

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

    def dispatch(self, now, queue, arrivals, looked_at, expected):
        if len(queue) >= self.limit() or self.delay_s <= 0:
            return now
        until = min(looked_at + self.delay_s, queue[0][1] - expected - LEGACY_TIMER_SLACK_S)
        return until if until - now > LEGACY_TIMER_SLACK_S else now


# ---- the table ---------------------------------------------------------------------------------

POLICIES = {"legacy": LegacyPolicy, "new": Policy, "paper delay": PaperDelay}
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
    header = (f"{'model (overload, moderate q/s)':<38}{'rules':<13}{'capacity':>9}{'goodput':>9}{'late':>7}"
              f"{'over obj':>9}{'cap':>7}{'p99':>7}{'p99 no delay':>13}")
    print(header)
    print("-" * len(header))
    for label, model in MODELS.items():
        label = f"{label} ({OVERLOAD[model]:g}, {MODERATE[model]:g})"
        for name in POLICIES:
            r = row(name, model)
            print(f"{label:<38}{name:<13}{r['capacity']:>9.0f}{r['goodput']:>9.0f}{r['late']:>7.1%}"
                  f"{r['over_obj']:>9.1%}{r['cap']:>7.1f}{r['p99'] * 1000:>7.2f}{r['p99_nodelay'] * 1000:>13.2f}")
        n, cap = best_fixed(model)
        print(f"{label:<38}{f'best fixed {n}':<13}{cap:>9.0f}")
    print("\n5 ms batch delay, 5 ms + 50 us/row:")
    for name in ("legacy", "new"):
        r = row(name, LARGE_FIXED, delay_s=0.005)
        print(f"  {name:<8} capacity {r['capacity']:>6.0f} q/s, goodput at overload {r['goodput']:>6.0f} q/s, "
              f"mean cap at overload {r['cap']:.1f}")


if __name__ == "__main__":
    main()

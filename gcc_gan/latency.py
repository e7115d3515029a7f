"""The latency budget search: cost model first, then measurements correct it.

A latency budget T is met by a MACs budget. Each round (at most `MAX_ROUNDS`):

1. bisect, in log space, the largest MACs budget whose *corrected* predicted latency
   (cost model x correction) is at most AIM * T, AIM = 0.925 (the middle of [0.85 T, T]);
2. build that candidate (prune and the rest of the pipeline), lower and measure it;
3. stop when 0.85 T <= measured <= T (measured by `statistic`: "steady", the fastest call of
   the timing, what the cost model predicts; or "median"); otherwise set correction =
   measured / predicted of this candidate and go again. A model is never measured twice:
   when the aim lands on one already measured below the window (pruning's channel steps are
   coarse), the next larger model predicted within T itself is tried instead.

The cost model gives the shape of latency against MACs (which layers shrink, alignment,
int8); the measurement fixes its scale on the real device, so a good kernel model needs one
round and a datasheet model two or three. When no round lands in the window, the round with
the largest measured latency <= T is kept; when even the smallest reachable model is slower
than T, `BudgetError` says what was measured.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .measure import Latency, check_statistic, statistic_ms
from .search import BudgetError

AIM = 0.925
WINDOW = 0.85          # measured latency in [WINDOW * T, T] ends the search
MAX_ROUNDS = 4
BISECTION_STEPS = 18   # log-space steps: MACs budget resolution ~ (hi/lo)^(1/2^18)


@dataclass(frozen=True)
class LatencyRound:
    round: int
    budget_macs: int
    macs: int
    predicted_ms: float      # the cost model's raw prediction for this candidate
    corrected_ms: float      # x the correction from the previous rounds: what was aimed at
    measured_ms: float | None          # by the search's statistic: what the verdict read
    measured_median_ms: float | None   # the same timing's median
    correction: float        # the correction factor this round used


@dataclass(frozen=True)
class LatencySearch:
    budget_latency_ms: float
    rounds: tuple[LatencyRound, ...]
    chosen: int              # index of the round whose model is returned
    met: bool                # the chosen round's measured latency <= T
    in_window: bool          # ... and >= 0.85 T
    measured: bool           # False: no measurement backend, the cost model decided alone
    statistic: str = "steady"   # what measured_ms is: gcc_gan.measure.statistic_ms


class Candidate:
    """A pruned graph for a MACs budget and its raw predicted latency; None when the budget
    is below what pruning can reach."""

    def __init__(self, prune: Callable[[float], Any], predict_ms: Callable[[Any], float]):
        self._prune, self._predict = prune, predict_ms
        self._cache: dict[int, tuple[Any, float] | None] = {}

    def __call__(self, budget: float) -> tuple[Any, float] | None:
        key = int(budget)
        if key not in self._cache:
            try:
                graph = self._prune(key)
            except BudgetError:
                self._cache[key] = None
            else:
                self._cache[key] = (graph, self._predict(graph))
        return self._cache[key]


def largest_budget(candidate: Candidate, aim_ms: float, correction: float,
                   lo: float, hi: float) -> int:
    """The largest MACs budget in [lo, hi] whose corrected prediction is <= aim_ms (the
    smallest reachable budget when none is)."""
    top = candidate(hi)
    if top is not None and top[1] * correction <= aim_ms:
        return int(hi)
    a, b = math.log(lo), math.log(hi)   # invariant: budget e^b is too slow or unreachable
    best = None
    for _ in range(BISECTION_STEPS):
        mid = (a + b) / 2
        found = candidate(math.exp(mid))
        if found is None:
            a = mid            # unreachable: more MACs needed
        elif found[1] * correction <= aim_ms:
            a, best = mid, int(math.exp(mid))
        else:
            b = mid
    return best if best is not None else int(math.exp(b))


def search_latency(budget_ms: float, candidate: Candidate, *, full_macs: int,
                   measure: Callable[[int, Any], tuple[Latency, Any]] | None,
                   statistic: str = "steady", min_fraction: float = 1e-3
                   ) -> tuple[LatencySearch, Any]:
    """Rounds of predict -> build -> measure until measured latency is in [0.85 T, T].

    `measure(budget, pruned_graph) -> (latency, built)` builds the rest of the pipeline and
    times it; `statistic` says which figure of the timing is judged. None means the target has
    no measurement (one round, prediction only).
    Returns the search record and the chosen round's `built` (or pruned graph).
    """
    if budget_ms <= 0:
        raise ValueError(f"budget_latency_ms must be positive, got {budget_ms}")
    check_statistic(statistic)
    rounds: list[LatencyRound] = []
    built: list[Any] = []
    correction = 1.0
    lo = max(full_macs * min_fraction, 1.0)
    for index in range(MAX_ROUNDS if measure else 1):
        budget = largest_budget(candidate, AIM * budget_ms, correction, lo, full_macs)
        seen = _measured_before(rounds, candidate, budget)
        if seen is not None and seen.measured_ms > budget_ms:
            break   # the same model again, already measured too slow: nothing left to try
        if seen is not None:
            # the same model, measured below the window: pruning's channel steps leave no model
            # between it and the next one up, which the aim at 0.925 T skipped; try that one
            # against T itself rather than measure this one again
            budget = largest_budget(candidate, budget_ms, correction, lo, full_macs)
            if _measured_before(rounds, candidate, budget) is not None:
                break   # no larger model is predicted within T: keep what was measured
        found = candidate(budget)
        if found is None:
            raise BudgetError(f"no prunable model reaches {budget_ms} ms: pruning cannot go "
                              f"below {budget} MACs under the channel constraints")
        graph, predicted = found
        latency, result = measure(budget, graph) if measure else (None, graph)
        measured, median = ((None, None) if latency is None
                            else (statistic_ms(latency, statistic), latency.median_ms))
        rounds.append(LatencyRound(round=index + 1, budget_macs=budget, macs=graph.macs,
                                   predicted_ms=predicted, corrected_ms=predicted * correction,
                                   measured_ms=measured, measured_median_ms=median,
                                   correction=correction))
        built.append(result)
        if measured is None or WINDOW * budget_ms <= measured <= budget_ms:
            break
        if measured <= budget_ms and budget >= full_macs:
            break   # the unpruned model is already fast enough
        correction = measured / predicted
    return _choose(budget_ms, rounds, built, measured=measure is not None, statistic=statistic)


def _measured_before(rounds, candidate: Candidate, budget: int) -> LatencyRound | None:
    """The earlier round that measured the model `budget` prunes to (same MACs), if any."""
    found = candidate(budget)
    if found is None:
        return None
    return next((r for r in rounds if r.macs == found[0].macs), None)


def _choose(budget_ms, rounds, built, measured, statistic):
    latency = [r.measured_ms if measured else r.corrected_ms for r in rounds]
    fitting = [i for i, t in enumerate(latency) if t <= budget_ms]
    if not fitting:
        fastest = min(range(len(rounds)), key=latency.__getitem__)
        raise BudgetError(
            f"latency budget {budget_ms} ms not met: the fastest candidate ({rounds[fastest].macs:.3g} "
            f"MACs) {f'measured ({statistic})' if measured else 'is predicted at'} "
            f"{latency[fastest]:.2f} ms after {len(rounds)} round(s); rounds: "
            + "; ".join(f"{r.budget_macs:.3g} MACs -> {t:.2f} ms" for r, t in zip(rounds, latency))
            + ". Raise the budget or lower min_channels/round_to: the rest of the time is in "
              "layers pruning does not shrink (see the report's cost model per layer).")
    chosen = max(fitting, key=latency.__getitem__)
    search = LatencySearch(budget_latency_ms=budget_ms, rounds=tuple(rounds), chosen=chosen,
                           met=True, in_window=latency[chosen] >= WINDOW * budget_ms,
                           measured=measured, statistic=statistic)
    return search, built[chosen]

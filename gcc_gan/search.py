"""The MACs budget search: CAT's one-step pruning (Algorithm 1), generalised to any graph.

One global threshold on unit importance: the k least important units are removed, then each
group is topped back up to its constraints (at least `min_channels` units; a kept count that is
a multiple of `round_to`, or the whole group; a group narrower than `round_to`, which no kept
count could align, keeps a multiple of `narrow_round_to` or all of its units: a target whose
kernels slow down on ragged channel counts (x86 int8: multiples of 4) keeps the 3 zero filters
that pad a 21-output conv to 24 instead of cutting them to 1), restoring its most important
units. MACs(k) is non-increasing in k, so k is bisected to the smallest value whose MACs meet
the budget. Each step evaluates the analysis's MAC model (no forward pass, no graph rewrite).

Rounding to `round_to` makes MACs(k) jump: a unit crossing the threshold can drop a whole
aligned chunk of a group that every layer reads (a residual trunk), leaving much of the budget
unused (ResNet-9 at 3e9 with round_to 16: 2.19e9 of it). The slack is then filled back
greedily: among the groups whose next aligned chunk still fits, the one whose most important
removed unit scores highest (and above 0) grows by a chunk, until none fits.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np

from .channels import ChannelAnalysis
from .summary import si


class BudgetError(ValueError):
    """The budget cannot be met under the constraints; the message gives what can."""


@dataclass(frozen=True)
class PruneDecision:
    keep: np.ndarray        # bool per prunable unit
    budget_macs: int
    macs: int               # achieved, real MACs at batch 1
    lit_macs: int
    pruned_units: int
    threshold: float        # importance of the most important removed unit (-inf: none)
    seconds: float


def _ranks_in_group(analysis: ChannelAnalysis, scores: np.ndarray) -> tuple[np.ndarray, ...]:
    group_of = np.zeros(analysis.num_units, dtype=np.int64)
    rank = np.zeros(analysis.num_units, dtype=np.int64)
    sizes = np.zeros(len(analysis.groups), dtype=np.int64)
    for g in analysis.groups:
        group_of[g.units] = g.index
        order = g.units[np.argsort(-scores[g.units], kind="stable")]
        rank[order] = np.arange(len(order))
        sizes[g.index] = len(g.units)
    return group_of, rank, sizes


def _targets(k: int, order_pos, group_of, sizes, align, min_channels) -> np.ndarray:
    """Kept units per group when the k least important units are removed."""
    survivors = np.bincount(group_of[order_pos >= k], minlength=len(sizes))
    target = np.maximum(survivors, np.minimum(min_channels, sizes))
    return np.minimum(-(-target // align) * align, sizes)


def _fill(targets: np.ndarray, sizes, align, next_score, macs_of, budget: int) -> np.ndarray:
    """Grow groups by aligned chunks, most important next unit first, while the MACs fit and
    that unit scores above 0 (zero filters earn nothing back). MACs only grow with the
    targets, so a chunk that does not fit never will."""
    targets, closed = targets.copy(), targets >= sizes
    while True:
        candidates = np.flatnonzero(~closed)
        scores = next_score(targets[candidates], candidates)
        if not (scores > 0).any():
            return targets
        g = candidates[np.argmax(scores)]
        grown = targets.copy()
        grown[g] = min(targets[g] + align[g], sizes[g])
        if macs_of(grown) <= budget:
            targets = grown
            closed[g] = targets[g] >= sizes[g]
        else:
            closed[g] = True


def search_budget(analysis: ChannelAnalysis, scores: np.ndarray, *, budget_macs: float | None = None,
                  ratio: float | None = None, min_channels: int = 1,
                  round_to: int = 1, narrow_round_to: int = 1) -> PruneDecision:
    """Remove the least important units until the MACs fit `budget_macs` (or `ratio` of now)."""
    if (budget_macs is None) == (ratio is None):
        raise ValueError("give exactly one of budget_macs= or ratio=")
    start = time.perf_counter()
    full = analysis.macs()
    budget = int(budget_macs if budget_macs is not None else ratio * full)
    n = analysis.num_units
    order = np.argsort(scores, kind="stable")
    order_pos = np.empty(n, dtype=np.int64)
    order_pos[order] = np.arange(n)
    group_of, rank, sizes = _ranks_in_group(analysis, scores)
    align = np.where(sizes >= round_to, round_to, narrow_round_to)
    by_rank = np.full((len(sizes), int(sizes.max(initial=0))), -np.inf)  # scores, best first
    by_rank[group_of, rank] = scores

    def mask(targets: np.ndarray) -> np.ndarray:
        return rank < targets[group_of]

    def keep_for(k: int) -> np.ndarray:
        return mask(_targets(k, order_pos, group_of, sizes, align, min_channels))

    smallest = analysis.macs(keep_for(n))
    if smallest > budget:
        raise BudgetError(
            f"budget {si(budget)} MACs is below the smallest reachable under the constraints: "
            f"{si(smallest)} MACs ({smallest / full:.1%} of {si(full)}; min_channels="
            f"{min_channels}, round_to={round_to}; {si(analysis.macs(np.zeros(n, bool)))} MACs "
            f"do not depend on prunable channels). Raise the budget, or lower "
            f"min_channels/round_to.")
    lo, hi = 0, n  # MACs(hi) <= budget; find the smallest such k
    if analysis.macs(keep_for(0)) <= budget:
        hi = 0
    while lo < hi:
        mid = (lo + hi) // 2
        if analysis.macs(keep_for(mid)) <= budget:
            hi = mid
        else:
            lo = mid + 1
    targets = _fill(_targets(hi, order_pos, group_of, sizes, align, min_channels), sizes, align,
                    lambda t, g: by_rank[g, t], lambda t: analysis.macs(mask(t)), budget)
    keep = mask(targets)
    removed = scores[~keep]
    return PruneDecision(keep=keep, budget_macs=budget, macs=analysis.macs(keep),
                         lit_macs=analysis.macs(keep, literature=True),
                         pruned_units=int((~keep).sum()),
                         threshold=float(removed.max()) if removed.size else -math.inf,
                         seconds=time.perf_counter() - start)

"""The one table of channel rules: op packet -> how channel labels flow through the op.

A rule's `propagate(ctx, node)` reads its inputs' labels (`ctx.labels(arg)`, one int64 array per
dimension at batch 1), unifies what the op ties together, and returns the output's labels (a
list of arrays; a tuple of those for multi-output ops; None for non-tensors). An op that
multiplies and accumulates declares its MAC dimensions with `ctx.macs(out_channels, ...)`.
`fix_args(fix, node)`, where present, rewrites the op's shape arguments (view sizes, slice
bounds, group counts) after channels are removed.

An op with no rule is a barrier: everything it touches is frozen. Adding an op is one decorated
function here (and one test).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable

import numpy as np

Labels = list[np.ndarray]


@dataclass(frozen=True)
class ChannelRule:
    propagate: Callable
    fix_args: Callable | None = None


RULES: dict[object, ChannelRule] = {}


def channel_rule(*groups) -> Callable:
    """Register `propagate` for every op packet in `groups` (op sets or single packets)."""
    def deco(fn: Callable) -> Callable:
        for packet in _flatten(groups):
            RULES[packet] = ChannelRule(fn, RULES[packet].fix_args if packet in RULES else None)
        return fn
    return deco


def arg_fixer(*groups) -> Callable:
    """Register how to rewrite the shape arguments of ops already holding a rule."""
    def deco(fn: Callable) -> Callable:
        for packet in _flatten(groups):
            RULES[packet] = replace(RULES[packet], fix_args=fn)
        return fn
    return deco


def _flatten(groups) -> list:
    out = []
    for g in groups:
        out.extend(g if isinstance(g, (set, frozenset, list, tuple)) else [g])
    return out

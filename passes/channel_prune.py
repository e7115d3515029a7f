"""`prune_channels`: remove whole channels to meet a MACs budget, correct by construction.

The channel analysis (`gcc_gan.channels`) says which indices of which tensors go together; the
budget search (`gcc_gan.search`) picks the units to remove; this pass rewrites a copy of the
program: every parameter and buffer is sliced along its labeled dims, and every shape argument
tied to a pruned dim (view sizes, slice bounds, split sizes, depthwise group counts) is
recomputed from the kept counts. The rewritten program is exported again, which re-derives every
shape and fails loudly if any rewrite were inconsistent. The input graph is never modified.
"""

from __future__ import annotations

import operator
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from torch import fx, nn

from gcc_gan.channels import Barrier, ChannelAnalysis, analyze_channels
from gcc_gan.channels.importance import default_importance
from gcc_gan.channels.table import RULES
from gcc_gan.ir import GanGraph, ops
from gcc_gan.ir import edit
from gcc_gan.ir.trace import copy_module
from gcc_gan.ir.meta import node_val
from gcc_gan.ir.shapes import BatchOneShapes
from gcc_gan.search import PruneDecision, search_budget


@dataclass(frozen=True)
class PruneConfig:
    budget_macs: float | None = None  # real MACs at batch 1
    ratio: float | None = None        # or: keep this fraction of the current MACs
    min_channels: int = 1             # per group
    round_to: int = 1                 # kept channels per group: a multiple of this (or all)
    narrow_round_to: int = 1          # the same for groups narrower than round_to
    importance: Callable[[ChannelAnalysis], np.ndarray] | None = None  # default_importance

    def __post_init__(self):
        if (self.budget_macs is None) == (self.ratio is None):
            raise ValueError("PruneConfig needs exactly one of budget_macs= or ratio=")
        if self.ratio is not None and not 0 < self.ratio <= 1:
            raise ValueError(f"ratio must be in (0, 1], got {self.ratio}")
        if self.budget_macs is not None and self.budget_macs <= 0:
            raise ValueError(f"budget_macs must be positive, got {self.budget_macs}")
        if self.min_channels < 1 or self.round_to < 1 or self.narrow_round_to < 1:
            raise ValueError("min_channels, round_to and narrow_round_to must be >= 1")


@dataclass(frozen=True)
class GroupChange:
    name: str
    module: str
    before: int
    after: int


@dataclass(frozen=True)
class PruneReport:
    config: PruneConfig
    budget_macs: int
    macs_before: int
    macs_after: int
    lit_macs_before: int
    lit_macs_after: int
    params_before: int
    params_after: int
    groups: tuple[GroupChange, ...]
    barriers: tuple[Barrier, ...]
    frozen_macs: dict[str, int]       # MACs whose output channels cannot shrink, by cause kind
    search_seconds: float
    rewrite_seconds: float
    name: str = "prune_channels"


@dataclass(frozen=True)
class PruneResult:
    graph: GanGraph
    report: PruneReport
    decision: PruneDecision = field(repr=False)


def prune_channels(graph: GanGraph, target=None, config: PruneConfig = PruneConfig(ratio=0.5)
                   ) -> PruneResult:
    """Prune `graph` to `config`'s budget. A `target` with `channel_alignment` raises round_to,
    and its `output_channel_multiple` narrow_round_to."""
    round_to = max(config.round_to, getattr(target, "channel_alignment", 1) or 1)
    narrow_round_to = max(config.narrow_round_to,
                          getattr(target, "output_channel_multiple", 1) or 1)
    analysis = analyze_channels(graph)
    scores = (config.importance or default_importance)(analysis)
    if len(scores) != analysis.num_units:
        raise ValueError(f"importance returned {len(scores)} scores for "
                         f"{analysis.num_units} prunable units")
    decision = search_budget(analysis, np.asarray(scores, dtype=float),
                             budget_macs=config.budget_macs, ratio=config.ratio,
                             min_channels=config.min_channels, round_to=round_to,
                             narrow_round_to=narrow_round_to)
    start = time.perf_counter()
    pruned = apply_pruning(graph, analysis, decision.keep)
    report = PruneReport(
        config=config, budget_macs=decision.budget_macs, macs_before=graph.macs,
        macs_after=pruned.macs, lit_macs_before=graph.lit_macs, lit_macs_after=pruned.lit_macs,
        params_before=graph.params, params_after=pruned.params,
        groups=tuple(GroupChange(g.name, g.module, len(g.units), int(decision.keep[g.units].sum()))
                     for g in analysis.groups),
        barriers=tuple(analysis.barriers), frozen_macs=analysis.frozen_macs(),
        search_seconds=decision.seconds, rewrite_seconds=time.perf_counter() - start)
    return PruneResult(pruned, report, decision)


def apply_pruning(graph: GanGraph, analysis: ChannelAnalysis, keep: np.ndarray) -> GanGraph:
    """A new GanGraph without the units where `keep` is False."""
    keep = np.asarray(keep, dtype=bool)
    if keep.shape != (analysis.num_units,):
        raise ValueError(f"keep has shape {keep.shape}, expected ({analysis.num_units},)")
    gm = copy_module(graph.module)
    fixer = _Fixer(gm, analysis, keep)
    for target, labels in analysis.attr_labels.items():
        fixer.slice_attr(target, labels)
    for node in list(gm.graph.nodes):
        rule = RULES.get(ops.packet(node.target)) if node.op == "call_function" else None
        if rule is not None and rule.fix_args is not None:
            rule.fix_args(fixer, node)
    return edit.retraced(graph, gm, f"pruned {int((~keep).sum())} of {keep.size} channel units")


class _Fixer:
    """What an arg fixer sees: old and new (kept) sizes, and a way to set arguments."""

    def __init__(self, gm: fx.GraphModule, analysis: ChannelAnalysis, keep: np.ndarray):
        self.gm, self.analysis, self.keep = gm, analysis, keep
        self.shapes = BatchOneShapes(gm)
        self._batch_node: fx.Node | None = None

    def _labels(self, x):
        if isinstance(x, fx.Node):
            return self.analysis.node_labels.get(x.name)
        return None

    def old_shape(self, x) -> tuple[int, ...]:
        return self.shapes.shape(x)

    def new_shape(self, x) -> tuple[int, ...]:
        labels = self._labels(x)
        if labels is None:
            return self.old_shape(x)
        return tuple(len(self.analysis.kept_indices(a, self.keep)) for a in labels)

    def kept_count(self, x, dim: int, start: int, end: int) -> int:
        labels = self._labels(x)[dim][start:end]
        return len(self.analysis.kept_indices(labels, self.keep))

    def set_arg(self, node: fx.Node, index: int, value, name: str | None = None) -> None:
        if name is not None and name in node.kwargs:
            node.update_kwarg(name, value)
        elif index < len(node.args):
            node.update_arg(index, value)
        elif name is not None:
            node.update_kwarg(name, value)

    def size_arg(self, old, new: int):
        """`old` (an int, or a node computing c * batch) rescaled to `new` at batch 1."""
        if not isinstance(old, fx.Node):
            return new
        val = node_val(old)
        if self.shapes.int(val) == new:
            return old
        expr = val.node.expr
        (batch,) = [s for s in expr.free_symbols if s in self.shapes.subs] or [None]
        if batch is None or expr.subs(batch, 0) != 0 or expr.subs(batch, 2) != 2 * expr.subs(batch, 1):
            raise NotImplementedError(f"size {expr} at {old.name} is not proportional to the batch")
        with self.gm.graph.inserting_after(old):
            return self.gm.graph.call_function(operator.mul, (self._batch(), new))

    def _batch(self) -> fx.Node:
        if self._batch_node is None:
            graph = self.gm.graph
            placeholders = graph.find_nodes(op="placeholder")
            batched = next(p for p in placeholders if isinstance(node_val(p), torch.Tensor)
                           and node_val(p).dim() and isinstance(node_val(p).shape[0], torch.SymInt))
            with graph.inserting_after(placeholders[-1]):
                self._batch_node = graph.call_function(torch.ops.aten.sym_size.int, (batched, 0))
        return self._batch_node

    def slice_attr(self, target: str, labels: list[np.ndarray]) -> None:
        owner_path, _, name = target.rpartition(".")
        owner = self.gm.get_submodule(owner_path)
        old = getattr(owner, name)
        t = old.detach()
        for d, dim_labels in enumerate(labels):
            idx = self.analysis.kept_indices(dim_labels, self.keep)
            if len(idx) < t.shape[d]:
                t = t.index_select(d, torch.as_tensor(idx, device=t.device))
        if t.shape == old.shape:
            return
        if isinstance(old, nn.Parameter):
            setattr(owner, name, nn.Parameter(t.clone(), requires_grad=old.requires_grad))
        elif name in owner._buffers:
            owner._buffers[name] = t.clone()
        else:
            setattr(owner, name, t.clone())

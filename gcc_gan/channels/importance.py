"""Default channel importance: CAT's |gamma|, or weight-slice norms where no affine norm exists.

For a unit (a class of tied channels):
- if it holds channels of affine norm layers (batch/instance/group norm), its score is the mean
  of those layers' |gamma_c|, each layer's values divided by their mean (CAT ranks by the norm
  scale; the division makes layers of different scales comparable);
- otherwise the mean, over every weight tensor with >= 2 dims that one of its channels indexes
  (producing filters and consuming slices alike), of the L2 norm of that slice, each
  (tensor, dim) divided by its mean slice norm.
A unit with neither gets +inf: with no evidence it is not pruned.

The mean, not the sum: summed, a residual trunk's unit (which indexes ~2 tensors per block)
outscores a block interior's ~n_blocks times over, so one global threshold strips the interiors
and the full-resolution layers first (to 1 channel on ESRGAN's RRDB at 1/4 MACs). On both trained
residual teachers of `benchmarks/allocation.py` the mean kept more fidelity at 1/4 MACs
(+0.38 and +0.52 dB after fine-tuning), and where every unit indexes as many tensors (DCGAN)
the two rank alike.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import fx

from ..ir import ops
from ..ir.meta import attr
from .analysis import ChannelAnalysis

_AFFINE_NORMS = ops.op_set("batch_norm", "instance_norm", "group_norm", "native_batch_norm",
                           "_native_batch_norm_legit_no_training", "native_group_norm")


def _norm_weight_targets(gm: fx.GraphModule) -> set[str]:
    targets = set()
    for node in gm.graph.nodes:
        if node.op == "call_function" and ops.packet(node.target) in _AFFINE_NORMS:
            index = 2 if ops.packet(node.target) is torch.ops.aten.group_norm else 1  # (x, G, w, b)
            w = node.args[index] if len(node.args) > index else None
            if isinstance(w, fx.Node) and w.op == "get_attr":
                targets.add(w.target)
    return targets


def _accumulate(scores: np.ndarray, seen: np.ndarray, unit_idx: np.ndarray, values: np.ndarray):
    mean = values.mean()
    if mean <= 0:
        return
    mask = unit_idx >= 0
    np.add.at(scores, unit_idx[mask], values[mask] / mean)
    np.add.at(seen, unit_idx[mask], 1)


def default_importance(analysis: ChannelAnalysis, combine: str = "mean") -> np.ndarray:
    """Scores per unit (see the module docstring); `combine="sum"` adds a unit's values up
    instead of averaging them (this pass's default before 2026-12)."""
    if combine not in ("sum", "mean"):
        raise ValueError(f"combine must be 'sum' or 'mean', not {combine!r}")
    gm = analysis.graph.module
    n = analysis.num_units
    gamma, has_gamma = np.zeros(n), np.zeros(n, int)
    slices, has_slices = np.zeros(n), np.zeros(n, int)
    norm_weights = _norm_weight_targets(gm)
    for target, labels in analysis.attr_labels.items():
        t = attr(gm, target).detach().float()
        if target in norm_weights:
            _accumulate(gamma, has_gamma, analysis.unit_index(labels[0]), t.abs().numpy())
            continue
        if t.dim() < 2:
            continue
        for d, dim_labels in enumerate(labels):
            unit_idx = analysis.unit_index(dim_labels)
            if (unit_idx >= 0).any():
                norms = t.movedim(d, 0).reshape(t.shape[d], -1).norm(dim=1).numpy()
                _accumulate(slices, has_slices, unit_idx, norms)
    if combine == "mean":
        gamma, slices = gamma / np.maximum(has_gamma, 1), slices / np.maximum(has_slices, 1)
    return np.where(has_gamma > 0, gamma, np.where(has_slices > 0, slices, np.inf))


def layer_uniform(analysis: ChannelAnalysis) -> np.ndarray:
    """A unit's rank within its channel group (by `default_importance`) divided by the group
    size. One global threshold on it removes the same fraction of every group: each layer's
    least important channels at a uniform width ratio (Li et al. 2017's L1 filter pruning).
    Pass it as `PruneConfig(importance=layer_uniform)`. On the trained residual teachers of
    `benchmarks/allocation.py` it kept the most fidelity at 1/4 MACs; on the digits DCGAN the
    global threshold kept more."""
    scores = default_importance(analysis)
    out = np.zeros_like(scores)
    for group in analysis.groups:
        order = group.units[np.argsort(scores[group.units], kind="stable")]
        out[order] = np.arange(1, len(order) + 1) / len(order)
    return out

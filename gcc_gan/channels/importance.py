"""Default channel importance: CAT's |gamma|, or weight-slice norms where no affine norm exists.

For a unit (a class of tied channels):
- if it holds channels of affine norm layers (batch/instance/group norm), its score is the sum
  of those layers' |gamma_c|, each layer's values divided by their mean (CAT ranks by the norm
  scale; the division makes layers of different scales comparable);
- otherwise the sum, over every weight tensor with >= 2 dims that one of its channels indexes
  (producing filters and consuming slices alike), of the L2 norm of that slice, each
  (tensor, dim) divided by its mean slice norm.
A unit with neither gets +inf: with no evidence it is not pruned.
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
    seen[unit_idx[mask]] = True


def default_importance(analysis: ChannelAnalysis) -> np.ndarray:
    gm = analysis.graph.module
    n = analysis.num_units
    gamma, has_gamma = np.zeros(n), np.zeros(n, bool)
    slices, has_slices = np.zeros(n), np.zeros(n, bool)
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
    return np.where(has_gamma, gamma, np.where(has_slices, slices, np.inf))

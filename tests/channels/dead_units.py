"""An exactness oracle for channel pruning that works on any model.

Pick some units (never a whole group), zero every parameter slice any of them indexes (producing
filters, consuming slices, norm scales, shifts and statistics): those channels are then dead,
and removing exactly them must leave the output unchanged. `assert_prunes_exactly` checks that
on the traced program, at batch 1 and 4, and that the MAC model predicts the pruned MACs.
"""

from __future__ import annotations

import numpy as np
import torch

from gcc_gan import trace
from gcc_gan.channels import analyze_channels
from gcc_gan.ir.meta import attr
from gcc_gan.passes.channel_prune import apply_pruning


def drop_some_units(analysis, rng: np.random.Generator, fraction: float = 0.3) -> np.ndarray:
    keep = np.ones(analysis.num_units, dtype=bool)
    for group in analysis.groups:
        n = len(group.units)
        k = min(max(int(n * fraction), 1), n - 1)
        keep[rng.choice(group.units, size=k, replace=False)] = False
    return keep


def kill_units(graph, analysis, keep: np.ndarray) -> None:
    gm = graph.module
    for target, labels in analysis.attr_labels.items():
        t = attr(gm, target)
        if not t.is_floating_point():
            continue
        with torch.no_grad():
            for d, dim_labels in enumerate(labels):
                u = analysis.unit_index(dim_labels)
                idx = np.nonzero((u >= 0) & ~keep[np.maximum(u, 0)])[0]
                if len(idx):
                    t.index_fill_(d, torch.as_tensor(idx), 0.0)


def assert_prunes_exactly(model, make_inputs, *, seed: int = 0, fraction: float = 0.3):
    graph = trace(model.eval(), make_inputs(1))
    analysis = analyze_channels(graph)
    keep = drop_some_units(analysis, np.random.default_rng(seed), fraction)
    assert (~keep).any(), "nothing to prune: the check would prove nothing"
    kill_units(graph, analysis, keep)
    pruned = apply_pruning(graph, analysis, keep)
    assert pruned.macs == analysis.macs(keep)
    assert pruned.params < graph.params
    for batch in (1, 4):
        inputs = make_inputs(batch)
        with torch.no_grad():
            expected, got = graph(*inputs), pruned(*inputs)
        assert got.shape == expected.shape
        assert (got - expected).abs().max().item() <= 1e-5
    return graph, analysis, pruned

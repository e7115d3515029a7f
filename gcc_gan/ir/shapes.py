"""Concrete sizes of a traced program at batch 1.

A dynamic-batch graph carries SymInt sizes (``s0``, ``8*s0``); analyses that need numbers
(costs, channel labels) evaluate them with the batch symbol set to 1. A static graph is taken
at the batch it was traced with (`batch`).
"""

from __future__ import annotations

import math

import torch
from torch import fx

from .meta import node_val


class BatchOneShapes:
    """Concrete sizes at the costed batch: SymInts of the batch symbol are evaluated at 1."""

    def __init__(self, gm: fx.GraphModule):
        self.subs: dict = {}
        self.batch = 1
        for node in gm.graph.find_nodes(op="placeholder"):
            val = node_val(node)
            if isinstance(val, torch.Tensor) and val.dim() >= 1:
                b = val.shape[0]
                if isinstance(b, torch.SymInt):
                    self.subs.update({s: 1 for s in b.node.expr.free_symbols})
                elif not self.subs:
                    self.batch = int(b)

    def int(self, v) -> int:
        if isinstance(v, fx.Node):
            v = node_val(v)
        if isinstance(v, torch.SymInt):
            expr = v.node.expr.subs(self.subs)
            if expr.is_number:
                return int(expr)
            if v.node.hint is None:  # a size computed from tensor values (e.g. nonzero)
                raise ValueError(f"size {v} depends on tensor values: no static cost exists")
            return int(v.node.hint)  # a size the example inputs fixed
        return int(v)

    def shape(self, v) -> tuple[int, ...]:
        if isinstance(v, fx.Node):
            v = node_val(v)
        if isinstance(v, torch.Tensor):
            return tuple(self.int(d) for d in v.shape)
        return ()

    def tensors(self, v) -> list[torch.Tensor]:
        if isinstance(v, fx.Node):
            v = node_val(v)
        if isinstance(v, torch.Tensor):
            return [v]
        if isinstance(v, (tuple, list)):
            return [t for x in v for t in self.tensors(x)]
        return []

    def bytes(self, v) -> int:
        return sum(math.prod(self.shape(t)) * t.element_size() for t in self.tensors(v))

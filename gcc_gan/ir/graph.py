"""`GanGraph`: the traced program plus how it was traced; costs are derived from it on demand.

Invariant: a GanGraph's module is not edited in place. Passes build a new GanGraph, so the
cost analysis, computed once and cached, always describes the program it sits beside.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any

import torch
from torch import fx

if TYPE_CHECKING:
    from ..cost import CostAnalysis
    from ..summary import LayerTable


@dataclass(eq=False)
class GanGraph:
    module: fx.GraphModule                   # the program passes rewrite (ExportedProgram.module())
    exported: torch.export.ExportedProgram | None
    tracer: str                              # "export" or "symbolic_trace+export"
    model_class: str
    dynamic_batch: bool
    example_inputs: tuple
    notes: list[str] = field(default_factory=list)

    @property
    def graph(self) -> fx.Graph:
        return self.module.graph

    def __call__(self, *args: Any) -> Any:
        return self.module(*args)

    @cached_property
    def cost(self) -> "CostAnalysis":
        from ..cost import analyze

        return analyze(self.module)

    @property
    def macs(self) -> int:
        """Real multiply-accumulates of one call at batch 1 (transposed convs on the input grid)."""
        return self.cost.macs

    @property
    def lit_macs(self) -> int:
        """MACs in the GAN-compression papers' convention (transposed convs on the output grid)."""
        return self.cost.lit_macs

    @property
    def params(self) -> int:
        return self.cost.params

    @property
    def weight_bytes(self) -> dict[str, int]:
        return dict(self.cost.weight_bytes)

    @property
    def activation_bytes(self) -> int:
        return self.cost.activation_bytes

    @property
    def peak_activation_bytes(self) -> int:
        return self.cost.peak_activation_bytes

    @property
    def elementwise_ops(self) -> int:
        return self.cost.elementwise_ops

    def summary(self, *, all_nodes: bool = False) -> "LayerTable":
        """Per-layer table (name, op, shapes, MACs, params, source module); prints in a terminal."""
        from ..summary import layer_table

        return layer_table(self, all_nodes=all_nodes)

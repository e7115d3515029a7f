"""`LayerTable`: the per-layer cost table of a GanGraph, for terminals and for code.

Rows are `NodeCost`s; by default only layers that compute MACs, own parameters, or are unknown
ops are shown (norms and activations are in the totals). `str()` renders plain text; rich
consoles render `__rich__` in colour.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import TYPE_CHECKING

from rich.console import Console
from rich.table import Table

from .cost import CostAnalysis, NodeCost
from .ir.meta import source_line

if TYPE_CHECKING:
    from .ir import GanGraph


def si(n: float, unit: str = "") -> str:
    """1234567 -> '1.23M'."""
    for scale, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{prefix}{unit}"
    return f"{n:.0f}{unit}"


def _shape(shape: tuple[int, ...]) -> str:
    return "x".join(map(str, shape)) if shape else "-"


@dataclass(frozen=True)
class LayerTable:
    title: str
    rows: tuple[NodeCost, ...]
    cost: CostAnalysis
    notes: tuple[str, ...]

    def __rich__(self) -> Table:
        show_lit = any(r.lit_macs != r.macs for r in self.rows)
        table = Table(title=self.title, caption=self._caption(), caption_justify="left",
                      header_style="bold")
        table.add_column("#", justify="right", style="dim")
        table.add_column("node", no_wrap=True)
        table.add_column("op", style="cyan")
        table.add_column("input", no_wrap=True)
        table.add_column("output", no_wrap=True)
        table.add_column("MACs", justify="right")
        if show_lit:
            table.add_column("lit. MACs", justify="right", style="dim")
        table.add_column("params", justify="right")
        table.add_column("module", style="dim")
        for i, r in enumerate(self.rows):
            op = f"[red]{r.op} (unknown)[/red]" if r.kind == "unknown" else r.op
            cells = [str(i), r.name, op, _shape(r.in_shapes[0]) if r.in_shapes else "-",
                     _shape(r.out_shape), si(r.macs)]
            if show_lit:
                cells.append(si(r.lit_macs))
            table.add_row(*cells, si(r.params), r.module)
        return table

    def _caption(self) -> str:
        c = self.cost
        weights = ", ".join(f"{si(b, 'B')} {dt}" for dt, b in c.weight_bytes.items())
        lines = [
            f"total at batch {c.batch}: {si(c.macs)} MACs real, {si(c.lit_macs)} literature; "
            f"{si(c.params)} params; weights {weights or '0B'}",
            f"activations {si(c.activation_bytes, 'B')} written, peak {si(c.peak_activation_bytes, 'B')} "
            f"live; {si(c.elementwise_ops)} elementwise ops",
        ]
        lines.extend(self.notes)
        return "\n".join(lines)

    def __str__(self) -> str:
        buf = io.StringIO()
        Console(file=buf, width=160, color_system=None, force_terminal=False).print(self)
        return buf.getvalue()


def layer_table(graph: "GanGraph", *, all_nodes: bool = False) -> LayerTable:
    cost = graph.cost
    rows = tuple(r for r in cost.nodes
                 if all_nodes or r.macs or r.params or r.kind == "unknown")
    by_name = {n.name: n for n in graph.graph.nodes}
    unknown = [f"unknown op {op} at {name}, not costed: {source_line(by_name[name]) or 'no source line'}"
               for op, names in cost.unknown_ops.items() for name in names]
    notes = (*unknown,
             f"traced by {graph.tracer}, batch {'dynamic' if graph.dynamic_batch else 'static'}",
             *graph.notes)
    return LayerTable(title=graph.model_class, rows=rows, cost=cost, notes=notes)


def channel_table(analysis) -> Table:
    """The prunable channel groups of a `ChannelAnalysis`, and the barriers that froze channels."""
    frozen = analysis.frozen_macs()
    caption = [f"{analysis.num_units} prunable channel units in {len(analysis.groups)} groups; "
               f"MACs that cannot shrink: " + (", ".join(f"{si(m)} ({kind})" for kind, m in
                                                          frozen.items()) or "none")]
    caption += [f"barrier {b.op} at {b.node} froze {b.units} channels, {si(b.macs)} MACs: "
                f"{b.source or 'no source line'}" for b in analysis.barriers]
    table = Table(title="channel groups", caption="\n".join(caption), caption_justify="left",
                  header_style="bold")
    for col, justify in (("#", "right"), ("first tensor", "left"), ("module", "left"),
                         ("channels", "right")):
        table.add_column(col, justify=justify, no_wrap=True)
    for g in analysis.groups:
        table.add_row(str(g.index), g.name, g.module, str(len(g.units)))
    return table

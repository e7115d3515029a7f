"""Channel dependency analysis of a traced generator: units, groups, barriers, and a MAC model.

One walk over the graph applies each op's rule from the table (`table.RULES`) at batch 1. After
it, every index of every tensor dimension belongs to a class of the union-find (`Units`):
- a *prunable unit* is a class that is not frozen and reaches an activation (a parameter slice
  that never meets an activation, like a kernel row, is not a channel);
- a *group* is the set of units that appear in exactly the same tensor dims (a conv's output
  channels with the norm and the consumers they feed; the residual stream of a ResNet). Minimum
  channel counts and alignment apply per group, so no tensor ever loses all its channels;
- each multiply-accumulating node has MACs = const * prod(kept count of each of its MAC dims),
  so the MACs of any candidate keep-mask are computed without touching the graph.
Frozen classes remember their causes; the analysis reports which barrier froze how many MACs.
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass
from functools import cached_property

import numpy as np
from torch import fx

from ..ir import ops
from ..ir.graph import GanGraph
from ..ir.meta import node_val, source_line, source_module
from ..ir.shapes import BatchOneShapes
from . import rules_compute, rules_layout, rules_shape  # noqa: F401  (register the rules)
from .table import RULES
from .units import NOT_A_CHANNEL, Cause, Units


@dataclass(frozen=True)
class ChannelGroup:
    index: int
    name: str               # the first activation that carries it (node name)
    module: str             # its source module path
    units: np.ndarray       # prunable unit indices


@dataclass(frozen=True)
class Barrier:
    node: str
    op: str
    source: str             # the user's source line
    units: int              # channel classes of its inputs that it froze
    macs: int               # MACs of layers whose output channels it froze


@dataclass(frozen=True)
class MacTerm:
    node: str
    real: float             # MACs per unit of prod(kept counts)
    lit: float
    dims: tuple[np.ndarray, ...]  # unit index per index of each MAC dim (-1: always kept)
    out_labels: np.ndarray | None  # labels of its output-channel dim; None for a barrier op


class _Ctx:
    """What a rule sees: labels and batch-1 shapes of args, and the union-find."""

    def __init__(self, analysis: "_Walk", node: fx.Node):
        self._a, self.node = analysis, node
        self.mac_dims: tuple | None = None

    def labels(self, x):
        return self._a.env.get(x) if isinstance(x, fx.Node) else None

    def shape(self, x):
        return self._a.shapes.shape(x)

    def int(self, x) -> int:
        return self._a.shapes.int(x)

    def multi_output(self, node) -> bool:
        return isinstance(node_val(node), (tuple, list))

    def blank(self, n: int) -> np.ndarray:
        return np.full(n, NOT_A_CHANNEL, dtype=np.int64)

    def blank_outputs(self, node):
        return [[self.blank(n) for n in self.shape(v)] for v in node_val(node)]

    def _cause(self, why: str) -> Cause:
        return Cause("constraint", self.node.name, f"{_op_name(self.node)}: {why}")

    def unify(self, a, b) -> None:
        self._a.units.unify(a, b, self._cause("meets a non-channel dimension"))

    def unify_all(self, a) -> None:
        self._a.units.unify_all(a, self._cause("ties channels to non-channel data"))

    def freeze(self, a, why: str) -> None:
        self._a.units.freeze(a, self._cause(why))

    def roots(self, a) -> np.ndarray:
        return self._a.units.roots(a)

    def macs(self, *dims) -> None:
        self.mac_dims = dims


def _op_name(node: fx.Node) -> str:
    return str(getattr(ops.packet(node.target), "__name__", node.target))


class _Walk:
    def __init__(self, gm: fx.GraphModule):
        self.units = Units()
        self.shapes = BatchOneShapes(gm)
        self.env: dict[fx.Node, object] = {}
        self.attr: dict[str, list[np.ndarray]] = {}
        self.mac_dims: dict[str, tuple] = {}
        self.barriers: list[tuple[fx.Node, list[np.ndarray]]] = []  # with the labels they froze
        for node in gm.graph.nodes:
            self._visit(node)

    def _visit(self, node: fx.Node) -> None:
        val = node_val(node)
        if node.op == "placeholder":
            if hasattr(val, "shape"):
                self.env[node] = self._fresh(val, Cause("input", node.name, "network input"))
        elif node.op == "get_attr":
            if hasattr(val, "shape"):
                self.env[node] = self.attr.setdefault(node.target, self._fresh(val, None))
        elif node.op == "output":
            for x in _nodes_in(node.args):
                for labels in _arrays(self.env.get(x)):
                    self.units.freeze(labels, Cause("output", x.name, "network output"))
        elif node.op == "call_function" and node.target is operator.getitem:
            source = self.env.get(node.args[0])
            if isinstance(source, tuple):
                self.env[node] = source[node.args[1]]
        elif node.op == "call_function" and ops.packet(node.target) in ops.Symbolic:
            pass
        elif node.op == "call_module" and str(node.target).startswith("_guards"):
            pass
        elif node.op in ("call_function", "call_module"):
            rule = RULES.get(ops.packet(node.target)) if node.op == "call_function" else None
            self.env[node] = self._apply(rule, node) if rule else self._barrier(node)

    def _fresh(self, val, cause: Cause | None) -> list[np.ndarray]:
        # a size-1 dim is never a channel: removing its only index would empty the tensor
        labels = [self.units.fresh(n) if n > 1 else np.full(n, NOT_A_CHANNEL, dtype=np.int64)
                  for n in self.shapes.shape(val)]
        if cause is not None:
            for a in labels:
                self.units.freeze(a, cause)
        return labels

    def _apply(self, rule, node: fx.Node):
        ctx = _Ctx(self, node)
        out = rule.propagate(ctx, node)
        if ctx.mac_dims is not None:
            self.mac_dims[node.name] = ctx.mac_dims
        _check_sizes(node, out, self.shapes)
        return out

    def _barrier(self, node: fx.Node):
        """An op without a rule: freeze everything it touches, and what it makes."""
        cause = Cause("barrier", node.name, _op_name(node))
        frozen = [a for x in _nodes_in((node.args, node.kwargs)) for a in _arrays(self.env.get(x))]
        for labels in frozen:
            self.units.freeze(labels, cause)
        self.barriers.append((node, frozen))
        val = node_val(node)
        if isinstance(val, (tuple, list)):
            return tuple(self._fresh(v, cause) if hasattr(v, "shape") else None for v in val)
        return self._fresh(val, cause) if hasattr(val, "shape") else None


def _nodes_in(args) -> list[fx.Node]:
    found: list[fx.Node] = []
    fx.node.map_arg(args, found.append)
    return found


def _arrays(labels) -> list[np.ndarray]:
    if labels is None:
        return []
    if isinstance(labels, tuple):
        return [a for part in labels for a in _arrays(part)]
    return list(labels)


def _check_sizes(node, out, shapes) -> None:
    """A rule must return one label per index of every output dim: catch rule bugs at once."""
    val = node_val(node)
    vals = val if isinstance(val, (tuple, list)) else [val]
    outs = out if isinstance(out, tuple) else [out]
    for v, labels in zip(vals, outs):
        if hasattr(v, "shape") and labels is not None:
            expected = shapes.shape(v)
            got = tuple(len(a) for a in labels)
            if got != expected:
                raise AssertionError(f"channel rule for {node.target} at {node.name} returned "
                                     f"labels for shape {got}, the value has shape {expected}")


class ChannelAnalysis:
    """Channel units, groups and the MAC model of one traced graph (see the module docstring)."""

    def __init__(self, graph: GanGraph):
        self.graph = graph
        walk = _Walk(graph.module)
        self.units = walk.units
        self.node_labels = {n.name: v for n, v in walk.env.items()}
        self.attr_labels = walk.attr
        self._barrier_nodes = walk.barriers
        roots = self._activation_roots(walk)
        prunable = sorted(r for r in roots if not self.units.is_frozen(r))
        self.unit_of_root = {r: i for i, r in enumerate(prunable)}
        self.num_units = len(prunable)
        self.groups = self._groups(walk)
        self.mac_terms = self._mac_terms(walk.mac_dims)

    def _activation_roots(self, walk: _Walk) -> set[int]:
        roots: set[int] = set()
        for node, labels in walk.env.items():
            if node.op != "get_attr":
                for a in _arrays(labels):
                    roots.update(self.units.roots(a[a >= 0]).tolist())
        return roots

    def unit_index(self, labels: np.ndarray) -> np.ndarray:
        """Prunable unit index per index of a label array; -1 where it can never be pruned."""
        roots = self.units.roots(labels)
        return np.array([self.unit_of_root.get(int(r), NOT_A_CHANNEL) for r in roots],
                        dtype=np.int64)

    def _groups(self, walk: _Walk) -> list[ChannelGroup]:
        signature: dict[int, set[int]] = {}
        first_dim: dict[int, tuple[str, str]] = {}
        dim_id = 0
        for node, labels in walk.env.items():
            for a in _arrays(labels):
                for u in set(self.unit_index(a).tolist()) - {NOT_A_CHANNEL}:
                    signature.setdefault(u, set()).add(dim_id)
                    if u not in first_dim and node.op != "get_attr":
                        first_dim[u] = (node.name, source_module(node))
                dim_id += 1
        by_signature: dict[frozenset, list[int]] = {}
        for u in range(self.num_units):
            by_signature.setdefault(frozenset(signature[u]), []).append(u)
        groups = []
        for members in sorted(by_signature.values(), key=min):
            name, module = first_dim[members[0]]
            groups.append(ChannelGroup(len(groups), name, module, np.array(members)))
        return groups

    def _mac_terms(self, mac_dims: dict[str, tuple]) -> list[MacTerm]:
        terms = []
        for cost in self.graph.cost.nodes:
            if not cost.macs and not cost.lit_macs:
                continue
            raw = mac_dims.get(cost.name, ())
            dims = tuple(self.unit_index(d) for d in raw)
            size = math.prod(len(d) for d in dims) or 1
            terms.append(MacTerm(cost.name, cost.macs / size, cost.lit_macs / size, dims,
                                 raw[0] if raw else None))
        return terms

    def macs(self, keep: np.ndarray | None = None, *, literature: bool = False) -> int:
        """MACs at batch 1 when only the units with `keep[u]` remain (all when None)."""
        total = 0.0
        for term in self.mac_terms:
            product = term.lit if literature else term.real
            for d in term.dims:
                product *= _kept_count(d, keep)
            total += product
        return int(round(total))

    def kept_indices(self, labels: np.ndarray, keep: np.ndarray) -> np.ndarray:
        u = self.unit_index(labels)
        return np.nonzero((u < 0) | keep[np.maximum(u, 0)])[0]

    @cached_property
    def barriers(self) -> list[Barrier]:
        """Ops without a rule, with the channels of their inputs and the MACs each froze."""
        macs = self._frozen_macs_by_cause()
        weight_roots = {r for labels in self.attr_labels.values() for a in labels
                        for r in self.units.roots(a[a >= 0]).tolist()}
        out = []
        for node, frozen in self._barrier_nodes:
            roots = {r for a in frozen for r in self.units.roots(a[a >= 0]).tolist()}
            out.append(Barrier(node.name, _op_name(node), source_line(node),
                               len(roots & weight_roots), macs.get(("barrier", node.name), 0)))
        return out

    def _frozen_macs_by_cause(self) -> dict[tuple[str, str], int]:
        """MACs of each node whose output channels are all frozen, per (kind, node) of cause."""
        out: dict[tuple[str, str], int] = {}
        for term in self.mac_terms:
            macs = int(round(term.real * math.prod(len(d) for d in term.dims)))
            if term.out_labels is None:  # a MAC op without a rule: the barrier itself
                causes = {("barrier", term.node)}
            elif (self.unit_index(term.out_labels) >= 0).any():
                continue  # some output channel can be pruned
            else:
                out_roots = set(self.units.roots(term.out_labels[term.out_labels >= 0]).tolist())
                causes = {(c.kind, c.node) for r in out_roots for c in self.units.causes(r)}
            for cause in causes:
                out[cause] = out.get(cause, 0) + macs
        return out

    def frozen_macs(self) -> dict[str, int]:
        """MACs of nodes whose output channels cannot be pruned, by kind of cause."""
        out: dict[str, int] = {}
        for (kind, _node), macs in self._frozen_macs_by_cause().items():
            out[kind] = out.get(kind, 0) + macs
        return out


def _kept_count(unit_idx: np.ndarray, keep: np.ndarray | None) -> int:
    if keep is None:
        return len(unit_idx)
    fixed = unit_idx < 0
    return int(fixed.sum() + keep[unit_idx[~fixed]].sum())


def analyze_channels(graph: GanGraph) -> ChannelAnalysis:
    return ChannelAnalysis(graph)

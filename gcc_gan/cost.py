"""Exact cost of a traced program, per node and in total, from shapes alone (no forward pass).

Shapes are taken at batch 1: in a dynamic-batch graph the batch symbol is set to 1 (so a
modulated conv that folds the batch into its groups costs one sample's work); a static graph is
costed at the batch it was traced with (`CostAnalysis.batch`).

MACs (multiply-accumulates), by op family:
  conv              out.numel * (C_in/groups) * prod(kernel)      (weight.shape[1] = C_in/groups)
  transposed conv   in.numel * (C_out/groups) * prod(kernel)      each input pixel scatters one
                                                                  kernel patch: the real work
  ... literature    out.numel * (C_in/groups) * prod(kernel)      torchprofile's convention, which
                                                                  GAN-compression papers quote
  linear/mm/bmm/... out.numel * K (the contracted size)
  einsum            product of the sizes of all its indices
  attention         B * heads * L * S * (E + E_v)
Elementwise work (`elementwise`): output numel for norms, activations, arithmetic and
resampling; input numel for reductions. Bias adds inside conv/linear are not counted.
Ops in no set of `gcc_gan.ir.ops` are listed in `unknown_ops` and cost nothing here: the
analysis never guesses what an op it does not know does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterable, Mapping

import torch
from torch import fx

from .ir import ops
from .ir.meta import arg, attr, source_module
from .ir.shapes import BatchOneShapes

MacRule = Callable[[fx.Node, BatchOneShapes], tuple[int, int]]
_MAC_RULES: dict[object, MacRule] = {}


def mac_rule(*packets: Iterable) -> Callable[[MacRule], MacRule]:
    """Register a (real, literature) MACs rule for op packets."""
    def deco(fn: MacRule) -> MacRule:
        for group in packets:
            for p in group:
                _MAC_RULES[p] = fn
        return fn
    return deco


@dataclass(frozen=True)
class NodeCost:
    name: str
    op: str
    kind: str
    out_shape: tuple[int, ...]
    in_shapes: tuple[tuple[int, ...], ...]
    macs: int
    lit_macs: int
    elementwise: int
    act_bytes: int    # bytes of new activation memory this node writes (0 for views)
    params: int       # parameters first read by this node
    module: str       # source module path


@dataclass(frozen=True)
class CostAnalysis:
    nodes: tuple[NodeCost, ...]
    batch: int
    params: int
    weight_bytes: Mapping[str, int]          # dtype -> bytes of parameters, buffers, constants
    peak_activation_bytes: int               # live activation memory at the worst point
    unknown_ops: Mapping[str, tuple[str, ...]]  # op -> nodes using it

    @property
    def macs(self) -> int:
        return sum(n.macs for n in self.nodes)

    @property
    def lit_macs(self) -> int:
        return sum(n.lit_macs for n in self.nodes)

    @property
    def activation_bytes(self) -> int:
        return sum(n.act_bytes for n in self.nodes)

    @property
    def elementwise_ops(self) -> int:
        return sum(n.elementwise for n in self.nodes)

    def __getitem__(self, name: str) -> NodeCost:
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(name)


@mac_rule(ops.Conv)
def _conv_macs(node, s):
    transposed = arg(node, 6, "transposed", False) if ops.packet(node.target) in (
        torch.ops.aten.convolution, torch.ops.aten._convolution) else False
    if transposed:
        return _conv_transpose_macs(node, s, groups_index=8)
    w = s.shape(node.args[1])
    macs = math.prod(s.shape(node)) * w[1] * math.prod(w[2:])
    return macs, macs


@mac_rule(ops.ConvTranspose)
def _conv_transpose_macs(node, s, groups_index=6):
    x, w = s.shape(node.args[0]), s.shape(node.args[1])
    groups = s.int(arg(node, groups_index, "groups", 1))
    k = math.prod(w[2:])
    real = math.prod(x) * w[1] * k
    lit = math.prod(s.shape(node)) * (w[0] // groups) * k
    return real, lit


@mac_rule(ops.op_set("linear", "mm", "bmm", "matmul", "mv", "dot", "vdot"))
def _matmul_macs(node, s):
    k = s.shape(node.args[0])[-1]
    macs = max(math.prod(s.shape(node)), 1) * k
    return macs, macs


@mac_rule(ops.op_set("addmm", "baddbmm"))
def _addmm_macs(node, s):
    k = s.shape(node.args[1])[-1]
    macs = math.prod(s.shape(node)) * k
    return macs, macs


@mac_rule(ops.op_set("einsum"))
def _einsum_macs(node, s):
    sizes: dict[str, int] = {}
    ellipsis: tuple[int, ...] = ()
    for spec, operand in zip(node.args[0].replace(" ", "").split("->")[0].split(","), node.args[1]):
        shape = s.shape(operand)
        head, dots, tail = spec.partition("...")
        if dots:  # '...' stands for the dims no letter names; they broadcast across operands
            ellipsis = tuple(torch.broadcast_shapes(ellipsis, shape[len(head):len(shape) - len(tail)]))
            shape, spec = shape[:len(head)] + shape[len(shape) - len(tail):], head + tail
        sizes.update(zip(spec, shape))
    macs = math.prod(sizes.values()) * math.prod(ellipsis)
    return macs, macs


@mac_rule(ops.op_set("scaled_dot_product_attention"))
def _attention_macs(node, s):
    q, k, v = (s.shape(a) for a in node.args[:3])
    macs = math.prod(q[:-1]) * k[-2] * (q[-1] + v[-1])
    return macs, macs


def _kind(target) -> str:
    p = ops.packet(target)
    for kind, group in _KINDS:
        if p in group:
            return kind
    return "unknown"


_KINDS = (("conv", ops.Conv), ("conv_transpose", ops.ConvTranspose), ("matmul", ops.Matmul),
          ("norm", ops.Norm), ("activation", ops.Activation), ("arithmetic", ops.Arithmetic),
          ("resample", ops.Resample), ("reduction", ops.Reduction), ("movement", ops.Movement),
          ("creation", ops.Creation), ("symbolic", ops.Symbolic), ("getitem", ops.GetItem))
_NOT_LAYERS = {"symbolic", "getitem"}


def _aliases_input(target) -> bool:
    """True when the op returns (a view of) its input: views, in-place ops, getitem."""
    if target in ops.GetItem:
        return True
    schema = getattr(target, "_schema", None)
    return bool(schema and schema.returns and schema.returns[0].alias_info is not None)


def _elementwise(node: fx.Node, kind: str, s: BatchOneShapes) -> int:
    if kind in ("norm", "activation", "arithmetic", "resample"):
        return math.prod(s.shape(node))
    if kind == "reduction":
        return math.prod(s.shape(node.args[0]))
    return 0


def analyze(gm: fx.GraphModule) -> CostAnalysis:
    """Cost every node of `gm` (a traced GanGraph program)."""
    s = BatchOneShapes(gm)
    param_ids = {id(p) for p in gm.parameters()}
    tensors = _attr_tensors(gm)
    weight_bytes: dict[str, int] = {}
    for t in {id(t): t for t in tensors.values()}.values():
        key = str(t.dtype).removeprefix("torch.")
        weight_bytes[key] = weight_bytes.get(key, 0) + t.numel() * t.element_size()
    claimed: set[int] = set()  # parameters already attributed to an earlier node
    nodes: list[NodeCost] = []
    unknown: dict[str, list[str]] = {}

    for node in gm.graph.nodes:
        if node.op == "call_module" and node.target.startswith("_guards"):
            continue  # export's input-shape checks
        if node.op not in ("call_function", "call_module"):
            continue
        kind = _kind(node.target) if node.op == "call_function" else "unknown"
        if kind in _NOT_LAYERS:
            continue
        if kind == "unknown":
            unknown.setdefault(str(node.target), []).append(node.name)
        rule = _MAC_RULES.get(ops.packet(node.target))
        macs, lit = rule(node, s) if rule else (0, 0)
        new_params = [tensors[a.name] for a in node.all_input_nodes if a.op == "get_attr"
                      and id(tensors[a.name]) in param_ids - claimed]
        claimed.update(id(t) for t in new_params)
        nodes.append(NodeCost(
            name=node.name, op=_op_name(node), kind=kind,
            out_shape=s.shape(node),
            in_shapes=tuple(s.shape(a) for a in node.args
                            if isinstance(a, fx.Node) and a.op != "get_attr"),
            macs=int(macs), lit_macs=int(lit), elementwise=_elementwise(node, kind, s),
            act_bytes=0 if _aliases_input(node.target) else s.bytes(node),
            params=sum(t.numel() for t in {id(t): t for t in new_params}.values()),
            module=source_module(node)))
    return CostAnalysis(nodes=tuple(nodes), batch=s.batch,
                        params=sum(p.numel() for p in {id(t): t for t in tensors.values()
                                                       if id(t) in param_ids}.values()),
                        weight_bytes=weight_bytes, peak_activation_bytes=_peak_bytes(gm, s),
                        unknown_ops={k: tuple(v) for k, v in unknown.items()})


def _op_name(node: fx.Node) -> str:
    return str(getattr(ops.packet(node.target), "__name__", node.target))


def _attr_tensors(gm: fx.GraphModule) -> dict[str, torch.Tensor]:
    """get_attr node name -> the tensor it reads, for attributes the program uses.

    Tied weights are one object, so callers dedupe by identity. Unused reads (export keeps one
    for BatchNorm's num_batches_tracked) are not part of the program and are skipped.
    """
    out = {}
    for node in gm.graph.find_nodes(op="get_attr"):
        if not node.users:
            continue
        obj = attr(gm, node.target)
        if isinstance(obj, torch.Tensor):
            out[node.name] = obj
    return out


def _peak_bytes(gm: fx.GraphModule, s: BatchOneShapes) -> int:
    """Peak of live activation memory, executing nodes in graph order.

    A view keeps its base alive; a tensor is freed after the last use of it or any view of it.
    Graph inputs count from the start; outputs stay live to the end.
    """
    nodes = list(gm.graph.nodes)
    root: dict[fx.Node, fx.Node] = {}
    for node in nodes:
        if node.op == "placeholder" or (node.op == "call_function" and node.target not in ops.Symbolic):
            base = node.args[0] if node.op == "call_function" and node.args else None
            aliasing = node.op == "call_function" and _aliases_input(node.target)
            root[node] = root.get(base, node) if aliasing and isinstance(base, fx.Node) else node
    position = {n: i for i, n in enumerate(nodes)}
    last_use: dict[fx.Node, int] = {}
    for node, r in root.items():
        for user in node.users:
            last_use[r] = max(last_use.get(r, 0), position[user])
    frees: dict[int, list[fx.Node]] = {}
    for r, i in last_use.items():
        frees.setdefault(i, []).append(r)
    live = peak = 0
    for i, node in enumerate(nodes):
        if root.get(node) is node:
            live += s.bytes(node)
            peak = max(peak, live)
        for r in frees.get(i, ()):
            live -= s.bytes(r)
    return peak

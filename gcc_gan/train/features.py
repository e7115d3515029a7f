"""Feature maps for distillation: where to read them in a traced program, how to pair a
teacher's with a student's, and CAT's kernel alignment between them.

Kernel alignment (CAT, section 3.3.1, after Kornblith et al.'s CKA): for X in R^{n x p1} and
Y in R^{n x p2} with centred columns,

    KA(X, Y) = ||Y^T X||_F^2 / (||X^T X||_F ||Y^T Y||_F)                        (1)

KA is 1 for identical features, invariant to orthogonal transforms and isotropic scaling, and
p1 != p2 is allowed, so a pruned student's narrower map needs no adapter layer. Global KA
(GKA, eq. 2) reshapes an (N, C, H, W) map to rows = the N*H*W positions and columns = the C
channels before (1); it costs O(N H W max(C1, C2)^2).

Feature sites come from the IR, never from module names the user must give: the outputs of
residual sums (an `add` of two equal-shape tensors: a block output) and of activations, with
a 4-D tensor value. A value that a later in-place op overwrites is not a site. Teacher and
student sites are paired only when their spatial size (H, W) is equal; within one size, sites
with the same (module path, kind, occurrence) pair first (a pruned student keeps its
teacher's module paths), otherwise sites pair by relative position in program order. Block
outputs are preferred at a size where both programs have them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import fx

from ..ir import GanGraph, ops
from ..ir.meta import node_val, source_module

EPS = 1e-8
_ADD = ops.op_set("add", "add_")


def kernel_alignment(x: torch.Tensor, y: torch.Tensor, center: bool = True) -> torch.Tensor:
    """KA(X, Y) of eq. (1) for X (n, p1) and Y (n, p2); a 0-dim tensor in [0, 1]."""
    if x.dim() != 2 or y.dim() != 2 or x.shape[0] != y.shape[0]:
        raise ValueError(f"kernel_alignment needs X (n, p1) and Y (n, p2) with the same n; got "
                         f"{tuple(x.shape)} and {tuple(y.shape)}")
    x, y = x.float(), y.float()
    if center:
        x, y = x - x.mean(0, keepdim=True), y - y.mean(0, keepdim=True)
    cross = (y.T @ x).pow(2).sum()
    return cross / ((x.T @ x).norm() * (y.T @ y).norm() + EPS)


def global_kernel_alignment(a: torch.Tensor, b: torch.Tensor, center: bool = True) -> torch.Tensor:
    """GKA (eq. 2) of feature maps (N, C1, H, W) and (N, C2, H, W): rows are N*H*W positions."""
    if a.dim() != 4 or b.dim() != 4 or a.shape[0] != b.shape[0] or a.shape[2:] != b.shape[2:]:
        raise ValueError(f"GKA compares (N, C, H, W) maps of equal N, H, W; got "
                         f"{tuple(a.shape)} and {tuple(b.shape)}")
    return kernel_alignment(a.permute(0, 2, 3, 1).reshape(-1, a.shape[1]),
                            b.permute(0, 2, 3, 1).reshape(-1, b.shape[1]), center)


@dataclass(frozen=True)
class FeatureSite:
    node: str                  # fx node name in its program
    module: str                # source module path ('' at top level)
    kind: str                  # "block" (residual sum) or "activation"
    occurrence: int            # index among sites of the same (module, kind)
    position: int              # index in program order
    shape: tuple[int, int, int]  # (C, H, W) at batch 1

    @property
    def key(self) -> tuple[str, str, int]:
        return (self.module, self.kind, self.occurrence)


@dataclass(frozen=True)
class FeaturePair:
    teacher: FeatureSite
    student: FeatureSite

    def __str__(self) -> str:
        t, s = self.teacher, self.student
        return (f"{t.node} ({t.module or 'top'}, {t.shape[0]}ch) <-> {s.node} "
                f"({s.module or 'top'}, {s.shape[0]}ch) at {t.shape[1]}x{t.shape[2]}")


def _module_of(program) -> fx.GraphModule:
    gm = program.module if isinstance(program, GanGraph) else program
    if not isinstance(gm, fx.GraphModule):
        raise TypeError(f"expected a GanGraph or fx.GraphModule, got {type(program).__name__}; "
                        "trace the model first (gcc_gan.trace)")
    return gm


def _static(dims) -> tuple[int, ...] | None:
    try:
        return tuple(int(d) for d in dims)
    except (TypeError, ValueError, RuntimeError):  # a size that is not a constant
        return None


def _mutated_later(node: fx.Node) -> bool:
    return any(u.op == "call_function" and str(getattr(u.target, "_opname", "")).endswith("_")
               and u.args and u.args[0] is node for u in node.users)


def feature_sites(program: GanGraph | fx.GraphModule) -> list[FeatureSite]:
    """The block-output and activation sites of a program, in program order."""
    gm = _module_of(program)
    outputs: set[fx.Node] = set()
    out_node = gm.graph.find_nodes(op="output")[0]
    fx.node.map_arg(out_node.args, lambda n: outputs.add(n))
    sites, counts = [], {}
    for pos, node in enumerate(gm.graph.nodes):
        if node.op != "call_function" or node in outputs:
            continue
        val = node_val(node)
        if not isinstance(val, torch.Tensor) or val.dim() != 4 or not val.is_floating_point():
            continue
        packet = ops.packet(node.target)
        if packet in _ADD and _is_residual(node):
            kind = "block"
        elif packet in ops.Activation:
            kind = "activation"
        else:
            continue
        shape = _static(val.shape[1:])
        if shape is None or _mutated_later(node):
            continue
        module = source_module(node)
        occurrence = counts.get((module, kind), 0)
        counts[(module, kind)] = occurrence + 1
        sites.append(FeatureSite(node.name, module, kind, occurrence, pos, shape))
    return sites


def _is_residual(node: fx.Node) -> bool:
    a, b = (node.args + (None, None))[:2]
    if not (isinstance(a, fx.Node) and isinstance(b, fx.Node)):
        return False
    va, vb = node_val(a), node_val(b)
    return (isinstance(va, torch.Tensor) and isinstance(vb, torch.Tensor)
            and _static(va.shape[1:]) == _static(vb.shape[1:]) is not None)


def _evenly(items: list, k: int) -> list:
    if k >= len(items):
        return list(items)
    if k == 1:
        return [items[-1]]
    return [items[round(i * (len(items) - 1) / (k - 1))] for i in range(k)]


def _pair_group(teacher: list[FeatureSite], student: list[FeatureSite]) -> list[FeaturePair]:
    for kind in ("block", "activation"):
        t = [s for s in teacher if s.kind == kind]
        s = [x for x in student if x.kind == kind]
        if t and s:
            break
    else:
        return []
    by_key = {x.key: x for x in s}
    keyed = [FeaturePair(a, by_key[a.key]) for a in t if a.key in by_key]
    if keyed:
        return keyed
    n = min(len(t), len(s))
    return [FeaturePair(a, b) for a, b in zip(_evenly(t, n), _evenly(s, n))]


def match_features(teacher: GanGraph | fx.GraphModule, student: GanGraph | fx.GraphModule,
                   max_pairs: int | None = None) -> list[FeaturePair]:
    """Teacher/student site pairs of equal spatial size (see the module docstring), in student
    program order; at most `max_pairs`, spread over every spatial size and evenly within one."""
    t_sites, s_sites = feature_sites(teacher), feature_sites(student)
    sizes = list(dict.fromkeys(s.shape[1:] for s in s_sites))
    groups = [_pair_group([t for t in t_sites if t.shape[1:] == hw],
                          [s for s in s_sites if s.shape[1:] == hw]) for hw in sizes]
    groups = [g for g in groups if g]
    if max_pairs is not None:
        if max_pairs < 1:
            raise ValueError(f"max_pairs must be >= 1 or None, got {max_pairs}")
        quota = [1 if i < max_pairs else 0 for i in range(len(groups))]
        spare = max_pairs - sum(quota)
        total = sum(len(g) for g in groups)
        for i, g in enumerate(groups):  # the rest in proportion to each size's pair count
            quota[i] = min(len(g), quota[i] + int(spare * len(g) / total)) if quota[i] else 0
        groups = [_evenly(g, q) for g, q in zip(groups, quota) if q]
    return sorted((p for g in groups for p in g), key=lambda p: p.student.position)


def tap(program: GanGraph | fx.GraphModule, nodes: list[str]) -> fx.GraphModule:
    """A module sharing `program`'s parameters whose forward(*flat_inputs) returns
    (outputs, (feature_0, ..., feature_k)) for the named nodes."""
    gm = _module_of(program)
    graph, env = fx.Graph(), {}
    out = graph.graph_copy(gm.graph, env)
    by_name = {n.name: n for n in gm.graph.nodes}
    missing = [n for n in nodes if n not in by_name]
    if missing:
        raise KeyError(f"nodes {missing} are not in the program; take names from "
                       "feature_sites() of this same program")
    graph.output((out, tuple(env[by_name[n]] for n in nodes)))
    tapped = fx.GraphModule(gm, graph)
    tapped.train(gm.training)
    return tapped

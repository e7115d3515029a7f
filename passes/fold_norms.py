"""`fold_norms`: fold eval-mode batch norms into the convolution before them, exactly.

An eval-mode batch norm is a per-channel affine map with stored statistics:

    BN(y)[o] = (y[o] - mean[o]) / sqrt(var[o] + eps) * gamma[o] + beta[o]
             = y[o] * s[o] + (beta[o] - mean[o] * s[o]),   s = gamma / sqrt(var + eps)

(gamma = 1, beta = 0 when the norm is not affine). With y = conv(x, W) + b, output channel o is
linear in W's slice for o and in b[o], so

    W'[o] = W[o] * s[o]        b' = (b - mean) * s + beta        (b = 0 when the conv has none)

A conv's weight is (C_out, C_in/groups, k...): output channel o is W[o]. A transposed conv's is
(C_in, C_out/groups, k...): within group g, output channel o = g * C_out/groups + j is
W[g*C_in/groups : (g+1)*C_in/groups, j]. An instance norm with `use_input_stats=False` (an
InstanceNorm with running stats in eval mode) is the same map and folds the same way.

A norm folds only when the rewrite is exact for every input and changes nothing else: its
statistics and affine parameters are stored tensors; it follows a conv whose output nothing else
reads; the conv's weight (and bias, if any) are stored tensors that no other op reads. Every
batch norm that does not fold is reported with the reason. Instance/group/layer norms compute
their statistics from the input and never fold; they are listed only with
`FoldConfig(report_unfoldable=True)`. The arithmetic runs in float64 and is cast back.
The input graph is never modified: the pass edits a copy and traces it again.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass

import torch
from torch import fx, nn

from gcc_gan.ir import GanGraph, ops
from gcc_gan.ir import edit
from gcc_gan.ir.meta import arg, node_val
from gcc_gan.ir.trace import copy_module

aten = torch.ops.aten


@dataclass(frozen=True)
class FoldConfig:
    report_unfoldable: bool = False  # also list instance/group/layer norms (never foldable)


@dataclass(frozen=True)
class FoldReport:
    folded: tuple[str, ...] = ()                 # "node (source.module)" of each folded norm
    skipped: tuple[tuple[str, str], ...] = ()    # ("node (source.module)", why it stays)
    macs_before: int = 0
    macs_after: int = 0
    params_before: int = 0
    params_after: int = 0
    name: str = "fold_norms"


@dataclass(frozen=True)
class FoldResult:
    graph: GanGraph
    report: FoldReport


@dataclass(frozen=True)
class _NormSig:
    """Where a per-channel norm op keeps its arguments (positions in the ATen schema)."""
    kind: str
    stats_flag: int | None      # training / use_input_stats: True means batch statistics
    eps: int
    tuple_out: bool             # returns (out, saved stats...), picked by getitem


# batch_norm(input, weight, bias, running_mean, running_var, training, momentum, eps, cudnn)
# instance_norm(input, weight, bias, running_mean, running_var, use_input_stats, momentum, eps, cudnn)
# _native_batch_norm_legit_no_training(input, weight, bias, running_mean, running_var, momentum, eps)
_FOLDABLE = {
    aten.batch_norm: _NormSig("batch norm", 5, 7, False),
    aten.native_batch_norm: _NormSig("batch norm", 5, 7, True),
    aten._native_batch_norm_legit: _NormSig("batch norm", 5, 7, True),
    aten._native_batch_norm_legit_no_training: _NormSig("batch norm", None, 6, True),
    aten.instance_norm: _NormSig("instance norm", 5, 7, False),
}
_INPUT_STATS = {  # norms whose statistics always come from the input
    **{p: "group norm" for p in ops.op_set("group_norm", "native_group_norm")},
    **{p: "layer norm" for p in ops.op_set("layer_norm", "native_layer_norm")},
    **{p: "rms norm" for p in ops.op_set("rms_norm")},
}
_CONV = ops.Conv | ops.ConvTranspose


class _Skip(Exception):
    """A norm that stays; the message says why. `unfoldable`: it never could (input statistics)."""

    def __init__(self, why: str, unfoldable: bool = False):
        super().__init__(why)
        self.unfoldable = unfoldable


def fold_norms(graph: GanGraph, target=None, config: FoldConfig = FoldConfig()) -> FoldResult:
    """Fold every foldable eval-mode batch norm of `graph` into its conv; `target` is unused."""
    gm = copy_module(graph.module)
    folded, skipped, attrs = [], [], []
    for node in list(gm.graph.nodes):
        if node.op != "call_function":
            continue
        p = ops.packet(node.target)
        if p in _INPUT_STATS:
            if config.report_unfoldable:
                skipped.append((edit.label(node), f"{_INPUT_STATS[p]}: statistics depend on the input"))
            continue
        sig = _FOLDABLE.get(p)
        if sig is None:
            continue
        name = edit.label(node)
        try:
            conv = _check(gm, node, sig)
        except _Skip as why:
            if config.report_unfoldable or not why.unfoldable:
                skipped.append((name, str(why)))
            continue
        attrs += _fold(gm, conv, node, sig)
        folded.append(name)

    before = FoldReport(skipped=tuple(skipped), macs_before=graph.macs, macs_after=graph.macs,
                        params_before=graph.params, params_after=graph.params)
    if not folded:
        return FoldResult(graph, before)
    edit.drop_dead_attrs(gm, attrs)
    new = edit.retraced(graph, gm, f"folded {len(folded)} norms into the convolutions before them")
    report = FoldReport(folded=tuple(folded), skipped=tuple(skipped),
                        macs_before=graph.macs, macs_after=new.macs,
                        params_before=graph.params, params_after=new.params)
    return FoldResult(new, report)


def _check(gm: fx.GraphModule, bn: fx.Node, sig: _NormSig) -> fx.Node:
    """The conv `bn` folds into, or _Skip with the reason it cannot."""
    if bn.target == aten._native_batch_norm_legit.no_stats:
        raise _Skip("training-mode batch norm: normalises with batch statistics")
    if sig.stats_flag is not None and arg(bn, sig.stats_flag, _flag_name(bn), True) is not False:
        if sig.kind == "batch norm":
            raise _Skip("training-mode batch norm: normalises with batch statistics")
        raise _Skip(f"{sig.kind}: statistics depend on the input", unfoldable=True)
    if arg(bn, 3, "running_mean") is None or arg(bn, 4, "running_var") is None:
        raise _Skip("no running statistics")
    for i, name in enumerate(("weight", "bias", "running_mean", "running_var"), start=1):
        a = arg(bn, i, name)
        if a is not None and edit.stored(gm, a) is None:
            raise _Skip(f"{name} is computed, not a stored tensor")
    if sig.tuple_out and any(u.target is not operator.getitem or u.args[1] != 0
                             for u in bn.users):
        raise _Skip("its saved statistics outputs are used")
    x = bn.args[0]
    if not (isinstance(x, fx.Node) and x.op == "call_function" and ops.packet(x.target) in _CONV):
        what = ops.packet(x.target) if isinstance(x, fx.Node) and x.op == "call_function" else \
            (x.op if isinstance(x, fx.Node) else type(x).__name__)
        raise _Skip(f"input is not a conv output (follows {what})")
    others = [u.name for u in x.users if u is not bn]
    if others:
        raise _Skip(f"input has another user: {x.name} also feeds {', '.join(others)}")
    weight, bias = arg(x, 1, "weight"), arg(x, 2, "bias")
    if edit.stored(gm, weight) is None:
        raise _Skip(f"follows a computed weight ({x.name}'s weight is not a stored tensor)")
    if bias is not None and edit.stored(gm, bias) is None:
        raise _Skip(f"{x.name}'s bias is computed, not a stored tensor")
    for a in (weight, bias):
        if a is not None and _shared(gm, a):
            raise _Skip(f"{x.name}'s {a.target} is shared with another op")
    w, channels = edit.stored(gm, weight), edit.stored(gm, arg(bn, 3, "running_mean")).numel()
    out = node_val(x)
    if not isinstance(out, torch.Tensor) or out.dim() != w.dim() or out.shape[1] != channels:
        raise _Skip(f"{x.name}'s output is unbatched or has other than {channels} channels")
    return x


def _flag_name(bn: fx.Node) -> str:
    return "use_input_stats" if ops.packet(bn.target) is aten.instance_norm else "training"


def _fold(gm: fx.GraphModule, conv: fx.Node, bn: fx.Node, sig: _NormSig) -> list[fx.Node]:
    """Rewrite `conv`'s weight and bias to absorb `bn`, route `bn`'s users to `conv`, erase `bn`.
    Returns the get_attr nodes `bn` read."""
    weight_node, bias_node = arg(conv, 1, "weight"), arg(conv, 2, "bias")
    w = edit.stored(gm, weight_node)
    bn_attrs = [arg(bn, i, name) for i, name in
                enumerate(("weight", "bias", "running_mean", "running_var"), start=1)]
    gamma, beta, mean, var = (edit.stored(gm, a).detach().double() if a is not None else None
                              for a in bn_attrs)
    s = torch.rsqrt(var + float(arg(bn, sig.eps, "eps")))
    if gamma is not None:
        s = s * gamma
    b = edit.stored(gm, bias_node).detach().double() if bias_node is not None else torch.zeros_like(mean)
    new_b = (b - mean) * s + (beta if beta is not None else 0.0)
    edit.replace_stored(gm, weight_node.target,
              _scale_out_channels(w.detach().double(), s, edit.is_transposed(conv)).to(w.dtype))
    if bias_node is not None:
        edit.replace_stored(gm, bias_node.target, new_b.to(edit.stored(gm, bias_node).dtype))
    else:
        owner, name = _new_bias(gm, weight_node.target)
        new_b = new_b.to(w.dtype)
        if isinstance(w, nn.Parameter):
            setattr(owner, name, nn.Parameter(new_b, requires_grad=w.requires_grad))
        else:
            owner.register_buffer(name, new_b)
        prefix = weight_node.target.rpartition(".")[0]
        with gm.graph.inserting_before(conv):
            bias_node = gm.graph.get_attr(f"{prefix}.{name}" if prefix else name)
        if "bias" in conv.kwargs or len(conv.args) <= 2:
            conv.update_kwarg("bias", bias_node)
        else:
            conv.update_arg(2, bias_node)

    getitems = list(bn.users) if sig.tuple_out else []
    for node in getitems or [bn]:
        node.replace_all_uses_with(conv)
    for node in getitems:
        gm.graph.erase_node(node)
    gm.graph.erase_node(bn)
    return [a for a in bn_attrs if a is not None]


def _scale_out_channels(w: torch.Tensor, s: torch.Tensor, transposed: bool) -> torch.Tensor:
    """w with each output channel o multiplied by s[o] (layouts in the module docstring)."""
    k = (1,) * (w.dim() - 2)
    if not transposed:
        return w * s.view(-1, 1, *k)
    c_in, c_out_g = w.shape[:2]
    groups = s.numel() // c_out_g
    grouped = w.reshape(groups, c_in // groups, c_out_g, *w.shape[2:])
    return (grouped * s.view(groups, 1, c_out_g, *k)).reshape(w.shape)


def _shared(gm: fx.GraphModule, a: fx.Node) -> bool:
    """True when the tensor behind get_attr `a` is read by anything but its one conv."""
    if len(a.users) != 1:
        return True
    t = edit.stored(gm, a)
    return any(n is not a and n.users and edit.stored(gm, n) is t
               for n in gm.graph.find_nodes(op="get_attr"))



def _new_bias(gm: fx.GraphModule, weight_target: str) -> tuple[nn.Module, str]:
    """The owner of the conv's weight and a free name there: 'bias' when the conv has none."""
    owner, _ = edit.owner(gm, weight_target)
    name, i = "bias", 0
    while hasattr(owner, name) and not (name in owner._parameters and owner._parameters[name]
                                        is None):
        i += 1
        name = f"folded_bias_{i}"
    if name in owner._parameters:
        del owner._parameters[name]
    return owner, name

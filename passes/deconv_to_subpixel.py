"""`deconv_to_subpixel`: rewrite each 2-D transposed conv as conv -> pixel_shuffle -> crop, exactly.

Per spatial axis (the two axes are independent), a transposed conv with kernel K, stride s,
padding p and output padding op maps an input x of length H to

    z[t] = sum_{i, k : t = s*i + k} W[k] x[i]          t in [0, L),  L = (H-1)*s + K
    y[u] = z[u + p] (0 where u + p >= L)  + bias       u in [0, Hout), Hout = (H-1)*s - 2p + K + op

(channels: y[o] sums W[c, j] over the input channels c of o's group, o = g*Cout_g + j).
Split the output by phase, t = s*q + a with 0 <= a < s. The taps that reach phase a are
k = a + s*m, so with M = ceil(K / s) and W_a[m] = W[a + s*m] (0 where a + s*m >= K):

    z[s*q + a] = sum_{m=0}^{M-1} W_a[m] x[q - m]

Each phase is an ordinary cross-correlation with the flipped sub-kernel V_a[r] = W_a[M-1-r]
over x padded by M-1 in front. All s*s phases (a, b) of the two axes are one conv with
s*s*Cout outputs, channel n = o*s*s + a*s + b, which is exactly the order `pixel_shuffle(s)`
reads: out[o, s*q + a, s*q' + b] = in[o*s*s + a*s + b, q, q']. For groups g, output channel
o = g*Cout_g + j puts n = g*(Cout_g*s*s) + (j*s*s + a*s + b): conv group g's block, so the
new conv keeps `groups` (depthwise included). Its weight, computed once:

    V[o*s*s + a*s + b, ci, rh, rw] = W[g*Cin_g + ci, j, a + s*(Mh-1-rh), b + s*(Mw-1-rw)]

and its bias is b repeated s*s times per channel. Only the phase rows q in
[floor(p/s), floor((p + Hout - 1)/s)] are needed, so the input is padded by
PL = M - 1 - floor(p/s) in front and PR = floor((K + op - 1 - p) / s) behind (negative: that
many rows are cut instead; the common part of PL and PR is the conv's own padding). After the
shuffle, the output rows are t - s*floor(p/s); keep [p mod s, p mod s + Hout), which drops
p mod s rows in front and s*PR + s + p - K - op (in [0, s)) behind. None of these depends on
H, so the rewrite holds for every input size and batch. Positions past L (op > p) read only the
zero padding and get the bias alone, as in the transposed conv.

Stride 1 is the same math with one phase: the conv alone (flipped kernel, padding K-1-p), no
shuffle. ONNX Runtime has no int8 ConvTranspose at all, so those are rewritten too.

Cost: the new conv does s*s*Cout * H'*W' * Cin_g * Mh*Mw real MACs, H' = H + PR - floor(p/s)
(H + 1 for k=4, s=2, p=1: a border row that matters only at small sizes). That is about the
transposed conv's Cin * H*W * Cout_g * K*K when s divides K and more when it does not (zero
taps: 16 for 9 at k=3, s=2), and about M*M/(K*K) of the literature's output-grid count.

A transposed conv stays, with the reason, when its weight or bias is computed (StyleGAN2's
per-sample modulated weight), when it is not 2-D, has unequal strides (pixel_shuffle needs one
factor) or dilation > 1, or when its MACs would grow past `SubpixelConfig.max_macs_ratio`.
The input graph is never modified: the pass edits a copy and traces it again.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import fx

from gcc_gan.ir import GanGraph, edit
from gcc_gan.ir.meta import arg
from gcc_gan.ir.shapes import BatchOneShapes
from gcc_gan.ir.trace import copy_module

aten = torch.ops.aten

_META_KEYS = ("nn_module_stack", "stack_trace", "source_fn_stack")


@dataclass(frozen=True)
class SubpixelConfig:
    max_macs_ratio: float | None = None  # skip a layer whose real MACs would grow more than this


@dataclass(frozen=True)
class SubpixelReport:
    rewritten: tuple[str, ...] = ()              # "node (source.module)" of each rewritten deconv
    skipped: tuple[tuple[str, str], ...] = ()    # ("node (source.module)", why it stays)
    macs_before: int = 0
    macs_after: int = 0
    lit_macs_before: int = 0
    lit_macs_after: int = 0
    params_before: int = 0
    params_after: int = 0
    name: str = "deconv_to_subpixel"


@dataclass(frozen=True)
class SubpixelResult:
    graph: GanGraph
    report: SubpixelReport


@dataclass(frozen=True)
class SubpixelPlan:
    """How one transposed conv becomes pad -> conv2d -> pixel_shuffle -> crop ((h, w) pairs)."""
    stride: int
    groups: int
    kernel: tuple[int, int]         # the sub-kernel (Mh, Mw)
    conv_padding: tuple[int, int]   # the new conv's own (symmetric) padding
    extra: tuple[tuple[int, int], tuple[int, int]]  # (front, back) more per axis; < 0: cut
    crop: tuple[tuple[int, int], tuple[int, int]]   # (front, back) rows dropped after shuffle

    def macs(self, in_hw: tuple[int, int], cin: int, cout: int) -> int:
        """Real MACs of the new conv at batch 1 for an input of spatial size `in_hw`."""
        out = [h + sum(e) + 2 * c - m + 1
               for h, e, c, m in zip(in_hw, self.extra, self.conv_padding, self.kernel)]
        return (self.stride ** 2 * cout * out[0] * out[1] * cin // self.groups
                * self.kernel[0] * self.kernel[1])


def plan_subpixel(kernel: tuple[int, int], stride: int, padding: tuple[int, int],
                  output_padding: tuple[int, int], groups: int) -> SubpixelPlan:
    """The pads and crops of the module docstring, per axis; independent of the input size."""
    sub, pads, crops = [], [], []
    for k, p, op in zip(kernel, padding, output_padding):
        m = -(-k // stride)
        front, back = m - 1 - p // stride, (k + op - 1 - p) // stride
        sub.append(m)
        pads.append((front, back))
        crops.append((p % stride, stride * back + stride + p - k - op))
    conv_padding = tuple(max(0, min(f, b)) for f, b in pads)
    extra = tuple((f - c, b - c) for (f, b), c in zip(pads, conv_padding))
    return SubpixelPlan(stride, groups, tuple(sub), conv_padding, extra, tuple(crops))


def subpixel_weight(weight: torch.Tensor, stride: int, groups: int) -> torch.Tensor:
    """V of the module docstring from the transposed-conv weight W (Cin, Cout/groups, Kh, Kw)."""
    cin, cout_g, kh, kw = weight.shape
    mh, mw = -(-kh // stride), -(-kw // stride)
    w = F.pad(weight, (0, mw * stride - kw, 0, mh * stride - kh))       # zero taps past K
    w = w.reshape(groups, cin // groups, cout_g, mh, stride, mw, stride)  # k = m*s + a
    w = w.flip(3, 5)                                                     # r = M-1-m
    w = w.permute(0, 2, 4, 6, 1, 3, 5)                                   # (g, j, a, b, ci, rh, rw)
    return w.reshape(groups * cout_g * stride * stride, cin // groups, mh, mw).contiguous()


def subpixel_bias(bias: torch.Tensor, stride: int) -> torch.Tensor:
    return bias.repeat_interleave(stride * stride)


def subpixel_conv_transpose2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                              plan: SubpixelPlan) -> torch.Tensor:
    """Eager reference of the rewrite: equals conv_transpose2d(x, weight, bias, ...)."""
    x = _narrow(x, [(max(0, -f), max(0, -b)) for f, b in plan.extra])
    pad = [max(0, e) for axis in reversed(plan.extra) for e in axis]
    if any(pad):
        x = F.pad(x, pad)
    w = subpixel_weight(weight, plan.stride, plan.groups)
    b = subpixel_bias(bias, plan.stride) if bias is not None else None
    y = F.conv2d(x, w, b, padding=plan.conv_padding, groups=plan.groups)
    y = F.pixel_shuffle(y, plan.stride) if plan.stride > 1 else y
    return _narrow(y, plan.crop)


def _narrow(x: torch.Tensor, cuts) -> torch.Tensor:
    """x without cuts[i] = (front, back) rows at each end of its axis -2 + i."""
    for d, (front, back) in zip((-2, -1), cuts):
        x = x.narrow(d, front, x.shape[d] - front - back)
    return x


# ---- the pass -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Deconv:
    x: fx.Node
    weight: fx.Node
    bias: fx.Node | None
    plan: SubpixelPlan


def deconv_to_subpixel(graph: GanGraph, target=None,
                       config: SubpixelConfig = SubpixelConfig()) -> SubpixelResult:
    """Rewrite every eligible 2-D transposed conv of `graph` as a sub-pixel conv; `target` is
    unused."""
    gm = copy_module(graph.module)
    shapes = BatchOneShapes(gm)
    rewritten, skipped, old_attrs, made = [], [], [], {}
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or not edit.is_transposed(node):
            continue
        name = edit.label(node)
        try:
            deconv = _check(gm, node, shapes, config)
        except edit.Keep as why:
            skipped.append((name, str(why)))
            continue
        _rewrite(gm, node, deconv, made)
        old_attrs += [a for a in (deconv.weight, deconv.bias) if a is not None]
        rewritten.append(name)

    report = SubpixelReport(skipped=tuple(skipped), macs_before=graph.macs, macs_after=graph.macs,
                            lit_macs_before=graph.lit_macs, lit_macs_after=graph.lit_macs,
                            params_before=graph.params, params_after=graph.params)
    if not rewritten:
        return SubpixelResult(graph, report)
    edit.drop_dead_attrs(gm, old_attrs)
    new = edit.retraced(graph, gm, f"rewrote {len(rewritten)} transposed convs as conv + pixel_shuffle")
    report = SubpixelReport(rewritten=tuple(rewritten), skipped=tuple(skipped),
                            macs_before=graph.macs, macs_after=new.macs,
                            lit_macs_before=graph.lit_macs, lit_macs_after=new.lit_macs,
                            params_before=graph.params, params_after=new.params)
    return SubpixelResult(new, report)


def _check(gm: fx.GraphModule, node: fx.Node, shapes: BatchOneShapes,
           config: SubpixelConfig) -> _Deconv:
    """The rewrite of `node`, or `edit.Keep` with the reason it stays."""
    x, weight, bias = node.args[0], arg(node, 1, "weight"), arg(node, 2, "bias")
    w = edit.stored(gm, weight)
    if w is None:
        raise edit.Keep(f"weight is computed ({edit.producer(weight)}), not a stored tensor: a "
                    "per-sample (modulated) weight cannot be rearranged once")
    if w.dim() != 4:
        raise edit.Keep(f"{w.dim() - 2}-D transposed conv: pixel_shuffle is 2-D, so only 2-D ones "
                    "are rewritten")
    if bias is not None and edit.stored(gm, bias) is None:
        raise edit.Keep(f"bias is computed ({edit.producer(bias)}), not a stored tensor")
    a = edit.conv_args(node)
    if not isinstance(a["groups"], int):
        raise edit.Keep("groups is computed at run time")
    sh, sw = edit.int_pair(a["stride"], "stride")
    if sh != sw:
        raise edit.Keep(f"unequal strides ({sh}, {sw}): pixel_shuffle needs one factor")
    dilation = edit.int_pair(a["dilation"], "dilation")
    if dilation != (1, 1):
        raise edit.Keep(f"dilation {dilation}: only dilation 1 is rewritten")
    padding = edit.int_pair(a["padding"], "padding")
    output_padding = edit.int_pair(a["output_padding"], "output_padding")
    plan = plan_subpixel(tuple(w.shape[2:]), sh, padding, output_padding, a["groups"])
    if config.max_macs_ratio is not None:
        cin, cout = w.shape[0], w.shape[1] * a["groups"]
        in_hw = shapes.shape(x)[-2:]
        before = cin * in_hw[0] * in_hw[1] * w.shape[1] * w.shape[2] * w.shape[3]
        after = plan.macs(in_hw, cin, cout)
        if after > config.max_macs_ratio * before:
            raise edit.Keep(f"a sub-pixel conv costs {after / before:.2f}x its real MACs "
                        f"({after} vs {before}), over max_macs_ratio={config.max_macs_ratio}")
    return _Deconv(x, weight, bias, plan)


def _rewrite(gm: fx.GraphModule, node: fx.Node, d: _Deconv, made: dict) -> None:
    """Insert pad -> conv2d -> pixel_shuffle -> crop before `node` and route its users there."""
    g, plan, s = gm.graph, d.plan, d.plan.stride
    meta = {k: node.meta[k] for k in _META_KEYS if k in node.meta}

    def call(op, *args):
        new = g.call_function(op, args)
        new.meta.update(meta)
        return new

    with g.inserting_before(node):
        x = d.x
        for dim, (front, back) in zip((-2, -1), plan.extra):
            if front < 0 or back < 0:
                x = call(aten.slice.Tensor, x, dim, max(0, -front), back if back < 0 else None)
        pad = [max(0, e) for axis in reversed(plan.extra) for e in axis]
        if any(pad):
            x = call(aten.constant_pad_nd.default, x, pad, 0.0)
        w = edit.store_beside(gm, d.weight.target, "subpixel_weight", made, (s, plan.groups),
                              lambda t: subpixel_weight(t.detach(), s, plan.groups))
        b = None if d.bias is None else edit.store_beside(
            gm, d.bias.target, "subpixel_bias", made, (s,),
            lambda t: subpixel_bias(t.detach(), s))
        y = call(aten.conv2d.default, x, g.get_attr(w), None if b is None else g.get_attr(b),
                 [1, 1], list(plan.conv_padding), [1, 1], plan.groups)
        if s > 1:
            y = call(aten.pixel_shuffle.default, y, s)
        for dim, (front, back) in zip((-2, -1), plan.crop):
            if front or back:
                y = call(aten.slice.Tensor, y, dim, front, -back if back else None)
    node.replace_all_uses_with(y)
    g.erase_node(node)

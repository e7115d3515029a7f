"""`split_taps`: rewrite a conv with few outputs as a 1 x kw conv whose outputs are the taps of
each kernel row, followed by kh shifted row slices summed, exactly.

Why: CPU conv kernels (ONNX Runtime's MLAS) compute output channels in blocks of the target's
`channel_alignment` (16 on x86). A generator's last layer, a 7x7 conv from 16 to 3 channels at
256x256, therefore computes 16 output channels to keep 3: measured 8.0 ms fp32 / 8.7 ms int8
for its 154M MACs. The same layer rewritten here, with 21 outputs that fill two blocks, measured
3.9 ms fp32 / 3.6 ms int8 (ORT, 2 threads, same MACs). A target's `output_channel_multiple`
rounds the kh*Cout outputs up with zero filters: MLAS's int8 kernels take a slower path for
counts that are not a multiple of 4 (the 1 x 7 conv alone: 21 outputs 1.72 ms, 24 outputs
1.11 ms).

The math, for a 2-D conv with stride 1, dilation 1, groups 1, weight W of shape
(Cout, Cin, kh, kw), bias b and zero padding (ph, pw). Row dy of the kernel contributes

    y[o, i, j] += sum_{c, dx} W[o, c, dy, dx] xp[c, i + dy, j + dx]     (xp: x zero-padded)

which is an ordinary 1 x kw conv of xp evaluated at row i + dy. Stacking the kh kernel rows as
output channels gives one conv with kh*Cout outputs,

    W2[dy*Cout + o, c, 0, dx] = W[o, c, dy, dx]      (W.permute(2, 0, 1, 3), reshaped;
                                                      rows past kh*Cout, if any, are zero)
    z = conv2d(x, W2, padding=(0, pw))               H rows, one per input row
    y = b + sum_{dy=0}^{kh-1} rows(z[dy*Cout : (dy+1)*Cout], dy - ph)   Hout = H + 2ph - kh + 1

where rows(t, s)[i] = t[i + s], and 0 where i + s falls outside [0, H) (the zero padding: those
rows are padded back after the slice instead of computed). This equals conv2d(x, W, b,
padding=(ph, pw)) up to the order of the float sums. Slice bounds are taken from z's ends, so
the rewrite holds for every input size and batch.

When it applies: an ordinary (not transposed) 2-D conv whose weight and bias are stored tensors,
with groups 1, stride 1, dilation 1, kh > 1 and a padding known before run time ('valid' and
'same' for odd kernels are resolved to numbers), and only where it pays on the target's channel
blocks. With a = the alignment, the padded work per kept output channel is ceil(Cout/a)*a / Cout
before and ceil(kh*Cout/a)*a / (kh*Cout) after; the conv is rewritten only when after <=
`SplitTapsConfig.max_waste_ratio` * before (Cout=3, kh=7, a=16: 16/3 before, 32/21 after).
Aligned convs (Cout=64) gain nothing and stay, with the reason in the report.

Cost: the same real MACs times H / Hout (1 for 'same' padding), plus (kh-1)*Cout*Hout*Wout adds
for the sum and a few small pads of Cout-channel rows.

The input graph is never modified: the pass edits a copy and traces it again.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import fx

from gcc_gan.ir import GanGraph, edit, ops
from gcc_gan.ir.meta import arg
from gcc_gan.ir.trace import copy_module

aten = torch.ops.aten

_META_KEYS = ("nn_module_stack", "stack_trace", "source_fn_stack")
_DEFAULT_ALIGNMENT = 16  # MLAS's output-channel block on x86, the target this pass was made for


@dataclass(frozen=True)
class SplitTapsConfig:
    alignment: int | None = None   # output-channel block; None: the target's channel_alignment
    # the rewritten conv's output count is rounded up to this with zero filters; None: the
    # target's output_channel_multiple (1 without a target)
    output_multiple: int | None = None
    max_waste_ratio: float = 0.5   # rewrite when padded work after <= this * padded work before


@dataclass(frozen=True)
class SplitTapsReport:
    rewritten: tuple[str, ...] = ()              # "node (source.module)" of each rewritten conv
    skipped: tuple[tuple[str, str], ...] = ()    # ("node (source.module)", why it stays)
    macs_before: int = 0
    macs_after: int = 0
    lit_macs_before: int = 0
    lit_macs_after: int = 0
    params_before: int = 0
    params_after: int = 0
    name: str = "split_taps"


@dataclass(frozen=True)
class SplitTapsResult:
    graph: GanGraph
    report: SplitTapsReport


def split_taps_weight(weight: torch.Tensor, outputs: int | None = None) -> torch.Tensor:
    """W2 of the module docstring from a conv weight W (Cout, Cin, kh, kw), with zero filters
    appended up to `outputs` output channels (default kh*Cout: none)."""
    cout, cin, kh, kw = weight.shape
    w2 = weight.permute(2, 0, 1, 3).reshape(kh * cout, cin, 1, kw)
    extra = (outputs or kh * cout) - kh * cout
    if extra < 0:
        raise ValueError(f"outputs={outputs} is fewer than the {kh * cout} taps")
    return torch.cat([w2, w2.new_zeros(extra, cin, 1, kw)]).contiguous()


def padded_work(channels: int, alignment: int) -> float:
    """Output channels computed per channel kept, when kernels work in blocks of `alignment`."""
    return math.ceil(channels / alignment) * alignment / channels


# ---- the pass -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Conv:
    x: fx.Node
    weight: fx.Node
    bias: fx.Node | None
    kh: int
    cout: int
    padding: tuple[int, int]
    outputs: int          # of the rewritten conv: kh * cout rounded up to the output multiple


def split_taps(graph: GanGraph, target=None,
               config: SplitTapsConfig = SplitTapsConfig()) -> SplitTapsResult:
    """Rewrite every conv of `graph` that wastes most of its output-channel blocks as a 1 x kw
    conv over its kernel rows plus shifted sums; `target` gives the block (channel_alignment)."""
    alignment = (config.alignment or getattr(target, "channel_alignment", None)
                 or _DEFAULT_ALIGNMENT)
    multiple = (config.output_multiple or getattr(target, "output_channel_multiple", None) or 1)
    gm = copy_module(graph.module)
    rewritten, skipped, old_attrs, made = [], [], [], {}
    for node in list(gm.graph.nodes):
        if (node.op != "call_function" or ops.packet(node.target) not in ops.Conv
                or edit.is_transposed(node)):
            continue
        name = edit.label(node)
        try:
            conv = _check(gm, node, alignment, multiple, config)
        except edit.Keep as why:
            skipped.append((name, str(why)))
            continue
        _rewrite(gm, node, conv, made)
        old_attrs += [a for a in (conv.weight, conv.bias) if a is not None]
        rewritten.append(name)

    report = SplitTapsReport(skipped=tuple(skipped), macs_before=graph.macs, macs_after=graph.macs,
                             lit_macs_before=graph.lit_macs, lit_macs_after=graph.lit_macs,
                             params_before=graph.params, params_after=graph.params)
    if not rewritten:
        return SplitTapsResult(graph, report)
    edit.drop_dead_attrs(gm, old_attrs)
    new = edit.retraced(graph, gm, f"split the kernel rows of {len(rewritten)} narrow convs "
                                   f"into output channels ({alignment}-channel blocks)")
    report = SplitTapsReport(rewritten=tuple(rewritten), skipped=tuple(skipped),
                             macs_before=graph.macs, macs_after=new.macs,
                             lit_macs_before=graph.lit_macs, lit_macs_after=new.lit_macs,
                             params_before=graph.params, params_after=new.params)
    return SplitTapsResult(new, report)


def _padding(value, kernel: tuple[int, int]) -> tuple[int, int]:
    """Numeric (ph, pw); the string forms are numbers too at stride 1, dilation 1, except
    'same' with an even kernel, which pads one side more than the other."""
    if value == "valid":
        return (0, 0)
    if value == "same":
        if any(k % 2 == 0 for k in kernel):
            raise edit.Keep(f"padding 'same' with an even kernel {kernel} pads unevenly")
        return (kernel[0] // 2, kernel[1] // 2)
    if isinstance(value, str):
        raise edit.Keep(f"padding {value!r} is not a number")
    return edit.int_pair(value, "padding")


def _check(gm: fx.GraphModule, node: fx.Node, alignment: int, multiple: int,
           config: SplitTapsConfig) -> _Conv:
    """The rewrite of `node`, or `edit.Keep` with the reason it stays."""
    x, weight, bias = node.args[0], arg(node, 1, "weight"), arg(node, 2, "bias")
    w = edit.stored(gm, weight)
    if w is None:
        raise edit.Keep(f"weight is computed ({edit.producer(weight)}), not a stored tensor")
    if w.dim() != 4:
        raise edit.Keep(f"{w.dim() - 2}-D conv: only 2-D convs are rewritten")
    if bias is not None and edit.stored(gm, bias) is None:
        raise edit.Keep(f"bias is computed ({edit.producer(bias)}), not a stored tensor")
    a = edit.conv_args(node)
    if a["groups"] != 1:
        raise edit.Keep(f"groups {a['groups']}: only groups 1 is rewritten")
    stride = edit.int_pair(a["stride"], "stride")
    dilation = edit.int_pair(a["dilation"], "dilation")
    if stride != (1, 1):
        raise edit.Keep(f"stride {stride}: only stride 1 is rewritten")
    if dilation != (1, 1):
        raise edit.Keep(f"dilation {dilation}: only dilation 1 is rewritten")
    cout, _, kh, kw = w.shape
    if kh == 1:
        raise edit.Keep("kernel height 1: no rows to split")
    padding = _padding(a["padding"], (kh, kw))
    before, after = padded_work(cout, alignment), padded_work(kh * cout, alignment)
    if after > config.max_waste_ratio * before:
        raise edit.Keep(f"does not pay in {alignment}-channel blocks: {cout} outputs do "
                    f"{before:.2f}x the work, {kh * cout} taps {after:.2f}x "
                    f"(max_waste_ratio={config.max_waste_ratio})")
    return _Conv(x, weight, bias, kh, cout, padding, -(-kh * cout // multiple) * multiple)


def _rewrite(gm: fx.GraphModule, node: fx.Node, c: _Conv, made: dict) -> None:
    """Insert conv2d -> kh (channel slice, row slice) -> sum (+ bias) before `node`, route its
    users there."""
    g = gm.graph
    meta = {k: node.meta[k] for k in _META_KEYS if k in node.meta}

    def call(op, *args):
        new = g.call_function(op, args)
        new.meta.update(meta)  # reports name the rewritten layer's source module by these
        return new

    ph, pw = c.padding
    with g.inserting_before(node):
        w = edit.store_beside(gm, c.weight.target, "split_taps_weight", made, (c.outputs,),
                              lambda t: split_taps_weight(t.detach(), c.outputs))
        # no vertical padding: padded rows would only compute zeros (and MACs past the budget)
        z = call(aten.conv2d.default, c.x, g.get_attr(w), None, [1, 1], [0, pw], [1, 1], 1)
        y = None
        for dy in range(c.kh):
            part = call(aten.slice.Tensor, z, 1, dy * c.cout, (dy + 1) * c.cout)
            top, below = max(0, ph - dy), ph - (c.kh - 1) + dy  # rows of zeros, or rows to cut
            # bounds relative to z's ends, not row counts: any input height works
            part = call(aten.slice.Tensor, part, 2, max(0, dy - ph), below if below < 0 else None)
            if top or below > 0:
                part = call(aten.constant_pad_nd.default, part, [0, 0, top, max(0, below)], 0.0)
            y = part if y is None else call(aten.add.Tensor, y, part)
        if c.bias is not None:
            b = edit.store_beside(gm, c.bias.target, "split_taps_bias", made, (),
                                  lambda t: t.detach().reshape(1, -1, 1, 1))
            y = call(aten.add.Tensor, y, g.get_attr(b))
    node.replace_all_uses_with(y)
    g.erase_node(node)

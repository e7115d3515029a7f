"""Channel rules for ops that compute: elementwise, norms, convolutions, matmuls, reductions.

Math each rule relies on:
- elementwise with broadcasting: out[..., c, ...] depends only on the inputs' element at c, so
  dims of equal size unify index by index; a broadcast (size-1) operand constrains nothing.
- conv: y[o] = sum_i W[o, i] * x[i]: W's dim 0 is y's channel, W's dim 1 is x's channel.
  Grouped: group j reads x[j*Cin_g : (j+1)*Cin_g] through W[:, 0:Cin_g]; every group must keep
  the same count, so index i of every group unifies (the group count stays). Depthwise
  (Cin_g == 1): input channel j feeds only group j's outputs, so they unify and a pruned channel
  removes its whole group (the group count follows the channel count).
- transposed conv: W is (Cin, Cout/groups, k...): dims swap roles.
- norms with per-channel statistics (batch, instance) pass channels through; group norm
  normalises each group together, so a group prunes as a whole; layer norm over channels
  normalises across them: removing one changes every output, so those channels freeze.
- an op that consumes a dim without passing it on (a conv's spatial and kernel positions, a
  pool's window) freezes its labels: they are positions, not channels.
- reductions: a sum over channels is unchanged by removing all-zero channels; a mean, max or
  softmax over channels is not (the divisor, the maximum, the partition change), so they freeze.
"""

from __future__ import annotations

import numpy as np
import torch

from ..ir import ops
from ..ir.edit import is_transposed
from ..ir.meta import arg
from .table import arg_fixer, channel_rule

aten = torch.ops.aten


def _tensor_args(ctx, node):
    return [a for a in node.args if ctx.labels(a) is not None]


def broadcast(ctx, operands, out_shape):
    """Output labels of a broadcasting op; unifies operand dims that meet at full size."""
    out = [None] * len(out_shape)
    for labels, shape in operands:
        for i, size in enumerate(shape):
            e = len(out_shape) - len(shape) + i
            if size != out_shape[e] or size == 1:
                continue
            if out[e] is None:
                out[e] = labels[i]
            else:
                ctx.unify(out[e], labels[i])
    return [o if o is not None else ctx.blank(n) for o, n in zip(out, out_shape)]


@channel_rule(ops.Activation - ops.op_set("prelu", "_prelu_kernel", "glu"),
              ops.Arithmetic)
def elementwise(ctx, node):
    tensors = [(ctx.labels(a), ctx.shape(a)) for a in _tensor_args(ctx, node)]
    if not tensors:
        return [ctx.blank(n) for n in ctx.shape(node)]
    return broadcast(ctx, tensors, ctx.shape(node))


@channel_rule(ops.op_set("prelu", "_prelu_kernel"))
def prelu(ctx, node):
    x, w = ctx.labels(node.args[0]), ctx.labels(node.args[1])
    if ctx.shape(node.args[1])[0] > 1:  # one slope per channel (dim 1)
        ctx.unify(x[1], w[0])
    return list(x)


@channel_rule(ops.op_set("batch_norm", "instance_norm", "native_batch_norm",
                         "_native_batch_norm_legit_no_training", "_native_batch_norm_legit"))
def channel_norm(ctx, node):
    x = ctx.labels(node.args[0])
    for p in node.args[1:5]:
        labels = ctx.labels(p)
        if labels is not None:
            ctx.unify(x[1], labels[0])
    out = list(x)
    if node.target in (aten.batch_norm.default, aten.instance_norm.default):
        return out
    return (out, *ctx.blank_outputs(node)[1:])


@channel_rule(ops.op_set("group_norm", "native_group_norm"))
def group_norm(ctx, node):
    x = ctx.labels(node.args[0])
    groups = ctx.int(arg(node, 1, "num_groups") if node.target == aten.group_norm.default
                     else arg(node, 6, "group"))
    per = len(x[1]) // groups
    for j in range(groups):
        ctx.unify_all(x[1][j * per:(j + 1) * per])
    for p in node.args[2:4] if node.target == aten.group_norm.default else node.args[1:3]:
        if ctx.labels(p) is not None:
            ctx.unify(x[1], ctx.labels(p)[0])
    out = list(x)
    if node.target == aten.group_norm.default:
        return out
    return (out, *ctx.blank_outputs(node)[1:])


@arg_fixer(ops.op_set("group_norm"))
def fix_group_norm(fix, node):
    old = fix.old_shape(node.args[0])[1] // node.args[1]
    fix.set_arg(node, 1, fix.new_shape(node.args[0])[1] // old)


@channel_rule(ops.op_set("layer_norm", "native_layer_norm", "rms_norm"))
def layer_norm(ctx, node):
    x = ctx.labels(node.args[0])
    k = len(node.args[1])
    for i in range(len(x) - k, len(x)):
        ctx.freeze(x[i], "normalised over by layer_norm")
    for p in node.args[2:4]:
        if ctx.labels(p) is not None:
            for d, labels in enumerate(ctx.labels(p)):
                ctx.unify(x[len(x) - k + d], labels)
    out = list(x)
    if node.target != aten.native_layer_norm.default:
        return out
    return (out, *ctx.blank_outputs(node)[1:])


def _groups_arg(node) -> tuple[int, str]:
    """(position, name) of the groups argument of a conv call."""
    p = ops.packet(node.target)
    if p in (aten.convolution, aten._convolution):
        return 8, "groups"
    return 6, "groups"


def _groups(ctx, node) -> int:
    i, name = _groups_arg(node)
    return ctx.int(arg(node, i, name, 1))


@channel_rule(ops.Conv, ops.ConvTranspose)
def conv(ctx, node):
    x, w = ctx.labels(node.args[0]), ctx.labels(node.args[1])
    bias = ctx.labels(arg(node, 2, "bias"))
    groups = _groups(ctx, node)
    transposed = is_transposed(node)
    for consumed in (x[0], *x[2:], *w[2:]):  # batch, spatial and kernel positions
        ctx.freeze(consumed, "convolved over")
    w_in, w_out = (w[0], w[1]) if transposed else (w[1], w[0])
    cin = len(x[1])
    if transposed:
        ctx.unify(x[1], w_in)
        out_ch = np.tile(w_out, groups)
    else:
        out_ch = w_out
    if groups > 1 and cin == groups:  # depthwise: channel j owns group j
        if not transposed:
            m = len(w_out) // groups
            for j in range(groups):
                ctx.unify_all(np.concatenate([x[1][j:j + 1], w_out[j * m:(j + 1) * m]]))
        else:  # output j*m + t belongs to input j; W[j, t] is indexed by the input already
            out_ch = np.repeat(x[1], len(w_out))
    elif groups > 1:  # keep every group the same size: index i of each group goes together
        cin_g = cin // groups
        for j in range(1, groups):
            ctx.unify(x[1][j * cin_g:(j + 1) * cin_g], x[1][:cin_g])
        if not transposed:
            ctx.unify(x[1][:cin_g], w_in)
            cout_g = len(w_out) // groups
            for j in range(1, groups):
                ctx.unify(w_out[j * cout_g:(j + 1) * cout_g], w_out[:cout_g])
    else:
        if not transposed:
            ctx.unify(x[1], w_in)
    if bias is not None:
        ctx.unify(bias[0], out_ch)
    ctx.macs(out_ch if not transposed else w_out, w_in)
    return [ctx.blank(ctx.shape(node)[0]), out_ch, *(ctx.blank(n) for n in ctx.shape(node)[2:])]


@arg_fixer(ops.Conv, ops.ConvTranspose)
def fix_conv_groups(fix, node):
    i, name = _groups_arg(node)
    groups = arg(node, i, name, 1)
    if isinstance(groups, int) and groups > 1 and fix.old_shape(node.args[0])[1] == groups:
        fix.set_arg(node, i, fix.new_shape(node.args[0])[1], name)  # depthwise: one per channel


@channel_rule(ops.op_set("linear"))
def linear(ctx, node):
    x, w = ctx.labels(node.args[0]), ctx.labels(node.args[1])
    ctx.unify(x[-1], w[1])
    bias = ctx.labels(arg(node, 2, "bias"))
    if bias is not None:
        ctx.unify(bias[0], w[0])
    ctx.macs(w[0], w[1], *x[:-1])
    return [*x[:-1], w[0]]


@channel_rule(ops.op_set("mm", "addmm"))
def mm(ctx, node):
    a, b = (ctx.labels(t) for t in node.args[-2:])
    ctx.unify(a[1], b[0])
    out = [a[0], b[1]]
    if node.target == aten.addmm.default:
        out = broadcast(ctx, [(out, ctx.shape(node)),
                              (ctx.labels(node.args[0]), ctx.shape(node.args[0]))], ctx.shape(node))
    ctx.macs(out[1], out[0], a[1])
    return out


@channel_rule(ops.op_set("bmm", "baddbmm"))
def bmm(ctx, node):
    a, b = (ctx.labels(t) for t in node.args[-2:])
    ctx.unify(a[0], b[0])
    ctx.unify(a[2], b[1])
    out = [a[0], a[1], b[2]]
    if node.target == aten.baddbmm.default:
        out = broadcast(ctx, [(out, ctx.shape(node)),
                              (ctx.labels(node.args[0]), ctx.shape(node.args[0]))], ctx.shape(node))
    ctx.macs(out[2], out[0], out[1], a[2])
    return out


@channel_rule(ops.op_set("matmul"))
def matmul(ctx, node):
    a, b = ctx.labels(node.args[0]), ctx.labels(node.args[1])
    sa, sb = ctx.shape(node.args[0]), ctx.shape(node.args[1])
    if len(sa) == 1 or len(sb) == 1:
        ctx.unify(a[-1], b[0] if len(sb) == 1 else b[-2])
        out = a[:-1] if len(sb) == 1 else [*b[:-2], b[-1]]
        ctx.macs(*(out or [ctx.blank(1)]), a[-1])
        return out
    ctx.unify(a[-1], b[-2])
    batch = broadcast(ctx, [(a[:-2], sa[:-2]), (b[:-2], sb[:-2])], ctx.shape(node)[:-2])
    out = [*batch, a[-2], b[-1]]
    ctx.macs(out[-1], *out[:-1], a[-1])
    return out


@channel_rule(ops.op_set("mv"))
def mv(ctx, node):
    m, v = ctx.labels(node.args[0]), ctx.labels(node.args[1])
    ctx.unify(m[1], v[0])
    ctx.macs(m[0], m[1])
    return [m[0]]


@channel_rule(ops.op_set("dot", "vdot"))
def dot(ctx, node):
    a, b = ctx.labels(node.args[0]), ctx.labels(node.args[1])
    ctx.unify(a[0], b[0])
    ctx.macs(a[0])
    return []


# Reductions whose value over the kept channels is exactly the value over all channels when the
# removed ones are zero: sums and p-norms.
_SUM_LIKE = ops.op_set("sum", "norm", "linalg_vector_norm")


def _reduced_dims(node, ndim: int) -> list[int]:
    p = ops.packet(node.target)
    if p in ops.op_set("norm", "linalg_vector_norm"):
        dims = arg(node, 2, "dim")
    else:
        dims = arg(node, 1, "dim")
    if dims is None or (isinstance(dims, (list, tuple)) and len(dims) == 0 and
                        p not in ops.op_set("amax", "amin")):
        return list(range(ndim))
    dims = [dims] if isinstance(dims, int) else list(dims)
    return sorted(d % ndim for d in dims) if ndim else []


def _keepdim(node) -> bool:
    p = ops.packet(node.target)
    index = 3 if p in ops.op_set("norm", "linalg_vector_norm") else 2
    return bool(arg(node, index, "keepdim", False))


@channel_rule(ops.op_set("sum", "mean", "amax", "amin", "prod", "norm", "linalg_vector_norm",
                         "var", "std", "all", "any", "logsumexp", "argmax", "argmin"))
def reduction(ctx, node):
    x = ctx.labels(node.args[0])
    reduced = _reduced_dims(node, len(x))
    if ops.packet(node.target) not in _SUM_LIKE:
        for d in reduced:
            ctx.freeze(x[d], f"reduced over by {ops.packet(node.target).__name__}")
    keep = _keepdim(node)
    return [ctx.blank(1) if d in reduced else x[d] for d in range(len(x))
            if keep or d not in reduced]


@channel_rule(ops.op_set("var_mean", "std_mean"))
def reduction_pair(ctx, node):
    x = ctx.labels(node.args[0])
    reduced = _reduced_dims(node, len(x))
    for d in reduced:
        ctx.freeze(x[d], f"reduced over by {ops.packet(node.target).__name__}")
    out = [ctx.blank(1) if d in reduced else x[d] for d in range(len(x))
           if _keepdim(node) or d not in reduced]
    return (out, [a.copy() for a in out])


@channel_rule(ops.op_set("softmax", "_softmax", "log_softmax", "_log_softmax", "cumsum"))
def along_dim(ctx, node):
    x = ctx.labels(node.args[0])
    d = node.args[1] % len(x)
    ctx.freeze(x[d], f"normalised along by {ops.packet(node.target).__name__}")
    return list(x)


@channel_rule(ops.Resample)
def resample(ctx, node):
    """Pooling and interpolation act on the trailing spatial dims; others pass through."""
    x = ctx.labels(node.args[0])
    out_shape = [len(a) for a in ctx.blank_outputs(node)[0]] if ctx.multi_output(node) \
        else ctx.shape(node)
    name = ops.packet(node.target).__name__
    spatial = 3 if "3d" in name else 1 if "1d" in name else 2
    lead = len(out_shape) - spatial
    for d in range(lead, len(x)):
        ctx.freeze(x[d], "resampled over")
    out = [x[d] if d < lead else ctx.blank(out_shape[d]) for d in range(len(out_shape))]
    return (out, [a.copy() for a in out]) if ctx.multi_output(node) else out  # (values, indices)

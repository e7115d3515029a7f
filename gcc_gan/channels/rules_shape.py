"""Channel rules for ops that move data: views and reshapes, cat, split, slice and select.

Math each rule relies on:
- reshape: dims are grouped into runs with equal products (row-major order). Merging a channel
  dim with non-channel dims tiles its labels (B x C -> B*C, C x H x W -> C*H*W): removing a
  channel removes every flat position it covers. Splitting a flat dim (Linear -> view(B, C, 4,
  4), C*r*r -> C, r, r) gives the labels to the one output dim along which every unit lies in a
  single slice, unifying each slice; two channel dims merged into one freeze.
- cat concatenates labels; split/chunk/slice/narrow cut them; select picks one channel (frozen).
Pads, repeats and shuffles are in `rules_layout.py`.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ..ir import ops
from ..ir.meta import arg
from .table import arg_fixer, channel_rule

aten = torch.ops.aten


@channel_rule(ops.op_set("clone", "contiguous", "_to_copy", "to", "type_as", "alias", "detach",
                         "lift_fresh_copy", "dropout", "feature_dropout", "alpha_dropout",
                         "zeros_like", "ones_like", "full_like", "empty_like", "randn_like",
                         "rand_like"))
def same_as_input(ctx, node):
    return list(ctx.labels(node.args[0]))


@channel_rule(ops.op_set("native_dropout"))
def native_dropout(ctx, node):
    x = list(ctx.labels(node.args[0]))
    return (x, [a.copy() for a in x])


@channel_rule(ops.Creation - ops.op_set("zeros_like", "ones_like", "full_like", "empty_like",
                                        "randn_like", "rand_like"))
def creation(ctx, node):
    return [ctx.blank(n) for n in ctx.shape(node)]


# ---------------------------------------------------------------- reshape family

def reshape_labels(ctx, x, in_shape, out_shape):
    out = [None] * len(out_shape)
    for d, size in enumerate(in_shape):
        if size == 1:
            ctx.freeze(x[d], "a one-channel dim disappears in a reshape")
    ins = [d for d, s in enumerate(in_shape) if s != 1]
    outs = [e for e, s in enumerate(out_shape) if s != 1]
    i = j = 0
    while i < len(ins) and j < len(outs):
        group_in, group_out = [ins[i]], [outs[j]]
        p_in, p_out = in_shape[ins[i]], out_shape[outs[j]]
        i, j = i + 1, j + 1
        while p_in != p_out:
            if p_in < p_out:
                group_in.append(ins[i])
                p_in *= in_shape[ins[i]]
                i += 1
            else:
                group_out.append(outs[j])
                p_out *= out_shape[outs[j]]
                j += 1
        _reshape_group(ctx, x, in_shape, out_shape, group_in, group_out, out)
    return [o if o is not None else ctx.blank(n) for o, n in zip(out, out_shape)]


def _reshape_group(ctx, x, in_shape, out_shape, group_in, group_out, out):
    labeled = [d for d in group_in if (x[d] >= 0).any()]
    if not labeled:
        return
    if len(labeled) > 1:
        for d in labeled:
            ctx.freeze(x[d], "a reshape merges two channel dims")
        return
    d = labeled[0]
    sizes = [in_shape[k] for k in group_in]
    pos = group_in.index(d)
    flat = np.tile(np.repeat(x[d], math.prod(sizes[pos + 1:])), math.prod(sizes[:pos]))
    if len(group_out) == 1:
        out[group_out[0]] = flat
        return
    osizes = [out_shape[e] for e in group_out]
    grid = flat.reshape(osizes)
    roots = ctx.roots(flat).reshape(osizes)
    for k, e in enumerate(group_out):
        index = np.broadcast_to(np.arange(osizes[k]).reshape(
            [-1 if a == k else 1 for a in range(len(osizes))]), osizes)
        mask = roots >= 0
        pairs = np.unique(np.stack([roots[mask], index[mask]]), axis=1)
        if len(np.unique(pairs[0])) == pairs.shape[1]:  # every unit lies in one slice along e
            for v in range(osizes[k]):
                ctx.unify_all(np.take(grid, v, axis=k).ravel())
            out[e] = np.moveaxis(grid, k, 0).reshape(osizes[k], -1)[:, 0].copy()
            return
    ctx.freeze(flat, "a reshape spreads channels over several dims")


@channel_rule(ops.op_set("view", "_unsafe_view", "reshape", "flatten", "unflatten", "squeeze",
                         "unsqueeze", "view_as"))
def reshape(ctx, node):
    return reshape_labels(ctx, ctx.labels(node.args[0]), ctx.shape(node.args[0]), ctx.shape(node))


def _resized(fix, sizes, new_dims) -> list:
    """A size list rewritten to the new dims; -1 (inferred) entries stay."""
    return [s if (isinstance(s, int) and s == -1) else fix.size_arg(s, n)
            for s, n in zip(sizes, new_dims)]


@arg_fixer(ops.op_set("view", "_unsafe_view", "reshape"))
def fix_view_sizes(fix, node):
    fix.set_arg(node, 1, _resized(fix, node.args[1], fix.new_shape(node)))


@arg_fixer(ops.op_set("unflatten"))
def fix_unflatten_sizes(fix, node):
    dim = node.args[1] % len(fix.old_shape(node.args[0]))
    fix.set_arg(node, 2, _resized(fix, node.args[2], fix.new_shape(node)[dim:]))


@channel_rule(ops.op_set("permute"))
def permute(ctx, node):
    x = ctx.labels(node.args[0])
    return [x[d % len(x)] for d in node.args[1]]


@channel_rule(ops.op_set("transpose"))
def transpose(ctx, node):
    x = list(ctx.labels(node.args[0]))
    a, b = node.args[1] % len(x), node.args[2] % len(x)
    x[a], x[b] = x[b], x[a]
    return x


@channel_rule(ops.op_set("t"))
def t(ctx, node):
    return list(reversed(ctx.labels(node.args[0])))


@channel_rule(ops.op_set("movedim"))
def movedim(ctx, node):
    x = ctx.labels(node.args[0])
    order = list(range(len(x)))
    src = [node.args[1]] if isinstance(node.args[1], int) else list(node.args[1])
    dst = [node.args[2]] if isinstance(node.args[2], int) else list(node.args[2])
    src, dst = [s % len(x) for s in src], [d % len(x) for d in dst]
    rest = [d for d in order if d not in src]
    perm = [None] * len(x)
    for s, d in zip(src, dst):
        perm[d] = s
    it = iter(rest)
    return [x[p if p is not None else next(it)] for p in perm]


@channel_rule(ops.op_set("expand", "expand_as"))
def expand(ctx, node):
    x, in_shape, out_shape = ctx.labels(node.args[0]), ctx.shape(node.args[0]), ctx.shape(node)
    lead = len(out_shape) - len(in_shape)
    for k, size in enumerate(in_shape):
        if size != out_shape[lead + k]:
            ctx.freeze(x[k], "broadcast by expand")
    return [x[e - lead] if e >= lead and in_shape[e - lead] == out_shape[e] else ctx.blank(n)
            for e, n in enumerate(out_shape)]


arg_fixer(ops.op_set("expand"))(fix_view_sizes)  # expand(x, sizes): the same size list


# ---------------------------------------------------------------- cat, split, slice

@channel_rule(ops.op_set("cat"))
def cat(ctx, node):
    parts = [ctx.labels(t) for t in node.args[0] if math.prod(ctx.shape(t)) > 0]
    ndim = len(parts[0])
    d = arg(node, 1, "dim", 0) % ndim
    for k in range(ndim):
        if k != d:
            for other in parts[1:]:
                ctx.unify(parts[0][k], other[k])
    return [np.concatenate([p[d] for p in parts]) if k == d else parts[0][k] for k in range(ndim)]


@channel_rule(ops.op_set("stack"))
def stack(ctx, node):
    parts = [ctx.labels(t) for t in node.args[0]]
    d = arg(node, 1, "dim", 0) % (len(parts[0]) + 1)
    for other in parts[1:]:
        for k in range(len(parts[0])):
            ctx.unify(parts[0][k], other[k])
    out = list(parts[0])
    out.insert(d, ctx.blank(len(parts)))
    return out


def _slice_bounds(node, size):
    start, end, step = arg(node, 2, "start"), arg(node, 3, "end"), arg(node, 4, "step", 1)
    return slice(start, end, step).indices(size)


@channel_rule(ops.op_set("slice"))
def slice_(ctx, node):
    x = list(ctx.labels(node.args[0]))
    d = arg(node, 1, "dim", 0) % len(x)
    start, end, step = _slice_bounds(node, len(x[d]))
    if step != 1:
        ctx.freeze(x[d], "a strided slice over channels")
    x[d] = x[d][start:end:step]
    return x


@arg_fixer(ops.op_set("slice"))
def fix_slice(fix, node):
    d = arg(node, 1, "dim", 0) % len(fix.old_shape(node.args[0]))
    size = fix.old_shape(node.args[0])[d]
    start, end, _ = _slice_bounds(node, size)
    kept_before = fix.kept_count(node.args[0], d, 0, start)
    fix.set_arg(node, 2, kept_before, "start")
    if arg(node, 3, "end") is not None and end < size:
        fix.set_arg(node, 3, kept_before + fix.kept_count(node.args[0], d, start, end), "end")


@channel_rule(ops.op_set("narrow"))
def narrow(ctx, node):
    x = list(ctx.labels(node.args[0]))
    d, start, length = node.args[1] % len(x), node.args[2] % len(x[node.args[1] % len(x)]), node.args[3]
    x[d] = x[d][start:start + length]
    return x


@arg_fixer(ops.op_set("narrow"))
def fix_narrow(fix, node):
    d = node.args[1] % len(fix.old_shape(node.args[0]))
    start = node.args[2] % fix.old_shape(node.args[0])[d]
    fix.set_arg(node, 2, fix.kept_count(node.args[0], d, 0, start))
    fix.set_arg(node, 3, fix.kept_count(node.args[0], d, start, start + node.args[3]))


@channel_rule(ops.op_set("select"))
def select(ctx, node):
    x = list(ctx.labels(node.args[0]))
    d = node.args[1] % len(x)
    index = node.args[2] % len(x[d])
    ctx.freeze(x[d][index:index + 1], "one channel is selected")
    return x[:d] + x[d + 1:]


@arg_fixer(ops.op_set("select"))
def fix_select(fix, node):
    d = node.args[1] % len(fix.old_shape(node.args[0]))
    index = node.args[2] % fix.old_shape(node.args[0])[d]
    fix.set_arg(node, 2, fix.kept_count(node.args[0], d, 0, index))


def _split_dim(node, ndim) -> int:
    if ops.packet(node.target) == aten.unbind:
        return arg(node, 1, "dim", 0) % ndim
    return arg(node, 2, "dim", 0) % ndim


@channel_rule(ops.op_set("split", "split_with_sizes", "chunk", "unsafe_split", "unbind"))
def split(ctx, node):
    x = ctx.labels(node.args[0])
    d = _split_dim(node, len(x))
    vals = node.meta["val"]
    if ops.packet(node.target) == aten.unbind:
        ctx.freeze(x[d], "unbind turns channels into separate tensors")
        return tuple(x[:d] + x[d + 1:] for _ in vals)
    outs, start = [], 0
    for v in vals:
        size = ctx.shape(v)[d]
        outs.append([x[k] if k != d else x[d][start:start + size] for k in range(len(x))])
        start += size
    return tuple(outs)


@arg_fixer(ops.op_set("split", "split_with_sizes", "chunk", "unsafe_split"))
def fix_split(fix, node):
    """Pieces pruned unequally: every split becomes split_with_sizes with the kept counts."""
    ndim = len(fix.old_shape(node.args[0]))
    d = _split_dim(node, ndim)
    sizes, start = [], 0
    for v in node.meta["val"]:
        size = fix.old_shape(v)[d]
        sizes.append(fix.kept_count(node.args[0], d, start, start + size))
        start += size
    node.target = aten.split_with_sizes.default
    node.args = (node.args[0], sizes, d)
    node.kwargs = {}

"""Channel rules for ops that lay data out: pads, flips, rolls, repeats, shuffles, gathers.

Math each rule relies on:
- constant padding on a channel dim adds non-channel indices; reflect/replicate padding copies
  channels across the border, which would change if one were removed: they freeze.
- repeat/tile copies labels (a channel removed is removed from every copy).
- pixel_shuffle(r): output channel c is made of input channels c*r^2 .. c*r^2 + r^2 - 1, which
  therefore go together; pixel_unshuffle(r) repeats each label r^2 times.
- channel_shuffle(g) on C = g*n: out[i*g + j] = in[j*n + i]; index i of every group goes
  together so the shuffle stays a shuffle with n - 1 channels per group.
- index_select picks channels by a tensor the rewrite cannot renumber: those channels freeze.
"""

from __future__ import annotations

import numpy as np
import torch

from ..ir import ops
from ..ir.meta import arg
from .table import channel_rule

aten = torch.ops.aten


def _pad_amounts(node):
    p = ops.packet(node.target)
    if p == aten.pad:
        return list(node.args[1]), arg(node, 2, "mode", "constant") == "constant"
    if p == aten.constant_pad_nd:
        return list(node.args[1]), True
    return list(node.args[1]), False  # reflection_padNd / replication_padNd


@channel_rule(ops.op_set("pad", "constant_pad_nd", "reflection_pad1d", "reflection_pad2d",
                         "reflection_pad3d", "replication_pad1d", "replication_pad2d",
                         "replication_pad3d"))
def pad(ctx, node):
    x = list(ctx.labels(node.args[0]))
    amounts, constant = _pad_amounts(node)
    for k in range(len(amounts) // 2):
        d = len(x) - 1 - k
        lo, hi = amounts[2 * k], amounts[2 * k + 1]
        if lo == 0 and hi == 0:
            continue
        if not constant:
            ctx.freeze(x[d], "reflect/replicate padding copies channels")
            x[d] = ctx.blank(len(x[d]) + lo + hi)
            continue
        body = x[d][max(-lo, 0):len(x[d]) - max(-hi, 0)]
        x[d] = np.concatenate([ctx.blank(max(lo, 0)), body, ctx.blank(max(hi, 0))])
    return x


@channel_rule(ops.op_set("flip"))
def flip(ctx, node):
    x = list(ctx.labels(node.args[0]))
    for d in node.args[1]:
        x[d % len(x)] = x[d % len(x)][::-1].copy()
    return x


@channel_rule(ops.op_set("roll"))
def roll(ctx, node):
    x = list(ctx.labels(node.args[0]))
    dims = arg(node, 2, "dims", [])
    shifts = node.args[1]
    dims = [dims] if isinstance(dims, int) else list(dims)
    shifts = [shifts] if isinstance(shifts, int) else list(shifts)
    if not dims:  # rolls the flattened tensor
        for d in range(len(x)):
            ctx.freeze(x[d], "roll over the flattened tensor")
        return [ctx.blank(len(a)) for a in x]
    for d, s in zip(dims, shifts):
        ctx.freeze(x[d % len(x)], "roll over channels")
        x[d % len(x)] = np.roll(x[d % len(x)], s)
    return x


@channel_rule(ops.op_set("repeat", "tile"))
def repeat(ctx, node):
    x = ctx.labels(node.args[0])
    reps = list(node.args[1])
    reps = [1] * (len(x) - len(reps)) + reps
    lead = len(reps) - len(x)
    out = [ctx.blank(r) for r in reps[:lead]]
    return out + [np.tile(x[k], reps[lead + k]) for k in range(len(x))]


@channel_rule(ops.op_set("repeat_interleave"))
def repeat_interleave(ctx, node):
    x = list(ctx.labels(node.args[0]))
    repeats, dim = node.args[1] if len(node.args) > 1 else None, arg(node, 2, "dim")
    if not isinstance(repeats, int) or dim is None:
        for a in x:
            ctx.freeze(a, "repeat_interleave with tensor repeats or no dim")
        return [ctx.blank(n) for n in ctx.shape(node)]
    x[dim % len(x)] = np.repeat(x[dim % len(x)], repeats)
    return x


@channel_rule(ops.op_set("pixel_shuffle"))
def pixel_shuffle(ctx, node):
    x, r = list(ctx.labels(node.args[0])), node.args[1]
    channels = x[-3]
    ctx.freeze(x[-2], "shuffled into space")
    ctx.freeze(x[-1], "shuffled into space")
    for c in range(len(channels) // (r * r)):
        ctx.unify_all(channels[c * r * r:(c + 1) * r * r])
    out_shape = ctx.shape(node)
    return [*x[:-3], channels[::r * r].copy(), ctx.blank(out_shape[-2]), ctx.blank(out_shape[-1])]


@channel_rule(ops.op_set("pixel_unshuffle"))
def pixel_unshuffle(ctx, node):
    x, r = list(ctx.labels(node.args[0])), node.args[1]
    ctx.freeze(x[-2], "shuffled into channels")
    ctx.freeze(x[-1], "shuffled into channels")
    out_shape = ctx.shape(node)
    return [*x[:-3], np.repeat(x[-3], r * r), ctx.blank(out_shape[-2]), ctx.blank(out_shape[-1])]


@channel_rule(ops.op_set("channel_shuffle", "native_channel_shuffle"))
def channel_shuffle(ctx, node):
    x, g = list(ctx.labels(node.args[0])), node.args[1]
    n = len(x[1]) // g
    by_group = x[1].reshape(g, n)
    for i in range(n):
        ctx.unify_all(by_group[:, i])
    x[1] = by_group.T.reshape(-1).copy()
    return x


@channel_rule(ops.op_set("index_select"))
def index_select(ctx, node):
    x = list(ctx.labels(node.args[0]))
    d = node.args[1] % len(x)
    ctx.freeze(x[d], "index_select picks channels by a tensor of indices")
    x[d] = ctx.blank(ctx.shape(node)[d])
    return x


@channel_rule(ops.op_set("embedding"))
def embedding(ctx, node):
    w, idx = ctx.labels(node.args[0]), ctx.labels(node.args[1])
    return [*idx, w[1]]

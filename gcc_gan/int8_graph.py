"""Which tensors an int8 program keeps in 8 bits around its int8 convs: graph rules shared by
the quantize pass (`passes/quantize.py`, which decides and calibrates) and the cost model
(`targets/int8_runtime.py`, which follows what the lowering then runs).

`plan` arguments map int8 conv node names to anything (the pass's `LayerQuant`s, or True).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import fx

from gcc_gan.ir import ops
from gcc_gan.ir.meta import node_val
from gcc_gan.ir.shapes import BatchOneShapes


def quantized_output(conv: fx.Node) -> fx.Node:
    """The tensor whose range a conv's output is quantized with: a ReLU that reads it alone,
    directly or through value movers that each read alone (a sub-pixel conv's shuffle and crop),
    else the conv's own output. With the ReLU's range (zero point at the minimum) the int8
    kernel's saturation is the ReLU: ONNX Runtime drops it and the DQ -> Q between two int8
    convs. With the conv's own range that pair stayed and requantized the tensor (a DCGAN at
    ngf 32: one pair per layer)."""
    tensor = conv
    while len(tensor.users) == 1:
        user = next(iter(tensor.users))
        if user.op != "call_function" or not user.args or user.args[0] is not tensor:
            break
        if ops.packet(user.target) in ops.Relu:
            return user
        if ops.packet(user.target) not in ops.ValueMover:
            break
        tensor = user
    return conv


_ADDS = ops.op_set("add")
_PADS = ops.op_set("pad", "reflection_pad2d", "replication_pad2d", "constant_pad_nd")


def residual_adds(gm: fx.GraphModule) -> list[fx.Node]:
    """Adds of two activations of one shape (residual joins): what QLinearAdd runs."""
    shapes = BatchOneShapes(gm)
    found = []
    for node in gm.graph.nodes:
        if (node.op == "call_function" and ops.packet(node.target) in _ADDS and not node.kwargs
                and len(node.args) == 2 and all(isinstance(a, fx.Node) for a in node.args)):
            a, b = (shapes.shape(x) if isinstance(node_val(x), torch.Tensor) else None
                    for x in node.args)
            if a is not None and a == b == shapes.shape(node) and len(a) == 4:
                found.append(node)
    return found


def conv_fed_by(node: fx.Node, plan: Mapping):
    """The int8 conv whose input is `node`'s output, directly or through pads (which keep its
    values, so they share its int8 parameters)."""
    for user in node.users:
        if user.name in plan and user.args[0] is node:
            return plan[user.name]
        if user.op == "call_function" and ops.packet(user.target) in _PADS:
            found = conv_fed_by(user, plan)
            if found is not None:
                return found
    return None


def norm_activations(norm: fx.Node) -> list[fx.Node]:
    """The activations right after `norm`, each the only reader of what it follows."""
    chain, tensor = [], norm
    while len(tensor.users) == 1:
        user = next(iter(tensor.users))
        if not (user.op == "call_function" and ops.packet(user.target) in ops.Activation
                and user.args and user.args[0] is tensor):
            break
        chain.append(user)
        tensor = user
    return chain


def read_in_int8(tensor: fx.Node, plan, adds: set[str]) -> bool:
    """Whether every reader of `tensor` reads it quantized: an int8 conv (through pads), an
    int8 add, or an instance norm that only it feeds and whose output (after its activations)
    is read so: the lowering then runs the norm as an 8-bit unit (`gcc_gan.lower.nhwc`)."""
    def reads(user: fx.Node) -> bool:
        if user.op != "call_function":
            return False
        if user.name in plan or user.name in adds:
            return user.name in adds or user.args[0] is tensor
        if ops.packet(user.target) in _PADS:
            return read_in_int8(user, plan, adds)
        if ops.packet(user.target) in ops.InstanceNorm and len(tensor.users) == 1:
            chain = norm_activations(user)
            return read_in_int8(chain[-1] if chain else user, plan, adds)
        return False
    return bool(tensor.users) and all(reads(user) for user in tensor.users)


def chosen_adds(adds: list[fx.Node], plan) -> set[str]:
    """The adds that run in int8 given the int8 convs (`plan`'s keys): those whose output feeds
    an int8 conv, and those whose output every reader reads quantized (the branch sums of an
    inception block, which feed each other and then a norm). Decided from the last add back."""
    chosen: set[str] = set()
    for node in reversed(adds):
        if conv_fed_by(node, plan) is not None or read_in_int8(node, plan, chosen):
            chosen.add(node.name)
    return chosen


def int8_add_nodes(gm: fx.GraphModule, convs) -> list[str]:
    """The residual adds this pass runs in int8 when `convs` (node names) are its int8 convs."""
    adds = residual_adds(gm)
    chosen = chosen_adds(adds, dict.fromkeys(convs, True))
    return [node.name for node in adds if node.name in chosen]

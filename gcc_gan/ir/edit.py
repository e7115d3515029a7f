"""Helpers for passes that rewrite a GanGraph's program: read and replace the tensors behind
get_attr nodes, recognise transposed convs, and turn an edited copy into a new GanGraph.

Passes edit a copy (`trace.copy_module`) and finish with `retraced`, which exports the edited
program again: every shape is re-derived, and an inconsistent edit fails there, loudly.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import fx, nn

from . import ops
from .graph import GanGraph
from .meta import arg, source_module
from .trace import trace


def label(node: fx.Node) -> str:
    """'name (source.module)', how reports name a node."""
    module = source_module(node)
    return f"{node.name} ({module})" if module else node.name


def is_transposed(node: fx.Node) -> bool:
    """A transposed conv, as conv_transpose*d or as convolution(..., transposed=True)."""
    p = ops.packet(node.target)
    if p in ops.ConvTranspose:
        return True
    return p in ops.op_set("convolution", "_convolution") and bool(arg(node, 6, "transposed"))


def owner(gm: fx.GraphModule, target: str) -> tuple[nn.Module, str]:
    """The module holding a get_attr target, and the attribute's name there."""
    path, _, name = target.rpartition(".")
    return (gm.get_submodule(path) if path else gm), name


def stored(gm: fx.GraphModule, a) -> torch.Tensor | None:
    """The tensor a get_attr node reads, or None for anything computed."""
    if not (isinstance(a, fx.Node) and a.op == "get_attr"):
        return None
    module, name = owner(gm, a.target)
    t = getattr(module, name, None)
    return t if isinstance(t, torch.Tensor) else None


def drop_dead_attrs(gm: fx.GraphModule, attrs: list[fx.Node]) -> None:
    """Remove the tensors of `attrs` that nothing reads any more (and the step counter of a
    BatchNorm whose statistics went: an eval-mode program never reads it)."""
    live = {n.target for n in gm.graph.find_nodes(op="get_attr") if n.users}
    emptied = set()
    for target in dict.fromkeys(a.target for a in attrs):
        if target in live:
            continue
        module, name = owner(gm, target)
        for n in gm.graph.find_nodes(op="get_attr", target=target):
            gm.graph.erase_node(n)
        delattr(module, name)
        if name == "running_mean":
            emptied.add(target.rpartition(".")[0])
    for path in emptied:
        target = f"{path}.num_batches_tracked" if path else "num_batches_tracked"
        module, name = owner(gm, target)
        if target not in live and name in module._buffers:
            for n in gm.graph.find_nodes(op="get_attr", target=target):
                gm.graph.erase_node(n)
            delattr(module, name)


def out_of_place_where_unobserved(gm: fx.GraphModule) -> int:
    """Rewrite in-place ops (`relu_`) as their out-of-place twins where nothing else can see
    the mutation: the mutated tensor, and every tensor it is a view of, has no other user.
    Why: an edit can leave an in-place op on a view (folding the norm between a sub-pixel crop
    and its `relu_`), which export turns into `slice_scatter` writes into the base tensor, and
    ONNX Runtime into ScatterND plus Transposes (63% of an int8 DCGAN's time). Returns the count."""
    count = 0
    for node in gm.graph.nodes:
        twin = _out_of_place_twin(node)
        if twin is None or not node.args or not _sole_owner(node.args[0]):
            continue
        node.target = twin
        count += 1
    return count


def _out_of_place_twin(node: fx.Node):
    """`aten.relu.default` for a `aten.relu_.default` node; None for anything else."""
    op = node.target
    if node.op != "call_function" or not isinstance(op, torch._ops.OpOverload):
        return None
    schema = op._schema
    first = schema.arguments[0].alias_info if schema.arguments else None
    if first is None or not first.is_write or not schema.name.endswith("_"):
        return None
    packet = getattr(torch.ops.aten, schema.name.split("::")[-1][:-1], None)
    return getattr(packet, op._overloadname, None) if packet is not None else None


def _sole_owner(tensor) -> bool:
    """`tensor` is computed here (not an input or a weight) and has one user, and so has every
    tensor it is a view of."""
    while isinstance(tensor, fx.Node) and tensor.op == "call_function" and len(tensor.users) == 1:
        op = tensor.target
        if not (isinstance(op, torch._ops.OpOverload) and op.is_view):
            return True
        tensor = tensor.args[0]
    return False


def retraced(graph: GanGraph, gm: fx.GraphModule, note: str) -> GanGraph:
    """The edited copy `gm` of `graph`'s program as a new GanGraph (exported again)."""
    out_of_place_where_unobserved(gm)
    gm.graph.lint()
    gm.recompile()
    new = trace(gm, graph.example_inputs, dynamic_batch=graph.dynamic_batch)
    new.model_class = graph.model_class
    new.notes = [*graph.notes, note]
    return new


class Keep(Exception):
    """Raised by a rewrite pass's checks for a node it leaves as it is; the message says why."""


_CONVOLUTION = ops.op_set("convolution", "_convolution")


def conv_args(node: fx.Node) -> dict:
    """stride, padding, dilation, groups (and output_padding where the schema has one) of a
    conv node of any schema: conv_transpose*d, convolution / _convolution, conv*d."""
    p = ops.packet(node.target)
    if p in ops.ConvTranspose:
        # conv_transpose2d(input, weight, bias, stride, padding, output_padding, groups, dilation)
        names = {"stride": (3, 1), "padding": (4, 0), "output_padding": (5, 0),
                 "groups": (6, 1), "dilation": (7, 1)}
    elif p in _CONVOLUTION:
        # convolution(input, weight, bias, stride, padding, dilation, transposed,
        #             output_padding, groups)
        names = {"stride": (3, 1), "padding": (4, 0), "dilation": (5, 1),
                 "output_padding": (7, 0), "groups": (8, 1)}
    else:  # conv2d(input, weight, bias, stride, padding, dilation, groups); padding may be a str
        names = {"stride": (3, 1), "padding": (4, 0), "dilation": (5, 1), "groups": (6, 1)}
    return {n: arg(node, i, n, default) for n, (i, default) in names.items()}


def int_pair(value, what: str) -> tuple[int, int]:
    """(h, w) of an int or int-list conv argument; `Keep` when it is computed at run time."""
    values = list(value) if isinstance(value, (list, tuple)) else [value]
    if any(not isinstance(v, int) for v in values):
        raise Keep(f"{what} is computed at run time")
    return (values[0], values[0]) if len(values) == 1 else tuple(values)


def producer(a) -> str:
    """What computes `a`, for messages: "name = op", the node kind, or the value's type."""
    if isinstance(a, fx.Node):
        return f"{a.name} = {ops.packet(a.target)}" if a.op == "call_function" else a.op
    return type(a).__name__


def replace_stored(gm: fx.GraphModule, target: str, value: torch.Tensor) -> None:
    """Replace the stored tensor `target` of `gm` (a copy) by `value`, keeping its kind
    (parameter, buffer or plain tensor) and dtype."""
    module, name = owner(gm, target)
    old = getattr(module, name)
    value = value.to(dtype=old.dtype)
    if isinstance(old, torch.nn.Parameter):
        setattr(module, name, torch.nn.Parameter(value, requires_grad=old.requires_grad))
    elif name in module._buffers:
        module._buffers[name] = value
    else:
        setattr(module, name, value)


def store_beside(gm: fx.GraphModule, old_target: str, stem: str, made: dict, key: tuple,
                 make) -> str:
    """Store make(old) beside `old_target` as `<owner>.<stem>` (a parameter, buffer or constant
    like the old one) and return its target. `made` remembers (old_target, stem, key), so a
    tensor several rewritten nodes share is made once."""
    if (old_target, stem, key) in made:
        return made[old_target, stem, key]
    module, old_name = owner(gm, old_target)
    old = getattr(module, old_name)
    name, i = stem, 0
    while hasattr(module, name):
        i += 1
        name = f"{stem}_{i}"
    with torch.no_grad():
        value = make(old).clone()
    if isinstance(old, nn.Parameter):
        setattr(module, name, nn.Parameter(value, requires_grad=old.requires_grad))
    elif old_name in module._buffers:
        module.register_buffer(name, value, persistent=old_name not in
                               module._non_persistent_buffers_set)
    else:
        setattr(module, name, value)
    prefix = old_target.rpartition(".")[0]
    made[old_target, stem, key] = f"{prefix}.{name}" if prefix else name
    return made[old_target, stem, key]


def retraced_keeping_annotations(graph: GanGraph, gm: fx.GraphModule, note: str) -> GanGraph:
    """Retrace the edited copy `gm` and carry its ``gcc_gan.`` node annotations over, matched by
    node name (re-export keeps names) and, failing that, by the weight the node reads."""
    new = retraced(graph, gm, note)
    by_name = {n.name: n for n in new.graph.nodes}
    by_weight = {n.args[1].target: n for n in new.graph.nodes if n.op == "call_function"
                 and len(n.args) > 1 and isinstance(n.args[1], fx.Node)
                 and n.args[1].op == "get_attr"}
    lost = []
    for node in gm.graph.nodes:
        for key, value in node.meta.items():
            if not key.startswith("gcc_gan."):
                continue
            weight = getattr(value, "weight", None)
            dst = by_name.get(node.name)
            if weight is not None and (dst is None or len(dst.args) < 2
                                       or getattr(dst.args[1], "target", None) != weight):
                dst = by_weight.get(weight)
                if dst is not None and hasattr(value, "node"):
                    value = dataclasses.replace(value, node=dst.name)
            if dst is None:
                lost.append(f"{key} on {node.name}")
            else:
                dst.meta[key] = value
    if lost:
        new.notes.append(f"annotations lost on re-export: {lost}")
    return new

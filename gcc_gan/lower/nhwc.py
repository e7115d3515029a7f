"""Rewrites for runtimes that run int8 convs in NHWC (ONNX Runtime's CPU kernels): ops between
two int8 convs that only come in NCHW are rewritten so the layout transposes the runtime puts
around each conv cancel. Each rewrite is exact (the norm rewrite up to float rounding) and
keeps the model valid ONNX with NCHW semantics, so any runtime still runs it.

- `nhwc_pixel_shuffles`: an int8 conv's DepthToSpace becomes transposes and reshapes that move
  whole runs of channels (the conv's output channels reordered to match).
- `nhwc_instance_norms`: DQ -> InstanceNormalization -> [activation] -> Q becomes
  BatchNormalization in training mode over the (H*W, N*C) view of the NHWC tensor, which
  normalizes each channel of each image over its pixels: InstanceNormalization for any batch,
    y = (x - mean_hw(x)) / sqrt(var_hw(x) + eps) * gamma_c + beta_c.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper


def static_shapes(model: onnx.ModelProto) -> dict[str, tuple]:
    """4-D tensors whose channel and spatial sizes shape inference knows; the batch is its
    size, its symbol (a str), or None."""
    inferred = onnx.shape_inference.infer_shapes(model)
    out = {}
    for v in (list(inferred.graph.value_info) + list(inferred.graph.output)
              + list(inferred.graph.input)):
        dims = v.type.tensor_type.shape.dim
        if len(dims) == 4 and all(d.HasField("dim_value") for d in dims[1:]):
            batch = (dims[0].dim_value if dims[0].HasField("dim_value")
                     else dims[0].dim_param or None)
            out[v.name] = (batch, *(d.dim_value for d in dims[1:]))
    return out


def topological_order(graph: onnx.GraphProto) -> None:
    known = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    ordered, pending = [], list(graph.node)
    while pending:
        ready = [n for n in pending if all(i in known for i in n.input)]
        if not ready:
            raise RuntimeError("an ONNX rewrite made a cycle")
        for n in ready:
            known.update(n.output)
        ordered += ready
        placed = {id(n) for n in ready}
        pending = [n for n in pending if id(n) not in placed]
    del graph.node[:]
    graph.node.extend(ordered)


def nhwc_pixel_shuffles(model: onnx.ModelProto, int8_convs: list, overrides: dict) -> int:
    """Rewrite int8 Conv -> DepthToSpace (the sub-pixel upsample) for ONNX Runtime's NHWC int8
    convs; returns how many were rewritten. Exact.

    ONNX Runtime runs an int8 conv in NHWC and transposes its output back to NCHW, where
    DepthToSpace moves every byte on its own: 1.3 ms for a 64-channel 129x129 uint8 tensor.
    Here the conv's output channels are reordered from (c, i, j) to (i, j, c) (its weight and
    bias rows, and its per-channel weight overrides), and the shuffle becomes Transpose to NHWC
    (which cancels the runtime's own transpose back), Reshape, a Transpose that copies whole
    runs of 2*C bytes, Reshape, Transpose to NCHW: 0.25 ms for the same tensor. Only for
    convs with one group whose output feeds nothing but the shuffle and whose spatial size is
    known, and whose weight and bias are stored tensors no other node reads."""
    graph = model.graph
    if not any(n.op_type == "DepthToSpace" for n in graph.node):
        return 0   # spares the shape inference below
    inits = {t.name: t for t in graph.initializer}
    uses: dict[str, int] = {}
    for n in graph.node:
        for i in n.input:
            uses[i] = uses.get(i, 0) + 1
    shapes = static_shapes(model)
    rewritten = 0
    for conv in int8_convs:
        out = conv.output[0]
        shuffle = next((n for n in graph.node if n.op_type == "DepthToSpace" and n.input[0] == out),
                       None)
        attrs = {a.name: helper.get_attribute_value(a) for a in
                 (shuffle.attribute if shuffle is not None else ())}
        groups = next((a.i for a in conv.attribute if a.name == "group"), 1)
        shape = shapes.get(out)
        params = [name for name in conv.input[1:3] if name]   # weight, bias: reordered here
        if (shuffle is None or uses.get(out) != 1 or groups != 1 or shape is None
                or attrs.get("mode", b"DCR") != b"CRD"
                or any(name not in inits or uses.get(name) != 1 for name in params)):
            continue
        r = attrs["blocksize"]
        _, channels, height, width = shape
        order = _dcr_order(channels // (r * r), r)
        for name in params:
            t = numpy_helper.to_array(inits[name])
            inits[name].CopyFrom(numpy_helper.from_array(t[order], name))
        if len(overrides.get(conv.input[1], [])) == channels:   # per channel
            overrides[conv.input[1]] = [overrides[conv.input[1]][k] for k in order]
        _replace_with_nhwc_shuffle(graph, shuffle, r, channels // (r * r), height * r, width * r)
        rewritten += 1
    if rewritten:
        topological_order(graph)
    return rewritten


def _dcr_order(channels: int, r: int) -> list[int]:
    """Old (c, i, j) channel index of each new (i, j, c) channel."""
    return [c * r * r + i * r + j for i in range(r) for j in range(r) for c in range(channels)]


def _replace_with_nhwc_shuffle(graph, shuffle, r: int, channels: int, height: int, width: int):
    src, dst, stem = shuffle.input[0], shuffle.output[0], shuffle.name or shuffle.output[0]
    split = f"{stem}_nhwc_split_shape"
    merged = f"{stem}_nhwc_merged_shape"
    graph.initializer.extend([
        numpy_helper.from_array(np.array([0, 0, 0, r, r, channels], np.int64), split),
        numpy_helper.from_array(np.array([0, height, width, channels], np.int64), merged)])
    names = [f"{stem}_nhwc_{k}" for k in range(4)]
    nodes = [helper.make_node("Transpose", [src], [names[0]], perm=[0, 2, 3, 1]),
             helper.make_node("Reshape", [names[0], split], [names[1]]),
             helper.make_node("Transpose", [names[1]], [names[2]], perm=[0, 1, 3, 2, 4, 5]),
             helper.make_node("Reshape", [names[2], merged], [names[3]]),
             helper.make_node("Transpose", [names[3]], [dst], perm=[0, 3, 1, 2])]
    for k, node in enumerate(nodes):
        node.name = f"{stem}_nhwc_{k}"
    index = list(graph.node).index(shuffle)
    graph.node.remove(shuffle)
    for k, node in enumerate(nodes):
        graph.node.insert(index + k, node)


# Unary elementwise ops that may sit between the norm and its Q: layout-blind, so they run on
# the (H*W, N*C) view as they are (Clip's min/max are scalars; PRelu's slope is per channel and
# is left out).
_ACTIVATIONS = {"Relu", "LeakyRelu", "Elu", "Selu", "Celu", "Sigmoid", "HardSigmoid", "Tanh",
                "Softplus", "Clip"}
_MIN_OPSET = 15   # BatchNormalization's training mode and Shape's start/end


def nhwc_instance_norms(model: onnx.ModelProto) -> int:
    """Rewrite DQ -> InstanceNormalization -> [activations] -> Q on a per-tensor 8-bit input
    into the NHWC form (module docstring); returns how many were rewritten.

    ONNX Runtime's InstanceNormalization is NCHW only, so each norm between two NHWC int8
    convs costs a uint8 transpose on either side, and the pad before the next conv runs on
    NCHW rows (5-7x slower than on NHWC pixels, measured alone). Rewritten, the norm's input
    is `Transpose(2, 3, 0, 1)` of the 8-bit tensor (the runtime merges it with the transpose
    after the conv: for one image a copy, the same bytes) flattened to (H*W, N*C); its Q
    output is reshaped to (H, W, N, C) and transposed back, a transpose the runtime pushes
    through pads and adds to the next conv. BatchNormalization's scale and bias are the norm's,
    tiled N times; its mean and variance inputs only feed the running statistics, which
    nothing reads. Only for norms with static C, H, W whose every intermediate tensor feeds
    the next op alone. Measured on ResNet-9 at 3e9 MACs, int8, in turns: 21.1 -> 19.4 ms
    (`benchmarks/quant.py`)."""
    graph = model.graph
    if _opset(model) < _MIN_OPSET or not any(n.op_type == "InstanceNormalization"
                                              for n in graph.node):
        return 0   # spares the shape inference below
    consumers: dict[str, list] = {}
    for n in graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    producer = {o: n for n in graph.node for o in n.output}
    initializers = {t.name: t for t in graph.initializer}
    shapes = static_shapes(model)
    matches = []
    for node in graph.node:
        if node.op_type == "InstanceNormalization":
            match = _norm_chain(node, producer, consumers, initializers, shapes, graph)
            if match:
                matches.append(match)
    batch = _BatchTensors(graph)
    for dq, norm, activations, q in matches:
        _replace_norm_chain(graph, dq, norm, activations, q, shapes[norm.output[0]], batch)
    if matches:
        removed = {o for dq, norm, acts, _ in matches for n in (dq, norm, *acts) for o in n.output}
        kept = [v for v in graph.value_info if v.name not in removed]
        del graph.value_info[:]
        graph.value_info.extend(kept)
        topological_order(graph)
    return len(matches)


def _opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def _norm_chain(norm, producer, consumers, initializers, shapes, graph):
    """(dq, norm, activations, q) when `norm` is rewritable, else None."""
    outputs = {o.name for o in graph.output}
    dq = producer.get(norm.input[0])
    shape = shapes.get(norm.output[0])
    if (dq is None or dq.op_type != "DequantizeLinear" or not _scalar(dq.input[1], initializers)
            or consumers.get(dq.output[0]) != [norm] or shape is None):
        return None
    activations, tensor = [], norm.output[0]
    while tensor not in outputs and len(consumers.get(tensor, [])) == 1:
        user = consumers[tensor][0]
        if user.op_type == "QuantizeLinear" and _scalar(user.input[1], initializers):
            return dq, norm, activations, user
        if user.op_type not in _ACTIVATIONS or any(
                i and not _scalar(i, initializers) for i in user.input[1:]):
            return None
        activations.append(user)
        tensor = user.output[0]
    return None


def _scalar(name: str, initializers: dict) -> bool:
    t = initializers.get(name)
    return t is not None and int(np.prod(t.dims)) == 1


class _BatchTensors:
    """N*C-value tensors for BatchNormalization's parameters, each made once per (what, N) and
    shared by every norm that needs the same one. N is a constant for a static batch (ONNX
    Runtime then folds them), else read off a graph input with the same batch symbol, or off
    the norm's own input."""

    def __init__(self, graph: onnx.GraphProto):
        self.graph = graph
        self.inputs_by_symbol: dict[str, str] = {}
        for i in graph.input:
            dims = i.type.tensor_type.shape.dim
            if dims and dims[0].dim_param:
                self.inputs_by_symbol.setdefault(dims[0].dim_param, i.name)
        self.made: dict[tuple, str] = {}

    def _once(self, key: tuple, make) -> str:
        if key not in self.made:
            self.made[key] = f"nhwc_norm_{len(self.made)}"
            make(self.made[key])
        return self.made[key]

    def _node(self, op: str, inputs: list[str], name: str, **attrs) -> None:
        self.graph.node.append(helper.make_node(op, inputs, [name], name=name, **attrs))

    def _constant(self, values: np.ndarray, name: str) -> None:
        self.graph.initializer.append(numpy_helper.from_array(values, name))

    def images(self, batch, x: str) -> str:
        """A 1-element int64 tensor holding N (`batch`: a size or a symbol)."""
        if isinstance(batch, int):
            return self._once(("N", batch), lambda name: self._constant(
                np.array([batch], np.int64), name))
        source = self.inputs_by_symbol.get(batch, x)
        return self._once(("N", source), lambda name: self._node("Shape", [source], name,
                                                                 start=0, end=1))

    def tiled(self, param: str, n: str) -> str:
        """`param` (C values) repeated for each of the `n` images."""
        return self._once(("tiled", param, n), lambda name: self._node("Tile", [param, n], name))

    def filled(self, value: float, channels: int, n: str) -> str:
        """N*C copies of `value`: the running-statistics inputs, never the scale or bias
        tensors themselves (ONNX Runtime may write the running mean and variance over these
        inputs' buffers)."""
        c = self._once(("C", channels), lambda name: self._constant(
            np.array([channels], np.int64), name))
        count = self._once(("N*C", channels, n), lambda name: self._node("Mul", [n, c], name))
        return self._once(("filled", value, count), lambda name: self._node(
            "ConstantOfShape", [count], name,
            value=numpy_helper.from_array(np.array([value], np.float32))))


def _replace_norm_chain(graph, dq, norm, activations, q, shape, batch: _BatchTensors):
    n, channels, height, width = shape
    stem = norm.name or norm.output[0]
    eps = next((a.f for a in norm.attribute if a.name == "epsilon"), 1e-5)
    x8, scale, bias = dq.input[0], norm.input[1], norm.input[2]
    view = f"{stem}_nhwc_view_shape"
    graph.initializer.append(numpy_helper.from_array(
        np.array([height, width, -1, channels], np.int64), view))
    names = [f"{stem}_nhwc_{k}" for k in range(5)]
    images = batch.images(n, x8)
    nodes = [helper.make_node("Transpose", [x8], [names[0]], perm=[2, 3, 0, 1]),
             helper.make_node("Flatten", [names[0]], [names[1]], axis=2),
             helper.make_node("DequantizeLinear", [names[1], *dq.input[1:]], [names[2]]),
             helper.make_node("BatchNormalization",
                              [names[2], batch.tiled(scale, images), batch.tiled(bias, images),
                               batch.filled(0.0, channels, images),
                               batch.filled(1.0, channels, images)],
                              [names[3], f"{stem}_nhwc_mean", f"{stem}_nhwc_var"],
                              epsilon=eps, training_mode=1)]
    tensor = names[3]
    for k, act in enumerate(activations):
        copy = onnx.NodeProto()
        copy.CopyFrom(act)
        copy.input[0], copy.output[0] = tensor, f"{stem}_nhwc_act{k}"
        nodes.append(copy)
        tensor = copy.output[0]
    quantize = onnx.NodeProto()
    quantize.CopyFrom(q)
    quantize.input[0], quantize.output[0] = tensor, names[4]
    nodes += [quantize,
              helper.make_node("Reshape", [names[4], view], [f"{stem}_nhwc_hwnc"]),
              helper.make_node("Transpose", [f"{stem}_nhwc_hwnc"], [q.output[0]],
                               perm=[2, 3, 0, 1])]
    for k, node in enumerate(nodes):
        node.name = f"{stem}_nhwc_node{k}"
    for node in (dq, norm, *activations, q):
        graph.node.remove(node)
    graph.node.extend(nodes)

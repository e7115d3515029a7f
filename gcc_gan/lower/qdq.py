"""QDQ ONNX from `quantize_int8`'s decisions, with ONNX Runtime's tooling doing the insertion.

Every scale and zero point comes from the pass (`LayerQuant`) through ONNX Runtime's
`TensorQuantOverrides`: for each int8 conv, its input tensor, its output tensor and its weight
initializer. The fx node names are the ONNX tensor names (torch.onnx names values after the
exported program's nodes), and weights keep their module paths as initializer names. ONNX
Runtime then fuses each DQ -> Conv -> Q into an int8 kernel, and DQ, DQ -> Add -> Q into
QLinearAdd for the adds the pass chose. Tensors the plan does not name keep float.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper
from onnxruntime.quantization import (
    CalibrationDataReader,
    QuantFormat,
    QuantType,
    quantize_static,
)

from ..quant import QParams
from ..quiet import quiet_loggers

_TYPES = {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}


class _Feeds(CalibrationDataReader):
    def __init__(self, feeds: list[dict[str, np.ndarray]]):
        self._it = iter(feeds)

    def get_next(self):
        return next(self._it, None)


def _override(qp: QParams, dtype: str) -> list[dict]:
    np_type = np.uint8 if dtype == "uint8" else np.int8
    entries = [{"scale": np.array(s, dtype=np.float32), "zero_point": np.array(z, dtype=np_type)}
               for s, z in zip(qp.scale, qp.zero_point)]
    if qp.axis is not None:  # ONNX Runtime reads per-channel overrides by their axis
        for e in entries:
            e["axis"] = qp.axis
    return entries


def to_qdq(model_bytes: bytes, plan, feeds: list[dict[str, np.ndarray]], adds=(),
           nhwc_shuffles: bool = True) -> tuple[bytes, list[str], int]:
    """The QDQ model, the plan's layers the ONNX graph did not contain (left float), and how
    many pixel shuffles run in NHWC (`nhwc_pixel_shuffles`, unless `nhwc_shuffles` is False).
    `adds` (`AddQuant`s) become QDQ adds, which ONNX Runtime runs as QLinearAdd."""
    model = onnx.load_model_from_string(model_bytes)
    # the ONNX Conv that computes each planned node's output; its inputs are the real names
    # (in-place ops like relu_ have no tensor of their own name in ONNX)
    conv_of = {n.output[0]: n for n in model.graph.node if n.op_type == "Conv" and n.output}
    present = [q for q in plan if q.node in conv_of]
    missing = [q.node for q in plan if q.node not in conv_of]
    act = present[0].input_qparams.dtype if present else "uint8"
    overrides: dict[str, list[dict]] = {}
    for q in present:
        conv = conv_of[q.node]
        overrides[conv.input[0]] = _override(q.input_qparams, act)
        overrides[q.node] = _override(q.output_qparams, act)
        overrides[conv.input[1]] = _override(q.weight_qparams, "int8")
    add_nodes = []
    for a, node in _onnx_adds(model, adds):
        for name, qp in zip(node.input, a.input_qparams):
            overrides.setdefault(name, _override(qp, act))
        overrides.setdefault(node.output[0], _override(a.output_qparams, act))
        add_nodes.append(node.name)
    per_channel = any(q.weight_qparams.axis is not None for q in present)
    shuffles = (nhwc_pixel_shuffles(model, [conv_of[q.node] for q in present], overrides)
                if nhwc_shuffles else 0)
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "fp32.onnx", Path(tmp) / "qdq.onnx"
        src.write_bytes(model.SerializeToString())
        with quiet_loggers(""):  # its advice to pre-process applies to other exporters
            quantize_static(str(src), str(dst), _Feeds(feeds), quant_format=QuantFormat.QDQ,
                            op_types_to_quantize=["Conv", "Add"],
                            nodes_to_quantize=[conv_of[q.node].name for q in present]
                            + add_nodes,
                            per_channel=per_channel, activation_type=_TYPES[act],
                            weight_type=QuantType.QInt8,
                            extra_options={"TensorQuantOverrides": overrides,
                                           "WeightSymmetric": True})
        model = onnx.load(str(dst))
    move_data_movement_into_int8(model)
    return model.SerializeToString(), missing, shuffles


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
    shapes = _static_shapes(model)
    rewritten = 0
    for conv in int8_convs:
        out = conv.output[0]
        shuffle = next((n for n in graph.node if n.op_type == "DepthToSpace" and n.input[0] == out),
                       None)
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in
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
        _topological_order(graph)
    return rewritten


def _dcr_order(channels: int, r: int) -> list[int]:
    """Old (c, i, j) channel index of each new (i, j, c) channel."""
    return [c * r * r + i * r + j for i in range(r) for j in range(r) for c in range(channels)]


def _static_shapes(model: onnx.ModelProto) -> dict[str, tuple]:
    """4-D tensors whose channel and spatial sizes shape inference knows."""
    inferred = onnx.shape_inference.infer_shapes(model)
    out = {}
    for v in list(inferred.graph.value_info) + list(inferred.graph.output):
        dims = v.type.tensor_type.shape.dim
        if len(dims) == 4 and all(d.HasField("dim_value") for d in dims[1:]):
            out[v.name] = tuple(d.dim_value if d.HasField("dim_value") else None for d in dims)
    return out


def _replace_with_nhwc_shuffle(graph, shuffle, r: int, channels: int, height: int, width: int):
    src, dst, stem = shuffle.input[0], shuffle.output[0], shuffle.name or shuffle.output[0]
    split = f"{stem}_nhwc_split_shape"
    merged = f"{stem}_nhwc_merged_shape"
    graph.initializer.extend([
        numpy_helper.from_array(np.array([0, 0, 0, r, r, channels], np.int64), split),
        numpy_helper.from_array(np.array([0, height, width, channels], np.int64), merged)])
    names = [f"{stem}_nhwc_{k}" for k in range(4)]
    nodes = [onnx.helper.make_node("Transpose", [src], [names[0]], perm=[0, 2, 3, 1]),
             onnx.helper.make_node("Reshape", [names[0], split], [names[1]]),
             onnx.helper.make_node("Transpose", [names[1]], [names[2]], perm=[0, 1, 3, 2, 4, 5]),
             onnx.helper.make_node("Reshape", [names[2], merged], [names[3]]),
             onnx.helper.make_node("Transpose", [names[3]], [dst], perm=[0, 3, 1, 2])]
    for k, node in enumerate(nodes):
        node.name = f"{stem}_nhwc_{k}"
    index = list(graph.node).index(shuffle)
    graph.node.remove(shuffle)
    for k, node in enumerate(nodes):
        graph.node.insert(index + k, node)


def _onnx_adds(model: onnx.ModelProto, adds) -> list[tuple]:
    """(AddQuant, ONNX Add node) pairs. The exporter names some tensors its own way (fx `add`
    became `add_105`, in-place `relu__2` became `relu_2`), so an add is the ONNX Add that reads
    the most of its operands by name, in the same position, when that Add is the only one;
    each found add's output name then stands in for its fx name."""
    onnx_adds = [n for n in model.graph.node if n.op_type == "Add" and len(n.input) == 2]
    onnx_name: dict[str, str] = {}
    pairs = []
    for a in adds:
        names = [onnx_name.get(i, i) for i in a.inputs]
        scored = [(sum(x == y for x, y in zip(names, n.input)), n) for n in onnx_adds]
        best = max((score for score, _ in scored), default=0)
        found = [n for score, n in scored if score == best]
        if best and len(found) == 1:
            onnx_name[a.node] = found[0].output[0]
            pairs.append((a, found[0]))
    return pairs


# Ops that only move or copy values: they commute with a per-tensor Q or DQ, so they can run
# on the 8-bit tensor instead of the float one (4x less memory traffic). The sub-pixel rewrite's
# DepthToSpace and crops and the reflection pads before each conv were 15% of an int8 ResNet-9.
_MOVERS = {"Pad", "DepthToSpace", "SpaceToDepth", "Slice", "Transpose", "Reshape", "Flatten",
           "Squeeze", "Unsqueeze"}


def _per_tensor(node: onnx.NodeProto, initializers: dict) -> bool:
    scale = initializers.get(node.input[1])
    return scale is not None and int(np.prod(scale.dims)) == 1


def _pad_keeps_zero(node: onnx.NodeProto, initializers: dict) -> bool:
    """Reflect/edge pads copy values; a constant pad commutes only when it pads with 0 (which
    becomes the zero point)."""
    mode = next((a.s.decode() for a in node.attribute if a.name == "mode"), "constant")
    if mode != "constant":
        return True
    if len(node.input) < 3 or not node.input[2]:
        return True
    value = initializers.get(node.input[2])
    return value is not None and not numpy_helper.to_array(value).any()


def move_data_movement_into_int8(model: onnx.ModelProto) -> int:
    """Rewrite DQ -> mover into mover -> DQ, and mover -> Q into Q -> mover, until none is left;
    returns how many moves were made. Exact: the movers never compute with the values."""
    graph = model.graph
    initializers = {t.name: t for t in graph.initializer}
    outputs = {o.name for o in graph.output}
    touched: set[str] = set()
    moves = 0
    while True:
        producer = {o: n for n in graph.node for o in n.output}
        consumers: dict[str, list] = {}
        for n in graph.node:
            for i in n.input:
                consumers.setdefault(i, []).append(n)
        move = _next_move(graph, producer, consumers, initializers, outputs)
        if move is None:
            break
        touched.update(move())
        moves += 1
    if moves:
        _topological_order(graph)
        kept = [v for v in graph.value_info if v.name not in touched]  # their dtype changed
        del graph.value_info[:]
        graph.value_info.extend(kept)
    return moves


def _next_move(graph, producer, consumers, initializers, outputs):
    for node in graph.node:
        if node.op_type == "QuantizeLinear" and node.output[0] not in outputs:
            dq = producer.get(node.input[0])
            if dq is not None and dq.op_type == "DequantizeLinear" and _same_qparams(
                    dq, node, initializers):
                return lambda q=node, dq=dq: _drop_requantize(graph, q, dq, consumers)
        if node.op_type not in _MOVERS or len(node.output) != 1:
            continue
        if node.op_type == "Pad" and not _pad_keeps_zero(node, initializers):
            continue
        dq = producer.get(node.input[0])
        if (dq is not None and dq.op_type == "DequantizeLinear" and _per_tensor(dq, initializers)
                and len(consumers[dq.output[0]]) == 1 and dq.output[0] not in outputs):
            return lambda node=node, dq=dq: _sink_dequantize(node, dq)
        users = consumers.get(node.output[0], [])
        if (len(users) == 1 and users[0].op_type == "QuantizeLinear"
                and _per_tensor(users[0], initializers) and node.output[0] not in outputs):
            return lambda node=node, q=users[0]: _hoist_quantize(node, q)
    return None


def _same_qparams(a: onnx.NodeProto, b: onnx.NodeProto, initializers: dict) -> bool:
    def values(node):
        return [numpy_helper.to_array(initializers[i]) if i in initializers else None
                for i in (list(node.input[1:3]) + [""])[:2]]
    (sa, za), (sb, zb) = values(a), values(b)
    same_zero = (za is None and zb is None) or (za is not None and zb is not None
                                                and za.dtype == zb.dtype and np.array_equal(za, zb))
    return sa is not None and sb is not None and np.array_equal(sa, sb) and same_zero


def _drop_requantize(graph: onnx.GraphProto, q: onnx.NodeProto, dq: onnx.NodeProto,
                     consumers: dict) -> list[str]:
    """x8 -> DQ -> Q -> y8 with the same scale and zero point: y8 is x8."""
    for user in consumers.get(q.output[0], []):
        for i, name in enumerate(user.input):
            if name == q.output[0]:
                user.input[i] = dq.input[0]
    graph.node.remove(q)
    if len(consumers[dq.output[0]]) == 1:
        graph.node.remove(dq)
    return []


def _zero_point_as_pad_value(node: onnx.NodeProto, qdq: onnx.NodeProto) -> None:
    """A constant pad of 0 on the 8-bit tensor pads with the zero point (absent: 0)."""
    if node.op_type != "Pad":
        return
    while len(node.input) < 3:
        node.input.append("")
    node.input[2] = qdq.input[2] if len(qdq.input) > 2 else ""


def _sink_dequantize(node: onnx.NodeProto, dq: onnx.NodeProto) -> list[str]:
    """x8 -> DQ -> node -> y   becomes   x8 -> node -> y8 -> DQ -> y"""
    y = node.output[0]
    node.input[0] = dq.input[0]
    node.output[0] = dq.input[0] = f"{y}_int8"
    dq.output[0] = y
    _zero_point_as_pad_value(node, dq)
    return [y, f"{y}_int8"]


def _hoist_quantize(node: onnx.NodeProto, q: onnx.NodeProto) -> list[str]:
    """x -> node -> y -> Q -> y8   becomes   x -> Q -> x8 -> node -> y8"""
    y8 = q.output[0]
    q.input[0] = node.input[0]
    q.output[0] = node.input[0] = f"{y8}_before_{node.name or node.op_type}"
    node.output[0] = y8
    _zero_point_as_pad_value(node, q)
    return [y8, q.output[0]]


def _topological_order(graph: onnx.GraphProto) -> None:
    known = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    ordered, pending = [], list(graph.node)
    while pending:
        ready = [n for n in pending if all(i in known for i in n.input)]
        if not ready:
            raise RuntimeError("moving Q/DQ around data-movement ops made a cycle")
        for n in ready:
            known.update(n.output)
        ordered += ready
        placed = {id(n) for n in ready}
        pending = [n for n in pending if id(n) not in placed]
    del graph.node[:]
    graph.node.extend(ordered)

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
from dataclasses import dataclass
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
from .nhwc import nhwc_instance_norms, nhwc_pixel_shuffles, topological_order

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


@dataclass(frozen=True)
class Qdq:
    data: bytes                  # the serialized QDQ model
    missing: list[str]           # the plan's layers the ONNX graph did not contain (left float)
    nhwc_shuffles: int           # pixel shuffles rewritten by `nhwc_pixel_shuffles`
    nhwc_norms: int              # instance norms rewritten by `nhwc_instance_norms`


def to_qdq(model_bytes: bytes, plan, feeds: list[dict[str, np.ndarray]], adds=(),
           nhwc_shuffles: bool = True, nhwc_norms: bool = True) -> Qdq:
    """The QDQ model of `plan`, with the NHWC rewrites (`gcc_gan.lower.nhwc`) unless turned
    off. `adds` (`AddQuant`s) become QDQ adds, which ONNX Runtime runs as QLinearAdd."""
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
    norms = nhwc_instance_norms(model) if nhwc_norms else 0
    return Qdq(model.SerializeToString(), missing, shuffles, norms)


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
        topological_order(graph)
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

"""QDQ ONNX from `quantize_int8`'s decisions, with ONNX Runtime's tooling doing the insertion.

Every scale and zero point comes from the pass (`LayerQuant`) through ONNX Runtime's
`TensorQuantOverrides`: for each int8 conv, its input tensor, its output tensor and its weight
initializer. The fx node names are the ONNX tensor names (torch.onnx names values after the
exported program's nodes), and weights keep their module paths as initializer names. ONNX
Runtime then fuses each DQ -> Conv -> Q into an int8 kernel. Tensors the plan does not name
keep float.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType,
                                      quantize_static)

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


def to_qdq(model_bytes: bytes, plan, feeds: list[dict[str, np.ndarray]]) -> tuple[bytes, list[str]]:
    """The QDQ model, and the plan's layers the ONNX graph did not contain (left float)."""
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
    per_channel = any(q.weight_qparams.axis is not None for q in present)
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "fp32.onnx", Path(tmp) / "qdq.onnx"
        src.write_bytes(model_bytes)
        with quiet_loggers(""):  # its advice to pre-process applies to other exporters
            quantize_static(str(src), str(dst), _Feeds(feeds), quant_format=QuantFormat.QDQ,
                            op_types_to_quantize=["Conv"],
                            nodes_to_quantize=[conv_of[q.node].name for q in present],
                            per_channel=per_channel, activation_type=_TYPES[act],
                            weight_type=QuantType.QInt8,
                            extra_options={"TensorQuantOverrides": overrides,
                                           "WeightSymmetric": True})
        return dst.read_bytes(), missing

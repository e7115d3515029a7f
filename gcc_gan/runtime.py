"""The ONNX Runtime session every part of gcc-gan uses: lowering's parity check, `run`, and
latency measurement run the same configuration, so what is checked is what is timed.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from onnx import TensorProto, helper, numpy_helper


def default_threads() -> int:
    """Logical cores, capped at torch's thread count so ORT and torch are timed alike."""
    return min(os.cpu_count() or 1, torch.get_num_threads())


def ort_session(onnx_path_or_bytes: str | Path | bytes, *,
                threads: int | None = None) -> ort.InferenceSession:
    """A CPU ONNX Runtime session with all graph optimisations and a fixed thread count.

    The thread count is stored in the session's options (`intra_op_num_threads`), where
    `time_onnx` reads it back. inter-op parallelism is 1: a generator is a chain of ops, and
    a second pool would only compete with the intra-op one for the same cores.
    """
    options = ort.SessionOptions()
    options.intra_op_num_threads = default_threads() if threads is None else threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Idle ORT workers otherwise spin for a while after each run, stealing the cores from
    # whatever runs next: the eager-torch side of a side-by-side timing, or the user's code.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    model = onnx_path_or_bytes if isinstance(onnx_path_or_bytes, bytes) else str(onnx_path_or_bytes)
    return ort.InferenceSession(model, sess_options=options, providers=["CPUExecutionProvider"])


@functools.cache
def int8_pairs_saturate() -> bool:
    """Whether this host's ONNX Runtime int8 convs saturate pairs of uint8 x int8 products.

    On x86 CPUs without VNNI (AVX2, AVX-512F), MLAS multiplies uint8 activations by int8
    weights with VPMADDUBSW, which adds each two adjacent products into an int16 with
    saturation: 255 * 127 * 2 = 64770 does not fit, and a conv whose inputs and weights are both
    near their extremes loses accuracy (ONNX Runtime's quantization guide suggests reduce_range,
    7-bit weights, there). Measured rather than read from CPU flags, since the runtime picks its kernel by
    what it finds: a 1x1 int8 conv over 64 channels of 255 with weights of 127 gives 64 * 255 *
    127 exactly, or 32 * 32767 where pairs saturate.
    """
    channels = 64
    x = helper.make_tensor_value_info("x", TensorProto.UINT8, [1, channels, 2, 2])
    y = helper.make_tensor_value_info("y", TensorProto.UINT8, None)
    scalars = {"x_scale": 1.0, "w_scale": 1.0, "y_scale": 8192.0}
    inits = [numpy_helper.from_array(np.array(v, np.float32), k) for k, v in scalars.items()]
    inits += [numpy_helper.from_array(np.array(0, np.uint8), "x_zp"),
              numpy_helper.from_array(np.array(0, np.int8), "w_zp"),
              numpy_helper.from_array(np.array(0, np.uint8), "y_zp"),
              numpy_helper.from_array(np.full((8, channels, 1, 1), 127, np.int8), "w")]
    conv = helper.make_node("QLinearConv", ["x", "x_scale", "x_zp", "w", "w_scale", "w_zp",
                                            "y_scale", "y_zp"], ["y"])
    model = helper.make_model(helper.make_graph([conv], "probe", [x], [y], inits),
                              opset_imports=[helper.make_opsetid("", 13)])
    out = ort_session(model.SerializeToString(), threads=1).run(
        None, {"x": np.full((1, channels, 2, 2), 255, np.uint8)})[0]
    exact = round(channels * 255 * 127 / scalars["y_scale"])   # 253; saturated pairs: 128
    return bool(np.any(np.abs(out.astype(int) - exact) > 1))

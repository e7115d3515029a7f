"""Data-movement ops run on the 8-bit tensor: the rewrite is exact and skips what would not be."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import torch

from gcc_gan import trace
from gcc_gan.lower import lower_onnx
from gcc_gan.lower.qdq import move_data_movement_into_int8
from gcc_gan.passes.quantize import QuantConfig, quantize_int8

SCALE, ZERO = 0.05, 128


def _model(pad_mode="reflect", pad_value=None, per_channel=False) -> onnx.ModelProto:
    """x -> Q -> DQ -> Pad -> Q -> DQ -> DepthToSpace -> Slice -> y (the shape of a sub-pixel
    up-sampling layer between two int8 convs)."""
    scale = np.full(8, SCALE, np.float32) if per_channel else np.array(SCALE, np.float32)
    zero = np.full(8, ZERO, np.uint8) if per_channel else np.array(ZERO, np.uint8)
    inits = [numpy_helper.from_array(scale, "s"), numpy_helper.from_array(zero, "z"),
             numpy_helper.from_array(np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64), "pads"),
             numpy_helper.from_array(np.array([1, 1], np.int64), "starts"),
             numpy_helper.from_array(np.array([9, 9], np.int64), "ends"),
             numpy_helper.from_array(np.array([2, 3], np.int64), "axes")]
    pad_inputs = ["dq1", "pads"]
    if pad_value is not None:
        inits.append(numpy_helper.from_array(np.array(pad_value, np.float32), "v"))
        pad_inputs.append("v")
    axis = {"axis": 1} if per_channel else {}
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q1"], **axis),
             helper.make_node("DequantizeLinear", ["q1", "s", "z"], ["dq1"], **axis),
             helper.make_node("Pad", pad_inputs, ["p"], name="pad", mode=pad_mode),
             helper.make_node("QuantizeLinear", ["p", "s", "z"], ["q2"], **axis),
             helper.make_node("DequantizeLinear", ["q2", "s", "z"], ["dq2"], **axis),
             helper.make_node("DepthToSpace", ["dq2"], ["d"], blocksize=2, mode="CRD"),
             helper.make_node("Slice", ["d", "starts", "ends", "axes"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                         [1, 8, 4, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 8, 8])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)], ir_version=9)


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


def _input_types(model: onnx.ModelProto) -> dict[str, str]:
    """op -> the op type producing its data input."""
    producer = {o: n.op_type for n in model.graph.node for o in n.output}
    return {n.op_type: producer.get(n.input[0], "input") for n in model.graph.node
            if n.op_type in ("Pad", "DepthToSpace", "Slice")}


@pytest.mark.parametrize("pad_mode, pad_value", [("reflect", None), ("edge", None),
                                                 ("constant", None), ("constant", 0.0)])
def test_movers_run_on_the_8_bit_tensor_and_the_output_is_identical(pad_mode, pad_value):
    x = np.random.default_rng(0).normal(0, 2, (1, 8, 4, 4)).astype(np.float32)
    before = _model(pad_mode, pad_value)
    after = _model(pad_mode, pad_value)
    moves = move_data_movement_into_int8(after)
    onnx.checker.check_model(after)
    assert moves == 4  # Q above the pad; DQ below the pad, the DepthToSpace and the slice
    assert _input_types(after) == {"Pad": "QuantizeLinear", "DepthToSpace": "Pad",
                                   "Slice": "DepthToSpace"}
    np.testing.assert_array_equal(_run(after, x), _run(before, x))


def test_a_nonzero_constant_pad_and_per_channel_scales_stay_float():
    x = np.random.default_rng(1).normal(0, 2, (1, 8, 4, 4)).astype(np.float32)
    nonzero = _model("constant", 1.5)
    move_data_movement_into_int8(nonzero)
    assert _input_types(nonzero)["Pad"] == "DequantizeLinear"   # 1.5 may not be a step
    np.testing.assert_array_equal(_run(nonzero, x), _run(_model("constant", 1.5), x))
    per_channel = _model(per_channel=True)
    assert move_data_movement_into_int8(per_channel) == 0  # DepthToSpace mixes channels


class _SubPixel(torch.nn.Module):
    """conv -> pixel_shuffle: the sub-pixel upsample deconv_to_subpixel writes."""

    def __init__(self, cin=8, cout=6, r=2):
        super().__init__()
        self.conv = torch.nn.Conv2d(cin, cout * r * r, 3, padding=1)
        self.shuffle = torch.nn.PixelShuffle(r)

    def forward(self, x):
        return self.shuffle(self.conv(x)).relu()


@pytest.mark.parametrize("per_channel", [False, True])
def test_int8_pixel_shuffle_runs_in_nhwc_with_identical_output(per_channel, tmp_path):
    torch.manual_seed(0)
    x = torch.randn(1, 8, 12, 10)
    graph = trace(_SubPixel().eval(), (x,))
    calib = [(torch.randn(1, 8, 12, 10),) for _ in range(2)]
    int8 = quantize_int8(graph, config=QuantConfig(per_channel=per_channel), calib_data=calib).graph
    rewritten = lower_onnx(int8, calib=calib, threads=1)
    plain = lower_onnx(int8, calib=calib, threads=1, nhwc_shuffles=False)
    ops = [n.op_type for n in onnx.load_model_from_string(rewritten.data).graph.node]
    assert "DepthToSpace" not in ops and ops.count("Transpose") == 3
    assert any("1 pixel shuffle(s)" in note for note in rewritten.notes) and not plain.notes
    assert "DepthToSpace" in [n.op_type for n in onnx.load_model_from_string(plain.data).graph.node]
    assert np.array_equal(rewritten.run(x).numpy(), plain.run(x).numpy())
    # the premise: ONNX Runtime's NHWC int8 conv feeds the reshape with no transpose between
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(rewritten.data, options, providers=["CPUExecutionProvider"])
    nodes = onnx.load(options.optimized_model_filepath).graph.node
    producer = {o: n for n in nodes for o in n.output}
    first_reshape = next(n for n in nodes if n.op_type == "Reshape")
    assert producer[first_reshape.input[0]].op_type == "QLinearConv"

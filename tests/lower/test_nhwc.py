"""Instance norms between int8 convs become NHWC BatchNormalization: the same values for any
batch, and only where every condition of the rewrite holds."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from gcc_gan import trace, zoo
from gcc_gan.lower import lower_onnx
from gcc_gan.lower.nhwc import nhwc_instance_norms
from gcc_gan.metrics import psnr
from gcc_gan.passes.deconv_to_subpixel import deconv_to_subpixel
from gcc_gan.passes.quantize import quantize_int8

C, H, W = 6, 5, 7
SCALE_IN, SCALE_OUT = 0.05, 0.02


def _model(batch="N", activation="LeakyRelu", opset=19, extra_reader=False, end="Q",
           per_channel_dq=False) -> onnx.ModelProto:
    """x -> Q -> DQ -> InstanceNormalization(gamma, beta) -> activation -> Q -> DQ -> y."""
    rng = np.random.default_rng(0)
    dq_scale = (np.full(C, SCALE_IN, np.float32) if per_channel_dq
                else np.array(SCALE_IN, np.float32))
    dq_zero = np.full(C, 128, np.uint8) if per_channel_dq else np.array(128, np.uint8)
    inits = [numpy_helper.from_array(np.array(SCALE_IN, np.float32), "s"),
             numpy_helper.from_array(np.array(128, np.uint8), "z"),
             numpy_helper.from_array(dq_scale, "ds"), numpy_helper.from_array(dq_zero, "dz"),
             numpy_helper.from_array(np.array(SCALE_OUT, np.float32), "so"),
             numpy_helper.from_array(np.array(100, np.uint8), "zo"),
             numpy_helper.from_array(rng.uniform(0.5, 2, C).astype(np.float32), "gamma"),
             numpy_helper.from_array(rng.normal(0, 0.5, C).astype(np.float32), "beta")]
    axis = {"axis": 1} if per_channel_dq else {}
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"]),
             helper.make_node("DequantizeLinear", ["q", "ds", "dz"], ["dq"], **axis),
             helper.make_node("InstanceNormalization", ["dq", "gamma", "beta"], ["n"],
                              name="norm", epsilon=1e-5)]
    last = "n"
    if activation:
        nodes.append(helper.make_node(activation, ["n"], ["a"]))
        last = "a"
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, C, H, W])]
    if end == "Q":
        nodes += [helper.make_node("QuantizeLinear", [last, "so", "zo"], ["q2"]),
                  helper.make_node("DequantizeLinear", ["q2", "so", "zo"], ["y"])]
    else:   # the norm's output stays float
        nodes.append(helper.make_node("Identity", [last], ["y"]))
    if extra_reader:
        nodes.append(helper.make_node("Identity", ["dq"], ["dq_copy"]))
        outputs.append(helper.make_tensor_value_info("dq_copy", TensorProto.FLOAT, None))
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, C, H, W])],
        outputs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=9)


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


def _input(batch: int, seed: int = 1) -> np.ndarray:
    # channels with their own offsets and spreads, as a conv's outputs have
    rng = np.random.default_rng(seed)
    return (rng.normal(0, 1, (batch, C, H, W)) * rng.uniform(0.5, 3, (1, C, 1, 1))
            + rng.normal(0, 2, (1, C, 1, 1))).astype(np.float32)


@pytest.mark.parametrize("activation", ["LeakyRelu", "Relu", None])
def test_the_nhwc_norm_gives_the_instance_norms_8_bit_values_for_any_batch(activation):
    before, after = _model(activation=activation), _model(activation=activation)
    assert nhwc_instance_norms(after) == 1
    onnx.checker.check_model(after, full_check=True)
    ops = [n.op_type for n in after.graph.node]
    assert "InstanceNormalization" not in ops and "BatchNormalization" in ops
    for batch in (1, 3):
        x = _input(batch)
        want, got = _run(before, x), _run(after, x)
        # both compute in float32 and round to 8 bits: a value on a rounding boundary may
        # land one step apart, nothing more
        steps = np.abs(got - want) / SCALE_OUT
        assert steps.max() <= 1.001 and (steps > 0.5).mean() < 0.01
        # each image is normalized by its own statistics
        alone = np.concatenate([_run(after, x[i:i + 1]) for i in range(batch)])
        np.testing.assert_array_equal(got, alone)


def test_a_static_batch_needs_no_shape_at_run_time():
    before, after = _model(batch=2), _model(batch=2)
    assert nhwc_instance_norms(after) == 1
    assert "Shape" not in [n.op_type for n in after.graph.node]
    x = _input(2)
    assert (np.abs(_run(after, x) - _run(before, x)) / SCALE_OUT).max() <= 1.001


@pytest.mark.parametrize("variant, why", [
    (dict(extra_reader=True), "the dequantized input has another reader"),
    (dict(end="float"), "the norm's output is not quantized"),
    (dict(per_channel_dq=True), "a per-channel input scale"),
    (dict(opset=14), "no Shape(start, end) before opset 15"),
])
def test_norms_the_rewrite_cannot_keep_exact_are_left_alone(variant, why):
    model = _model(**variant)
    assert nhwc_instance_norms(model) == 0, why
    assert "InstanceNormalization" in [n.op_type for n in model.graph.node]


def test_int8_resnet_norms_run_in_nhwc_with_the_same_fidelity(tmp_path):
    torch.manual_seed(0)
    # as compile deploys it: the transposed convs become int8 sub-pixel convs
    traced = trace(zoo.build("resnet", "tiny"), (torch.randn(1, 3, 32, 32),))
    graph = deconv_to_subpixel(traced).graph
    calib = [(torch.randn(2, 3, 32, 32),) for _ in range(2)]
    int8 = quantize_int8(graph, calib_data=calib).graph
    nhwc = lower_onnx(int8, calib=calib, threads=1)
    plain = lower_onnx(int8, calib=calib, threads=1, nhwc_norms=False)
    assert any("instance norm(s) between int8 convs run in NHWC" in n for n in nhwc.notes)
    with torch.no_grad():
        reference = torch.cat([int8(*b) for b in calib])
    scores = [psnr(torch.cat([m.run(*b) for b in calib]), reference) for m in (nhwc, plain)]
    assert abs(scores[0] - scores[1]) < 0.5, scores
    x = calib[0][0]
    np.testing.assert_array_equal(nhwc.run(x).numpy(),
                                  torch.cat([nhwc.run(x[i:i + 1]) for i in range(2)]).numpy())

    def layout_transposes(model):
        """ONNX Runtime's optimized graph: transposes that move the channel axis (NCHW <->
        NHWC), and the others that permute a 4-D tensor."""
        options = ort.SessionOptions()
        options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
        ort.InferenceSession(model.data, options, providers=["CPUExecutionProvider"])
        nodes = onnx.load(options.optimized_model_filepath).graph.node
        assert "InstanceNormalization" not in [n.op_type for n in nodes] or model is plain
        perms = [tuple(helper.get_attribute_value(a)) for n in nodes if n.op_type == "Transpose"
                 for a in n.attribute if a.name == "perm"]
        moves_channels = [p for p in perms if p in ((0, 2, 3, 1), (0, 3, 1, 2))]
        return moves_channels, [p for p in perms if len(p) == 4 and p not in moves_channels]
    # the premise: the runtime's layout transposes cancel, but for one pair around the whole
    # int8 region; what is left moves the batch axis (for one image, a copy of the same bytes)
    channels, others = layout_transposes(nhwc)
    assert len(channels) <= 2 and set(others) <= {(1, 2, 0, 3), (2, 0, 1, 3)}
    assert len(layout_transposes(plain)[0]) > 2 * len(channels)

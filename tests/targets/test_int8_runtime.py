"""Which kernels an int8 program runs: the cost model's reading of the lowering, checked against
the program ONNX Runtime really runs."""

import warnings

import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from gcc_gan import targets, trace, zoo
from gcc_gan.lower import lower_onnx
from gcc_gan.passes.fold_norms import fold_norms
from gcc_gan.passes.quantize import quantize_int8
from gcc_gan.quant import quant_plan
from gcc_gan.targets.roofline import kernels
from gcc_gan.tune import CHAINS

X86 = targets.get("x86", tuned=False)
C = 16


def _int8(module, x):
    """As compile quantizes: eval batch norms folded first (the ONNX exporter folds them)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # calibrating on the example input is the point here
        folded = fold_norms(trace(module.eval(), (x,))).graph
        graph = quantize_int8(folded, calib_data=[(x,)]).graph
    return graph, [layer.node for layer in quant_plan(graph.module)]


def _keys(module, x):
    graph, int8 = _int8(module, x)
    return sorted(k.key for k in kernels(graph, X86, int8=int8))


def _chain(label):
    return next(make for name, _, make in CHAINS if name == label)(C)


X = torch.randn(1, C, 16, 16)


def test_a_lone_int8_conv_pays_a_conversion_at_each_end():
    assert _keys(nn.Conv2d(C, C, 3, padding=1), X) == ["conv/int8", "quantize/int8", "quantize/int8"]


def test_a_norm_between_int8_convs_is_one_8bit_unit_whose_relu_is_free():
    assert _keys(_chain("norm chain"), X) == ["conv/int8", "conv/int8", "norm/int8", "pad/int8",
                                              "quantize/int8", "quantize/int8"]


def test_a_relu_between_int8_convs_is_free_and_converts_nothing():
    # the conv's output is quantized with the ReLU's range: its saturation is the ReLU
    assert _keys(_chain("relu chain"), X) == ["conv/int8", "conv/int8", "quantize/int8",
                                              "quantize/int8"]


def test_a_relu_read_in_float_after_an_int8_conv_is_a_float_kernel():
    keys = _keys(nn.Sequential(nn.Conv2d(C, C, 3, padding=1), nn.ReLU()), X)
    assert keys == ["conv/int8", "pointwise/fp32", "quantize/int8", "quantize/int8"]


def test_adds_shuffles_leaky_relus_and_concats_between_int8_convs_run_in_8_bits():
    assert "pointwise/int8" in _keys(_chain("residual join"), X)
    assert "movement/int8" in _keys(_chain("sub-pixel chain"), X)
    assert _keys(_chain("leaky chain"), X).count("pointwise/int8") == 1
    concat = _keys(_chain("concat"), X)   # the ReLU after the concat is absorbed
    assert "movement/int8" in concat and concat.count("quantize/int8") == 2


def test_without_int8_convs_nothing_is_8bit():
    graph = trace(_chain("norm chain"), (X,))
    assert all(k.dtype == "fp32" for k in kernels(graph, X86))


@pytest.mark.parametrize("name", [name for name, _, _ in CHAINS]
                         + ["resnet", "unet", "sngan", "inception"])
def test_conversions_are_the_qs_and_dqs_onnx_runtime_runs(name, tmp_path):
    """Every Q or DQ in ONNX Runtime's optimized program, but the two inside each NHWC norm
    unit, is one `quantize` kernel of the model, and every 8-bit kernel it counts is there."""
    if name in zoo.ZOO:
        module, x = zoo.build(name).eval(), zoo.example_inputs(name)[0]
    else:
        module, x = _chain(name), X
    graph, int8 = _int8(module, x)
    found = kernels(graph, X86, int8=int8)
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(lower_onnx(graph, calib=[(x,)], threads=1).data, options,
                         providers=["CPUExecutionProvider"])
    nodes = onnx.load(options.optimized_model_filepath).graph.node
    ops = [n.op_type for n in nodes]
    units = sum(k.key == "norm/int8" for k in found)
    assert sum(n.op_type == "BatchNormalization" and "nhwc" in n.name for n in nodes) == units
    conversions = ops.count("QuantizeLinear") + ops.count("DequantizeLinear") - 2 * units
    assert sum(k.kind == "quantize" for k in found) == conversions
    assert ops.count("QLinearAdd") + ops.count("QLinearLeakyRelu") == \
        sum(k.key == "pointwise/int8" for k in found)
    assert ops.count("QLinearConcat") == sum(k.key == "movement/int8" and "cat" in k.node
                                             for k in found)

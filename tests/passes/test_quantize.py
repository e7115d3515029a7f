"""int8: the affine equations, observers, per-channel vs per-tensor, QDQ in ONNX Runtime, and
the min_psnr floor."""

import math

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

import gcc_gan
from gcc_gan import trace, zoo
from gcc_gan.lower import lower_onnx
from gcc_gan.metrics import psnr
from gcc_gan.passes import quantize as quantize_module
from gcc_gan.passes.quantize import QuantConfig, quantize_int8, weight_bits
from gcc_gan.quant import (Observer, affine_qparams, fake_quantize, quant_plan,
                           symmetric_qparams)


def test_affine_round_trip_error_is_at_most_half_a_step():
    x = torch.linspace(-1.3, 2.7, 1001)
    qp = affine_qparams(-1.3, 2.7, "uint8")
    assert qp.zero_point[0] == round(0 - (-1.3) / qp.scale[0])
    err = (fake_quantize(x, qp) - x).abs().max().item()
    assert err <= qp.scale[0] / 2 + 1e-7
    assert fake_quantize(torch.zeros(1), qp).item() == 0.0  # zero is exact (padding, ReLU)


def test_symmetric_weights_per_tensor_and_per_channel():
    w = torch.randn(4, 3, 3, 3) * torch.tensor([0.01, 0.1, 1.0, 10.0]).view(4, 1, 1, 1)
    per_tensor = symmetric_qparams(w, per_channel=False)
    per_channel = symmetric_qparams(w, per_channel=True)
    assert per_tensor.scale.shape == (1,) and per_channel.scale.shape == (4,)
    assert per_channel.axis == 0 and (per_channel.zero_point == 0).all()
    np.testing.assert_allclose(per_channel.scale, w.abs().amax(dim=(1, 2, 3)).numpy() / 127, rtol=1e-6)
    small = w[0:1]  # the 0.01-scale filter loses almost everything to a per-tensor scale
    err_tensor = (fake_quantize(w, per_tensor)[0:1] - small).abs().mean()
    err_channel = (fake_quantize(w, per_channel)[0:1] - small).abs().mean()
    assert err_channel < err_tensor / 10


def test_7_bit_weights_use_half_the_range():
    w = torch.linspace(-2.0, 1.0, 301).reshape(1, 301, 1, 1)
    qp = symmetric_qparams(w, per_channel=False, bits=7)
    assert qp.qrange == (-63, 63)
    assert np.round(w.numpy() / qp.scale[0]).min() == -63
    err = (fake_quantize(w, qp) - w).abs().max().item()
    assert err <= qp.scale[0] / 2 + 1e-7


@pytest.mark.parametrize("config, target, saturates, bits", [
    (QuantConfig(weight_bits=8), None, True, 8),        # the user's choice wins
    (QuantConfig(), gcc_gan.targets.get("arm"), True, 8),   # a board's own profile: SDOT
    (QuantConfig(), gcc_gan.targets.get("x86"), True, 7),   # "host": the probe decides
    (QuantConfig(), gcc_gan.targets.get("x86"), False, 8),
    (QuantConfig(), None, True, 7),
])
def test_weight_bits_come_from_config_then_target_then_host(config, target, saturates, bits,
                                                            monkeypatch):
    monkeypatch.setattr(quantize_module, "int8_pairs_saturate", lambda: saturates)
    assert weight_bits(config, target)[0] == bits


def test_the_deployed_int8_conv_computes_what_the_pass_simulates():
    # every input at the top of its range and every weight at the top of its: where the host's
    # int8 kernel saturates int16 pair sums (x86 without VNNI), 8-bit weights came out at half
    # the simulated value (ONNX Runtime 1.32, AVX2); the pass must pick weights that fit
    conv = torch.nn.Conv2d(64, 8, 1, bias=False)
    torch.nn.init.constant_(conv.weight, 0.05)
    x = (torch.ones(1, 64, 4, 4),)
    graph = trace(conv, x)
    result = quantize_int8(graph, calib_data=[x])
    with torch.no_grad():
        expected = graph(*x)
    got = lower_onnx(result.graph, calib=[x]).run(*x)
    step = result.plan[0].output_qparams.scale[0]
    assert (got - expected).abs().max().item() <= 2 * step


def test_observers_choose_different_ranges_on_heavy_tails():
    torch.manual_seed(0)
    x = torch.cat([torch.randn(100_000), torch.tensor([60.0, -60.0])])  # two outliers
    ranges = {}
    for method in ("minmax", "percentile", "mse"):
        obs = Observer(method, percentile=99.9)
        obs.update(x)
        ranges[method] = obs.range()
    assert ranges["minmax"] == (-60.0, 60.0)
    assert ranges["percentile"][1] < 5  # clips the outliers
    assert ranges["mse"][1] < 60 and ranges["mse"][1] > ranges["percentile"][1] * 0.5
    with pytest.raises(ValueError, match="observer must be one of"):
        Observer("kl")


def _calib(name, n=3):
    return [zoo.example_inputs(name, batch=2, seed=s) for s in range(n)]


def test_plan_lists_decisions_and_skips_transposed_convs():
    graph = trace(zoo.build("resnet"), zoo.example_inputs("resnet"))
    result = quantize_int8(graph, calib_data=_calib("resnet"))
    plan = quant_plan(result.graph.module)
    assert len(plan) == len(result.report.layers) == 8  # the 8 ordinary convs of tiny ResNet
    assert all("transposed conv" in why for _, why in result.report.float_layers)
    assert not quant_plan(graph.module)  # the input graph is not annotated
    assert result.report.calibration == "3 calibration batches"
    assert 25 < result.report.simulated_psnr < math.inf


def test_no_calib_data_warns_and_uses_the_example_inputs():
    graph = trace(zoo.build("resnet"), zoo.example_inputs("resnet"))
    with pytest.warns(UserWarning, match="no calib_data given"):
        result = quantize_int8(graph)
    assert result.report.calibration.startswith("the example inputs")


@pytest.mark.parametrize("per_channel", [False, True])
def test_qdq_onnx_runs_in_ort_with_our_scales(per_channel):
    graph = trace(zoo.build("resnet"), zoo.example_inputs("resnet"))
    result = quantize_int8(graph, config=QuantConfig(per_channel=per_channel),
                           calib_data=_calib("resnet"))
    lowered = lower_onnx(result.graph, calib=_calib("resnet"))
    assert lowered.int8_layers == 8
    proto = onnx.load_model_from_string(lowered.data)
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in proto.graph.initializer}
    first = result.plan[0]
    np.testing.assert_allclose(inits[f"{first.weight}_scale"].reshape(-1),
                               first.weight_qparams.scale, rtol=1e-6)
    x = zoo.example_inputs("resnet", batch=4, seed=9)
    with torch.no_grad():
        reference = graph(*x)
    assert psnr(lowered.run(*x), reference) > 25


def test_min_psnr_is_honoured_on_a_zoo_model():
    model = zoo.build("unet")
    calib = _calib("unet")
    free = gcc_gan.compile(model, ratio=0.5, example_inputs=calib[0], calib_data=calib,
                           round_to=1, measure=False)
    floor = free.report.lowering["int8_psnr_vs_float"] + 6  # demand more than all-int8 gives
    out = gcc_gan.compile(model, ratio=0.5, example_inputs=calib[0], calib_data=calib,
                          min_psnr=floor, round_to=1, measure=False)
    assert out.report.lowering["int8_psnr_vs_float"] is None or \
        out.report.lowering["int8_psnr_vs_float"] >= floor
    quant = next(p for p in out.report.passes if p.name == "quantize_int8")
    kept_float = [why for _, why in quant.details["float_layers"] if "min_psnr" in why]
    assert kept_float  # and it says which layers it kept in float
    assert out.report.lowering["int8_layers"] < free.report.lowering["int8_layers"]


def test_layers_where_int8_is_slower_on_the_device_stay_float():
    """The speed check times each conv alone in float and int8, in turns; a fake device where
    int8 loses on convs reading 3 channels keeps exactly those in float, and lowers each
    geometry once per precision."""
    from gcc_gan.backends import Backend
    from gcc_gan.measure import Latency
    from gcc_gan.passes.quantize import SpeedCheck

    class Device(Backend):
        name = "fake"

        def __init__(self):
            self.lowered, self.timed = [], []

        def lower(self, graph, *, calib=None):
            self.lowered.append(graph)
            return graph

        def time(self, graph, inputs, *, threads, warmup=2, repeats=10):
            int8 = bool(quant_plan(graph.module))
            self.timed.append(int8)
            ms = (2.0 if inputs[0].shape[1] == 3 else 0.5) if int8 else 1.0
            return Latency.from_samples([ms / 1e3] * repeats, warmup=warmup, threads=threads,
                                        backend=self.name)

    graph = trace(zoo.build("resnet"), zoo.example_inputs("resnet"))
    device = Device()
    speed = SpeedCheck(device, threads=1)
    result = quantize_int8(graph, calib_data=_calib("resnet"), speed=speed)
    slower = [(node, why) for node, why in result.report.float_layers if "slower" in why]
    assert len(slower) == 1 and "2 ms against 1 ms in float" in slower[0][1]
    assert len(result.plan) == 7   # 8 ordinary convs, the RGB stem stays float
    geometries = len(speed.verdicts)
    assert len(device.lowered) == 2 * geometries < 2 * 8   # the res blocks share geometries
    assert device.timed[:4] == [True, False, True, False]   # in turns
    again = quantize_int8(graph, calib_data=_calib("resnet"), speed=speed)
    assert len(device.lowered) == 2 * geometries and len(again.plan) == 7


def _optimized_ops(lowered, tmp_path) -> list[str]:
    """The op types of the program ONNX Runtime runs for `lowered`, after its fusions."""
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(lowered.data, options, providers=["CPUExecutionProvider"])
    return [n.op_type for n in onnx.load(options.optimized_model_filepath).graph.node]


def test_residual_adds_feeding_int8_convs_run_as_qlinearadd(tmp_path):
    graph = trace(zoo.build("resnet"), zoo.example_inputs("resnet"))
    calib = _calib("resnet")
    result = quantize_int8(graph, calib_data=calib)
    # block 0's add feeds block 1's (int8) conv; block 1's feeds the transposed conv (float)
    assert result.report.int8_adds == ("add (blocks.0)",)
    lowered = lower_onnx(result.graph, calib=calib)
    ops = _optimized_ops(lowered, tmp_path)
    assert ops.count("QLinearAdd") == 1 and ops.count("Add") == 1
    x = zoo.example_inputs("resnet", batch=4, seed=9)
    with torch.no_grad():
        reference = graph(*x)
    assert psnr(lowered.run(*x), reference) > 30
    off = quantize_int8(graph, config=QuantConfig(int8_adds=False), calib_data=calib)
    assert off.report.int8_adds == () and len(off.plan) == len(result.plan)


def test_a_conv_read_only_by_a_relu_is_quantized_with_the_relus_range(tmp_path):
    """Its zero point is then the minimum: the int8 kernel's saturation is the ReLU, and ONNX
    Runtime runs the next int8 conv on its output with no DQ -> Q between."""
    c = 8
    model = torch.nn.Sequential(torch.nn.Conv2d(c, c, 3, padding=1), torch.nn.ReLU(),
                                torch.nn.PixelShuffle(2), torch.nn.Conv2d(c // 4, c, 1),
                                torch.nn.ReLU(), torch.nn.Conv2d(c, c, 1))
    x = torch.randn(2, c, 8, 8, generator=torch.Generator().manual_seed(0))
    graph = trace(model.eval(), (x,))
    result = quantize_int8(graph, calib_data=[(x,)])
    zero_points = [q.output_qparams.zero_point[0] for q in result.plan]
    assert zero_points[:2] == [0, 0] and zero_points[2] != 0   # the last one has no ReLU
    lowered = lower_onnx(result.graph, calib=[(x,)])
    ops = _optimized_ops(lowered, tmp_path)
    assert ops.count("QLinearConv") == 3 and "Relu" not in ops
    assert ops.count("QuantizeLinear") == ops.count("DequantizeLinear") == 1
    with torch.no_grad():
        reference = model(x)
    assert psnr(lowered.run(x), reference) > 35


def test_a_conv_with_other_readers_keeps_its_own_range():
    class Residual(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(4, 4, 3, padding=1)

        def forward(self, x):
            y = self.conv(x)
            return torch.relu(y) + y

    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    result = quantize_int8(trace(Residual().eval(), (x,)), calib_data=[(x,)])
    assert result.plan[0].output_qparams.zero_point[0] != 0


class BranchSum(torch.nn.Module):
    """An inception block's shape: branch convs summed, an instance norm, a residual add."""

    def __init__(self, c=8):
        super().__init__()
        self.branches = torch.nn.ModuleList(torch.nn.Conv2d(c, c, k, padding=k // 2)
                                            for k in (1, 3, 5))
        self.norm, self.out = torch.nn.InstanceNorm2d(c, affine=True), torch.nn.Conv2d(c, c, 3)

    def forward(self, x):
        total = self.branches[0](x)
        for branch in self.branches[1:]:
            total = total + branch(x)
        y = x + self.norm(total)
        return self.out(torch.nn.functional.pad(y, (1, 1, 1, 1), mode="reflect"))


def test_branch_sums_read_only_by_int8_ops_run_as_qlinearadd(tmp_path):
    x = torch.randn(2, 8, 16, 16, generator=torch.Generator().manual_seed(0))
    model = BranchSum().eval()
    result = quantize_int8(trace(model, (x,)), calib_data=[(x,)])
    assert len(result.report.int8_adds) == 3   # the two branch sums and the residual add
    lowered = lower_onnx(result.graph, calib=[(x,)])
    ops = _optimized_ops(lowered, tmp_path)
    assert ops.count("QLinearAdd") == 3 and "Add" not in ops
    with torch.no_grad():
        reference = model(x)
    assert psnr(lowered.run(x), reference) > 30


def test_the_speed_check_can_be_switched_off():
    from gcc_gan.passes.quantize import SpeedCheck

    class Unreachable:
        def lower(self, *args, **kwargs):
            raise AssertionError("speed_check=False must not time anything")

    graph = trace(zoo.build("resnet"), zoo.example_inputs("resnet"))
    result = quantize_int8(graph, config=QuantConfig(speed_check=False), calib_data=_calib("resnet"),
                           speed=SpeedCheck(Unreachable(), threads=1))
    assert len(result.plan) == 8

"""The roofline kernel model: which kernels a program runs, their features, and the fits."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from gcc_gan import targets, trace, zoo
from gcc_gan.passes.quantize import quantize_int8
from gcc_gan.quant import quant_plan
from gcc_gan.targets import KernelFit
from gcc_gan.targets.roofline import (MODEL_OVERHEAD, Kernel, datasheet_fit, fit_programs,
                                      kernels, macs_proxy_fit, predict)

X86 = targets.get("x86", tuned=False)   # channel alignment 16


def one_kernel(module, *shape):
    found = kernels(trace(module, (torch.randn(*shape),)), X86)
    assert len(found) == 1
    return found[0]


def test_conv_features_pad_channels_to_the_alignment():
    k = one_kernel(nn.Conv2d(20, 40, 3, padding=1), 1, 20, 8, 8)
    macs = 8 * 8 * 40 * 20 * 9
    assert k.kind == "conv" and k.dtype == "fp32"
    assert k.work == pytest.approx(macs * (32 / 20) * (48 / 40))
    assert k.nbytes == 4 * (20 * 64 + 40 * 64) and k.weights == 40 * 20 * 9


def test_inputs_narrower_than_the_alignment_are_padded_in_int8_only():
    conv, x = nn.Conv2d(3, 16, 7, padding=3), torch.randn(1, 3, 8, 8)
    assert one_kernel(conv, 1, 3, 8, 8).work == 8 * 8 * 16 * 3 * 49   # fp32: a direct RGB path
    with pytest.warns(UserWarning):
        graph = quantize_int8(trace(conv, (x,))).graph
    found = [k for k in kernels(graph, X86, int8=[q.node for q in quant_plan(graph.module)])
             if k.kind == "conv"]
    assert found[0].dtype == "int8" and found[0].work == 8 * 8 * 16 * 16 * 49


@pytest.mark.parametrize("module, shape, kind, weights", [
    (nn.Conv2d(32, 32, 3, padding=1, groups=32), (1, 32, 8, 8), "depthwise", 32 * 9),
    (nn.ConvTranspose2d(16, 8, 3, 2, 1, 1), (1, 16, 8, 8), "conv_transpose", 16 * 8 * 9),
    (nn.Linear(16, 40), (1, 16), "matmul", 640),
    (nn.InstanceNorm2d(8), (1, 8, 8, 8), "norm", 0),
    (nn.ReLU(inplace=True), (1, 8, 8, 8), "pointwise", 0),
    (nn.ReflectionPad2d(2), (1, 8, 8, 8), "pad", 0),
    (nn.ZeroPad2d(2), (1, 8, 8, 8), "pad", 0),
    (nn.Upsample(scale_factor=2), (1, 8, 8, 8), "resample", 0),
    (nn.PixelShuffle(2), (1, 8, 8, 8), "shuffle", 0),
    (nn.PixelUnshuffle(2), (1, 8, 8, 8), "shuffle", 0),
])
def test_kernel_kinds(module, shape, kind, weights):
    k = one_kernel(module, *shape)
    assert k.kind == kind and k.weights == weights


def test_views_run_no_kernel():
    class Flat(nn.Module):
        def forward(self, x):
            return x.view(x.shape[0], -1).relu()
    assert [k.kind for k in kernels(trace(Flat(), (torch.randn(2, 4, 4, 4),)), X86)] == ["pointwise"]


class _Lambda(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x)


@pytest.mark.parametrize("fn, copied", [
    (lambda x: x[:, :, 1:-1].relu(), [4 * 2 * 4 * 6 * 8]),        # a crop: Slice copies it
    (lambda x: x.permute(0, 2, 3, 1).relu(), [4 * 2 * 4 * 8 * 8]),  # a reorder: Transpose
    (lambda x: x[:, :].relu(), []),                               # the whole tensor: no copy
    (lambda x: x.unsqueeze(1).transpose(1, 2).relu(), []),       # only a size-1 dim moves
])
def test_views_the_lowered_program_copies_run_a_movement_kernel(fn, copied):
    graph = trace(_Lambda(fn), (torch.randn(1, 4, 8, 8),))
    moves = [k.nbytes for k in kernels(graph, X86) if k.kind == "movement"]
    assert moves == copied   # reads and writes only the kept elements


def test_a_pixel_shuffle_after_an_int8_conv_is_a_plain_copy():
    sub = nn.Sequential(nn.Conv2d(8, 16, 3, padding=1), nn.PixelShuffle(2))
    graph = trace(sub, (torch.randn(1, 8, 8, 8),))
    conv = next(n.name for n in graph.module.graph.nodes if "conv" in n.name)
    assert [k.kind for k in kernels(graph, X86)] == ["conv", "shuffle"]
    assert [k.key for k in kernels(graph, X86, int8=[conv]) if k.kind != "quantize"] == \
        ["conv/int8", "movement/int8"]


def test_datasheet_prediction_is_the_roofline_sum():
    graph = trace(nn.Conv2d(16, 32, 3, padding=1), (torch.randn(1, 16, 16, 16),))
    k = kernels(graph, X86)[0]
    expected = (X86.op_overhead_s + k.work / X86.peak_macs_per_s["fp32"]
                + k.nbytes / X86.bandwidth_bytes_per_s + 4 * k.weights / X86.bandwidth_bytes_per_s)
    p = predict(graph, X86)
    assert p.seconds == pytest.approx(expected) and not p.fitted and p.source == "datasheet"
    int8 = predict(graph, X86, int8=[k.node])
    conv, *conversions = int8.layers   # a lone int8 conv pays a Q before it and a DQ after
    assert conv.dtype == "int8" and conv.seconds < p.seconds
    assert [c.kind for c in conversions] == ["quantize", "quantize"]


def test_tuned_fits_replace_the_datasheet():
    graph = trace(nn.Conv2d(16, 32, 3, padding=1), (torch.randn(1, 16, 16, 16),))
    fit = KernelFit(overhead_s=1e-4, s_per_mac=0.0, s_per_byte=0.0)
    tuned = X86.with_kernels({"conv/fp32": fit, MODEL_OVERHEAD: KernelFit(2e-5, 0, 0)}, "t.json")
    p = predict(graph, tuned)
    assert p.seconds == pytest.approx(1.2e-4) and p.fitted and p.source == "t.json"
    assert datasheet_fit(tuned, "conv", "fp32") != fit


def _kernel(kind, work, nbytes=0.0, weights=0.0, dtype="fp32", rows=0.0):
    return Kernel(node="n", module="", kind=kind, dtype=dtype, work=work, nbytes=nbytes,
                  weights=weights, rows=rows)


def test_fit_recovers_exact_coefficients():
    rng = np.random.default_rng(0)
    truth = np.array([2e-5, 1e-11, 5e-11, 3e-10, 0])
    convs = [_kernel("conv", *rng.uniform((1e6, 1e4, 1e2), (1e9, 1e7, 1e6))) for _ in range(30)]
    fit = fit_programs([([k], k.features() @ truth + 1e-5) for k in convs], call_overhead=1e-5)
    got = fit["conv/fp32"]
    assert np.allclose([got.overhead_s, got.s_per_mac, got.s_per_byte, got.s_per_weight],
                       truth[:4], rtol=1e-6)
    assert got.median_rel_error < 1e-9 and got.samples == 30


def test_a_pads_time_per_row_is_fitted_apart_from_its_elements():
    """Pads of the same elements in more, shorter rows take longer (measured: 23 to 112 us at
    98k elements for 780 to 6912 rows); the fit separates the two terms."""
    truth = np.array([2e-6, 1e-10, 0, 0, 1.5e-8])
    pads = [_kernel("pad", c * hw * hw, 8 * c * hw * hw, rows=c * (hw + 2))
            for c in (6, 24, 96, 384) for hw in (16, 32, 64, 128)]
    fit = fit_programs([([k], k.features() @ truth) for k in pads])["pad/fp32"]
    assert fit.s_per_row == pytest.approx(1.5e-8, rel=1e-6)
    assert fit.seconds(98304, 8 * 98304, rows=6912) > 3 * fit.seconds(98304, 8 * 98304, rows=780)


def test_pad_rows_follow_the_layout_the_lowering_runs():
    """fp32 pads walk NCHW rows (C*H); 8-bit ones NHWC rows of whole pixels (H)."""
    from gcc_gan.targets.roofline import _rows
    assert _rows((1, 96, 34, 34), "fp32") == 96 * 34
    assert _rows((1, 96, 34, 34), "int8") == 34
    assert _rows((2, 8), "fp32") == 0.0


def test_programs_of_several_kernels_separate_the_kinds():
    """A conv alone and in chains of two and three, each with a conversion at either end: the
    fit tells the conv's time from the conversions', which no lone conv could."""
    rng = np.random.default_rng(1)
    conv_truth, q_truth = np.array([3e-6, 2e-12, 0, 0, 0]), np.array([2e-6, 3e-10, 0, 0, 0])
    programs = []
    for _ in range(12):
        macs, elems = rng.uniform(1e6, 1e9), rng.uniform(1e3, 1e6)
        for n in (1, 2, 3):
            ks = ([_kernel("conv", macs, dtype="int8")] * n
                  + [_kernel("quantize", elems, dtype="int8")] * 2)
            programs.append((ks, sum(k.features() @ (conv_truth if k.kind == "conv" else q_truth)
                                     for k in ks)))
    fit = fit_programs(programs)
    conv = fit["conv/int8"]
    assert np.allclose([conv.overhead_s, conv.s_per_mac], conv_truth[:2], rtol=1e-6)
    assert fit["quantize/int8"].samples == 36


def test_fit_errors_are_relative_to_the_measured_program():
    """Six InstanceNorm probes as this host measured them (call overhead 6.75 us): the 8192-
    element one ran 7.2 us, 0.45 us of kernel. Weighted by kernel time it outweighed the rest,
    and the fit was off by 27-71% on every other probe; relative to the measured programs no
    probe is off by more than 25%."""
    overhead = 6.75e-6
    sizes = [131072, 8192, 2097152, 49152, 8192, 262144]
    measured = [40.1e-6, 7.2e-6, 677.8e-6, 21.9e-6, 10.2e-6, 68.5e-6]
    fit = fit_programs([([_kernel("norm", e, 8 * e)], t) for e, t in zip(sizes, measured)],
                       call_overhead=overhead)["norm/fp32"]
    predicted = [fit.seconds(e, 8 * e) + overhead for e in sizes]
    assert all(abs(p / t - 1) < 0.25 for p, t in zip(predicted, measured))


def test_fit_never_goes_negative():
    ks = [_kernel("conv", m) for m in (1e6, 2e6, 3e6, 4e6)]
    fit = fit_programs(list(zip([[k] for k in ks], [4e-3, 3e-3, 2e-3, 1e-3])))["conv/fp32"]
    assert min(fit.overhead_s, fit.s_per_mac, fit.s_per_byte, fit.s_per_weight) >= 0


def test_macs_proxy_minimises_relative_error():
    samples = [(1e6, 2e-3), (4e6, 3e-3), (1e7, 2e-2)]
    c = macs_proxy_fit(samples)

    def loss(k):
        return sum((k * m - t) ** 2 / t ** 2 for m, t in samples)
    assert all(loss(c) <= loss(c * f) for f in (0.9, 0.99, 1.01, 1.1))


def test_a_zoo_model_prediction_covers_every_costed_layer():
    graph = trace(zoo.build("resnet"), zoo.example_inputs("resnet"))
    p = predict(graph, X86)
    mac_layers = [n for n in graph.cost.nodes if n.macs]
    assert sum(1 for layer in p.layers if layer.kind in ("conv", "conv_transpose")) == len(mac_layers)
    assert math.isclose(p.seconds, sum(layer.seconds for layer in p.layers))


def test_predicting_never_specialises_the_batch(tmp_path):
    """StyleGAN2's modulated conv weights have the batch in their shape; reading it as an int
    would install a guard and the saved program would only take the traced batch."""
    graph = trace(zoo.build("stylegan2"), zoo.example_inputs("stylegan2"))
    predict(graph, X86)
    torch.export.save(graph.exported, tmp_path / "m.pt2")
    module = torch.export.load(tmp_path / "m.pt2").module()
    assert module(*zoo.example_inputs("stylegan2", batch=3)).shape[0] == 3

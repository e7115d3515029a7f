"""The roofline kernel model: which kernels a program runs, their features, and the fits."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from gcc_gan import targets, trace, zoo
from gcc_gan.targets import KernelFit
from gcc_gan.targets.roofline import (MODEL_OVERHEAD, datasheet_fit, fit_kernel, kernels,
                                      macs_proxy_fit, predict)

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


def test_channels_narrower_than_the_alignment_are_not_padded():
    k = one_kernel(nn.Conv2d(3, 16, 7, padding=3), 1, 3, 8, 8)
    assert k.work == 8 * 8 * 16 * 3 * 49


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
    assert [k.kind for k in kernels(graph, X86, int8=[conv])] == ["conv", "movement"]


def test_datasheet_prediction_is_the_roofline_sum():
    graph = trace(nn.Conv2d(16, 32, 3, padding=1), (torch.randn(1, 16, 16, 16),))
    k = kernels(graph, X86)[0]
    expected = (X86.op_overhead_s + k.work / X86.peak_macs_per_s["fp32"]
                + k.nbytes / X86.bandwidth_bytes_per_s + 4 * k.weights / X86.bandwidth_bytes_per_s)
    p = predict(graph, X86)
    assert p.seconds == pytest.approx(expected) and not p.fitted and p.source == "datasheet"
    int8 = predict(graph, X86, int8=[k.node])
    assert int8.layers[0].dtype == "int8" and int8.seconds < p.seconds


def test_tuned_fits_replace_the_datasheet():
    graph = trace(nn.Conv2d(16, 32, 3, padding=1), (torch.randn(1, 16, 16, 16),))
    fit = KernelFit(overhead_s=1e-4, s_per_mac=0.0, s_per_byte=0.0)
    tuned = X86.with_kernels({"conv/fp32": fit, MODEL_OVERHEAD: KernelFit(2e-5, 0, 0)}, "t.json")
    p = predict(graph, tuned)
    assert p.seconds == pytest.approx(1.2e-4) and p.fitted and p.source == "t.json"
    assert datasheet_fit(tuned, "conv", "fp32") != fit


def test_fit_recovers_exact_coefficients():
    rng = np.random.default_rng(0)
    features = np.column_stack([np.ones(30), rng.uniform(1e6, 1e9, 30), rng.uniform(1e4, 1e7, 30),
                                rng.uniform(1e2, 1e6, 30)])
    truth = np.array([2e-5, 1e-11, 5e-11, 3e-10])
    fit = fit_kernel(features, features @ truth)
    got = [fit.overhead_s, fit.s_per_mac, fit.s_per_byte, fit.s_per_weight]
    assert np.allclose(got, truth, rtol=1e-6) and fit.median_rel_error < 1e-9 and fit.samples == 30


def test_fit_never_goes_negative():
    features = np.column_stack([np.ones(4), [1e6, 2e6, 3e6, 4e6], np.zeros(4), np.zeros(4)])
    fit = fit_kernel(features, np.array([4e-3, 3e-3, 2e-3, 1e-3]))   # slower when smaller
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

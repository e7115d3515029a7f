"""PSNR, SSIM and max |diff| against closed forms and an independent NumPy SSIM."""

import math

import numpy as np
import pytest
import torch

from gcc_gan.metrics import Fidelity, fidelity, max_abs_diff, psnr, ssim


def tanh_images(*shape, seed=0):
    return torch.tanh(torch.randn(*shape, generator=torch.Generator().manual_seed(seed)))


def numpy_ssim(x: np.ndarray, y: np.ndarray, data_range: float, size=11, sigma=1.5) -> float:
    """Wang et al. 2004 written out with loops: Gaussian-weighted statistics per window."""
    half = (size - 1) / 2
    g = np.array([math.exp(-((i - half) ** 2) / (2 * sigma ** 2)) for i in range(size)])
    w = np.outer(g, g) / np.outer(g, g).sum()
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    values = []
    for b in range(x.shape[0]):
        for c in range(x.shape[1]):
            for i in range(x.shape[2] - size + 1):
                for j in range(x.shape[3] - size + 1):
                    px = x[b, c, i:i + size, j:j + size]
                    py = y[b, c, i:i + size, j:j + size]
                    mx, my = (w * px).sum(), (w * py).sum()
                    vx = (w * (px - mx) ** 2).sum()
                    vy = (w * (py - my) ** 2).sum()
                    cxy = (w * (px - mx) * (py - my)).sum()
                    values.append((2 * mx * my + c1) * (2 * cxy + c2)
                                  / ((mx ** 2 + my ** 2 + c1) * (vx + vy + c2)))
    return float(np.mean(values))


def test_identical_outputs_are_perfect():
    x = tanh_images(2, 3, 16, 16)
    assert psnr(x, x.clone()) == math.inf
    assert ssim(x, x.clone()) == 1.0
    assert max_abs_diff(x, x.clone()) == 0.0


def test_identical_constant_outputs_need_no_range():
    x = torch.zeros(1, 1, 12, 12)
    assert psnr(x, x) == math.inf and ssim(x, x) == 1.0


def test_psnr_of_a_constant_offset():
    ref = torch.linspace(-1, 1, 2 * 3 * 8 * 8).reshape(2, 3, 8, 8)
    out = ref + 0.1
    assert psnr(out, ref) == pytest.approx(20 * math.log10(2.0 / 0.1))
    assert psnr(out, ref, data_range=1.0) == pytest.approx(20 * math.log10(1.0 / 0.1))
    assert max_abs_diff(out, ref) == pytest.approx(0.1)


def test_half_precision_outputs_are_compared_in_float64():
    ref = torch.linspace(-1, 1, 64).reshape(1, 1, 8, 8)
    # fp16 rounding of the 0.1 offset moves PSNR by ~0.01 dB
    assert psnr((ref + 0.1).half(), ref.half()) == pytest.approx(20 * math.log10(20), abs=0.05)


def test_ssim_matches_numpy_reference():
    ref = tanh_images(2, 2, 14, 13, seed=1)
    out = ref + 0.2 * tanh_images(2, 2, 14, 13, seed=2)
    expected = numpy_ssim(out.numpy().astype(np.float64), ref.numpy().astype(np.float64),
                          data_range=(ref.max() - ref.min()).item())
    assert ssim(out, ref) == pytest.approx(expected, rel=1e-9)
    assert ssim(out, ref, data_range=2.0) == pytest.approx(
        numpy_ssim(out.double().numpy(), ref.double().numpy(), data_range=2.0), rel=1e-9)


def test_ssim_decreases_with_noise():
    ref = tanh_images(1, 3, 24, 24)
    noise = tanh_images(1, 3, 24, 24, seed=3)
    scores = [ssim(ref + level * noise, ref) for level in (0.01, 0.1, 0.5)]
    assert 1.0 > scores[0] > scores[1] > scores[2]


def test_ssim_shrinks_the_window_for_small_images():
    ref = tanh_images(2, 1, 8, 6)  # window becomes 5x5 (largest odd size <= 6)
    out = ref + 0.1 * tanh_images(2, 1, 8, 6, seed=4)
    data_range = (ref.max() - ref.min()).item()
    expected = numpy_ssim(out.double().numpy(), ref.double().numpy(), data_range, size=5)
    assert ssim(out, ref) == pytest.approx(expected, rel=1e-9)


def test_ssim_needs_images():
    v = torch.randn(4, 128)
    with pytest.raises(ValueError, match="SSIM needs images"):
        ssim(v + 0.1, v)


def test_mismatched_shapes_are_rejected():
    with pytest.raises(ValueError, match="differs from reference shape"):
        psnr(torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 8, 9))


def test_constant_reference_needs_an_explicit_range():
    ref = torch.zeros(1, 1, 8, 8)
    with pytest.raises(ValueError, match="pass data_range"):
        psnr(ref + 0.1, ref)
    assert psnr(ref + 0.1, ref, data_range=2.0) == pytest.approx(20 * math.log10(20))


def test_fidelity_over_batches_equals_one_concatenated_batch():
    refs = [tanh_images(2, 3, 16, 16, seed=s) for s in (5, 6)]
    outs = [r + 0.05 * tanh_images(2, 3, 16, 16, seed=s + 10) for s, r in enumerate(refs)]
    result = fidelity(outs, refs)
    out, ref = torch.cat(outs), torch.cat(refs)
    assert isinstance(result, Fidelity)
    assert result.samples == 4
    assert result.psnr == pytest.approx(psnr(out, ref))
    assert result.ssim == pytest.approx(ssim(out, ref))
    assert result.max_abs_diff == pytest.approx(max_abs_diff(out, ref))
    assert "PSNR" in str(result)


def test_fidelity_of_single_tensors_and_identical_outputs():
    ref = tanh_images(3, 3, 12, 12)
    assert fidelity(ref, ref.clone()) == Fidelity(psnr=math.inf, ssim=1.0, max_abs_diff=0.0,
                                                  samples=3)


def test_fidelity_of_non_images_has_no_ssim():
    ref = torch.randn(5, 512)
    result = fidelity([ref + 0.01], [ref])
    assert result.ssim is None and result.samples == 5
    assert result.psnr == pytest.approx(psnr(ref + 0.01, ref))
    assert "n/a" in str(result)


def test_fidelity_rejects_unpaired_batches():
    with pytest.raises(ValueError, match="one output per reference"):
        fidelity([torch.zeros(1, 3, 8, 8)], [])

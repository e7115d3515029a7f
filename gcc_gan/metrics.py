"""Fidelity of a compressed generator's output against the original generator's output.

With L the data range and MSE the mean squared error over every element of the batch:

    PSNR = 10 log10(L^2 / MSE)                       (dB; +inf when the outputs are identical)
    SSIM = mean over images, channels and window positions of
           (2 mu_x mu_y + C1)(2 s_xy + C2) / ((mu_x^2 + mu_y^2 + C1)(s_x^2 + s_y^2 + C2))

SSIM is Wang et al. 2004: local means, variances and covariance are weighted by an 11x11
Gaussian window (sigma 1.5) over the valid region (no padding), C1 = (0.01 L)^2 and
C2 = (0.03 L)^2. Everything is computed in float64 whatever the input dtype, so an int8 or fp16
generator is judged by its errors and not by rounding in the metric.

L defaults to the reference's own range (max - min). Generators end in tanh ([-1, 1], L = 2) or
are unbounded (super-resolution), so no fixed range is right for all of them; the original
generator's output is the scale the compressed one is judged on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1 = 0.01
SSIM_K2 = 0.03


def _float64_pair(output: torch.Tensor, reference: torch.Tensor) -> tuple[torch.Tensor, ...]:
    if output.shape != reference.shape:
        raise ValueError(f"output shape {tuple(output.shape)} differs from reference shape "
                         f"{tuple(reference.shape)}; compare outputs of the same inputs")
    return output.detach().to(torch.float64), reference.detach().to(torch.float64)


def _data_range(references: list[torch.Tensor], data_range: float | None) -> float:
    if data_range is None:
        data_range = (max(r.max().item() for r in references)
                      - min(r.min().item() for r in references))
    if not data_range > 0:
        raise ValueError(f"data range is {data_range}: the reference is constant; "
                         "pass data_range= explicitly (e.g. 2.0 for a tanh output)")
    return float(data_range)


def _psnr_from_mse(mse: float, data_range: float) -> float:
    return 10.0 * math.log10(data_range ** 2 / mse)


def psnr(output: torch.Tensor, reference: torch.Tensor, data_range: float | None = None) -> float:
    """Peak signal-to-noise ratio of `output` against `reference` in dB, over the whole batch."""
    out, ref = _float64_pair(output, reference)
    mse = torch.mean((out - ref) ** 2).item()
    if mse == 0:  # identical: no range is needed, so a constant reference is fine
        return math.inf
    return _psnr_from_mse(mse, _data_range([ref], data_range))


def _gaussian_window(size: int, sigma: float) -> torch.Tensor:
    coords = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-coords ** 2 / (2 * sigma ** 2))
    g = g / g.sum()
    return torch.outer(g, g)


def _window_size(height: int, width: int) -> int:
    """11, or for an image smaller than that the largest odd size that fits.

    The Gaussian keeps sigma 1.5 and is truncated and renormalised, so a small image is still
    compared on local statistics rather than rejected; a 1-pixel window leaves only the
    luminance term (variances are zero, so the structure term is 1).
    """
    size = min(SSIM_WINDOW, height, width)
    return size if size % 2 else size - 1


def _ssim_per_channel(out: torch.Tensor, ref: torch.Tensor, data_range: float) -> torch.Tensor:
    """(B, C) mean SSIM of each image channel; inputs are float64 (B, C, H, W)."""
    channels = out.shape[1]
    size = _window_size(out.shape[2], out.shape[3])
    window = _gaussian_window(size, SSIM_SIGMA).expand(channels, 1, size, size)

    def local_mean(x: torch.Tensor) -> torch.Tensor:  # depthwise: each channel on its own
        return F.conv2d(x, window, groups=channels)

    mu_x, mu_y = local_mean(out), local_mean(ref)
    var_x = local_mean(out * out) - mu_x ** 2
    var_y = local_mean(ref * ref) - mu_y ** 2
    cov_xy = local_mean(out * ref) - mu_x * mu_y
    c1, c2 = (SSIM_K1 * data_range) ** 2, (SSIM_K2 * data_range) ** 2
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov_xy + c2)
                / ((mu_x ** 2 + mu_y ** 2 + c1) * (var_x + var_y + c2)))
    return ssim_map.mean(dim=(2, 3))


def _require_images(tensor: torch.Tensor) -> None:
    if tensor.dim() != 4:
        raise ValueError(f"SSIM needs images (B, C, H, W); got shape {tuple(tensor.shape)}. "
                         "Use psnr or max_abs_diff for non-image outputs")


def ssim(output: torch.Tensor, reference: torch.Tensor, data_range: float | None = None) -> float:
    """Mean SSIM over batch and channels of (B, C, H, W) images; see the module docstring."""
    _require_images(output)
    out, ref = _float64_pair(output, reference)
    if torch.equal(out, ref):  # SSIM(x, x) = 1 by definition, constant images included
        return 1.0
    return _ssim_per_channel(out, ref, _data_range([ref], data_range)).mean().item()


def max_abs_diff(output: torch.Tensor, reference: torch.Tensor) -> float:
    """Largest elementwise |output - reference|."""
    out, ref = _float64_pair(output, reference)
    return (out - ref).abs().max().item()


@dataclass(frozen=True)
class Fidelity:
    """How close a compressed generator's outputs are to the original's over a set of inputs.

    `ssim` is None when the outputs are not (B, C, H, W) images (a mapping network's latent, a
    flat vector): SSIM's window has nothing to slide over, and 0 or 1 would both be misleading.
    """

    psnr: float
    ssim: float | None
    max_abs_diff: float
    samples: int

    def __str__(self) -> str:
        ssim = "n/a" if self.ssim is None else f"{self.ssim:.4f}"
        return (f"PSNR {self.psnr:.2f} dB, SSIM {ssim}, max |diff| {self.max_abs_diff:.3g} "
                f"over {self.samples} samples")


def _as_list(tensors: torch.Tensor | list[torch.Tensor]) -> list[torch.Tensor]:
    return [tensors] if isinstance(tensors, torch.Tensor) else list(tensors)


def fidelity(outputs: torch.Tensor | list[torch.Tensor],
             references: torch.Tensor | list[torch.Tensor],
             data_range: float | None = None) -> Fidelity:
    """PSNR, SSIM and max |diff| over batches of outputs, one tensor per batch.

    Every figure is over the whole set, as if the batches were one: PSNR from the total squared
    error, SSIM averaged over every image channel, and one data range (the references' overall
    max - min) for all batches, so a batch with a narrow range does not inflate its score.
    """
    outs, refs = _as_list(outputs), _as_list(references)
    if len(outs) != len(refs) or not outs:
        raise ValueError(f"got {len(outs)} output batches and {len(refs)} reference batches; "
                         "pass one output per reference, at least one")
    pairs = [_float64_pair(o, r) for o, r in zip(outs, refs)]
    images = all(o.dim() == 4 for o, _ in pairs)
    samples = sum(o.shape[0] if o.dim() else 1 for o, _ in pairs)
    squared_error = sum(torch.sum((o - r) ** 2).item() for o, r in pairs)
    if squared_error == 0:  # identical: no range needed, so a constant reference is fine
        return Fidelity(psnr=math.inf, ssim=1.0 if images else None, max_abs_diff=0.0,
                        samples=samples)

    scale = _data_range([r for _, r in pairs], data_range)
    ssim_value = None
    if images:
        per_channel = [_ssim_per_channel(o, r, scale).flatten() for o, r in pairs]
        ssim_value = torch.cat(per_channel).mean().item()
    return Fidelity(psnr=_psnr_from_mse(squared_error / sum(o.numel() for o, _ in pairs), scale),
                    ssim=ssim_value,
                    max_abs_diff=max((o - r).abs().max().item() for o, r in pairs),
                    samples=samples)

"""StyleGAN2 generator, config-f (Karras et al., "Analyzing and Improving the Image Quality of
StyleGAN", CVPR 2020), laid out as rosinality's stylegan2-pytorch `Generator`.

    mapping:   w = (EqualLinear + lrelu*sqrt(2)) x n_mlp (PixelNorm(z)),   lr_mul 0.01
    synthesis: const 4x4 -> StyledConv -> [StyledConv(up) -> StyledConv] per resolution 8..R
               rgb = ToRGB(x_4) ; rgb = ToRGB(x_r) + up(rgb)   (skip architecture)

A modulated conv scales the input-channel axis of its weight by s = affine(w), demodulates
(w'_oi = w_oi s_i / sqrt(sum_ik (w_oi s_i)^2 + 1e-8)), and runs as ONE grouped conv over the
batch: x (B, Cin, H, W) -> (1, B*Cin, H, W), weight (B*Cout, Cin, k, k), groups=B. The
upsampling conv is a stride-2 grouped transposed conv followed by a fixed [1,3,3,1] 4x4 blur
(a depthwise conv); the RGB skip is upsampled by a depthwise transposed conv with that kernel.
Equalized learning rate: weights are stored N(0, 1) and scaled by 1/sqrt(fan_in) at runtime.
Noise is "const": one fixed buffer per layer, times a learned strength, so outputs are
deterministic. Convs use the fused bias + leaky_relu(0.2) * sqrt(2) activation.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .registry import ZooConfig, ZooEntry, register

_BLUR = (1.0, 3.0, 3.0, 1.0)


def blur_kernel(gain: float = 1.0) -> torch.Tensor:
    """The separable [1,3,3,1] x [1,3,3,1] kernel, normalised to sum to `gain`."""
    k = torch.tensor(_BLUR)
    k = k[:, None] * k[None, :]
    return k / k.sum() * gain


class PixelNorm(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(dim=1, keepdim=True) + 1e-8)


class EqualLinear(nn.Module):
    """Linear layer with equalized learning rate; `activation` adds lrelu(0.2) * sqrt(2)."""

    def __init__(self, in_dim: int, out_dim: int, bias_init: float = 0.0, lr_mul: float = 1.0,
                 activation: bool = False) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_dim, in_dim) / lr_mul)
        self.bias = nn.Parameter(torch.full((out_dim,), float(bias_init)))
        self.in_dim, self.out_dim = in_dim, out_dim
        self.scale = lr_mul / math.sqrt(in_dim)
        self.lr_mul = lr_mul
        self.activation = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.linear(x, self.weight * self.scale, self.bias * self.lr_mul)
        return F.leaky_relu(out, 0.2) * math.sqrt(2) if self.activation else out


class Blur(nn.Module):
    """Depthwise 4x4 [1,3,3,1] blur with padding 1, (2H+1) x (2W+1) -> 2H x 2W: the
    anti-aliasing filter after the stride-2 transposed conv of an upsampling modulated conv."""

    def __init__(self, channels: int, gain: float = 1.0) -> None:
        super().__init__()
        self.channels = channels
        self.register_buffer("kernel", blur_kernel(gain).expand(channels, 1, 4, 4).clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.kernel, padding=1, groups=self.channels)


class BlurUpsample(nn.Module):
    """x2 upsampling by a depthwise stride-2 transposed conv with the blur kernel times 4
    (upfirdn2d(up=2) of rosinality's `Upsample`): H x W -> 2H x 2W."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.channels = channels
        self.register_buffer("kernel", blur_kernel(4.0).expand(channels, 1, 4, 4).clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv_transpose2d(x, self.kernel, stride=2, padding=1, groups=self.channels)


class ModulatedConv2d(nn.Module):
    """Per-sample modulated (and optionally demodulated) conv, batch folded into groups."""

    def __init__(self, in_channel: int, out_channel: int, kernel_size: int, style_dim: int,
                 demodulate: bool = True, upsample: bool = False) -> None:
        super().__init__()
        self.in_channel, self.out_channel, self.kernel_size = in_channel, out_channel, kernel_size
        self.demodulate, self.upsample = demodulate, upsample
        self.scale = 1 / math.sqrt(in_channel * kernel_size**2)
        shape = (1, out_channel, in_channel, kernel_size, kernel_size)
        self.weight = nn.Parameter(torch.randn(shape))
        self.modulation = EqualLinear(style_dim, in_channel, bias_init=1.0)
        if upsample:
            self.blur = Blur(out_channel, gain=4.0)

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        b, cin, h, wd = x.shape
        cout, k = self.out_channel, self.kernel_size
        style = self.modulation(w).view(b, 1, cin, 1, 1)
        weight = self.scale * self.weight * style  # (B, Cout, Cin, k, k)
        if self.demodulate:
            demod = torch.rsqrt(weight.pow(2).sum([2, 3, 4]) + 1e-8)
            weight = weight * demod.view(b, cout, 1, 1, 1)
        x = x.reshape(1, b * cin, h, wd)
        if self.upsample:
            weight = weight.transpose(1, 2).reshape(b * cin, cout, k, k)
            out = F.conv_transpose2d(x, weight, stride=2, groups=b)
            out = self.blur(out.view(b, cout, out.shape[2], out.shape[3]))
        else:
            out = F.conv2d(x, weight.reshape(b * cout, cin, k, k), padding=k // 2, groups=b)
            out = out.view(b, cout, h, wd)
        return out


class NoiseInjection(nn.Module):
    """x + strength * noise, with a fixed (1, 1, res, res) noise buffer ("const" noise mode)."""

    def __init__(self, resolution: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))
        self.register_buffer("noise", torch.randn(1, 1, resolution, resolution))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.weight * self.noise


class StyledConv(nn.Module):
    def __init__(self, in_channel: int, out_channel: int, style_dim: int, resolution: int,
                 upsample: bool = False) -> None:
        super().__init__()
        self.conv = ModulatedConv2d(in_channel, out_channel, 3, style_dim, upsample=upsample)
        self.noise = NoiseInjection(resolution)
        self.bias = nn.Parameter(torch.zeros(1, out_channel, 1, 1))

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        out = self.noise(self.conv(x, w))
        return F.leaky_relu(out + self.bias, 0.2) * math.sqrt(2)


class ToRGB(nn.Module):
    """Modulated 1x1 conv to RGB (no demodulation) + bias, plus the upsampled previous RGB."""

    def __init__(self, in_channel: int, style_dim: int, upsample: bool = True) -> None:
        super().__init__()
        self.conv = ModulatedConv2d(in_channel, 3, 1, style_dim, demodulate=False)
        self.bias = nn.Parameter(torch.zeros(1, 3, 1, 1))
        self.upsample = BlurUpsample(3) if upsample else None

    def forward(self, x: torch.Tensor, w: torch.Tensor,
                skip: torch.Tensor | None = None) -> torch.Tensor:
        out = self.conv(x, w) + self.bias
        return out if skip is None else out + self.upsample(skip)


class StyleGAN2Generator(nn.Module):
    def __init__(self, resolution: int, z_dim: int, w_dim: int, n_mlp: int,
                 channels: Mapping[int, int], lr_mlp: float, n_mean_latent: int) -> None:
        super().__init__()
        self.log_size = int(math.log2(resolution))
        self.n_latent = 2 * self.log_size - 2  # one w per conv and per ToRGB (shared at a step)
        self.mapping = nn.Sequential(PixelNorm(), *(
            EqualLinear(z_dim if i == 0 else w_dim, w_dim, lr_mul=lr_mlp, activation=True)
            for i in range(n_mlp)))
        self.input = nn.Parameter(torch.randn(1, channels[4], 4, 4))
        self.conv1 = StyledConv(channels[4], channels[4], w_dim, 4)
        self.to_rgb1 = ToRGB(channels[4], w_dim, upsample=False)
        self.convs, self.to_rgbs = nn.ModuleList(), nn.ModuleList()
        in_channel = channels[4]
        for res in (2**i for i in range(3, self.log_size + 1)):
            self.convs.append(StyledConv(in_channel, channels[res], w_dim, res, upsample=True))
            self.convs.append(StyledConv(channels[res], channels[res], w_dim, res))
            self.to_rgbs.append(ToRGB(channels[res], w_dim))
            in_channel = channels[res]
        self.register_buffer("mean_latent", torch.zeros(1, w_dim))
        self.update_mean_latent(n_mean_latent)

    @torch.no_grad()
    def update_mean_latent(self, n_samples: int = 4096) -> None:
        """Set the truncation centre to the mean of mapping(z) over `n_samples` normal z."""
        z = torch.randn(n_samples, self.mapping[1].in_dim, device=self.mean_latent.device)
        self.mean_latent.copy_(self.mapping(z).mean(0, keepdim=True))

    def forward(self, styles: Sequence[torch.Tensor], truncation: float = 1.0,
                inject_index: int | None = None) -> torch.Tensor:
        """styles: one z (B, z_dim), or two for style mixing: layers before `inject_index`
        (default n_latent // 2) take the first, later ones the second."""
        ws = [self.mapping(z) for z in styles]
        if truncation != 1.0:
            ws = [self.mean_latent + truncation * (w - self.mean_latent) for w in ws]
        if len(ws) == 1:
            latent = ws * self.n_latent
        else:
            cut = self.n_latent // 2 if inject_index is None else inject_index
            latent = [ws[0]] * cut + [ws[1]] * (self.n_latent - cut)

        x = self.input.expand(ws[0].shape[0], -1, -1, -1)
        x = self.conv1(x, latent[0])
        skip = self.to_rgb1(x, latent[1])
        for i, (up_conv, conv, to_rgb) in enumerate(
                zip(self.convs[::2], self.convs[1::2], self.to_rgbs)):
            x = up_conv(x, latent[2 * i + 1])
            x = conv(x, latent[2 * i + 2])
            skip = to_rgb(x, latent[2 * i + 3], skip)
        return skip


def stylegan2_generator(resolution: int = 1024, z_dim: int = 512, w_dim: int = 512,
                        n_mlp: int = 8, channel_multiplier: int = 2, channel_max: int = 512,
                        channel_base: int = 16384, lr_mlp: float = 0.01,
                        n_mean_latent: int = 4096) -> nn.Module:
    """StyleGAN2 config-f generator (Karras et al. 2020, rosinality layout):
    forward([z] or [z1, z2], truncation=1.0, inject_index=None) -> image (B, 3, R, R).

    Channels at resolution r: min(channel_max, channel_multiplier * channel_base // r), which
    is rosinality's table {4..32: 512, 64: 256cm, ..., 1024: 16cm} at the defaults; tiny
    configs shrink channel_base / channel_max. `mean_latent` (the truncation centre) is the
    mean w of n_mean_latent random z, computed at construction.

    Standard config (1024x1024 FFHQ config-f, channel_multiplier=2): 7.5335e10 real MACs,
    1.4414e11 literature MACs (Anycost GAN reports 144G; the literature convention counts the
    stride-2 transposed convs on their output grid).
    """
    if resolution < 8 or resolution & (resolution - 1):
        raise ValueError(f"resolution must be a power of two >= 8, got {resolution}")
    channels = {2**i: min(channel_max, channel_multiplier * channel_base // 2**i)
                for i in range(2, int(math.log2(resolution)) + 1)}
    return StyleGAN2Generator(resolution, z_dim, w_dim, n_mlp, channels, lr_mlp, n_mean_latent)


def _inputs(kwargs: Mapping, input_size, batch: int, generator: torch.Generator) -> tuple:
    return ([torch.randn(batch, kwargs.get("z_dim", 512), generator=generator)],)


register(ZooEntry(
    name="stylegan2", factory=stylegan2_generator, make_inputs=_inputs,
    configs={
        "tiny": ZooConfig(dict(resolution=32, z_dim=16, w_dim=16, n_mlp=2, channel_multiplier=1,
                               channel_base=256, channel_max=16)),
        "standard": ZooConfig(dict()),
    },
))

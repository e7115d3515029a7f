"""SNGAN's ResNet generator for 32x32 images (Miyato et al., "Spectral Normalization for
Generative Adversarial Networks", ICLR 2018, appendix B.4, CIFAR-10 generator).

    z (B, nz) -> Linear -> (B, ngf, 4, 4) -> n_blocks x UpBlock -> BN, ReLU, conv3x3 -> 3, tanh

    UpBlock(x) = conv3x3(ReLU(BN(conv3x3(up(ReLU(BN(x))))))) + conv1x1(up(x)),  up = nearest x2

SNGAN itself normalises only the discriminator; `spectral_norm=True` also wraps every conv and
linear of the generator in `torch.nn.utils.parametrizations.spectral_norm`, as the SAGAN and
BigGAN generators do, so the compiler meets that parametrization on a real model.
"""

from __future__ import annotations

from typing import Mapping

import math

import torch
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm as _sn

from .registry import ZooConfig, ZooEntry, register


def _init(layer: nn.Module, gain: float, sn) -> nn.Module:
    """Glorot-uniform weights with `gain` (sqrt(2) before ReLU), zero bias, as the authors'
    Chainer code initialises them; then the optional spectral-norm parametrization."""
    nn.init.xavier_uniform_(layer.weight, gain=gain)
    nn.init.zeros_(layer.bias)
    return sn(layer)


class UpBlock(nn.Module):
    """Pre-activation residual block that doubles the resolution; the shortcut is up + conv1x1."""

    def __init__(self, channels: int, sn) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv1 = _init(nn.Conv2d(channels, channels, 3, padding=1), math.sqrt(2), sn)
        self.bn2 = nn.BatchNorm2d(channels)
        self.conv2 = _init(nn.Conv2d(channels, channels, 3, padding=1), math.sqrt(2), sn)
        self.shortcut = _init(nn.Conv2d(channels, channels, 1), 1.0, sn)
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(self.up(self.relu(self.bn1(x))))
        h = self.conv2(self.relu(self.bn2(h)))
        return h + self.shortcut(self.up(x))


class SNGANGenerator(nn.Module):
    def __init__(self, nz: int, ngf: int, bottom_width: int, n_blocks: int, sn) -> None:
        super().__init__()
        self.ngf, self.bottom_width = ngf, bottom_width
        self.fc = _init(nn.Linear(nz, bottom_width * bottom_width * ngf), 1.0, sn)
        self.blocks = nn.Sequential(*(UpBlock(ngf, sn) for _ in range(n_blocks)))
        self.bn = nn.BatchNorm2d(ngf)
        self.relu = nn.ReLU()
        self.conv_out = _init(nn.Conv2d(ngf, 3, 3, padding=1), 1.0, sn)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.fc(z).view(-1, self.ngf, self.bottom_width, self.bottom_width)
        x = self.blocks(x)
        return torch.tanh(self.conv_out(self.relu(self.bn(x))))


def sngan_generator(nz: int = 128, ngf: int = 256, bottom_width: int = 4, n_blocks: int = 3,
                    spectral_norm: bool = False) -> nn.Module:
    """SNGAN ResNet generator (Miyato et al. 2018): z (B, nz) -> image (B, 3, S, S) in [-1, 1],
    S = bottom_width * 2**n_blocks (32 for CIFAR-10). `spectral_norm` wraps every conv and linear.

    Standard config (nz=128, ngf=256, 32x32 CIFAR-10): 1.6811e9 real MACs, 1.6811e9 literature MACs.
    """
    sn = _sn if spectral_norm else (lambda m: m)
    return SNGANGenerator(nz, ngf, bottom_width, n_blocks, sn)


def _inputs(kwargs: Mapping, input_size, batch: int, generator: torch.Generator) -> tuple:
    return (torch.randn(batch, kwargs.get("nz", 128), generator=generator),)


_CONFIGS = {"tiny": ZooConfig(dict(nz=16, ngf=16)), "standard": ZooConfig(dict())}
register(ZooEntry(name="sngan", factory=sngan_generator, make_inputs=_inputs, configs=_CONFIGS))
register(ZooEntry(
    name="sngan_sn", factory=sngan_generator, make_inputs=_inputs,
    configs={k: ZooConfig({**c.kwargs, "spectral_norm": True}) for k, c in _CONFIGS.items()},
))

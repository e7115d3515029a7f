"""The DCGAN generator (Radford et al., "Unsupervised Representation Learning with Deep
Convolutional Generative Adversarial Networks", ICLR 2016), as in the PyTorch DCGAN example.

A latent z of shape (B, nz) is viewed as a 1x1 map and grown by transposed convs without bias:

    z -> ConvT4x4/1 (nz -> ngf*img_size/8, 4x4) BN ReLU
      -> [ConvT4x4/2 pad 1 (C -> C/2) BN ReLU] ... until ngf channels at img_size/2
      -> ConvT4x4/2 pad 1 (ngf -> nc) Tanh                          # (B, nc, img_size, img_size)
"""

from __future__ import annotations

import torch
from torch import nn

from .registry import ZooConfig, ZooEntry, register


def up_block(cin: int, cout: int, stride: int, padding: int) -> list[nn.Module]:
    """ConvTranspose4x4 (no bias: BatchNorm follows), BatchNorm, ReLU."""
    return [nn.ConvTranspose2d(cin, cout, 4, stride, padding, bias=False), nn.BatchNorm2d(cout),
            nn.ReLU(True)]


class DCGANGenerator(nn.Module):
    """A 4x4 seed map from z, stride-2 transposed convs halving the width, Tanh image out."""

    def __init__(self, nz: int, ngf: int, nc: int, img_size: int):
        super().__init__()
        channels = ngf * img_size // 8
        layers = up_block(nz, channels, 1, 0)
        while channels > ngf:
            layers += up_block(channels, channels // 2, 2, 1)
            channels //= 2
        layers += [nn.ConvTranspose2d(ngf, nc, 4, 2, 1, bias=False), nn.Tanh()]
        self.main = nn.Sequential(*layers)

    def forward(self, z):
        return self.main(z.view(z.shape[0], -1, 1, 1))


def dcgan_generator(nz=100, ngf=64, nc=3, img_size=64) -> nn.Module:
    """DCGAN's generator (Radford et al. 2016, PyTorch example): latent (B, nz) to a (B, nc,
    img_size, img_size) image; `img_size` is a power of two >= 8, the first layer has
    ngf*img_size/8 channels (ngf*8 at 64x64) and each stride-2 layer halves them.

    Standard config (nz=100, ngf=64, 64x64 output): 0.1046e9 real MACs, 0.4283e9 literature MACs.
    """
    if img_size < 8 or img_size & (img_size - 1):
        raise ValueError(f"img_size must be a power of two >= 8, got {img_size}")
    return DCGANGenerator(nz, ngf, nc, img_size)


def _inputs(kwargs, input_size, batch, generator):
    return (torch.randn(batch, kwargs.get("nz", 100), generator=generator),)


register(ZooEntry(
    name="dcgan", factory=dcgan_generator, make_inputs=_inputs,
    configs={"tiny": ZooConfig(dict(nz=16, ngf=8, img_size=32)),
             "standard": ZooConfig(dict(nz=100, ngf=64, img_size=64))},
))

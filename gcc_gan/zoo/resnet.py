"""The CycleGAN / pix2pix ResNet generator (Zhu et al., "Unpaired Image-to-Image Translation using
Cycle-Consistent Adversarial Networks", ICCV 2017; Johnson et al.'s architecture).

    x -> ReflectionPad(3) Conv7x7 -> 2 x (Conv3x3 stride 2) -> n_blocks x ResnetBlock
      -> 2 x (ConvTranspose3x3 stride 2) -> ReflectionPad(3) Conv7x7 -> Tanh

every conv except the last followed by norm and ReLU. The encoder and decoder builders are shared
with the CAT inception teacher (`inception.py`), which swaps only the residual blocks.
"""

from __future__ import annotations

import torch
from torch import nn

from .registry import ZooConfig, ZooEntry, register

PADDINGS = {"reflect": nn.ReflectionPad2d, "replicate": nn.ReplicationPad2d, "zero": None}


def make_norm(norm: str, channels: int, affine: bool = False) -> nn.Module:
    """CycleGAN's norms: InstanceNorm2d without running stats, BatchNorm2d with them, or none."""
    if norm == "instance":
        return nn.InstanceNorm2d(channels, affine=affine, track_running_stats=False)
    if norm == "batch":
        return nn.BatchNorm2d(channels)
    if norm == "none":
        return nn.Identity()
    raise ValueError(f"norm must be 'instance', 'batch' or 'none', not {norm!r}")


def uses_bias(norm: str) -> bool:
    """CycleGAN's use_bias: a conv followed by BatchNorm needs no bias (BN's beta replaces it)."""
    return norm != "batch"


def padded_conv(padding_type: str, cin: int, cout: int, k: int, bias: bool,
                groups: int = 1) -> list[nn.Module]:
    """A 'same' kxk conv with its border padded by `padding_type` (a pad layer or zero padding)."""
    if padding_type not in PADDINGS:
        raise ValueError(f"padding_type must be one of {sorted(PADDINGS)}, not {padding_type!r}")
    pad = PADDINGS[padding_type]
    p = (k - 1) // 2
    if pad is None or p == 0:
        return [nn.Conv2d(cin, cout, k, padding=p, bias=bias, groups=groups)]
    return [pad(p), nn.Conv2d(cin, cout, k, bias=bias, groups=groups)]


def encoder(input_nc: int, ngf: int, norm: str, affine: bool) -> nn.Sequential:
    """ReflectionPad(3) Conv7x7 then two stride-2 Conv3x3, each followed by norm and ReLU."""
    bias = uses_bias(norm)
    layers = [nn.ReflectionPad2d(3), nn.Conv2d(input_nc, ngf, 7, bias=bias),
              make_norm(norm, ngf, affine), nn.ReLU(True)]
    for mult in (1, 2):
        layers += [nn.Conv2d(ngf * mult, ngf * mult * 2, 3, stride=2, padding=1, bias=bias),
                   make_norm(norm, ngf * mult * 2, affine), nn.ReLU(True)]
    return nn.Sequential(*layers)


def decoder(output_nc: int, ngf: int, norm: str, affine: bool) -> nn.Sequential:
    """Two stride-2 ConvTranspose3x3 (norm, ReLU) then ReflectionPad(3) Conv7x7 and Tanh."""
    bias = uses_bias(norm)
    layers = []
    for mult in (4, 2):
        layers += [nn.ConvTranspose2d(ngf * mult, ngf * mult // 2, 3, stride=2, padding=1,
                                      output_padding=1, bias=bias),
                   make_norm(norm, ngf * mult // 2, affine), nn.ReLU(True)]
    layers += [nn.ReflectionPad2d(3), nn.Conv2d(ngf, output_nc, 7), nn.Tanh()]
    return nn.Sequential(*layers)


class ResnetBlock(nn.Module):
    """x + (pad Conv3x3 norm ReLU [Dropout 0.5] pad Conv3x3 norm)(x)."""

    def __init__(self, dim: int, padding_type: str, norm: str, affine: bool, use_dropout: bool):
        super().__init__()
        bias = uses_bias(norm)
        layers = [*padded_conv(padding_type, dim, dim, 3, bias), make_norm(norm, dim, affine),
                  nn.ReLU(True)]
        if use_dropout:
            layers.append(nn.Dropout(0.5))
        layers += [*padded_conv(padding_type, dim, dim, 3, bias), make_norm(norm, dim, affine)]
        self.conv_block = nn.Sequential(*layers)

    def forward(self, x):
        return x + self.conv_block(x)


class ResnetGenerator(nn.Module):
    """Encoder, a stack of residual blocks at 1/4 resolution, decoder."""

    def __init__(self, encoder: nn.Module, blocks: list[nn.Module], decoder: nn.Module):
        super().__init__()
        self.encoder = encoder
        self.blocks = nn.Sequential(*blocks)
        self.decoder = decoder

    def forward(self, x):
        return self.decoder(self.blocks(self.encoder(x)))


def resnet_generator(input_nc=3, output_nc=3, ngf=64, norm="instance", affine=False, n_blocks=9,
                     use_dropout=False, padding_type="reflect") -> nn.Module:
    """CycleGAN's ResnetGenerator (Zhu et al. 2017): 2 downsamplings, `n_blocks` residual blocks of
    width 4*ngf, 2 transposed-conv upsamplings. `norm` is "instance" (CycleGAN's default, with
    `affine` learnable scale/shift), "batch" or "none"; convs carry a bias unless followed by
    BatchNorm (CycleGAN's code also drops it under "none", a side effect of how it tests the norm
    type; we keep it there). `padding_type` (reflect|replicate|zero) pads the residual blocks.

    Standard config (ngf=64, n_blocks=9, 256x256 input): 49.55e9 real MACs, 56.80e9 literature MACs.
    """
    dim = ngf * 4
    blocks = [ResnetBlock(dim, padding_type, norm, affine, use_dropout) for _ in range(n_blocks)]
    return ResnetGenerator(encoder(input_nc, ngf, norm, affine), blocks,
                           decoder(output_nc, ngf, norm, affine))


def image_inputs(kwargs, input_size, batch, generator, channels_key="input_nc", default=3):
    """One (batch, C, H, W) standard-normal image, C read from the factory kwargs."""
    channels = kwargs.get(channels_key, default)
    return (torch.randn(batch, channels, *input_size, generator=generator),)


register(ZooEntry(
    name="resnet", factory=resnet_generator, make_inputs=image_inputs,
    configs={"tiny": ZooConfig(dict(ngf=8, n_blocks=2), (32, 32)),
             "standard": ZooConfig(dict(ngf=64, n_blocks=9), (256, 256))},
))

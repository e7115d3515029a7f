"""ESRGAN's RRDBNet super-resolution generator (Wang et al., "ESRGAN: Enhanced Super-Resolution
Generative Adversarial Networks", ECCV workshops 2018).

    fea = conv_first(x);  fea = fea + trunk_conv(RRDB^nb(fea))                 # long skip
    log2(scale) x [nearest x2 -> conv3x3 -> lrelu]   or   [conv nf->4nf -> PixelShuffle(2) -> lrelu]
    out = conv_last(lrelu(HRconv(.)))

An RRDB is three residual dense blocks in a residual: RRDB(x) = x + 0.2 * RDB(RDB(RDB(x))); a
residual dense block is five 3x3 convs, each seeing the concatenation of the block input and all
earlier outputs (growth `gc` channels), LeakyReLU(0.2) after the first four, and
RDB(x) = x + 0.2 * conv5(...). The dense blocks' convs get ESRGAN's smaller initialisation
(He-normal weights scaled by 0.1, zero bias), which keeps a deep trunk near the identity.
"""

from __future__ import annotations

import torch
from torch import nn

from .registry import ZooConfig, ZooEntry, register
from .resnet import image_inputs

RESIDUAL_SCALE = 0.2


def conv3x3(cin: int, cout: int) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, padding=1)


class ResidualDenseBlock(nn.Module):
    """Five densely connected 3x3 convs: conv_i sees cat(x, x_1, ..., x_{i-1})."""

    def __init__(self, nf: int, gc: int):
        super().__init__()
        self.convs = nn.ModuleList([conv3x3(nf + i * gc, gc) for i in range(4)]
                                   + [conv3x3(nf + 4 * gc, nf)])
        self.lrelu = nn.LeakyReLU(0.2, True)
        with torch.no_grad():
            for conv in self.convs:
                nn.init.kaiming_normal_(conv.weight, a=0, mode="fan_in").mul_(0.1)
                nn.init.zeros_(conv.bias)

    def forward(self, x):
        features = [x]
        for conv in self.convs[:-1]:
            features.append(self.lrelu(conv(torch.cat(features, 1))))
        return x + RESIDUAL_SCALE * self.convs[-1](torch.cat(features, 1))


class RRDB(nn.Module):
    """Residual-in-residual dense block: x + 0.2 * RDB(RDB(RDB(x)))."""

    def __init__(self, nf: int, gc: int):
        super().__init__()
        self.rdbs = nn.Sequential(*[ResidualDenseBlock(nf, gc) for _ in range(3)])

    def forward(self, x):
        return x + RESIDUAL_SCALE * self.rdbs(x)


def upsample_stage(nf: int, mode: str) -> nn.Sequential:
    """One x2 stage: ESRGAN's nearest interpolation + conv, or a sub-pixel conv."""
    if mode == "nearest":
        return nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), conv3x3(nf, nf),
                             nn.LeakyReLU(0.2, True))
    if mode == "pixelshuffle":
        return nn.Sequential(conv3x3(nf, 4 * nf), nn.PixelShuffle(2), nn.LeakyReLU(0.2, True))
    raise ValueError(f"upsample must be 'nearest' or 'pixelshuffle', not {mode!r}")


class RRDBNet(nn.Module):
    """conv_first, RRDB trunk + trunk_conv under a long skip, x2 upsampling stages, HR convs."""

    def __init__(self, in_nc: int, out_nc: int, nf: int, nb: int, gc: int, scale: int,
                 upsample: str):
        super().__init__()
        self.conv_first = conv3x3(in_nc, nf)
        self.trunk = nn.Sequential(*[RRDB(nf, gc) for _ in range(nb)])
        self.trunk_conv = conv3x3(nf, nf)
        self.upsampler = nn.Sequential(*[upsample_stage(nf, upsample)
                                         for _ in range(scale.bit_length() - 1)])
        self.hr_conv = conv3x3(nf, nf)
        self.lrelu = nn.LeakyReLU(0.2, True)
        self.conv_last = conv3x3(nf, out_nc)

    def forward(self, x):
        fea = self.conv_first(x)
        fea = fea + self.trunk_conv(self.trunk(fea))
        return self.conv_last(self.lrelu(self.hr_conv(self.upsampler(fea))))


def rrdb_generator(in_nc=3, out_nc=3, nf=64, nb=23, gc=32, scale=4,
                   upsample="nearest") -> nn.Module:
    """ESRGAN's RRDBNet (Wang et al. 2018): `nb` residual-in-residual dense blocks of width `nf`
    and growth `gc`, then x`scale` (2 or 4) upsampling by "nearest" interpolation + conv (ESRGAN)
    or "pixelshuffle" (conv nf->4nf + PixelShuffle). Both upsamplers cost the same MACs (a conv at
    2x resolution vs a 4x wider conv at 1x), so the pixelshuffle variant of the standard config is
    also 73.43e9 real and literature MACs.

    Standard config (nf=64, nb=23, gc=32, x4, 64x64 input, nearest upsampling):
    73.43e9 real MACs, 73.43e9 literature MACs.
    """
    if scale not in (2, 4):
        raise ValueError(f"scale must be 2 or 4, got {scale}")
    return RRDBNet(in_nc, out_nc, nf, nb, gc, scale, upsample)


def _inputs(kwargs, input_size, batch, generator):
    return image_inputs(kwargs, input_size, batch, generator, channels_key="in_nc")


for _name, _mode in (("rrdb", "nearest"), ("rrdb_pixelshuffle", "pixelshuffle")):
    register(ZooEntry(
        name=_name, factory=rrdb_generator, make_inputs=_inputs,
        configs={"tiny": ZooConfig(dict(nf=8, nb=1, gc=4, scale=4, upsample=_mode), (16, 16)),
                 "standard": ZooConfig(dict(nf=64, nb=23, gc=32, scale=4, upsample=_mode),
                                       (64, 64))},
    ))

"""The pix2pix / CycleGAN U-Net generator (Isola et al., "Image-to-Image Translation with
Conditional Adversarial Networks", CVPR 2017), built from the recursive skip-connection block.

Each level halves the resolution with a 4x4 stride-2 conv (LeakyReLU 0.2 before it), runs the inner
levels, doubles it back with a 4x4 stride-2 transposed conv (ReLU before it) and concatenates its
own input to the result, so every level but the outermost doubles the channels its parent sees:

    level(x) = cat([x, up(inner(down(x)))], dim=1)        outermost: Tanh(up(inner(down(x))))

As in pix2pix's code, the LeakyReLU opening each inner level is in place, so it also rewrites the
skip tensor: the concatenated x is LeakyReLU(x). torch.export records this faithfully (the cat reads
the `leaky_relu_` node), so passes see the same aliasing a user's pix2pix model has.
"""

from __future__ import annotations

import torch
from torch import nn

from .registry import ZooConfig, ZooEntry, register
from .resnet import image_inputs, make_norm, uses_bias


class UnetSkipConnectionBlock(nn.Module):
    """One U-Net level: [LeakyReLU] Conv4x4/2 [norm] -> inner -> ReLU ConvT4x4/2 [norm | Tanh]."""

    def __init__(self, outer_nc: int, inner_nc: int, input_nc: int | None = None,
                 inner: nn.Module | None = None, outermost: bool = False, norm: str = "batch",
                 use_dropout: bool = False):
        super().__init__()
        self.outermost = outermost
        innermost = inner is None
        bias = uses_bias(norm)
        down = [nn.Conv2d(input_nc or outer_nc, inner_nc, 4, stride=2, padding=1, bias=bias)]
        if not outermost:
            down.insert(0, nn.LeakyReLU(0.2, True))
        if not (outermost or innermost):
            down.append(make_norm(norm, inner_nc))
        up_in = inner_nc if innermost else inner_nc * 2  # the inner level concatenated its skip
        up = [nn.ReLU(True), nn.ConvTranspose2d(up_in, outer_nc, 4, stride=2, padding=1,
                                                bias=bias or outermost)]
        up.append(nn.Tanh() if outermost else make_norm(norm, outer_nc))
        if use_dropout:
            up.append(nn.Dropout(0.5))
        self.model = nn.Sequential(*down, *([] if innermost else [inner]), *up)

    def forward(self, x):
        if self.outermost:
            return self.model(x)
        return torch.cat([x, self.model(x)], 1)


def unet_generator(input_nc=3, output_nc=3, num_downs=8, ngf=64, norm="batch",
                   use_dropout=False) -> nn.Module:
    """pix2pix's UnetGenerator (Isola et al. 2017): `num_downs` stride-2 levels (num_downs=8 takes
    256x256 down to 1x1), widths ngf, 2ngf, 4ngf, then 8ngf for the rest; `use_dropout` puts
    Dropout(0.5) in the num_downs-5 middle 8ngf levels (between the innermost one and the
    widening ones), as pix2pix does. `norm` is "batch" (pix2pix's default), "instance" or "none";
    convs carry a bias unless followed by BatchNorm.

    Standard config (num_downs=8, ngf=64, 256x256 input):
    6.048e9 real MACs, 18.14e9 literature MACs.
    """
    if num_downs < 5:
        raise ValueError(f"num_downs must be >= 5 (three widening levels, outermost, innermost), "
                         f"got {num_downs}")
    block = UnetSkipConnectionBlock(ngf * 8, ngf * 8, norm=norm)
    for _ in range(num_downs - 5):
        block = UnetSkipConnectionBlock(ngf * 8, ngf * 8, inner=block, norm=norm,
                                        use_dropout=use_dropout)
    for mult in (4, 2, 1):
        block = UnetSkipConnectionBlock(ngf * mult, ngf * mult * 2, inner=block, norm=norm)
    return UnetSkipConnectionBlock(output_nc, ngf, input_nc=input_nc, inner=block, outermost=True,
                                   norm=norm)


register(ZooEntry(
    name="unet", factory=unet_generator, make_inputs=image_inputs,
    configs={"tiny": ZooConfig(dict(num_downs=5, ngf=8), (32, 32)),
             "standard": ZooConfig(dict(num_downs=8, ngf=64), (256, 256))},
))

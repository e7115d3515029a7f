"""CAT's inception teacher generator (Jin et al., "Teachers Do More Than Teach: Compressing
Image-to-Image Models", CVPR 2021, Sec. 3.1 and Fig. 2).

The CycleGAN ResNet generator (`resnet.py`) with every residual block replaced by an inception-based
residual block (IncResBlock) of six parallel branches whose outputs are summed:

    IncResBlock(x) = x + norm( sum_k conv_k(x) + sum_k dw_k(x) ),   k in {1, 3, 5}
    conv_k: pad kxk conv (C -> C/6) norm ReLU pad kxk conv (C/6 -> C)
    dw_k:   1x1 conv (C -> C/6) norm ReLU pad kxk depthwise conv (groups C/6) norm ReLU
            1x1 conv (C/6 -> C)

Every norm is affine: CAT's one-step pruning ranks channels by |gamma| of the norm after each
branch's first conv, and CAT trains its teachers with `--norm_affine`.

Where the paper is not explicit we follow the authors' code (snap-research/CAT,
InceptionGenerator and InvertedResidualChannels): branch width = floor(C / 6) (42 for C = 256);
the branches are summed, not concatenated; the optional norm after the sum and the residual
connection are both on (the paper's default); a branch's last conv has no norm or activation;
padding is by `padding_type` as in the ResNet blocks; convs carry a bias unless followed by
BatchNorm; no dropout (CAT's default rate 0); the stem and up/downsampling norms are affine too,
as CAT's `--norm_affine` makes them.
"""

from __future__ import annotations

from torch import nn

from .registry import ZooConfig, ZooEntry, register
from .resnet import (ResnetGenerator, decoder, encoder, image_inputs, make_norm, padded_conv,
                     uses_bias)


class ConvBranch(nn.Sequential):
    """Conventional branch: kxk conv to `mid` channels, norm, ReLU, kxk conv back to `dim`."""

    def __init__(self, dim: int, mid: int, k: int, norm: str, padding_type: str):
        bias = uses_bias(norm)
        super().__init__(*padded_conv(padding_type, dim, mid, k, bias),
                         make_norm(norm, mid, affine=True), nn.ReLU(True),
                         *padded_conv(padding_type, mid, dim, k, bias))


class DepthwiseBranch(nn.Sequential):
    """Depthwise branch: 1x1 expand to `mid`, norm, ReLU, kxk depthwise, norm, ReLU, 1x1 back."""

    def __init__(self, dim: int, mid: int, k: int, norm: str, padding_type: str):
        bias = uses_bias(norm)
        super().__init__(nn.Conv2d(dim, mid, 1, bias=bias), make_norm(norm, mid, affine=True),
                         nn.ReLU(True),
                         *padded_conv(padding_type, mid, mid, k, bias, groups=mid),
                         make_norm(norm, mid, affine=True), nn.ReLU(True),
                         nn.Conv2d(mid, dim, 1, bias=bias))


class IncResBlock(nn.Module):
    """x + norm(sum of the conventional and depthwise branches for every kernel size)."""

    def __init__(self, dim: int, kernel_sizes, divisor: int, norm: str, padding_type: str):
        super().__init__()
        mid = dim // divisor
        self.branches = nn.ModuleList(
            [ConvBranch(dim, mid, k, norm, padding_type) for k in kernel_sizes]
            + [DepthwiseBranch(dim, mid, k, norm, padding_type) for k in kernel_sizes])
        self.norm = make_norm(norm, dim, affine=True)

    def forward(self, x):
        total = self.branches[0](x)
        for branch in self.branches[1:]:
            total = total + branch(x)
        return x + self.norm(total)


def inception_generator(input_nc=3, output_nc=3, ngf=64, n_blocks=9, norm="instance",
                        kernel_sizes=(1, 3, 5), divisor=6, padding_type="reflect") -> nn.Module:
    """CAT's teacher generator (Jin et al. 2021): the CycleGAN ResNet generator whose `n_blocks`
    residual blocks are IncResBlocks with 2*len(kernel_sizes) branches of width 4*ngf // divisor.
    `norm` is "instance" (CAT's CycleGAN teacher) or "batch" (its pix2pix teachers); all norms are
    affine. Kernel sizes must be odd.

    Standard config (ngf=64, n_blocks=9, 256x256 input): 36.24e9 real MACs, 43.49e9 literature MACs.
    """
    if norm not in ("instance", "batch"):
        raise ValueError(f"norm must be 'instance' or 'batch' (CAT prunes by norm scales), "
                         f"not {norm!r}")
    if any(k % 2 == 0 for k in kernel_sizes):
        raise ValueError(f"kernel sizes must be odd to keep the resolution, got {kernel_sizes}")
    dim = ngf * 4
    blocks = [IncResBlock(dim, kernel_sizes, divisor, norm, padding_type) for _ in range(n_blocks)]
    return ResnetGenerator(encoder(input_nc, ngf, norm, affine=True), blocks,
                           decoder(output_nc, ngf, norm, affine=True))


register(ZooEntry(
    name="inception", factory=inception_generator, make_inputs=image_inputs,
    configs={"tiny": ZooConfig(dict(ngf=12, n_blocks=2), (32, 32)),
             "standard": ZooConfig(dict(ngf=64, n_blocks=9), (256, 256))},
))

"""GauGAN's SPADE generator (Park et al., "Semantic Image Synthesis with Spatially-Adaptive
Normalization", CVPR 2019), following `SPADEGenerator` of NVlabs/SPADE.

A one-hot segmentation map (B, label_nc, H, W) drives every normalisation layer:

    SPADE(x, seg) = norm(x) * (1 + gamma(seg)) + beta(seg),   norm parameter-free (affine=False)
    gamma, beta   = conv3x3(ReLU(conv3x3(resize_nearest(seg, x.shape[2:]))))  (shared hidden layer)

The trunk starts from the segmentation map itself resized to (sh, sw) = crop / 2**n_up and
convolved to 16*ngf channels (or, with `z_dim`, from a latent through a Linear: GauGAN's VAE
path), then runs seven SPADE residual blocks (eight with "most") with nearest x2 upsampling
between them, and ends with leaky_relu(0.2), conv3x3 -> 3, tanh.
"""

from __future__ import annotations

from typing import Mapping

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm as _sn

from .registry import ZooConfig, ZooEntry, register

_NORMS = {
    "syncbatch": nn.SyncBatchNorm,  # GauGAN's SynchronizedBatchNorm2d; a plain BN on one device
    "batch": nn.BatchNorm2d,
    "instance": nn.InstanceNorm2d,
}
_NUM_UPSAMPLINGS = {"normal": 5, "more": 6, "most": 7}


class SPADE(nn.Module):
    """Spatially-adaptive denormalization of `x` by a segmentation map."""

    def __init__(self, channels: int, label_nc: int, norm: str, hidden: int) -> None:
        super().__init__()
        self.param_free_norm = _NORMS[norm](channels, affine=False)
        self.mlp_shared = nn.Sequential(nn.Conv2d(label_nc, hidden, 3, padding=1), nn.ReLU())
        self.mlp_gamma = nn.Conv2d(hidden, channels, 3, padding=1)
        self.mlp_beta = nn.Conv2d(hidden, channels, 3, padding=1)

    def forward(self, x: torch.Tensor, seg: torch.Tensor) -> torch.Tensor:
        normalized = self.param_free_norm(x)
        seg = F.interpolate(seg, size=x.shape[2:], mode="nearest")
        actv = self.mlp_shared(seg)
        return normalized * (1 + self.mlp_gamma(actv)) + self.mlp_beta(actv)


class SPADEResnetBlock(nn.Module):
    """x + conv_1(lrelu(SPADE(conv_0(lrelu(SPADE(x)))))); the shortcut is SPADE + conv1x1
    (no bias) when the channel count changes."""

    def __init__(self, fin: int, fout: int, label_nc: int, norm: str, hidden: int,
                 spectral_norm: bool) -> None:
        super().__init__()
        sn = _sn if spectral_norm else (lambda m: m)
        fmiddle = min(fin, fout)
        self.learned_shortcut = fin != fout
        self.norm_0 = SPADE(fin, label_nc, norm, hidden)
        self.conv_0 = sn(nn.Conv2d(fin, fmiddle, 3, padding=1))
        self.norm_1 = SPADE(fmiddle, label_nc, norm, hidden)
        self.conv_1 = sn(nn.Conv2d(fmiddle, fout, 3, padding=1))
        if self.learned_shortcut:
            self.norm_s = SPADE(fin, label_nc, norm, hidden)
            self.conv_s = sn(nn.Conv2d(fin, fout, 1, bias=False))

    def forward(self, x: torch.Tensor, seg: torch.Tensor) -> torch.Tensor:
        x_s = self.conv_s(self.norm_s(x, seg)) if self.learned_shortcut else x
        dx = self.conv_0(F.leaky_relu(self.norm_0(x, seg), 0.2))
        dx = self.conv_1(F.leaky_relu(self.norm_1(dx, seg), 0.2))
        return x_s + dx


class SPADEGenerator(nn.Module):
    def __init__(self, label_nc: int, ngf: int, crop_size: tuple[int, int],
                 num_upsampling_layers: str, norm: str, spectral_norm: bool,
                 z_dim: int | None, spade_hidden: int) -> None:
        super().__init__()
        n_up = _NUM_UPSAMPLINGS[num_upsampling_layers]
        self.sh, self.sw = crop_size[0] // 2**n_up, crop_size[1] // 2**n_up
        self.num_upsampling_layers = num_upsampling_layers
        self.z_dim = z_dim
        nf = ngf
        self.head_nc = 16 * nf
        if z_dim is None:
            self.fc = nn.Conv2d(label_nc, self.head_nc, 3, padding=1)
        else:
            self.fc = nn.Linear(z_dim, self.head_nc * self.sh * self.sw)

        def block(fin: int, fout: int) -> SPADEResnetBlock:
            return SPADEResnetBlock(fin, fout, label_nc, norm, spade_hidden, spectral_norm)

        self.head_0 = block(16 * nf, 16 * nf)
        self.G_middle_0 = block(16 * nf, 16 * nf)
        self.G_middle_1 = block(16 * nf, 16 * nf)
        self.up_0 = block(16 * nf, 8 * nf)
        self.up_1 = block(8 * nf, 4 * nf)
        self.up_2 = block(4 * nf, 2 * nf)
        self.up_3 = block(2 * nf, 1 * nf)
        final_nc = nf
        if num_upsampling_layers == "most":
            self.up_4 = block(1 * nf, nf // 2)
            final_nc = nf // 2
        self.conv_img = nn.Conv2d(final_nc, 3, 3, padding=1)
        self.up = nn.Upsample(scale_factor=2, mode="nearest")

    def forward(self, seg: torch.Tensor, z: torch.Tensor | None = None) -> torch.Tensor:
        if self.z_dim is None:
            x = self.fc(F.interpolate(seg, size=(self.sh, self.sw), mode="nearest"))
        else:
            x = self.fc(z).view(-1, self.head_nc, self.sh, self.sw)
        x = self.up(self.head_0(x, seg))
        x = self.G_middle_0(x, seg)
        if self.num_upsampling_layers in ("more", "most"):
            x = self.up(x)
        x = self.up(self.G_middle_1(x, seg))
        x = self.up(self.up_0(x, seg))
        x = self.up(self.up_1(x, seg))
        x = self.up(self.up_2(x, seg))
        x = self.up_3(x, seg)
        if self.num_upsampling_layers == "most":
            x = self.up_4(self.up(x), seg)
        return torch.tanh(self.conv_img(F.leaky_relu(x, 0.2)))


def spade_generator(label_nc: int = 36, ngf: int = 64, crop_size: tuple[int, int] = (256, 512),
                    num_upsampling_layers: str = "normal", norm: str = "syncbatch",
                    spectral_norm: bool = True, z_dim: int | None = None,
                    spade_hidden: int = 128) -> nn.Module:
    """GauGAN / SPADE generator (Park et al. 2019): forward(seg) with seg a one-hot map
    (B, label_nc, H, W), (H, W) = crop_size, -> image (B, 3, H, W) in [-1, 1].

    label_nc counts every input channel (Cityscapes: 35 labels + 1 instance-edge map = 36);
    num_upsampling_layers is "normal" (5 x2 upsamplings), "more" (6) or "most" (7);
    norm is the parameter-free norm inside SPADE ("syncbatch", "batch" or "instance");
    spectral_norm wraps conv_0, conv_1 and conv_s of every residual block, as GauGAN's
    default norm_G "spectralspadesyncbatch3x3" does; z_dim switches to the VAE path,
    forward(seg, z) with z (B, z_dim); spade_hidden is SPADE's shared hidden width (128).

    Standard config (label_nc=36, ngf=64, num_upsampling_layers="more", 256x512 Cityscapes):
    2.8128e11 real MACs, 2.8128e11 literature MACs. That is the variant GAN Compression and CAT
    run (4x8 start, one more upsampling before G_middle_1), reported there as 281G MACs and
    93.0M parameters, as here; the SPADE repository's default "normal" counts 2.9267e11.
    """
    if num_upsampling_layers not in _NUM_UPSAMPLINGS:
        raise ValueError(f"num_upsampling_layers must be one of {sorted(_NUM_UPSAMPLINGS)}, "
                         f"got {num_upsampling_layers!r}")
    if norm not in _NORMS:
        raise ValueError(f"norm must be one of {sorted(_NORMS)}, got {norm!r}")
    return SPADEGenerator(label_nc, ngf, tuple(crop_size), num_upsampling_layers, norm,
                          spectral_norm, z_dim, spade_hidden)


def _inputs(kwargs: Mapping, input_size, batch: int, generator: torch.Generator) -> tuple:
    """A blocky random label map (one region per 8x8 cell), one-hot over label_nc - 1 classes,
    plus the instance-edge channel (1 where a pixel's region differs from a horizontal or
    vertical neighbour's, as GauGAN's get_edges); and z when the VAE path is on."""
    label_nc = kwargs.get("label_nc", 36)
    h, w = kwargs.get("crop_size", (256, 512))
    cells = torch.randint(0, label_nc - 1, (batch, 1, h // 8, w // 8), generator=generator)
    labels = F.interpolate(cells.float(), size=(h, w), mode="nearest").long()[:, 0]
    edge = torch.zeros(batch, h, w, dtype=torch.bool)
    dx, dy = labels[:, :, 1:] != labels[:, :, :-1], labels[:, 1:, :] != labels[:, :-1, :]
    edge[:, :, 1:] |= dx
    edge[:, :, :-1] |= dx
    edge[:, 1:, :] |= dy
    edge[:, :-1, :] |= dy
    onehot = F.one_hot(labels, label_nc - 1).permute(0, 3, 1, 2).float()
    seg = torch.cat([onehot, edge[:, None].float()], dim=1)
    z_dim = kwargs.get("z_dim")
    return (seg,) if z_dim is None else (seg, torch.randn(batch, z_dim, generator=generator))


register(ZooEntry(
    name="spade", factory=spade_generator, make_inputs=_inputs,
    configs={
        "tiny": ZooConfig(dict(label_nc=8, ngf=8, crop_size=(32, 64), spade_hidden=16), (32, 64)),
        # the compression papers' GauGAN, so benchmarks compare with their tables
        "standard": ZooConfig(dict(num_upsampling_layers="more"), (256, 512)),
    },
))

"""Real data that ships with scikit-image and scikit-learn: x4 super-resolution photographs and
8x8 handwritten digits. Nothing is downloaded.

Super-resolution. Each photograph (RGB in [0, 1]; grey photographs repeated to 3 channels) is
cropped to a multiple of the scale and degraded as in the SR literature:

    LR = round(255 * bicubic_down_s(HR)) / 255          (antialiased bicubic, then 8-bit)

The split is by photograph: `SR_HELD_OUT` is never sampled for training. Training batches are
aligned (LR, HR) crops of random photographs (chosen in proportion to their area, capped at
512 x 512 so the two big astronomy/retina scans do not dominate), with a
random flip / 90-degree rotation applied to both.

Digits. scikit-learn's 1797 digits (8x8, 17 grey levels 0..16) are scaled to [-1, 1] (the
range of a tanh generator) and bilinearly resized to `size` x `size`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import fx, nn

# Photographs in scikit-image's wheel (no download, no synthetic images). stereo_motorcycle
# is a stereo pair of one scene: both views stay on the same side of the split.
SR_HELD_OUT = ("chelsea", "coffee", "rocket", "camera")
SR_TRAIN = ("astronaut", "hubble_deep_field", "immunohistochemistry", "retina",
            "stereo_motorcycle", "brick", "grass", "gravel", "moon", "coins", "clock", "cell",
            "page", "text", "microaneurysms")


AREA_CAP = 512 * 512  # sampling weight of a photograph: its HR area, at most this


def _require(module: str):
    try:
        return __import__(module, fromlist=["_"])
    except ImportError as exc:
        raise ImportError(f"{module} is needed for the training tasks; install the extra: "
                          "pip install 'gcc-gan[train]'") from exc


def photographs(name: str) -> list[torch.Tensor]:
    """scikit-image photograph `name` as (3, H, W) float tensors in [0, 1] (a list: a stereo
    pair gives two)."""
    data = _require("skimage.data")
    if name not in SR_TRAIN + SR_HELD_OUT:
        raise ValueError(f"unknown photograph {name!r}; choose from {SR_TRAIN + SR_HELD_OUT}")
    raw = getattr(data, name)()
    images = list(raw[:2]) if name == "stereo_motorcycle" else [raw]
    out = []
    for img in images:
        t = torch.from_numpy(np.ascontiguousarray(img)).float() / 255.0
        t = t[..., :3].permute(2, 0, 1) if t.dim() == 3 else t.expand(3, *t.shape)
        out.append(t.contiguous())
    return out


def degrade(hr: torch.Tensor, scale: int = 4) -> torch.Tensor:
    """8-bit antialiased bicubic downsampling of (..., 3, H, W) by `scale` (H, W multiples)."""
    batched = hr if hr.dim() == 4 else hr[None]
    lr = F.interpolate(batched, scale_factor=1 / scale, mode="bicubic", antialias=True,
                       align_corners=False)
    lr = torch.round(lr.clamp(0, 1) * 255) / 255
    return lr if hr.dim() == 4 else lr[0]


def sr_pairs(names: tuple[str, ...], scale: int = 4) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(LR, HR) of whole photographs, HR cropped to a multiple of `scale`."""
    pairs = []
    for name in names:
        for hr in photographs(name):
            h, w = hr.shape[1] // scale * scale, hr.shape[2] // scale * scale
            hr = hr[:, :h, :w].contiguous()
            pairs.append((degrade(hr, scale), hr))
    return pairs


@dataclass(frozen=True)
class SRConfig:
    scale: int = 4
    patch: int = 64          # HR patch side (a multiple of scale)
    batch: int = 16
    seed: int = 0

    def __post_init__(self):
        if self.patch % self.scale:
            raise ValueError(f"patch {self.patch} must be a multiple of scale {self.scale}")


class SRPatches:
    """Endless random (LR, HR) training crops; `state_dict` makes a run resumable."""

    def __init__(self, config: SRConfig = SRConfig(), names: tuple[str, ...] = SR_TRAIN):
        leaked = set(names) & set(SR_HELD_OUT)
        if leaked:
            raise ValueError(f"{sorted(leaked)} are held out for evaluation; train on others")
        self.config = config
        self.pairs = sr_pairs(names, config.scale)
        lr_patch = config.patch // config.scale
        small = [i for i, (lr, _) in enumerate(self.pairs) if min(lr.shape[1:]) < lr_patch]
        if small:
            raise ValueError(f"photographs {small} are smaller than a {config.patch} px patch")
        area = torch.tensor([float(min(h.shape[1] * h.shape[2], AREA_CAP)) for _, h in self.pairs])
        self.weights = area / area.sum()
        self.generator = torch.Generator().manual_seed(config.seed)

    def __iter__(self):
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        c, g = self.config, self.generator
        p = c.patch // c.scale
        idx = torch.multinomial(self.weights, c.batch, replacement=True, generator=g)
        lrs, hrs = [], []
        for i in idx.tolist():
            lr, hr = self.pairs[i]
            y = int(torch.randint(lr.shape[1] - p + 1, (1,), generator=g))
            x = int(torch.randint(lr.shape[2] - p + 1, (1,), generator=g))
            a = lr[:, y:y + p, x:x + p]
            b = hr[:, y * c.scale:(y + p) * c.scale, x * c.scale:(x + p) * c.scale]
            k, flip = torch.randint(4, (1,), generator=g).item(), torch.rand(1, generator=g) < 0.5
            a, b = torch.rot90(a, k, (1, 2)), torch.rot90(b, k, (1, 2))
            if flip:
                a, b = a.flip(2), b.flip(2)
            lrs.append(a)
            hrs.append(b)
        return torch.stack(lrs), torch.stack(hrs)

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])


def digits(size: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's digits as ((1797, 1, size, size) in [-1, 1], labels (1797,))."""
    datasets = _require("sklearn.datasets")
    d = datasets.load_digits()
    x = torch.from_numpy(d.images).float()[:, None] / 16.0 * 2 - 1
    if size != 8:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    return x.clamp(-1, 1), torch.from_numpy(d.target).long()


def digits_split(size: int = 16, test_fraction: float = 0.2, seed: int = 0):
    """A fixed random split ((x_train, y_train), (x_test, y_test)) for the digits classifier."""
    x, y = digits(size)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    n_test = int(round(test_fraction * len(x)))
    test, train = order[:n_test], order[n_test:]
    return (x[train], y[train]), (x[test], y[test])


class Batches:
    """Endless random mini-batches (with replacement across epochs) of a tensor, resumable."""

    def __init__(self, data: torch.Tensor, batch: int, seed: int = 0):
        if len(data) < batch:
            raise ValueError(f"{len(data)} samples cannot fill a batch of {batch}")
        self.data, self.batch = data, batch
        self.generator = torch.Generator().manual_seed(seed)
        self.order, self.pos = torch.randperm(len(data), generator=self.generator), 0

    def __iter__(self):
        return self

    def __next__(self) -> torch.Tensor:
        if self.pos + self.batch > len(self.data):
            self.order, self.pos = torch.randperm(len(self.data), generator=self.generator), 0
        idx = self.order[self.pos:self.pos + self.batch]
        self.pos += self.batch
        return self.data[idx]

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state(), "order": self.order, "pos": self.pos}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
        self.order, self.pos = state["order"], state["pos"]


def any_size(program: nn.Module) -> nn.Module:
    """For an exported program (fx GraphModule from `trace` or a pass): a parameter-sharing
    copy without the guard that pins its input size, so a fully convolutional generator traced
    on training patches runs on whole photographs. Other modules are returned unchanged. An op
    with a size baked in fails, or gives an output of the wrong size, which `sr_metrics`
    rejects; trace at the evaluation size then."""
    if not isinstance(program, fx.GraphModule):
        return program
    graph, env = fx.Graph(), {}
    out = graph.graph_copy(program.graph, env)
    graph.output(out)
    graph._codegen = program.graph._codegen
    for node in list(graph.nodes):
        if node.op == "call_module" and node.target.startswith("_guards_fn") and not node.users:
            graph.erase_node(node)
    copy = fx.GraphModule(program, graph)
    return copy.train(program.training)


@torch.no_grad()
def sr_metrics(model: nn.Module, pairs: list[tuple[torch.Tensor, torch.Tensor]],
               scale: int = 4) -> dict:
    """PSNR (dB) and SSIM of model(LR) against HR on [0, 1], outputs clamped, `scale` border
    pixels shaved (the SR convention); means over photographs, and per photograph."""
    from ..metrics import psnr, ssim

    run = any_size(model)
    was = run.training
    run.eval()
    per = []
    for lr, hr in pairs:
        out = run(lr[None])
        out = (out if isinstance(out, torch.Tensor) else out[0]).clamp(0, 1)
        if out.shape[-2:] != hr.shape[-2:]:
            raise ValueError(f"output {tuple(out.shape[-2:])} for LR {tuple(lr.shape[-2:])} is "
                             f"not x{scale}: the program has a size baked in; trace it at this "
                             "photograph's size")
        o, h = out[..., scale:-scale, scale:-scale], hr[None, :, scale:-scale, scale:-scale]
        per.append({"psnr": psnr(o, h, data_range=1.0), "ssim": ssim(o, h, data_range=1.0)})
    run.train(was)
    return {"psnr": sum(p["psnr"] for p in per) / len(per),
            "ssim": sum(p["ssim"] for p in per) / len(per), "per_image": per}


class BicubicResidual(nn.Module):
    """An SR generator plus a global bicubic skip: y = net(x) + bicubic_up_s(x), so the
    network learns only the residual detail (VDSR's global residual, Kim et al. 2016). The
    zoo's RRDBNet has no skip from input to output; with one it beats bicubic within minutes of
    CPU training."""

    def __init__(self, net: nn.Module, scale: int = 4):
        super().__init__()
        self.net, self.scale = net, scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x) + F.interpolate(x, scale_factor=self.scale, mode="bicubic",
                                           align_corners=False)


class GlobalResidual(nn.Module):
    """A same-size image-to-image generator (CycleGAN's ResNet) as a restoration model:
    y = x + net(x) (DnCNN's residual learning, DeblurGAN's ResNet generator with a global
    skip)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.net(x)


def noisy_pairs(names: tuple[str, ...], sigma: float, multiple: int = 4, seed: int = 0
                ) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(clean + N(0, sigma^2) noise, clean) of whole photographs, cropped to a `multiple`."""
    g = torch.Generator().manual_seed(seed)
    pairs = []
    for name in names:
        for clean in photographs(name):
            h, w = clean.shape[1] // multiple * multiple, clean.shape[2] // multiple * multiple
            clean = clean[:, :h, :w].contiguous()
            pairs.append((clean + sigma * torch.randn(clean.shape, generator=g), clean))
    return pairs


class NoisyPatches:
    """Endless (clean + N(0, sigma^2) noise, clean) training crops, fresh noise each time;
    `state_dict` makes a run resumable."""

    def __init__(self, config: SRConfig, sigma: float, names: tuple[str, ...] = SR_TRAIN):
        self.crops = SRPatches(dataclasses.replace(config, scale=1), names)
        self.sigma = sigma
        self.generator = torch.Generator().manual_seed(config.seed + 1)

    def __iter__(self):
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        _, clean = next(self.crops)
        return clean + self.sigma * torch.randn(clean.shape, generator=self.generator), clean

    def state_dict(self) -> dict:
        return {"crops": self.crops.state_dict(), "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.crops.load_state_dict(state["crops"])
        self.generator.set_state(state["generator"])

"""Unconditional GAN training (the digits task): a DCGAN discriminator and the
non-saturating GAN loss of Goodfellow et al. 2014, as the DCGAN paper trains it.

    L_D = -E_x log sigmoid(D(x)) - E_z log(1 - sigmoid(D(G(z))))
    L_G = -E_z log sigmoid(D(G(z)))

One step updates D on a real batch and a fresh fake batch, then G on the same z; both with
Adam (lr 2e-4, betas (0.5, 0.999)). After `step`, the generator's `.grad` holds dL_G/dtheta_G,
which sparse training reads to regrow weights.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .loop import Stateful
from .tasks import Batches


class Discriminator(nn.Module):
    """DCGAN's discriminator for size x size images (size a power of two >= 8): stride-2 4x4
    convs doubling the width from ndf, LeakyReLU(0.2), BatchNorm after all but the first, and a
    final 4x4 conv to one logit."""

    def __init__(self, nc: int = 1, ndf: int = 32, size: int = 16):
        super().__init__()
        if size < 8 or size & (size - 1):
            raise ValueError(f"size must be a power of two >= 8, got {size}")
        layers, channels = [nn.Conv2d(nc, ndf, 4, 2, 1), nn.LeakyReLU(0.2, True)], ndf
        size //= 2
        while size > 4:
            layers += [nn.Conv2d(channels, channels * 2, 4, 2, 1, bias=False),
                       nn.BatchNorm2d(channels * 2), nn.LeakyReLU(0.2, True)]
            channels, size = channels * 2, size // 2
        layers.append(nn.Conv2d(channels, 1, 4, 1, 0))
        self.main = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.main(x).flatten()


def dcgan_init(module: nn.Module) -> nn.Module:
    """DCGAN's initialisation: conv weights N(0, 0.02), norm scales N(1, 0.02), zero shifts."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)
    return module


@dataclass(frozen=True)
class GanConfig:
    nz: int = 32                # latent size of the generator
    batch: int = 64
    lr: float = 2e-4
    betas: tuple[float, float] = (0.5, 0.999)
    seed: int = 0


class GanTrainer:
    """Trains `generator` against `discriminator` on `data` (N, C, H, W) in [-1, 1]."""

    def __init__(self, generator: nn.Module, discriminator: nn.Module, data: torch.Tensor,
                 config: GanConfig = GanConfig()):
        self.model, self.discriminator, self.config = generator, discriminator, config
        self.real = Batches(data, config.batch, config.seed)
        self.noise = torch.Generator().manual_seed(config.seed + 1)
        self.opt_g = torch.optim.Adam(generator.parameters(), lr=config.lr, betas=config.betas)
        self.opt_d = torch.optim.Adam(discriminator.parameters(), lr=config.lr,
                                      betas=config.betas)
        self.optimizers = [self.opt_g]  # the optimizer of the model that is sparsified

    def step(self, t: int) -> dict[str, float]:
        g, d = self.model.train(), self.discriminator.train()
        real = next(self.real)
        z = torch.randn(len(real), self.config.nz, generator=self.noise)
        fake = g(z)
        logits_real, logits_fake = d(real), d(fake.detach())
        loss_d = (F.binary_cross_entropy_with_logits(logits_real, torch.ones_like(logits_real))
                  + F.binary_cross_entropy_with_logits(logits_fake, torch.zeros_like(logits_fake)))
        self.opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        self.opt_d.step()
        logits = d(fake)
        loss_g = F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits))
        self.opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        self.opt_g.step()
        return {"loss": loss_g.item(), "loss_d": loss_d.item()}

    def state(self) -> dict[str, Stateful]:
        return {"generator": self.model, "discriminator": self.discriminator,
                "opt_g": self.opt_g, "opt_d": self.opt_d, "real": self.real,
                "noise": _GeneratorState(self.noise)}


class _GeneratorState:
    def __init__(self, generator: torch.Generator):
        self.generator = generator

    def state_dict(self) -> dict:
        return {"state": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["state"])


@torch.no_grad()
def sample(generator: nn.Module, n: int, nz: int, seed: int = 0, batch: int = 256) -> torch.Tensor:
    """n images from `generator` in eval mode with a fixed latent stream."""
    rng = torch.Generator().manual_seed(seed)
    was = generator.training
    generator.eval()
    out = torch.cat([generator(torch.randn(min(batch, n - i), nz, generator=rng))
                     for i in range(0, n, batch)])
    generator.train(was)
    return out

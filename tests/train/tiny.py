"""Tiny models and data for the training tests: each routine runs in about a second."""

from __future__ import annotations

import torch
from torch import nn

from gcc_gan.train.loop import SupervisedTrainer
from gcc_gan.train.tasks import Batches


def conv_net(seed: int = 0, width: int = 8) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(width, width, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(width, 1, 3, padding=1))


class Pairs:
    """Endless (x, y) batches of a fixed regression problem: y = target_net(x)."""

    def __init__(self, n: int = 64, batch: int = 16, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, 1, 8, 8, generator=g)
        with torch.no_grad():
            self.y = conv_net(seed + 100)(self.x)
        self.index = Batches(torch.arange(n), batch, seed)

    def __next__(self):
        idx = next(self.index)
        return self.x[idx], self.y[idx]

    def state_dict(self):
        return self.index.state_dict()

    def load_state_dict(self, state):
        self.index.load_state_dict(state)


def regression_trainer(steps: int, seed: int = 0, lr: float = 1e-2) -> SupervisedTrainer:
    return SupervisedTrainer(conv_net(seed), Pairs(seed=seed), steps, lr=lr, loss="mse")

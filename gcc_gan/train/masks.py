"""Unstructured weight masks for sparse generators: f(x; m * theta), m in {0, 1}.

Masked are the kernels: every parameter with >= 2 dimensions (conv, transposed-conv and linear
weights). Biases and norm scales are 1-D and stay dense, as in the lottery-ticket and STU-GAN
papers. Invariant after `Masks.apply`: a masked weight is exactly 0, and so are the optimizer
moments stored for it, so a weight that is later regrown starts from zero without history
(STU-GAN, section 4.2).
"""

from __future__ import annotations

from typing import Iterable

import torch
from torch import nn


def kernels(model: nn.Module) -> dict[str, nn.Parameter]:
    """The maskable parameters of `model` by name (>= 2 dims, trainable)."""
    found = {n: p for n, p in model.named_parameters() if p.dim() >= 2 and p.requires_grad}
    if not found:
        raise ValueError(f"{type(model).__name__} has no conv or linear kernels to sparsify")
    return found


class Masks:
    """One boolean mask per kernel (True = kept)."""

    def __init__(self, masks: dict[str, torch.Tensor]):
        self.masks = {n: m.bool() for n, m in masks.items()}

    @classmethod
    def dense(cls, model: nn.Module) -> "Masks":
        return cls({n: torch.ones_like(p, dtype=torch.bool) for n, p in kernels(model).items()})

    def __getitem__(self, name: str) -> torch.Tensor:
        return self.masks[name]

    def __iter__(self):
        return iter(self.masks)

    @property
    def kept(self) -> int:
        return sum(int(m.sum()) for m in self.masks.values())

    @property
    def total(self) -> int:
        return sum(m.numel() for m in self.masks.values())

    def density(self) -> float:
        """Fraction of kernel weights kept (1 - sparsity)."""
        return self.kept / self.total

    def densities(self) -> dict[str, float]:
        return {n: m.float().mean().item() for n, m in self.masks.items()}

    @torch.no_grad()
    def apply(self, model: nn.Module, optimizers: Iterable[torch.optim.Optimizer] = ()) -> None:
        """Zero masked weights of `model` and their entries in each optimizer's state."""
        params = dict(model.named_parameters())
        unknown = set(self.masks) - set(params)
        if unknown:
            raise KeyError(f"masks name parameters {sorted(unknown)[:3]} that "
                           f"{type(model).__name__} does not have; build the masks from this model")
        for name, mask in self.masks.items():
            params[name].mul_(mask)
        by_param = {params[n]: m for n, m in self.masks.items()}
        for opt in optimizers:
            for p, state in opt.state.items():
                mask = by_param.get(p)
                if mask is None:
                    continue
                for value in state.values():
                    if isinstance(value, torch.Tensor) and value.shape == mask.shape:
                        value.mul_(mask)

    def state_dict(self) -> dict:
        return {"masks": dict(self.masks)}

    def load_state_dict(self, state: dict) -> None:
        self.masks = {n: m.bool() for n, m in state["masks"].items()}


def prune_magnitude(model: nn.Module, masks: Masks, fraction: float) -> Masks:
    """New masks without the `fraction` of currently kept weights that are smallest in |w|,
    ranked globally across layers (Han et al. 2016, as the GAN lottery-ticket paper prunes)."""
    if not 0 <= fraction < 1:
        raise ValueError(f"fraction must be in [0, 1), got {fraction}")
    params = kernels(model)
    scores = torch.cat([params[n].detach().abs().flatten()[masks[n].flatten()] for n in masks])
    n_prune = int(round(fraction * scores.numel()))
    if n_prune == 0:
        return Masks(dict(masks.masks))
    threshold = torch.kthvalue(scores, n_prune).values
    new = {n: masks[n] & (params[n].detach().abs() > threshold) for n in masks}
    # ties at the threshold: keep exactly numel - n_prune by restoring the first tied weights
    deficit = (scores.numel() - n_prune) - sum(int(m.sum()) for m in new.values())
    for n in masks:
        if deficit <= 0:
            break
        tied = (masks[n] & (params[n].detach().abs() == threshold) & ~new[n]).flatten()
        idx = tied.nonzero().flatten()[:deficit]
        flat = new[n].flatten().clone()
        flat[idx] = True
        new[n] = flat.view_as(new[n])
        deficit -= len(idx)
    return Masks(new)

"""`sparse_train`: dynamic sparse training of a generator from scratch, STU-GAN's Algorithm 1
(Liu et al., "Don't Be So Dense: Sparse-to-Sparse GAN Training Without Sacrificing
Performance", IJCV 2023).

Sparse initialisation (section 4.1): layer l keeps a random fraction d_l of its kernel, the
Erdos-Renyi-Kernel densities for the global density 1 - s (`gcc_gan.passes.sparsify.
erk_densities`: d_l proportional to (n_out + n_in + k_h + k_w) / (n_out n_in k_h k_w)).

Parameter exploration (section 4.2), after every Delta-T training steps t, in each layer with
N_l active weights and the exploration rate p_t = p * (1 + cos(pi t / T)) / 2 (p decays to 0
as in RigL, Evci et al. 2020, whose schedule STU-GAN follows):

    theta' = TopK(|theta|, (1 - p_t) N_l)                  drop the smallest active weights
    theta  = theta' + Phi(theta_{i not in theta'}, p_t N_l)  grow as many where |grad L| is
                                                            largest ("random": uniformly, SET)

Grown weights start at exactly 0 with zero optimizer moments (`Masks.apply`), and every layer
keeps N_l active weights, so the parameter count is fixed throughout. Gradients are the dense
gradients of the generator's last loss, which a `Trainer` leaves in `.grad`. The masks and the
exploration log are checkpointed with the trainer's state.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from gcc_gan.passes.sparsify import erk_densities

from .loop import CheckpointConfig, History, Trainer, run_steps
from .masks import Masks, kernels

REGROW = ("gradient", "random")


@dataclass(frozen=True)
class SparseConfig:
    sparsity: float = 0.74           # s: fraction of kernel weights that are zero
    steps: int = 1000                # T
    delta_t: int = 100               # exploration every Delta-T steps (the paper: 1000 on SNGAN)
    prune_rate: float = 0.5          # p, the initial exploration rate (the paper: 0.5)
    regrow: str = "gradient"         # "gradient" (STU-GAN) or "random" (SET)
    seed: int = 0
    checkpoint: CheckpointConfig | None = None
    progress: bool | None = None

    def __post_init__(self):
        if not 0 < self.sparsity < 1:
            raise ValueError(f"sparsity must be in (0, 1), got {self.sparsity}")
        if self.delta_t < 1 or not 0 <= self.prune_rate < 1:
            raise ValueError(f"need delta_t >= 1 and 0 <= prune_rate < 1, got delta_t="
                             f"{self.delta_t}, prune_rate={self.prune_rate}")
        if self.regrow not in REGROW:
            raise ValueError(f"regrow must be one of {REGROW}, not {self.regrow!r}")

    def rate(self, t: int) -> float:
        """p_t after step t (cosine decay of prune_rate over the run)."""
        return self.prune_rate * 0.5 * (1 + math.cos(math.pi * min(1.0, t / self.steps)))


@dataclass
class SparseResult:
    masks: Masks
    history: History
    updates: list[dict] = field(default_factory=list)  # per exploration: step, rate, moved


def erk_masks(model: torch.nn.Module, sparsity: float, generator: torch.Generator) -> Masks:
    """Random masks with each kernel's ERK density for the global density 1 - sparsity."""
    params = kernels(model)
    densities = erk_densities({n: tuple(p.shape) for n, p in params.items()}, 1 - sparsity)
    masks = {}
    for name, p in params.items():
        k = max(1, int(round(densities[name] * p.numel())))
        keep = torch.randperm(p.numel(), generator=generator)[:k]
        flat = torch.zeros(p.numel(), dtype=torch.bool)
        flat[keep] = True
        masks[name] = flat.view(p.shape)
    return Masks(masks)


class _Exploration:
    """The evolving masks, the exploration log and its random stream: one checkpointed unit."""

    def __init__(self, masks: Masks, generator: torch.Generator):
        self.masks, self.generator, self.updates = masks, generator, []

    def state_dict(self) -> dict:
        return {"masks": self.masks.state_dict(), "updates": list(self.updates),
                "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.masks.load_state_dict(state["masks"])
        self.updates = list(state["updates"])
        self.generator.set_state(state["generator"])


@torch.no_grad()
def explore(model: torch.nn.Module, masks: Masks, rate: float, regrow: str = "gradient",
            generator: torch.Generator | None = None) -> int:
    """One drop-and-grow update of `masks` in place; returns how many weights moved."""
    params = kernels(model)
    moved = 0
    for name in masks:
        w, mask = params[name], masks[name]
        n = int(rate * int(mask.sum()))
        if n == 0:
            continue
        flat_mask, flat_w = mask.flatten().clone(), w.detach().abs().flatten()
        drop = torch.where(flat_mask, flat_w, torch.full_like(flat_w, math.inf)).topk(
            n, largest=False).indices
        flat_mask[drop] = False
        if regrow == "gradient":
            if w.grad is None:
                raise RuntimeError(f"no gradient on {name}: the trainer must leave the model's "
                                   "last gradients in .grad (zero them at the start of a step)")
            score = w.grad.detach().abs().flatten().clone()
        else:
            score = torch.rand(flat_w.shape, generator=generator)
        score[flat_mask] = -math.inf
        grow = score.topk(n).indices
        flat_mask[grow] = True
        moved += int((flat_mask != mask.flatten()).sum()) // 2
        masks.masks[name] = flat_mask.view_as(mask)
    return moved


def sparse_train(trainer: Trainer, config: SparseConfig) -> SparseResult:
    """Train `trainer.model` sparse from scratch with STU-GAN's exploration (module docstring)."""
    generator = torch.Generator().manual_seed(config.seed)
    state = _Exploration(erk_masks(trainer.model, config.sparsity, generator), generator)
    state.masks.apply(trainer.model, trainer.optimizers)

    def after(t: int) -> None:
        done = t + 1
        if done % config.delta_t == 0 and done < config.steps:
            rate = config.rate(done)
            moved = explore(trainer.model, state.masks, rate, config.regrow, generator)
            state.updates.append({"step": done, "rate": rate, "moved": moved})
        state.masks.apply(trainer.model, trainer.optimizers)

    history = run_steps(trainer.step, config.steps, state={**trainer.state(), "sparsity": state},
                        checkpoint=config.checkpoint, description="sparse training (STU-GAN)",
                        progress=config.progress, after_step=after)
    return SparseResult(state.masks, history, state.updates)

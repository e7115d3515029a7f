"""`lottery`: iterative magnitude pruning (IMP) with rewinding, after Chen et al., "GANs Can
Play Lottery Tickets Too" (ICLR 2021), Algorithm 1, with Frankle et al.'s late rewinding.

With theta_k the full training state after k steps (k = `rewind_step`; k = 0 is theta_0):

    m_0 = 1
    for r = 1..R:   train f(.; m_{r-1} * theta) from theta_k for T - k steps  (round 1: from 0)
                    m_r = m_{r-1} minus the fraction q of its weights smallest in |theta|
                    rewind: theta <- theta_k (generator, discriminator, optimizers, data order)
    ticket:         train f(.; m_R * theta) from theta_k, T - k steps

q = 1 - (1 - s)^(1/R) reaches sparsity s after R rounds; the paper prunes q = 20% a round
(s_i = 1 - 0.8^i), i.e. R = 6 for 73.8%. Ranking is global over every kernel of the trained
model (`masks.prune_magnitude`). Everything the trainer checkpoints is rewound, so a GAN's
discriminator is reset with its generator, as in the paper's IMP_G.

Resumable: each round trains in `<checkpoint_dir>/round_<r>` (resumed from its newest
checkpoint), and `<checkpoint_dir>/lottery.pt` records the finished rounds, masks and theta_k.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .loop import CheckpointConfig, History, Trainer, run_steps
from .masks import Masks, prune_magnitude


@dataclass(frozen=True)
class LotteryConfig:
    sparsity: float = 0.738          # of the kernels at the end (1 - 0.8^6)
    rounds: int = 6                  # pruning rounds R
    steps: int = 1000                # T: training steps of each round and of the ticket
    rewind_step: int = 0             # k: late rewinding point (0: the initialisation)
    checkpoint_dir: str | Path | None = None
    checkpoint_every: int = 500
    progress: bool | None = None

    def __post_init__(self):
        if not 0 < self.sparsity < 1:
            raise ValueError(f"sparsity must be in (0, 1), got {self.sparsity}")
        if self.rounds < 1:
            raise ValueError(f"rounds must be >= 1, got {self.rounds}")
        if not 0 <= self.rewind_step < self.steps:
            raise ValueError(f"rewind_step must be in [0, steps), got {self.rewind_step} with "
                             f"steps={self.steps}")

    @property
    def rate(self) -> float:
        """q: the fraction of the remaining weights pruned each round."""
        return 1 - (1 - self.sparsity) ** (1 / self.rounds)


@dataclass
class LotteryResult:
    masks: Masks
    history: History                  # the ticket's training
    rounds: list[dict] = field(default_factory=list)  # per round: density, mean loss of last 10%


def _snapshot(trainer: Trainer) -> dict:
    return copy.deepcopy({k: v.state_dict() for k, v in trainer.state().items()})


def _restore(trainer: Trainer, snapshot: dict) -> None:
    state = trainer.state()
    for k, v in state.items():
        v.load_state_dict(copy.deepcopy(snapshot[k]))


def _save(record: Path | None, masks: Masks, rewind: dict, rounds: list, done: int) -> None:
    if record is None:
        return
    record.parent.mkdir(parents=True, exist_ok=True)
    tmp = record.with_suffix(".tmp")
    torch.save({"masks": masks.state_dict(), "rewind": rewind, "rounds": rounds, "done": done},
               tmp)
    os.replace(tmp, record)


def lottery(trainer: Trainer, config: LotteryConfig) -> LotteryResult:
    """Find and train a lottery ticket of `trainer.model` (see the module docstring). The
    trainer ends holding the trained ticket; the masks are applied to `trainer.model`."""
    root = Path(config.checkpoint_dir) if config.checkpoint_dir is not None else None
    record = root / "lottery.pt" if root is not None else None
    masks, rewind, rounds, done = Masks.dense(trainer.model), None, [], 0
    if record is not None and record.exists():
        blob = torch.load(record, weights_only=False)
        masks.load_state_dict(blob["masks"])
        rewind, rounds, done = blob["rewind"], blob["rounds"], blob["done"]
    if rewind is None and config.rewind_step == 0:
        rewind = _snapshot(trainer)

    history = None
    for r in range(done, config.rounds + 1):
        is_ticket = r == config.rounds
        if r > 0:
            _restore(trainer, rewind)
        masks.apply(trainer.model, trainer.optimizers)
        start = 0 if r == 0 else config.rewind_step
        captured: list[dict] = []

        def after(t: int, first_round=(r == 0), captured=captured) -> None:
            masks.apply(trainer.model, trainer.optimizers)
            if first_round and rewind is None and t + 1 == config.rewind_step:
                captured.append(_snapshot(trainer))
                _save(record, masks, captured[0], rounds, 0)  # survives a restart in round 1

        checkpoint = None if root is None else CheckpointConfig(
            root / f"round_{r}", every=config.checkpoint_every)
        label = "ticket" if is_ticket else f"round {r + 1}/{config.rounds}"
        history = run_steps(trainer.step, config.steps, state=trainer.state(),
                            checkpoint=checkpoint, description=f"lottery {label}",
                            progress=config.progress, after_step=after, start=start)
        if rewind is None:
            if not captured:
                raise RuntimeError(
                    f"round 1 resumed past the rewind step {config.rewind_step} without the "
                    f"rewound state; delete {root} to start the lottery over")
            rewind = captured[0]
        summary = {"round": r, "density": masks.density(),
                   "loss_end": history.mean("loss", last=max(1, len(history.records) // 10))}
        if is_ticket:
            rounds.append({**summary, "ticket": True})
            break
        masks = prune_magnitude(trainer.model, masks, config.rate)
        rounds.append(summary)
        _save(record, masks, rewind, rounds, r + 1)
    masks.apply(trainer.model, trainer.optimizers)
    return LotteryResult(masks, history, rounds)

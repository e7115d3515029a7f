"""The shared training loop: steps, resumable checkpoints, a progress bar.

Invariant: a run interrupted after a checkpoint and restarted with the same arguments resumes
at the saved step with the same weights, optimizer moments, data-sampler state and torch RNG
state, so it continues exactly as an uninterrupted run would (up to floating-point
non-determinism of the kernels). A checkpoint is written atomically (temporary file, then
rename) every `CheckpointConfig.every` steps and at the end; the newest `keep` are kept.

A step function `step(t) -> {"loss": float, ...}` does one optimisation step at index t
(0-based); its returned figures are the run's `History`.
"""

from __future__ import annotations

import math
import os
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                           TimeElapsedColumn, TimeRemainingColumn)
from torch import nn

_NAME = re.compile(r"^step_(\d{8})\.pt$")


class Stateful(Protocol):
    def state_dict(self) -> Mapping[str, Any]: ...
    def load_state_dict(self, state: Mapping[str, Any]) -> Any: ...


class CheckpointError(RuntimeError):
    """A checkpoint exists but does not fit this run; the message says what to do."""


@dataclass(frozen=True)
class CheckpointConfig:
    directory: str | Path       # one directory per run; resumed from its newest checkpoint
    every: int = 200            # steps between checkpoints (the last step is always saved)
    keep: int = 2               # newest checkpoints kept on disk
    resume: bool = True         # False: start over (the directory's checkpoints are deleted)

    def __post_init__(self):
        if self.every < 1 or self.keep < 1:
            raise ValueError(f"CheckpointConfig needs every >= 1 and keep >= 1, got "
                             f"every={self.every}, keep={self.keep}")


@dataclass
class History:
    """Per-step figures of a run (resumed runs include the steps before the restart)."""

    records: list[dict[str, float]] = field(default_factory=list)
    first_step: int = 0         # the step of records[0] (> 0 for a rewound lottery ticket)
    resumed_from: int = 0       # the step a checkpoint restored (0: fresh start)
    seconds: float = 0.0        # wall time of this process's part of the run

    @property
    def steps(self) -> int:
        """The step the run has reached."""
        return self.first_step + len(self.records)

    def mean(self, key: str = "loss", first: int | None = None, last: int | None = None) -> float:
        """Mean of `key` over the first or last n steps (all steps by default)."""
        values = [r[key] for r in self.records if key in r]
        if first is not None:
            values = values[:first]
        if last is not None:
            values = values[-last:]
        if not values:
            raise ValueError(f"no step recorded {key!r}; recorded keys: "
                             f"{sorted({k for r in self.records for k in r})}")
        return sum(values) / len(values)


def latest_checkpoint(directory: str | Path) -> tuple[int, Path] | None:
    """(step, path) of the newest checkpoint in `directory`, or None."""
    d = Path(directory)
    if not d.is_dir():
        return None
    found = [(int(m.group(1)), d / m.group(0)) for m in map(_NAME.match, os.listdir(d)) if m]
    return max(found) if found else None


def _clear(directory: str | Path) -> None:
    """Remove a previous run's checkpoints (a fresh start must not resume from them later)."""
    d = Path(directory)
    if d.is_dir():
        for name in os.listdir(d):
            if _NAME.match(name):
                (d / name).unlink()


def save_checkpoint(directory: str | Path, step: int, state: Mapping[str, Stateful],
                    history: History, keep: int = 2,
                    extra: Mapping[str, Any] | None = None) -> Path:
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    path = d / f"step_{step:08d}.pt"
    tmp = path.with_suffix(".tmp")
    torch.save({"step": step, "state": {k: v.state_dict() for k, v in state.items()},
                "rng": torch.get_rng_state(), "records": history.records,
                "extra": dict(extra or {})}, tmp)
    os.replace(tmp, path)
    names = sorted(m.group(0) for m in map(_NAME.match, os.listdir(d)) if m)
    for name in names[:-keep]:
        (d / name).unlink(missing_ok=True)
    return path


def load_checkpoint(path: Path, state: Mapping[str, Stateful]) -> dict:
    blob = torch.load(path, weights_only=False)
    missing = set(state) - set(blob["state"])
    if missing:
        raise CheckpointError(f"checkpoint {path} has no state for {sorted(missing)}: it was "
                              "written by a different kind of run. Point the checkpoint "
                              "directory elsewhere or delete it to start over.")
    for name, obj in state.items():
        try:
            obj.load_state_dict(blob["state"][name])
        except (RuntimeError, KeyError, ValueError) as exc:
            raise CheckpointError(f"checkpoint {path} does not fit this run's {name!r} "
                                  f"({type(exc).__name__}: {str(exc).splitlines()[0][:200]}); "
                                  "it was written for another model or config. Point the "
                                  "checkpoint directory elsewhere or delete it to start over."
                                  ) from exc
    torch.set_rng_state(blob["rng"])
    return blob


def run_steps(step: Callable[[int], Mapping[str, float]], steps: int, *,
              state: Mapping[str, Stateful], checkpoint: CheckpointConfig | None = None,
              description: str = "training", progress: bool | None = None,
              after_step: Callable[[int], None] | None = None, start: int = 0) -> History:
    """Call `step(t)` for t in [start, steps), checkpointing `state`; see the module docstring.

    `after_step(t)` runs after each step and before its checkpoint (masks, schedules).
    `start` > 0 begins part-way (a rewound lottery ticket); a checkpoint overrides it.
    `progress`: None shows a bar only when stderr is a terminal.
    """
    if not 0 <= start <= steps:
        raise ValueError(f"need 0 <= start <= steps, got start={start}, steps={steps}")
    history = History(first_step=start)
    if checkpoint is not None and not checkpoint.resume:
        _clear(checkpoint.directory)
    if checkpoint is not None and checkpoint.resume:
        found = latest_checkpoint(checkpoint.directory)
        if found is not None:
            saved, path = found
            if saved > steps:
                raise CheckpointError(f"{path} is at step {saved}, past this run's {steps} "
                                      "steps; raise steps, or use another checkpoint directory")
            blob = load_checkpoint(path, state)
            history.first_step = blob["extra"].get("first_step", 0)
            history.records = list(blob["records"])[:saved - history.first_step]
            start = history.resumed_from = saved
    began = time.perf_counter()
    with _bar(description, steps, start, progress) as advance:
        for t in range(start, steps):
            record = {k: float(v) for k, v in step(t).items()}
            if not all(math.isfinite(v) for v in record.values()):
                raise FloatingPointError(f"{description}: step {t} gave {record}; lower the "
                                         "learning rate or check the data range")
            history.records.append(record)
            if after_step is not None:
                after_step(t)
            done = t + 1
            if checkpoint is not None and (done % checkpoint.every == 0 or done == steps):
                save_checkpoint(checkpoint.directory, done, state, history, checkpoint.keep,
                                {"first_step": history.first_step})
            advance(record)
    history.seconds = time.perf_counter() - began
    return history


class _bar:
    """A rich progress bar on stderr (only when it is a terminal, unless forced)."""

    def __init__(self, description: str, total: int, start: int, show: bool | None):
        show = sys.stderr.isatty() if show is None else show
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(),
                                 MofNCompleteColumn(), TextColumn("{task.fields[figures]}"),
                                 TimeElapsedColumn(), TimeRemainingColumn(),
                                 console=Console(stderr=True), transient=True,
                                 disable=not show)
        self.task = self.progress.add_task(description, total=total, completed=start,
                                           figures="")
        self.smooth: dict[str, float] = {}

    def __enter__(self):
        self.progress.__enter__()
        return self.advance

    def advance(self, record: Mapping[str, float]) -> None:
        for k, v in record.items():  # exponential moving average, for a readable bar
            self.smooth[k] = v if k not in self.smooth else 0.95 * self.smooth[k] + 0.05 * v
        figures = " ".join(f"{k} {v:.4g}" for k, v in list(self.smooth.items())[:3])
        self.progress.update(self.task, advance=1, figures=figures)

    def __exit__(self, *exc):
        return self.progress.__exit__(*exc)


def cosine_lr(steps: int, warmup: int = 0):
    """Multiplier at step t: linear warm-up, then cosine from 1 to 0 over the remaining steps."""
    def factor(t: int) -> float:
        if t < warmup:
            return (t + 1) / warmup
        span = max(1, steps - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (t - warmup) / span)))
    return factor


class Trainer(Protocol):
    """What lottery tickets and sparse training drive: one optimisation step at a time.

    `model` is the network whose weights are pruned (a GAN's generator); after `step(t)` its
    parameters' `.grad` hold that step's gradient of the model's own loss (sparse training
    regrows weights where it is largest). `state()` is everything a checkpoint or a rewind
    restores: networks, optimizers, data samplers.
    """

    model: nn.Module
    optimizers: list[torch.optim.Optimizer]

    def step(self, t: int) -> Mapping[str, float]: ...
    def state(self) -> dict[str, Stateful]: ...


LOSSES: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "l1": F.l1_loss, "mse": F.mse_loss, "cross_entropy": F.cross_entropy}


class SupervisedTrainer:
    """Adam on loss(model(x), y) over (x, y) batches, cosine-decayed learning rate."""

    def __init__(self, model: nn.Module, data, steps: int, lr: float = 1e-3,
                 loss: str = "l1", weight_decay: float = 0.0):
        if loss not in LOSSES:
            raise ValueError(f"loss must be one of {sorted(LOSSES)}, not {loss!r}")
        self.model, self.data, self.loss = model, data, LOSSES[loss]
        self.optimizer = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
        self.optimizers = [self.optimizer]
        self.schedule = torch.optim.lr_scheduler.LambdaLR(self.optimizer, cosine_lr(steps))

    def step(self, t: int) -> dict[str, float]:
        x, y = next(self.data)
        self.model.train()
        loss = self.loss(self.model(x), y)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.schedule.step()
        return {"loss": loss.item()}

    def state(self) -> dict[str, Stateful]:
        state = {"model": self.model, "optimizer": self.optimizer, "schedule": self.schedule}
        if hasattr(self.data, "state_dict"):
            state["data"] = self.data
        return state

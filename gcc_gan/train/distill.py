"""`distill`: recover a compressed generator's fidelity from its teacher (CAT, section 3.3).

For a batch x with target y (the data's, or the teacher's output T(x) when the data has none),
student S and feature pairs P matched from the two programs (`features.match_features`):

    L = l_recon * |S(x) - y|_1 + l_feat * (1/|P|) sum_{(t, s) in P} D(T_t(x), S_s(x))

    D = 1 - GKA(T_t, S_s)                 feature_loss="ka"  (CAT eq. 3, shifted to be >= 0)
    D = mean (A_s(S_s) - T_t)^2           feature_loss="mse" (A_s: a learnable 1x1 conv from the
                                          student's to the teacher's channels where they differ,
                                          the auxiliary layer of Li et al. that CAT avoids)
    D = 0                                 feature_loss="none" (reconstruction only)

The pair mean (CAT sums) keeps l_feat independent of how many sites match. The teacher is
frozen; the student starts from its compressed weights and is trained with Adam under a
cosine-decayed learning rate. The student program is trained on a copy and exported again, so
the result is a new GanGraph that drops in wherever the compressed one was. Norm layers in an
exported program compute with their stored statistics (inference form) while training.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Iterator

import torch
import torch.nn.functional as F
from torch import fx, nn

from ..ir import GanGraph, trace
from ..ir.edit import retraced
from ..ir.trace import copy_module
from .features import (FeaturePair, feature_sites, global_kernel_alignment, match_features,
                       tap)
from .loop import CheckpointConfig, History, cosine_lr, run_steps

FEATURE_LOSSES = ("ka", "mse", "none")


@dataclass(frozen=True)
class DistillConfig:
    steps: int = 400                # the benchmark's: enough for 1/4-MACs x4 SR (quality.py)
    lr: float = 5e-4
    feature_loss: str = "ka"        # "ka" | "mse" | "none"
    feature_weight: float = 1.0     # l_feat
    recon_weight: float = 1.0       # l_recon
    recon: str = "l1"               # "l1" | "mse"
    max_pairs: int | None = None    # None: every matched site
    center: bool = True             # centre features before KA (CKA's centring)
    warmup: int = 0                 # linear learning-rate warm-up steps before the cosine
    checkpoint: CheckpointConfig | None = None
    progress: bool | None = None    # None: a bar only when stderr is a terminal
    seed: int = 0

    def __post_init__(self):
        if self.feature_loss not in FEATURE_LOSSES:
            raise ValueError(f"feature_loss must be one of {FEATURE_LOSSES}, not "
                             f"{self.feature_loss!r}")
        if self.recon not in ("l1", "mse"):
            raise ValueError(f"recon must be 'l1' or 'mse', not {self.recon!r}")
        if self.steps < 0 or self.lr <= 0:
            raise ValueError(f"need steps >= 0 and lr > 0, got steps={self.steps}, lr={self.lr}")


@dataclass
class DistillResult:
    module: fx.GraphModule                 # the trained student program
    graph: GanGraph | None                 # it, exported again (None if no example inputs)
    pairs: tuple[FeaturePair, ...]
    history: History
    adapters: nn.ModuleList | None = field(default=None, repr=False)  # feature_loss="mse"


def split_batch(batch) -> tuple[tuple, torch.Tensor | None]:
    """A batch is an input tensor, or (input, target) where input may be a tuple of tensors
    and target may be None."""
    if isinstance(batch, torch.Tensor):
        return (batch,), None
    if isinstance(batch, (tuple, list)) and len(batch) == 2:
        inputs, target = batch
        inputs = tuple(inputs) if isinstance(inputs, (tuple, list)) else (inputs,)
        return inputs, target
    raise TypeError("a distillation batch is an input tensor or a pair (input, target); got "
                    f"{type(batch).__name__}{'' if not isinstance(batch, tuple) else len(batch)}")


class _Cycle:
    """Endless batches from an iterator (passed through) or a re-iterable collection; `peek`
    reads the first batch without losing it, and the sampler's state (if any) is checkpointed."""

    def __init__(self, data):
        self.data, self.buffer = data, []
        self.it: Iterator = data if isinstance(data, Iterator) else iter(data)

    def peek(self):
        if not self.buffer:
            self.buffer.append(next(self))
        return self.buffer[0]

    def __next__(self):
        if self.buffer:
            return self.buffer.pop()
        try:
            return next(self.it)
        except StopIteration:
            if isinstance(self.data, Iterator):
                raise ValueError("the data iterator ran out; pass a re-iterable collection "
                                 "(a list, a DataLoader) or an endless sampler") from None
            self.it = iter(self.data)
            return next(self.it)

    def state_dict(self):
        return self.data.state_dict() if hasattr(self.data, "state_dict") else {}

    def load_state_dict(self, state):
        if hasattr(self.data, "load_state_dict"):
            self.buffer.clear()  # the restored sampler state is past the peeked batch
            self.data.load_state_dict(state)


def _as_program(model, example_inputs) -> tuple[fx.GraphModule, GanGraph | None]:
    if isinstance(model, GanGraph):
        return model.module, model
    if isinstance(model, fx.GraphModule):
        return model, None
    if isinstance(model, nn.Module):
        graph = trace(model, example_inputs)
        return graph.module, graph
    raise TypeError(f"expected a GanGraph, fx.GraphModule or nn.Module, got {type(model).__name__}")


def _first(out):
    return out if isinstance(out, torch.Tensor) else out[0]


def _adapters(pairs: list[FeaturePair]) -> nn.ModuleList:
    return nn.ModuleList(
        nn.Identity() if p.student.shape[0] == p.teacher.shape[0]
        else nn.Conv2d(p.student.shape[0], p.teacher.shape[0], 1) for p in pairs)


def _check_sizes(example: tuple, inputs: tuple) -> None:
    """A traced program is specialised to its example's non-batch sizes: the data must match."""
    want = [tuple(x.shape[1:]) for x in example if isinstance(x, torch.Tensor)]
    got = [tuple(x.shape[1:]) for x in inputs if isinstance(x, torch.Tensor)]
    if want != got:
        raise ValueError(f"the data's inputs have per-sample shapes {got}, but the student was "
                         f"traced at {want}; trace (and compress) it at the training patch size, "
                         "or crop the data to the traced size")


def distill(student: GanGraph | fx.GraphModule | nn.Module, teacher: GanGraph | nn.Module,
            data: Iterable, config: DistillConfig = DistillConfig()) -> DistillResult:
    """Train a compressed `student` to match `teacher` on `data` (see the module docstring).

    `data` yields batches: an input tensor, or (input, target). `student` is not modified; the
    result holds a trained copy (`.module`) and, for a GanGraph or nn.Module student, that copy
    exported again (`.graph`), ready to replace the compressed graph.
    """
    torch.manual_seed(config.seed)
    batches = _Cycle(data)
    if isinstance(student, GanGraph):
        example = student.example_inputs
    else:
        example = tuple(x[:1] for x in split_batch(batches.peek())[0])
    _check_sizes(example, split_batch(batches.peek())[0])
    s_prog, s_graph = _as_program(student, example)
    t_prog, _ = _as_program(teacher, example)
    work = copy_module(s_prog)
    pairs = match_features(t_prog, work, config.max_pairs) if config.feature_loss != "none" else []
    if config.feature_loss != "none" and not pairs:
        t_n, s_n = len(feature_sites(t_prog)), len(feature_sites(work))
        raise ValueError(f"no teacher and student feature maps pair up (teacher {t_n} sites, "
                         f"student {s_n}; sites are block outputs and activations with 4-D "
                         "shapes in node.meta['val'], which gcc_gan.trace records): pass traced "
                         "programs, or use feature_loss='none' (reconstruction only)")
    s_tap = tap(work, [p.student.node for p in pairs]).train()
    t_tap = tap(t_prog, [p.teacher.node for p in pairs]).eval()
    adapters = _adapters(pairs) if config.feature_loss == "mse" else None
    params = [p for p in work.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the student has no trainable parameters (requires_grad=False "
                         "everywhere); nothing to distil")
    if adapters is not None:
        params += list(adapters.parameters())
    opt = torch.optim.Adam(params, lr=config.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, cosine_lr(config.steps, config.warmup))

    def step(t: int) -> dict[str, float]:
        batch = next(batches)
        inputs, target = split_batch(batch)
        with torch.no_grad():
            t_out, t_feats = t_tap(*inputs)
        s_out, s_feats = s_tap(*inputs)
        out = _first(s_out)
        y = _first(t_out) if target is None else target
        recon = F.l1_loss(out, y) if config.recon == "l1" else F.mse_loss(out, y)
        feat = out.new_zeros(())
        if pairs:
            if config.feature_loss == "ka":
                terms = [1 - global_kernel_alignment(a, b, config.center)
                         for a, b in zip(t_feats, s_feats)]
            else:
                terms = [F.mse_loss(ad(b), a) for ad, a, b in zip(adapters, t_feats, s_feats)]
            feat = torch.stack(terms).mean()
        loss = config.recon_weight * recon + config.feature_weight * feat
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        return {"loss": loss.item(), "recon": recon.item(), "feature": feat.item()}

    state = {"student": work, "optimizer": opt, "schedule": sched, "data": batches}
    if adapters is not None:
        state["adapters"] = adapters
    history = run_steps(step, config.steps, state=state, checkpoint=config.checkpoint,
                        description=f"distilling ({config.feature_loss})",
                        progress=config.progress)
    work.eval()
    graph = None
    if s_graph is not None:
        graph = retraced(s_graph, work, f"distilled {config.steps} steps, "
                                        f"feature_loss={config.feature_loss}, {len(pairs)} pairs")
    return DistillResult(work, graph, tuple(pairs), history, adapters)


def finetune(student: GanGraph, teacher: nn.Module | GanGraph, data: Iterable,
             config: DistillConfig = DistillConfig()) -> GanGraph:
    """`distill` returning only the new GanGraph: the drop-in for a compiler pipeline.
    The teacher's parameters are only read (under no_grad), never changed."""
    if not isinstance(student, GanGraph):
        raise TypeError(f"finetune() takes the GanGraph a pass returned, got "
                        f"{type(student).__name__}; use distill() for other modules")
    return distill(student, teacher, data, config).graph

"""Trace a generator into a `GanGraph`: an ATen-level fx graph with a FakeTensor on every node.

Invariant: the user's model is never touched. Tracing works on a deep copy put in eval mode,
with weight parametrizations (spectral norm, weight norm; new- and old-style) baked into plain
weights, as a deployed generator computes them. Forward hooks stay on the copy and are traced,
since a hook may change what the model computes.

Attempts, in order, each recorded in `GanGraph.tracer` / `GanGraph.notes`:
1. ``torch.export.export(strict=False)`` with a dynamic batch dimension. A batch-1 example is
   repeated to batch 2 first, because export specialises size-1 dimensions.
2. The same with a static batch, when the model's code pins its batch size.
3. ``torch.fx.symbolic_trace`` and then export of the traced module (dynamic, then static
   batch). Symbolic tracing runs the Python with proxies only for inputs and parameters, so a
   branch on a *buffer's* value (a stored gain or flag) is decided once, on the trained value,
   where export refuses to guard on it. The decision is baked into the graph; the notes say so.
"""

from __future__ import annotations

import contextlib
import copy
import io
import sys
import traceback
import warnings
from typing import Any, Callable

import torch
from torch import nn
from torch.export import Dim
from torch.nn.utils import parametrize
from torch.utils import _pytree as pytree

from ..quiet import quiet_loggers
from .graph import GanGraph
from .meta import is_user_file


class TraceError(RuntimeError):
    """The model could not be captured as a graph; the message says where and what to do."""


# Advice by exception type name: what a user can change in the model to make it traceable.
_ADVICE = {
    "GuardOnDataDependentSymNode": "Python control flow depends on tensor values; use "
    "torch.where / torch.cond, or make the decision a constructor argument.",
    "TraceError": "Python control flow depends on tensor values; use torch.where / "
    "torch.cond, or make the decision a constructor argument.",
    "UserError": "the model constrains its input shapes; check the example inputs.",
}
# Messages torch gives when example inputs do not fit the model (conv channels, matmul sizes).
_SHAPE_HINTS = ("expected input", "size mismatch", "shapes cannot be multiplied",
                "must match the size", "to have", "channels")
_SHAPE_ADVICE = ("the example inputs do not fit the model: pass inputs with the shapes its "
                 "forward expects (channels, sizes, number of inputs).")
_PYTREE_HINT = "not a known type"
_PYTREE_ADVICE = ("forward returns an object export cannot flatten; return tensors, tuples or "
                  "dicts, or register the type with torch.utils._pytree.register_pytree_node.")


def trace(model: nn.Module, example_inputs: Any, *, dynamic_batch: bool = True) -> GanGraph:
    """Capture `model` called on `example_inputs` (a tuple of positional arguments, or one tensor).

    Tensors whose leading dimension equals the first tensor's are treated as batched; with
    `dynamic_batch` the graph accepts any batch size (when the model's code allows it).
    Raises `TraceError` naming the model class, the exception and the user's source line.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"trace() expects an nn.Module, got {type(model).__name__}")
    args = example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)
    work, notes = _working_copy(model)
    batch = _batch_size(args)

    attempts: list[tuple[str, Callable[[], torch.export.ExportedProgram]]] = []
    for name, program in (("export", lambda: work),
                          ("symbolic_trace+export", lambda: torch.fx.symbolic_trace(work))):
        if dynamic_batch and batch is not None:
            attempts.append((name, lambda p=program: _export(p(), _at_least_batch_2(args, batch),
                                                             batch)))
        attempts.append((name, lambda p=program: _export(p(), args, None)))

    failures: list[tuple[str, BaseException]] = []
    for name, attempt in attempts:
        try:
            ep = _attempt(attempt)
        except Exception as exc:  # every failure is reported in the TraceError below
            failures.append((name, exc))
            continue
        dynamic = _has_dynamic_batch(ep)
        if failures:
            notes.append(f"traced by {name} after: " + "; ".join(
                f"{n}: {_one_line(e)}" for n, e in failures))
        if dynamic_batch and batch is not None and not dynamic:
            notes.append("batch dimension is static: the model's code fixes it")
        return GanGraph(module=ep.module(), exported=ep, tracer=name,
                        model_class=type(model).__qualname__, dynamic_batch=dynamic,
                        example_inputs=args, notes=notes)
    raise TraceError(_failure_message(model, failures)) from failures[0][1]


def _attempt(fn: Callable[[], torch.export.ExportedProgram]) -> torch.export.ExportedProgram:
    """Run one export attempt, keeping torch's own failure chatter (warnings, partial-graph dumps
    that export prints to stderr) out of the user's terminal unless the attempt succeeds: a
    failure that matters is reported in the TraceError, one a later attempt recovers is noted."""
    captured = io.StringIO()
    with quiet_loggers("torch"), contextlib.redirect_stderr(captured):
        ep = fn()
    sys.stderr.write(captured.getvalue())
    return ep


def copy_module(module: nn.Module) -> nn.Module:
    """A deep copy; torch's own deprecation chatter about pytree specs is not the user's concern."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*LeafSpec.*", category=FutureWarning)
        return copy.deepcopy(module)


def _working_copy(model: nn.Module) -> tuple[nn.Module, list[str]]:
    try:
        work = copy_module(model)
    except Exception as exc:
        raise TraceError(f"cannot trace {type(model).__qualname__}: the model cannot be "
                         f"deep-copied ({_one_line(exc)}); gcc_gan traces a copy so that your "
                         "model stays untouched. Remove un-copyable attributes "
                         "(open files, locks, generators) from the module.") from exc
    work.eval()
    return work, _bake_parametrizations(work)


def _bake_parametrizations(model: nn.Module) -> list[str]:
    """Replace parametrized weights by their current value (eval mode: no power iteration)."""
    baked = []
    for path, module in model.named_modules():
        if parametrize.is_parametrized(module):
            baked += [f"{path}.{name} ({kinds})" for name, kinds in _bake_module(module)]
        for hook in list(module._forward_pre_hooks.values()):
            remove = _OLD_STYLE_REMOVERS.get(type(hook).__name__)
            if remove is not None:
                remove(module, hook.name)
                baked.append(f"{path}.{hook.name} ({type(hook).__name__})")
    return [f"baked parametrizations into plain weights: {', '.join(baked)}"] if baked else []


def _bake_module(module: nn.Module) -> list[tuple[str, str]]:
    # Not parametrize.remove_parametrizations: it deletes the property from the dynamically
    # made Parametrized<Class>, which a deep copy shares with the user's model and would break.
    plist = module.parametrizations
    with torch.no_grad():
        values = {name: getattr(module, name).detach().clone() for name in plist}
    trainable = {name: any(isinstance(p, nn.Parameter) for p in plist[name]._parameters.values())
                 for name in plist}
    kinds = {name: ",".join(type(p).__name__ for p in plist[name]) for name in plist}
    module.__class__ = module.__class__.__bases__[0]  # this instance only: our copy
    del module._modules["parametrizations"]
    for name, value in values.items():
        if trainable[name]:
            module.register_parameter(name, nn.Parameter(value))
        else:
            module.register_buffer(name, value)
    return list(kinds.items())


_OLD_STYLE_REMOVERS = {
    "SpectralNorm": nn.utils.remove_spectral_norm,
    "WeightNorm": nn.utils.remove_weight_norm,
}


def _batch_size(args: tuple) -> int | None:
    for leaf in pytree.tree_leaves(args):
        if isinstance(leaf, torch.Tensor) and leaf.dim() >= 1:
            return leaf.shape[0]
    return None


def _is_batched(leaf: Any, batch: int | None) -> bool:
    return isinstance(leaf, torch.Tensor) and leaf.dim() >= 1 and leaf.shape[0] == batch


def _at_least_batch_2(args: tuple, batch: int) -> tuple:
    if batch != 1:
        return args
    return pytree.tree_map(lambda t: torch.cat([t, t]) if _is_batched(t, 1) else t, args)


def _export(module: nn.Module, args: tuple, batch: int | None) -> torch.export.ExportedProgram:
    shapes = None
    if batch is not None:
        dim = Dim("batch")
        b = _batch_size(args)
        shapes = pytree.tree_map(lambda t: {0: dim} if _is_batched(t, b) else None, args)
    return torch.export.export(module, args, dynamic_shapes=shapes, strict=False)


def _has_dynamic_batch(ep: torch.export.ExportedProgram) -> bool:
    user_inputs = set(ep.graph_signature.user_inputs)
    for node in ep.graph.nodes:
        val = node.meta.get("val")
        if node.op == "placeholder" and node.name in user_inputs and isinstance(val, torch.Tensor):
            if val.dim() >= 1 and isinstance(val.shape[0], torch.SymInt):
                return True
    return False


def _one_line(exc: BaseException) -> str:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {first[:300]}"


def _user_frame(exc: BaseException) -> str:
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if is_user_file(f.filename)]
    if not frames:
        return "no frame of your code in the traceback"
    f = frames[-1]
    return f"{f.filename}:{f.lineno} in {f.name}: {(f.line or '').strip()}"


def _advice(exc: BaseException) -> str:
    if _PYTREE_HINT in str(exc):
        return _PYTREE_ADVICE
    if isinstance(exc, (RuntimeError, ValueError)) and any(h in str(exc) for h in _SHAPE_HINTS):
        return _SHAPE_ADVICE
    return _ADVICE.get(type(exc).__name__, "see the exceptions above.")


def _failure_message(model: nn.Module, failures: list[tuple[str, BaseException]]) -> str:
    lines = [f"gcc_gan could not trace {type(model).__qualname__}:"]
    for name, exc in failures:
        entry = [f"  {name}: {_one_line(exc)}", f"    at {_user_frame(exc)}"]
        if entry[0] not in lines:  # dynamic and static attempts often fail alike
            lines.extend(entry)
    lines.append(f"What to do: {_advice(failures[0][1])}")
    return "\n".join(lines)

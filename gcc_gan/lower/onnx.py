"""Lower a GanGraph to ONNX with a dynamic batch, and check it against the torch program.

The exported program goes through torch.onnx's exporter (dynamo=True), so initializers keep
the module paths of the weights they come from (``encoder.1.weight``). The IR version is capped
at one ONNX Runtime loads (`MAX_IR_VERSION`): onnx may write newer ones.

A program whose ops cannot take a symbolic batch in ONNX (StyleGAN2's modulated conv sets the
conv *group count* to the batch, and ONNX Conv's `group` is a constant) is lowered at batch 1;
`OnnxModel.run` then runs a larger batch one sample at a time, and `notes` says so.

Parity: after lowering, ONNX Runtime's output on the example inputs (batch 1 and the example's
batch) must match the torch program within `tolerance` * max(1, |reference|), or lowering fails.
The check runs on the fp32 model; an int8 plan (`gcc_gan.lower.qdq`) is applied after it, and
its error is what the report's fidelity measures.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import warnings
from dataclasses import dataclass, field

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch.utils import _pytree as pytree

from ..ir import GanGraph, trace
from ..quant import add_plan, quant_plan
from ..quiet import quiet_loggers
from ..runtime import ort_session
from .lut import with_lut
from .qdq import to_qdq

MAX_IR_VERSION = 10


class LoweringError(RuntimeError):
    """The graph could not be lowered, or the lowered model disagrees with the torch program."""


@dataclass(frozen=True)
class OnnxModel:
    data: bytes                       # the serialized ModelProto
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    dynamic_batch: bool
    opset: int
    parity_max_abs_diff: float        # against the torch program on the example inputs
    notes: tuple[str, ...] = ()
    threads: int | None = None        # ONNX Runtime intra-op threads; None: runtime's default
    int8_layers: int = 0              # convs lowered as QDQ int8 (quantize_int8's plan)
    _session: list = field(default_factory=list, compare=False, repr=False)

    def session(self) -> ort.InferenceSession:
        if not self._session:
            self._session.append(ort_session(self.data, threads=self.threads))
        return self._session[0]

    def feeds(self, inputs: tuple) -> dict[str, np.ndarray]:
        leaves = [t for t in pytree.tree_leaves(inputs) if isinstance(t, torch.Tensor)]
        if len(leaves) != len(self.input_names):
            raise ValueError(f"the model takes {len(self.input_names)} tensor inputs "
                             f"({', '.join(self.input_names)}), got {len(leaves)}")
        return {n: t.detach().cpu().numpy() for n, t in zip(self.input_names, leaves)}

    def run(self, *inputs) -> torch.Tensor | tuple[torch.Tensor, ...]:
        """Run in ONNX Runtime; inputs as the torch module takes them."""
        feeds = self.feeds(inputs)
        batch = next(iter(feeds.values())).shape[0] if feeds else 1
        if self.dynamic_batch or batch == 1:
            outs = self.session().run(None, feeds)
        else:  # lowered at batch 1: one sample at a time
            per_sample = [self.session().run(None, {k: v[i:i + 1] for k, v in feeds.items()})
                          for i in range(batch)]
            outs = [np.concatenate(parts) for parts in zip(*per_sample)]
        tensors = tuple(torch.from_numpy(o) for o in outs)
        return tensors[0] if len(tensors) == 1 else tensors


@contextlib.contextmanager
def _quiet_exporter():
    """The exporter prints progress and logs about optional packages (torchvision); we report
    what matters ourselves."""
    with quiet_loggers("torch.onnx", "onnxscript"), warnings.catch_warnings(), \
            contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        yield


def _root_cause(exc: BaseException) -> str:
    while exc.__cause__ is not None:
        exc = exc.__cause__
    return f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:200]}"


def _export(graph: GanGraph) -> onnx.ModelProto:
    with _quiet_exporter():
        program = torch.onnx.export(graph.exported, graph.example_inputs, dynamo=True,
                                    verbose=False)
    model = program.model_proto
    model.ir_version = min(model.ir_version, MAX_IR_VERSION)
    return model


def _first_sample(inputs: tuple) -> tuple:
    return pytree.tree_map(lambda t: t[:1] if isinstance(t, torch.Tensor) and t.dim() else t, inputs)


def lower_onnx(graph: GanGraph, *, tolerance: float = 1e-4, threads: int | None = None,
               calib: list[tuple] | None = None, nhwc_shuffles: bool = True,
               nhwc_norms: bool = True) -> OnnxModel:
    """ONNX for `graph`, checked against the torch program; raises LoweringError on failure.

    When `quantize_int8` annotated the graph, the checked fp32 model becomes QDQ int8 with the
    pass's scales (`calib` batches, or the example inputs, feed ONNX Runtime's tooling for the
    tensors the plan leaves to it); pixel shuffles after int8 convs run in NHWC unless
    `nhwc_shuffles` is False, and instance norms between them as BatchNormalization in
    training mode unless `nhwc_norms` is False (for runtimes whose int8 convs are not NHWC, or
    that lack that mode; `gcc_gan.lower.nhwc`).
    """
    notes: list[str] = []
    dynamic = graph.dynamic_batch
    try:
        model = _export(graph)
    except Exception as exc:  # noqa: BLE001  (the static retry below, or the error, reports it)
        first = _root_cause(exc)
        static = trace(graph.module, _first_sample(graph.example_inputs), dynamic_batch=False)
        try:
            model = _export(static)
        except Exception as exc2:
            raise LoweringError(f"ONNX export of {graph.model_class} failed: {first}; at a "
                                f"static batch of 1 too: {_root_cause(exc2)}") from exc2
        dynamic = False
        notes.append(f"lowered at batch 1 (dynamic-batch export failed: {first}); "
                     "run() handles larger batches one sample at a time")
    data = model.SerializeToString()
    lowered = OnnxModel(data=data, input_names=tuple(i.name for i in model.graph.input),
                        output_names=tuple(o.name for o in model.graph.output),
                        dynamic_batch=dynamic, opset=_opset(model), parity_max_abs_diff=0.0,
                        notes=tuple(notes), threads=threads)
    lowered = dataclasses.replace(lowered, parity_max_abs_diff=_parity(graph, lowered, tolerance))
    plan = quant_plan(graph.module)
    if not plan:
        return with_lut(graph, lowered)
    batches = calib or [graph.example_inputs]
    if not lowered.dynamic_batch:
        batches = [_first_sample(b) for b in batches]
    qdq = to_qdq(lowered.data, plan, [lowered.feeds(b) for b in batches], add_plan(graph.module),
                 nhwc_shuffles=nhwc_shuffles, nhwc_norms=nhwc_norms)
    if qdq.missing:
        notes.append(f"int8 plan names layers the ONNX graph lacks, left float: {qdq.missing}")
    if qdq.nhwc_shuffles:
        notes.append(f"{qdq.nhwc_shuffles} pixel shuffle(s) after int8 convs run in NHWC (the "
                     f"convs' output channels reordered; exact)")
    if qdq.nhwc_norms:
        notes.append(f"{qdq.nhwc_norms} instance norm(s) between int8 convs run in NHWC "
                     f"(BatchNormalization in training mode over (H*W, N*C))")
    lowered = dataclasses.replace(lowered, data=qdq.data,
                                  int8_layers=len(plan) - len(qdq.missing),
                                  notes=tuple(notes), _session=[])
    return with_lut(graph, lowered)


def _opset(model: onnx.ModelProto) -> int:
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


def _parity(graph: GanGraph, lowered: OnnxModel, tolerance: float) -> float:
    worst = 0.0
    batches = {1: _first_sample(graph.example_inputs), "example": graph.example_inputs}
    for label, inputs in batches.items():
        with torch.no_grad():
            expected = pytree.tree_leaves(graph(*inputs))
        got = lowered.run(*inputs)
        got = [got] if isinstance(got, torch.Tensor) else list(got)
        for e, g in zip(expected, got):
            diff = (e - g).abs().max().item()
            worst = max(worst, diff)
            if diff > tolerance * max(1.0, e.abs().max().item()):
                raise LoweringError(f"ONNX Runtime disagrees with the torch program of "
                                    f"{graph.model_class} by {diff:.3g} (batch {label}; "
                                    f"tolerance {tolerance:g})")
    return worst

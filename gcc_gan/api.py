"""`compile`: trace -> passes (chosen by the target) -> lower -> measure, in one call.

    out = gcc_gan.compile(gen, target="x86", budget_macs=3e9, example_inputs=(x,))
    out.module          # the compressed torch program: runs, trains, saves
    out.run(x)          # the lowered artifact (ONNX Runtime)
    out.save("build/")  # model.onnx, model.pt2, example_inputs.pt, report.json, report.md
    gcc_gan.load("build/")

The user's model is never modified: tracing works on a copy, and the "before" figures
(outputs, latency) come from the traced original and an eval-mode copy.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import onnx
import torch
from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from torch import nn

from . import targets as target_profiles
from .channels import analyze_channels
from .ir import GanGraph, trace
from .ir.trace import copy_module
from .lower import OnnxModel, lower_onnx
from .measure import environment, time_call, time_torch
from .metrics import fidelity, psnr
from .passes.channel_prune import PruneConfig, prune_channels
from .passes.deconv_to_subpixel import deconv_to_subpixel
from .passes.fold_norms import fold_norms
from .passes.quantize import QuantConfig, quantize_int8
from .report import CompileReport, LayerChange, PassEntry, jsonable

PASSES = {"fold_norms": fold_norms, "deconv_to_subpixel": deconv_to_subpixel,
          "prune_channels": prune_channels, "quantize_int8": quantize_int8}
FIDELITY_BATCHES = 8  # calibration batches compared against the original for the report


@dataclass
class CompiledGenerator:
    graph: GanGraph        # the compressed program
    onnx: OnnxModel        # its lowered artifact
    report: CompileReport

    @property
    def module(self) -> torch.fx.GraphModule:
        return self.graph.module

    def run(self, *inputs):
        """Run the lowered artifact (ONNX Runtime) on inputs shaped as `module` takes them."""
        return self.onnx.run(*inputs)

    def save(self, directory: str | Path) -> Path:
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        (out / "model.onnx").write_bytes(self.onnx.data)
        torch.export.save(self.graph.exported, out / "model.pt2")
        torch.save(self.graph.example_inputs, out / "example_inputs.pt")
        (out / "report.json").write_text(self.report.to_json())
        (out / "report.md").write_text(self.report.to_markdown())
        return out

    def __rich__(self):
        return self.report.__rich__()


def load(directory: str | Path) -> CompiledGenerator:
    """A CompiledGenerator saved by `CompiledGenerator.save`."""
    src = Path(directory)
    missing = [f for f in ("model.onnx", "model.pt2", "example_inputs.pt", "report.json")
               if not (src / f).exists()]
    if missing:
        raise FileNotFoundError(f"{src} is not a saved gcc-gan model: missing {', '.join(missing)}")
    report = CompileReport.from_json((src / "report.json").read_text())
    program = torch.export.load(src / "model.pt2")
    graph = GanGraph(module=program.module(), exported=program, tracer="loaded",
                     model_class=report.model, dynamic_batch=report.lowering["graph_dynamic_batch"],
                     example_inputs=torch.load(src / "example_inputs.pt", weights_only=True))
    data = (src / "model.onnx").read_bytes()
    proto = onnx.load_model_from_string(data)
    low = report.lowering
    lowered = OnnxModel(data=data, input_names=tuple(i.name for i in proto.graph.input),
                        output_names=tuple(o.name for o in proto.graph.output),
                        dynamic_batch=low["dynamic_batch"], opset=low["opset"],
                        parity_max_abs_diff=low["parity_max_abs_diff"],
                        notes=tuple(low["notes"]), threads=low["threads"],
                        int8_layers=low["int8_layers"])
    return CompiledGenerator(graph, lowered, report)


def compile(model: nn.Module, target: str = "x86", *, budget_macs: float | None = None,
            ratio: float | None = None, budget_latency_ms: float | None = None,
            example_inputs=None, calib_data: Iterable | None = None,
            passes: list[str] | None = None, output_dir: str | Path | None = None,
            min_channels: int = 1, round_to: int | None = None, min_psnr: float | None = None,
            measure: bool = True) -> CompiledGenerator:
    """Compress `model` for `target` to a MACs budget (`budget_macs`, or `ratio` of its MACs).

    With int8 in the pipeline, `min_psnr` (dB vs the float model on the calibration batches)
    keeps the most quantization-sensitive layers in float until the floor holds. `round_to`
    overrides the target's channel alignment (x86: 16, for int8 kernels).
    """
    start = time.perf_counter()
    inputs, profile, pipeline = _check_call(model, target, budget_macs, ratio, budget_latency_ms,
                                            example_inputs, passes)
    notes: list[str] = []
    calib = _batches(calib_data, FIDELITY_BATCHES) if calib_data is not None else None
    with _steps() as step:
        with step("tracing"):
            original = trace(model, inputs)
        if ratio is not None:  # of the model as given, not of what earlier passes made of it
            budget_macs, ratio = ratio * original.macs, None
        graph, entries, float_graph = original, [], None
        for name in pipeline:
            if name == "quantize_int8":
                float_graph = graph
            if name == "prune_channels" and budget_macs is None and ratio is None:
                notes.append("prune_channels skipped: no budget_macs= or ratio= given")
                continue
            with step(f"{name}"):
                graph, entry = _run_pass(name, graph, profile, budget_macs, ratio, min_channels,
                                         min_psnr, calib, round_to)
            entries.append(entry)
        with step("lowering to ONNX and checking parity"):
            lowered = lower_onnx(graph, threads=torch.get_num_threads(), calib=calib)
        int8_psnr = None
        if float_graph is not None and lowered.int8_layers:
            with step("checking the int8 model against the float one"):
                graph, lowered, int8_psnr, entries[-1] = _meet_floor(
                    float_graph, graph, lowered, entries[-1], profile, min_psnr, calib, inputs)
        with step("measuring fidelity"):
            fid, fid_inputs = _fidelity(original, lowered, calib, inputs)
        latency_before = latency_after = None
        if measure:
            with step("timing the original (eager torch) and the result (ONNX Runtime)"):
                latency_before = time_torch(copy_module(model).eval(), inputs)
                latency_after = time_call(lambda: lowered.run(*inputs), backend="onnxruntime",
                                          threads=torch.get_num_threads())
    # the prune pass already analysed the channels; analyse only when it did not run
    barriers = next((p.details["barriers"] for p in entries if p.name == "prune_channels"),
                    None)
    if barriers is None:
        barriers = jsonable(analyze_channels(original).barriers)
    report = CompileReport(
        model=type(model).__qualname__, target=profile.name,
        budget_macs=int(budget_macs) if budget_macs is not None else None,
        macs_before=original.macs, macs_after=graph.macs, lit_macs_before=original.lit_macs,
        lit_macs_after=graph.lit_macs, params_before=original.params, params_after=graph.params,
        weight_bytes_before=original.weight_bytes, weight_bytes_after=graph.weight_bytes,
        latency_before=jsonable(latency_before), latency_after=jsonable(latency_after),
        fidelity=jsonable(fid), fidelity_inputs=fid_inputs, passes=tuple(entries),
        barriers=tuple(barriers), layers=_layer_changes(original, graph),
        lowering={"format": "onnx", "opset": lowered.opset, "dynamic_batch": lowered.dynamic_batch,
                  "int8_layers": lowered.int8_layers, "int8_psnr_vs_float": int8_psnr,
                  "graph_dynamic_batch": graph.dynamic_batch,
                  "parity_max_abs_diff": lowered.parity_max_abs_diff,
                  "threads": lowered.threads, "notes": list(lowered.notes)},
        environment=environment(), compile_seconds=time.perf_counter() - start,
        notes=tuple(notes + graph.notes))
    compiled = CompiledGenerator(graph, lowered, report)
    if output_dir is not None:
        compiled.save(output_dir)
    return compiled


def _check_call(model, target, budget_macs, ratio, budget_latency_ms, example_inputs, passes):
    if not isinstance(model, nn.Module):
        raise TypeError(f"compile() expects an nn.Module, got {type(model).__name__}")
    if example_inputs is None:
        raise ValueError("compile() needs example_inputs=: a tuple of tensors shaped like real "
                         "inputs, e.g. example_inputs=(torch.randn(1, 3, 256, 256),)")
    if budget_latency_ms is not None:
        raise NotImplementedError("latency budgets need target cost models and on-device "
                                  "measurement, which arrive with the targets issue; use "
                                  "budget_macs= or ratio= for now")
    if budget_macs is not None and ratio is not None:
        raise ValueError("give budget_macs= or ratio=, not both")
    profile = target_profiles.get(target)
    pipeline = list(profile.passes if passes is None else passes)
    unknown = [p for p in pipeline if p not in PASSES]
    if unknown:
        raise ValueError(f"unknown passes {unknown}; available: {', '.join(PASSES)}")
    inputs = example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)
    return inputs, profile, pipeline


def _run_pass(name, graph, profile, budget_macs, ratio, min_channels, min_psnr, calib,
              round_to=None):
    start = time.perf_counter()
    if name == "prune_channels":
        config = PruneConfig(budget_macs=budget_macs, ratio=ratio, min_channels=min_channels,
                             round_to=round_to or profile.channel_alignment)
        result = prune_channels(graph, None, config)  # the alignment is settled in config
    elif name == "quantize_int8":
        result = quantize_int8(graph, profile, QuantConfig(min_psnr=min_psnr), calib_data=calib)
    else:
        result = PASSES[name](graph, profile)
    report = jsonable(result.report)
    settings = report.pop("config", {})
    standard = {k: report.pop(k) for k in ("macs_before", "macs_after", "params_before",
                                            "params_after", "name")}
    return result.graph, PassEntry(name=name, settings=settings, seconds=time.perf_counter() - start,
                                   details=report, **{k: v for k, v in standard.items()
                                                      if k != "name"})


FLOOR_RETRIES = 3


def _psnr_vs(graph: GanGraph, lowered: OnnxModel, batches: list[tuple]) -> float:
    with torch.no_grad():
        refs = torch.cat([_first(graph(*b)) for b in batches])
    return psnr(torch.cat([_first(lowered.run(*b)) for b in batches]), refs)


def _meet_floor(float_graph, graph, lowered, entry, profile, min_psnr, calib, inputs):
    """The real int8 model's PSNR vs the float one; below `min_psnr`, requantize with the
    simulated floor raised by the shortfall (the simulation is close, not exact)."""
    batches = calib or [inputs]
    measured = _psnr_vs(float_graph, lowered, batches)
    floor = min_psnr
    for _ in range(FLOOR_RETRIES if min_psnr is not None else 0):
        if measured >= min_psnr or not lowered.int8_layers:
            break
        floor += min_psnr - measured + 0.5
        graph, entry = _run_pass("quantize_int8", float_graph, profile, None, None, 1, floor, calib)
        lowered = lower_onnx(graph, threads=lowered.threads, calib=calib)
        measured = _psnr_vs(float_graph, lowered, batches)
    return graph, lowered, measured, entry


def _batches(calib_data: Iterable, limit: int) -> list[tuple]:
    out = []
    for batch in calib_data:
        out.append(batch if isinstance(batch, tuple) else
                   tuple(batch) if isinstance(batch, list) else (batch,))
        if len(out) == limit:
            break
    return out


def _fidelity(original: GanGraph, lowered: OnnxModel, calib: list[tuple] | None, inputs):
    batches = calib or []
    label = f"{len(batches)} calibration batches"
    if not batches:
        batches = [inputs]
        label = "the example inputs (no calib_data given)"
    with torch.no_grad():
        refs = [_first(original(*b)) for b in batches]
    outs = [_first(lowered.run(*b)) for b in batches]
    return fidelity(outs, refs), label


def _first(out):
    return out if isinstance(out, torch.Tensor) else out[0]


def _layer_changes(before: GanGraph, after: GanGraph) -> tuple[LayerChange, ...]:
    """Layers (nodes with MACs or params) matched by (module, op, occurrence)."""
    def keyed(graph):
        seen: dict[tuple[str, str], int] = {}
        out = {}
        for n in graph.cost.nodes:
            if n.macs or n.params:
                k = (n.module, n.op)
                seen[k] = seen.get(k, 0) + 1
                out[(*k, seen[k])] = n
        return out
    b, a = keyed(before), keyed(after)
    return tuple(LayerChange(module=k[0], op=k[1], macs_before=n.macs,
                             macs_after=a[k].macs if k in a else 0, params_before=n.params,
                             params_after=a[k].params if k in a else 0) for k, n in b.items())


@contextmanager
def _steps():
    """A spinner per step on stderr when it is a terminal; silent in pipelines and CI."""
    console = Console(stderr=True)
    progress = Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(),
                        console=console, transient=True, disable=not sys.stderr.isatty())

    @contextmanager
    def step(description: str):
        task = progress.add_task(description, total=None)
        try:
            yield
        finally:
            progress.remove_task(task)

    with progress:
        yield step

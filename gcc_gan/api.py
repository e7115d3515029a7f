"""`compile`: trace -> passes (chosen by the target) -> lower -> measure, in one call.

    out = gcc_gan.compile(gen, target="x86", budget_macs=3e9, example_inputs=(x,))
    out = gcc_gan.compile(gen, target="x86", budget_latency_ms=20, example_inputs=(x,))
    out.module          # the compressed torch program: runs, trains, saves
    out.run(x)          # the lowered artifact (ONNX Runtime)
    out.save("build/")  # model.onnx, model.pt2, example_inputs.pt, report.json, report.md
                        # (+ model_<target>.so when the target lowers to TVM, weights.gccz:
                        # Huffman-coded sparse/k-means/binarized weights when a pass made some)
    gcc_gan.load("build/")

The user's model is never modified: tracing works on a copy, and the "before" figures
(outputs, latency) come from the traced original and an eval-mode copy. The target decides
the pipeline, the channel alignment, the cost model and whether latency is measured (an
attached backend) or predicted (the cost model; the report says which).
"""

from __future__ import annotations

import dataclasses
import time
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx
import torch
from torch import nn

from . import targets as target_profiles
from .backends import Backend, OnnxRuntimeBackend, get_backend
from .channels import analyze_channels
from .encode import save_compressed, weight_annotations
from .ir import GanGraph, trace
from .ir.trace import copy_module
from .latency import Candidate, LatencySearch, search_latency
from .lower import OnnxModel, TvmUnavailable, lower_onnx, lower_tvm
from .lower.tvm import CrossCompilerMissing, cross_compiler, is_cross
from .measure import Latency, check_statistic, environment, statistic_ms, time_torch
from .passes.quantize import QuantConfig, SpeedCheck
from .pipeline import (PASSES, as_batches, fidelity_vs, layer_changes, meet_floor, prune_config,
                       run_pass, run_passes)
from .progress import steps
from .report import CompileReport, PassEntry, jsonable
from .size import size_table
from .targets.estimate import estimate
from .train.distill import DistillConfig, distill

FIDELITY_BATCHES = 8  # calibration batches compared against the original for the report
# A latency verdict (a round of the latency search; the result of a latency budget) times this
# many seconds of calls: on this shared machine one program's 1-s medians spread over +-15%
# (15.9-21.5 ms over 40 windows, 18.3 ms overall), and 5-s ones land within 10% of the 40-s
# median 88% of the time, against 72% for 1-s ones.
VERDICT_SECONDS = 5.0


@dataclass
class CompiledGenerator:
    graph: GanGraph        # the compressed program
    onnx: OnnxModel        # its lowered artifact
    report: CompileReport
    tvm: Any = None        # gcc_gan.lower.tvm.TvmModel when the target lowers to TVM

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
        if self.tvm is not None:
            self.tvm.export_library(out / f"model_{self.report.target}.so")
        if any(weight_annotations(self.graph.module)):   # sparse / shared / binarized weights
            save_compressed(self.graph, out / "weights.gccz")
        (out / "report.json").write_text(self.report.to_json())
        (out / "report.md").write_text(self.report.to_markdown())
        return out

    def __rich__(self):
        return self.report.__rich__()


def load(directory: str | Path) -> CompiledGenerator:
    """A CompiledGenerator saved by `CompiledGenerator.save` (the TVM library stays a file)."""
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


@dataclass(frozen=True)
class _Built:
    """One candidate through the rest of the pipeline: its graph, entries, lowered model."""
    graph: GanGraph
    entries: list
    lowered: OnnxModel
    int8_psnr: float | None


def compile(model: nn.Module, target: str | target_profiles.Target = "x86", *,
            budget_macs: float | None = None, ratio: float | None = None,
            budget_latency_ms: float | None = None, latency_statistic: str = "steady",
            example_inputs=None,
            calib_data: Iterable | None = None, passes: list[str] | None = None,
            configs: Mapping[str, Any] | None = None, output_dir: str | Path | None = None,
            min_channels: int = 1, round_to: int | None = None, min_psnr: float | None = None,
            measure: bool = True, backend: Backend | None = None,
            finetune: DistillConfig | None = None, finetune_data: Iterable | None = None
            ) -> CompiledGenerator:
    """Compress `model` for `target` to a MACs budget (`budget_macs`, or `ratio` of its MACs)
    or a latency budget (`budget_latency_ms`: searched with the target's cost model and
    corrected by measurements on the target, at most 4 rounds). `latency_statistic` is the
    figure of each timing that the budget is judged on: "steady" (the fastest call, what the
    program costs with the cores to itself, as on a dedicated board, and what the tuned cost
    model predicts) or "median" (what a call costs on the measuring machine as it is, e.g. a
    shared VM that is also where it will run).

    With int8 in the pipeline, `min_psnr` (dB vs the float model on the calibration batches)
    keeps the most quantization-sensitive layers in float until the floor holds. When compile
    measures on a device (`measure=True` and a measurement backend), each int8 candidate conv is
    timed alone in float and int8 there and stays float where int8 is slower. `round_to`
    overrides the target's channel alignment. `configs` maps pass names to config objects for
    passes without a top-level argument (e.g. {"quantize_int8": QuantConfig(per_channel=True)}).
    `backend` measures on a device the target's profile does not reach by itself, e.g.
    `gcc_gan.backends.TvmRpcBackend(...)` for a board behind a TVM RPC tracker.
    `finetune=DistillConfig(...)` distils the pruned program from the original (CAT's kernel
    alignment on matched feature maps + reconstruction) on `finetune_data` (batches of inputs,
    default: calib_data) right after pruning, before int8 calibration.
    """
    start = time.perf_counter()
    inputs, profile, pipeline = _check_call(model, target, budget_macs, ratio, budget_latency_ms,
                                            latency_statistic, example_inputs, passes)
    notes: list[str] = []
    calib = as_batches(calib_data, FIDELITY_BATCHES) if calib_data is not None else None
    configs = dict(configs or {})
    if backend is None and profile.measurement != "cost-model":
        backend = get_backend(profile.measurement)
    # int8 only where it is faster, timed per layer on the device (not when measure=False)
    speed = (SpeedCheck(backend, threads=torch.get_num_threads())
             if measure and backend is not None else None)
    quant = configs.get("quantize_int8", QuantConfig())
    configs["quantize_int8"] = (quant if min_psnr is None
                                else dataclasses.replace(quant, min_psnr=min_psnr))
    has_budget = any(b is not None for b in (budget_macs, ratio, budget_latency_ms))
    if "prune_channels" in pipeline and not has_budget:
        pipeline.remove("prune_channels")
        notes.append("prune_channels skipped: no budget_macs=, ratio= or budget_latency_ms= given")
    cut = pipeline.index("prune_channels") if "prune_channels" in pipeline else len(pipeline)
    search: LatencySearch | None = None
    with steps() as step:
        with step("tracing"):
            original = trace(model, inputs)
        if ratio is not None:  # of the model as given, not of what earlier passes made of it
            budget_macs, ratio = ratio * original.macs, None
        with step(", ".join(pipeline[:cut]) or "no passes before pruning"):
            pre, pre_entries, _ = run_passes(pipeline[:cut], original, profile, configs, calib,
                                             speed)

        def build(budget: float | None) -> _Built:
            graph, entries = pre, list(pre_entries)
            if cut < len(pipeline):
                prune = prune_config(budget, min_channels, round_to, profile,
                                     configs.get("prune_channels"))
                graph, entry = run_pass("prune_channels", pre, profile, prune, calib)
                entries.append(entry)
                if finetune is not None:
                    graph, entry = _finetune(graph, original, finetune, finetune_data or [
                        b[0] if len(b) == 1 else b for b in calib or []])
                    entries.append(entry)
            graph, rest, float_graph = run_passes(pipeline[cut + 1:], graph, profile, configs,
                                                  calib, speed)
            lowered = lower_onnx(graph, threads=torch.get_num_threads(), calib=calib)
            int8_psnr = None
            if float_graph is not None and lowered.int8_layers:
                q = next(i for i, e in enumerate(rest) if e.name == "quantize_int8")
                graph, lowered, int8_psnr, rest[q] = meet_floor(
                    float_graph, graph, lowered, rest[q], profile, configs["quantize_int8"],
                    calib, inputs, speed)
            return _Built(graph, entries + rest, lowered, int8_psnr)

        if budget_latency_ms is not None:
            with step(f"searching for {budget_latency_ms} ms on {profile.name}"):
                search, built = _latency_search(
                    pre, profile, budget_latency_ms, latency_statistic, build, inputs,
                    backend if measure else None,
                    calib, lambda budget: prune_config(budget, min_channels, round_to, profile,
                                                       configs.get("prune_channels")))
            budget_macs = search.rounds[search.chosen].budget_macs
        else:
            with step(", ".join(pipeline[cut:]) + ", lowering to ONNX"):
                built = build(budget_macs)
        graph, lowered = built.graph, built.lowered
        notes += [f"int8 weights are 7-bit: {e.details['weight_bits_why']}" for e in built.entries
                  if e.name == "quantize_int8" and e.details.get("weight_bits") == 7]
        with step("measuring fidelity"):
            fid, fid_inputs = fidelity_vs(original, lowered.run, calib, inputs)
        tvm_model = None
        if "tvm" in profile.lowering:
            with step(f"lowering to TVM for {profile.name}"):
                tvm_model, tvm_note = _lower_tvm(graph, profile)
                notes.append(tvm_note)
        latency_before = latency_after = None
        if measure:
            with step("timing the original (eager torch)"):
                latency_before = time_torch(copy_module(model).eval(), inputs)
            if backend is not None:
                with step(f"timing the result ({backend.name})"):
                    latency_after = _time_built(
                        backend, built, inputs, calib,
                        VERDICT_SECONDS if budget_latency_ms is not None else 1.0)
        if backend is None:
            notes.append(f"latency on {profile.name} is predicted by its cost model "
                         f"({profile.cost_model}), not measured: no device attached")
    # the prune pass already analysed the channels; analyse only when it did not run
    barriers = next((p.details["barriers"] for p in built.entries if p.name == "prune_channels"),
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
        fidelity=jsonable(fid), fidelity_inputs=fid_inputs, passes=tuple(built.entries),
        barriers=tuple(barriers), layers=layer_changes(original, graph),
        lowering={"format": "onnx", "opset": lowered.opset, "dynamic_batch": lowered.dynamic_batch,
                  "int8_layers": lowered.int8_layers, "int8_psnr_vs_float": built.int8_psnr,
                  "graph_dynamic_batch": graph.dynamic_batch,
                  "parity_max_abs_diff": lowered.parity_max_abs_diff,
                  "threads": lowered.threads, "notes": list(lowered.notes),
                  "tvm_target": dict(profile.tvm_target) if tvm_model is not None else None},
        cost_model=_cost_summary(graph, profile, latency_after, latency_statistic),
        size=size_table(graph).to_dict(),
        budget_latency_ms=budget_latency_ms, latency_search=jsonable(search),
        environment=environment(), compile_seconds=time.perf_counter() - start,
        notes=tuple(notes + graph.notes))
    compiled = CompiledGenerator(graph, lowered, report, tvm_model)
    if output_dir is not None:
        compiled.save(output_dir)
    return compiled


def _latency_search(pre: GanGraph, profile, budget_ms, statistic, build, inputs, backend, calib,
                    config):
    """Prune `pre` to the MACs budget whose latency on `profile` fits `budget_ms`, measuring
    each round on `backend` (None: the cost model decides alone)."""
    def prune(budget):
        graph, _ = run_pass("prune_channels", pre, profile, config(budget))
        return graph

    def predict_ms(graph):
        return estimate(graph, profile, assume_int8=True).ms

    def measure_round(budget, _pruned):
        built = build(budget)
        return _time_built(backend, built, inputs, calib, VERDICT_SECONDS), built

    search, result = search_latency(budget_ms, Candidate(prune, predict_ms), full_macs=pre.macs,
                                    measure=measure_round if backend is not None else None,
                                    statistic=statistic)
    if backend is None:   # the cost model decided alone; build the chosen candidate
        result = build(search.rounds[search.chosen].budget_macs)
    return search, result


def _finetune(graph: GanGraph, teacher: GanGraph, config: DistillConfig, data
              ) -> tuple[GanGraph, PassEntry]:
    if not data:
        raise ValueError("finetune= needs data: pass finetune_data= (or calib_data=) batches "
                         "of real inputs")
    start = time.perf_counter()
    result = distill(graph, teacher, data, config)
    history = result.history
    details = {"feature_pairs": len(result.pairs), "steps": history.steps,
               "loss_first": history.mean(first=10) if history.records else None,
               "loss_last": history.mean(last=10) if history.records else None}
    return result.graph, PassEntry(name="finetune", settings=jsonable(config),
                                   macs_before=graph.macs, macs_after=result.graph.macs,
                                   params_before=graph.params, params_after=result.graph.params,
                                   seconds=time.perf_counter() - start, details=details)


def _time_built(backend: Backend, built: _Built, inputs, calib, seconds: float = 1.0) -> Latency:
    """Latency of a built candidate on `backend` (ONNX Runtime reuses the lowered model), over
    a window of about `seconds` of calls, not over 10 calls."""
    artifact = (built.lowered if isinstance(backend, OnnxRuntimeBackend)
                else backend.lower(built.graph, calib=calib))
    return backend.time_for(artifact, inputs, threads=torch.get_num_threads(), seconds=seconds)


def _lower_tvm(graph: GanGraph, profile) -> tuple[Any, str]:
    """The target's TVM library, or None and a note saying why not (the ONNX artifact stands)."""
    target = dict(profile.tvm_target)
    host = target.get("kind") == "llvm" and "mtriple" not in target
    try:
        if is_cross(target):
            cross_compiler(target)   # saving links the library: say now that it cannot
        model = lower_tvm(graph, target, check_parity=host)
    except (TvmUnavailable, CrossCompilerMissing) as exc:
        warnings.warn(f"{exc}; compiled without the TVM library", stacklevel=3)
        return None, f"TVM library for {target} not built: {exc}"
    what = "checked against torch" if host else "cross-compiled, not run here"
    return model, f"TVM library for {target} built ({what}); float32"


def _cost_summary(graph: GanGraph, profile, measured: Latency | None, statistic: str
                  ) -> dict[str, Any]:
    est = estimate(graph, profile)
    summary = {"model": profile.cost_model, "source": profile.tuned or "datasheet",
               "predicted_ms": est.ms}
    if measured is not None:
        summary["measured_over_predicted"] = statistic_ms(measured, statistic) / est.ms
        summary["statistic"] = statistic
    if profile.cost_model == "crossbar":
        summary.update(crossbars=est.crossbars, energy_mj=est.energy_j * 1e3,
                       layers=jsonable(est.layers))
    return summary


def _check_call(model, target, budget_macs, ratio, budget_latency_ms, latency_statistic,
                example_inputs, passes):
    if not isinstance(model, nn.Module):
        raise TypeError(f"compile() expects an nn.Module, got {type(model).__name__}")
    if example_inputs is None:
        raise ValueError("compile() needs example_inputs=: a tuple of tensors shaped like real "
                         "inputs, e.g. example_inputs=(torch.randn(1, 3, 256, 256),)")
    if sum(b is not None for b in (budget_macs, ratio, budget_latency_ms)) > 1:
        raise ValueError("give one of budget_macs=, ratio= or budget_latency_ms=, not several")
    check_statistic(latency_statistic)
    profile = target_profiles.get(target)
    pipeline = list(profile.passes if passes is None else passes)
    unknown = [p for p in pipeline if p not in PASSES]
    if unknown:
        raise ValueError(f"unknown passes {unknown}; available: {', '.join(PASSES)}")
    if budget_latency_ms is not None and "prune_channels" not in pipeline:
        raise ValueError("budget_latency_ms= needs prune_channels in the pipeline")
    inputs = example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)
    return inputs, profile, pipeline

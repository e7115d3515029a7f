"""The pieces `compile` strings together: running a pass by name into a report entry, meeting
the int8 fidelity floor on the real lowered model, and comparing outputs with the original.

Every pass is a function (graph, target, config) -> result with `.graph` and `.report`;
`PASSES` maps the names target profiles use to them. A pass's config comes from `compile`'s
arguments (budget, min_psnr, round_to) unless the caller gives one in `configs=`.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterable, Mapping
from typing import Any

import torch

from .ir import GanGraph
from .lower import OnnxModel, lower_onnx
from .metrics import fidelity, psnr
from .passes.binarize import binarize
from .passes.channel_prune import PruneConfig, prune_channels
from .passes.deconv_to_subpixel import deconv_to_subpixel
from .passes.fold_norms import fold_norms
from .passes.kmeans_share import share_weights_kmeans
from .passes.quantize import QuantConfig, SpeedCheck, quantize_int8
from .passes.sparsify import sparsify
from .passes.split_taps import split_taps
from .report import LayerChange, PassEntry, jsonable

PASSES = {"fold_norms": fold_norms, "deconv_to_subpixel": deconv_to_subpixel,
          "prune_channels": prune_channels, "quantize_int8": quantize_int8,
          "sparsify": sparsify, "share_weights_kmeans": share_weights_kmeans,
          "binarize": binarize, "split_taps": split_taps}
FLOOR_RETRIES = 3


def prune_config(budget_macs, min_channels, round_to, target, base: PruneConfig | None = None
                 ) -> PruneConfig:
    """The prune pass's config for a MACs budget; `base` (the caller's) keeps its importance."""
    settings = dict(budget_macs=budget_macs, ratio=None, min_channels=min_channels,
                    round_to=round_to or target.channel_alignment,
                    narrow_round_to=max(target.output_channel_multiple,
                                        base.narrow_round_to if base else 1))
    return dataclasses.replace(base, **settings) if base else PruneConfig(**settings)


def run_pass(name: str, graph: GanGraph, target, config=None, calib=None,
             speed: SpeedCheck | None = None) -> tuple[GanGraph, PassEntry]:
    """Run pass `name` with `config` (its default when None); the report becomes an entry.
    `speed` times int8 against float per layer on the device (quantize_int8 only)."""
    start = time.perf_counter()
    fn = PASSES[name]
    if name == "prune_channels":
        result = fn(graph, None, config)   # the alignment is settled in the config
    elif name == "quantize_int8":
        result = fn(graph, target, config or QuantConfig(), calib_data=calib, speed=speed)
    else:
        result = fn(graph, target) if config is None else fn(graph, target, config)
    report = jsonable(result.report)
    settings = report.pop("config", {})
    standard = {k: report.pop(k) for k in ("macs_before", "macs_after", "params_before",
                                            "params_after", "name")}
    return result.graph, PassEntry(name=name, settings=settings, seconds=time.perf_counter() - start,
                                   details=report, **{k: v for k, v in standard.items()
                                                      if k != "name"})


def run_passes(names: Iterable[str], graph: GanGraph, target, configs: Mapping[str, Any],
               calib, speed: SpeedCheck | None = None
               ) -> tuple[GanGraph, list[PassEntry], GanGraph | None]:
    """Run `names` in order; also returns the graph quantize_int8 started from when it is the
    last pass (None otherwise): the fidelity floor requantizes from there."""
    entries, float_graph = [], None
    for name in names:
        float_graph = graph if name == "quantize_int8" else None
        graph, entry = run_pass(name, graph, target, configs.get(name), calib, speed)
        entries.append(entry)
    return graph, entries, float_graph


def psnr_vs(graph: GanGraph, lowered: OnnxModel, batches: list[tuple]) -> float:
    with torch.no_grad():
        refs = torch.cat([first(graph(*b)) for b in batches])
    return psnr(torch.cat([first(lowered.run(*b)) for b in batches]), refs)


def meet_floor(float_graph, graph, lowered, entry, target, config: QuantConfig, calib, inputs,
               speed: SpeedCheck | None = None):
    """The real int8 model's PSNR vs the float one; below `config.min_psnr`, requantize with
    the simulated floor raised by the shortfall (the simulation is close, not exact)."""
    batches = calib or [inputs]
    measured = psnr_vs(float_graph, lowered, batches)
    floor = config.min_psnr
    for _ in range(FLOOR_RETRIES if floor is not None else 0):
        if measured >= config.min_psnr or not lowered.int8_layers:
            break
        floor += config.min_psnr - measured + 0.5
        graph, entry = run_pass("quantize_int8", float_graph, target,
                                dataclasses.replace(config, min_psnr=floor), calib, speed)
        lowered = lower_onnx(graph, threads=lowered.threads, calib=calib)
        measured = psnr_vs(float_graph, lowered, batches)
    return graph, lowered, measured, entry


def as_batches(calib_data: Iterable, limit: int) -> list[tuple]:
    out = []
    for batch in calib_data:
        out.append(batch if isinstance(batch, tuple) else
                   tuple(batch) if isinstance(batch, list) else (batch,))
        if len(out) == limit:
            break
    return out


def fidelity_vs(original: GanGraph, run, calib: list[tuple] | None, inputs):
    """Fidelity of `run(*batch)` against the original on the calibration batches (or inputs)."""
    batches = calib or []
    label = f"{len(batches)} calibration batches"
    if not batches:
        batches = [inputs]
        label = "the example inputs (no calib_data given)"
    with torch.no_grad():
        refs = [first(original(*b)) for b in batches]
        outs = [first(run(*b)) for b in batches]
    return fidelity(outs, refs), label


def first(out):
    return out if isinstance(out, torch.Tensor) else out[0]


def layer_changes(before: GanGraph, after: GanGraph) -> tuple[LayerChange, ...]:
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

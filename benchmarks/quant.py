"""int8 that pays: ResNet-9 (ngf 64, 256x256) dense and pruned to 3e9 MACs.

Run: `make bench` (or `.venv/bin/python benchmarks/quant.py`). All latencies are measured side by
side in this one process, with the same threads and the same harness (gcc_gan.measure): ONNX
Runtime fp32 vs ONNX Runtime int8 (our QDQ), with and without the deconv_to_subpixel rewrite,
plus the PSNR of int8 vs fp32 output. Then the end-to-end figure: compile(resnet9, target="x86",
budget_macs=3e9) in int8 vs the dense model in eager torch fp32. Calibration uses random
inputs (no trained weights or data here), so PSNR measures quantization error on those.
Writes benchmarks/results/quant.json.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

import gcc_gan
from gcc_gan import targets, trace
from gcc_gan.lower import lower_onnx
from gcc_gan.measure import time_call, time_torch
from gcc_gan.metrics import psnr
from gcc_gan.passes.channel_prune import PruneConfig, prune_channels
from gcc_gan.passes.deconv_to_subpixel import deconv_to_subpixel
from gcc_gan.passes.fold_norms import fold_norms
from gcc_gan.passes.quantize import quantize_int8

from common import resnet9_workload  # noqa: E402  (benchmarks/ is on sys.path)

RESULTS = Path(__file__).parent / "results" / "quant.json"
REPEATS = 10


def latency(lowered, x) -> float:
    return time_call(lambda: lowered.run(x), repeats=REPEATS, backend="onnxruntime",
                     threads=torch.get_num_threads()).median_ms


def variant(name: str, graph, subpixel: bool, calib, x) -> dict:
    g = deconv_to_subpixel(graph).graph if subpixel else graph
    fp32 = lower_onnx(g, threads=torch.get_num_threads())
    int8 = lower_onnx(quantize_int8(g, calib_data=calib).graph, calib=calib,
                      threads=torch.get_num_threads())
    t32, t8 = latency(fp32, x), latency(int8, x)
    quality = psnr(torch.cat([int8.run(*b) for b in calib]), torch.cat([fp32.run(*b) for b in calib]))
    return {"model": name, "subpixel": subpixel, "macs": g.macs, "int8_layers": int8.int8_layers,
            "fp32_ms": t32, "int8_ms": t8, "speedup": t32 / t8, "int8_psnr_vs_fp32": quality}


def main() -> None:
    warnings.simplefilter("ignore")
    console = Console(width=160)
    model, x, calib = resnet9_workload()
    dense = fold_norms(trace(model, (x,))).graph
    align = targets.get("x86").channel_alignment
    pruned = prune_channels(dense, config=PruneConfig(budget_macs=3e9, round_to=align)).graph
    rows = []
    with console.status("quantizing and timing ..."):
        for name, graph in (("dense", dense), (f"pruned 3e9 (x{align})", pruned)):
            for subpixel in (False, True):
                rows.append(variant(name, graph, subpixel, calib, x))
    table = Table(title="ResNet-9 256x256, ONNX Runtime fp32 vs int8 (batch 1)", header_style="bold")
    for col in ("model", "subpixel", "MACs", "int8 convs", "fp32 ms", "int8 ms", "int8 speedup",
                "PSNR int8 vs fp32"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(r["model"], "yes" if r["subpixel"] else "no", f"{r['macs'] / 1e9:.2f}G",
                      str(r["int8_layers"]), f"{r['fp32_ms']:.1f}", f"{r['int8_ms']:.1f}",
                      f"{r['speedup']:.2f}x", f"{r['int8_psnr_vs_fp32']:.1f} dB")
    console.print(table)

    with console.status("compile(resnet9, x86, budget_macs=3e9) ..."):
        out = gcc_gan.compile(model, "x86", budget_macs=3e9, example_inputs=(x,), calib_data=calib)
        eager = time_torch(model.eval(), (x,), repeats=REPEATS)
    r = out.report
    end_to_end = eager.median_ms / r.latency_after["median_ms"]
    console.print(f"end to end: compile(resnet9, x86, budget_macs=3e9) -> {r.macs_after / 1e9:.2f}G "
                  f"MACs, {r.lowering['int8_layers']} int8 convs, ONNX Runtime "
                  f"{r.latency_after['median_ms']:.1f} ms vs dense eager torch fp32 "
                  f"{eager.median_ms:.1f} ms: {end_to_end:.1f}x (goal >= 22x); int8 vs its float "
                  f"model {r.lowering['int8_psnr_vs_float']:.1f} dB")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"threads": torch.get_num_threads(), "variants": rows,
                                   "end_to_end": {"eager_fp32_dense_ms": eager.median_ms,
                                                  "compiled_int8_ms": r.latency_after["median_ms"],
                                                  "speedup": end_to_end,
                                                  "report": r.to_dict()}}, indent=2))
    console.print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()

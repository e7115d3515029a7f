"""int8 that pays: ResNet-9 (ngf 64, 256x256) dense and pruned to 3e9 MACs.

Run: `make bench` (or `.venv/bin/python benchmarks/quant.py`). All latencies are measured side by
side in this one process, with the same threads, in turns (`gcc_gan.measure.time_side_by_side`:
every round runs each contender, so slow spells of the shared machine hit both): ONNX Runtime
fp32 vs ONNX Runtime int8 (our QDQ), with and without the deconv_to_subpixel rewrite, plus the
PSNR of int8 vs fp32 output. Each ratio is printed twice: of the medians (the machine as it
was) and of the fastest calls (the steady latency, `gcc_gan.measure.steady_ms`, which a repeat
run reproduces on this shared VM). Then the end-to-end figure: compile(resnet9, target="x86",
budget_macs=3e9) in int8 vs the dense model in eager torch fp32; then, in turns of their own, the
compiled program against itself lowered without the NHWC pixel shuffles
(`lower_onnx(nhwc_shuffles=False)`) and without the NHWC instance norms (`nhwc_norms=False`).
Calibration uses random inputs (no trained weights or data here), so PSNR measures quantization
error on those. Also printed: the pruned model's int8 PSNR with 8- and 7-bit weights, and which
this host gets (7 where ONNX Runtime's int8 convs saturate, x86 without VNNI).
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
from gcc_gan.measure import environment, time_side_by_side
from gcc_gan.metrics import psnr
from gcc_gan.passes.channel_prune import PruneConfig, prune_channels
from gcc_gan.passes.deconv_to_subpixel import deconv_to_subpixel
from gcc_gan.passes.fold_norms import fold_norms
from gcc_gan.passes.quantize import QuantConfig, quantize_int8, weight_bits
from gcc_gan.passes.split_taps import split_taps

from common import resnet9_workload  # noqa: E402  (benchmarks/ is on sys.path)

RESULTS = Path(__file__).parent / "results" / "quant.json"
ROUNDS = 10


def side_by_side(calls: dict, backends: dict) -> tuple[dict[str, float], dict[str, float]]:
    """(median ms, fastest-call ms) of each of `calls` (name -> (fn, calls per round)), timed
    in turns."""
    timed = time_side_by_side(calls, rounds=ROUNDS, threads=torch.get_num_threads(),
                              backends=backends)
    return ({name: latency.median_ms for name, latency in timed.items()},
            {name: latency.min_ms for name, latency in timed.items()})


def variant(name: str, graph, subpixel: bool, calib, x, split: bool = False) -> dict:
    g = deconv_to_subpixel(graph).graph if subpixel else graph
    g = split_taps(g, targets.get("x86")).graph if split else g
    fp32 = lower_onnx(g, threads=torch.get_num_threads())
    int8 = lower_onnx(quantize_int8(g, calib_data=calib).graph, calib=calib,
                      threads=torch.get_num_threads())
    ms, fastest = side_by_side({"fp32": (lambda: fp32.run(x), 1),
                                "int8": (lambda: int8.run(x), 1)},
                               {"fp32": "onnxruntime", "int8": "onnxruntime"})
    t32, t8 = ms["fp32"], ms["int8"]
    quality = psnr(torch.cat([int8.run(*b) for b in calib]), torch.cat([fp32.run(*b) for b in calib]))
    return {"model": name, "subpixel": subpixel, "split_taps": split, "macs": g.macs, "int8_layers": int8.int8_layers,
            "fp32_ms": t32, "int8_ms": t8, "speedup": t32 / t8,
            "fp32_fastest_ms": fastest["fp32"], "int8_fastest_ms": fastest["int8"],
            "speedup_fastest": fastest["fp32"] / fastest["int8"], "int8_psnr_vs_fp32": quality}


def weight_bits_psnr(graph, calib) -> dict:
    """PSNR of the int8 program vs its float one with 8- and 7-bit weights, and the bits this
    host gets by default: where ONNX Runtime's int8 convs saturate int16 pair sums (x86
    without VNNI), 8 bits lose several dB."""
    g = split_taps(deconv_to_subpixel(graph).graph, targets.get("x86")).graph
    fp32 = torch.cat([lower_onnx(g).run(*b) for b in calib])
    scores = {}
    for bits in (8, 7):
        q = quantize_int8(g, config=QuantConfig(weight_bits=bits), calib_data=calib).graph
        int8 = lower_onnx(q, calib=calib)
        scores[bits] = psnr(torch.cat([int8.run(*b) for b in calib]), fp32)
    auto, why = weight_bits(QuantConfig(), targets.get("x86"))
    return {"auto": auto, "why": why, "psnr": scores}


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
        rows.append(variant(f"pruned 3e9 (x{align})", pruned, True, calib, x, split=True))
    with console.status("7- vs 8-bit weights ..."):
        bits = weight_bits_psnr(pruned, calib)
    table = Table(title="ResNet-9 256x256, ONNX Runtime fp32 vs int8 (batch 1)", header_style="bold")
    for col in ("model", "subpixel", "split_taps", "MACs", "int8 convs", "fp32 ms", "int8 ms",
                "int8 speedup", "fastest fp32 / int8 ms", "speedup (fastest)",
                "PSNR int8 vs fp32"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(r["model"], "yes" if r["subpixel"] else "no",
                      "yes" if r["split_taps"] else "no", f"{r['macs'] / 1e9:.2f}G",
                      str(r["int8_layers"]), f"{r['fp32_ms']:.1f}", f"{r['int8_ms']:.1f}",
                      f"{r['speedup']:.2f}x",
                      f"{r['fp32_fastest_ms']:.1f} / {r['int8_fastest_ms']:.1f}",
                      f"{r['speedup_fastest']:.2f}x", f"{r['int8_psnr_vs_fp32']:.1f} dB")
    console.print(table)
    console.print(f"int8 weight bits on this host: {bits['auto']} ({bits['why']}); PSNR int8 vs "
                  f"fp32 of the pruned model (sub-pixel, split_taps) with 8-bit weights "
                  f"{bits['psnr'][8]:.1f} dB, with 7-bit {bits['psnr'][7]:.1f} dB")

    with console.status("compile(resnet9, x86, budget_macs=3e9) ..."):
        out = gcc_gan.compile(model, "x86", budget_macs=3e9, example_inputs=(x,), calib_data=calib,
                              measure=True)
        # the same program without each NHWC rewrite (gcc_gan.lower.nhwc)
        plain = {flag: lower_onnx(out.graph, calib=calib, threads=torch.get_num_threads(),
                                  **{flag: False}) for flag in ("nhwc_shuffles", "nhwc_norms")}
        model.eval()
        with torch.inference_mode():
            # the compiled model runs 5 times per eager call: similar time on each side per round
            ms, fastest = side_by_side({"eager": (lambda: model(x), 1),
                                        "compiled": (lambda: out.run(x), 5)},
                                       {"eager": "torch", "compiled": "onnxruntime"})
        # in turns of their own: timed inside the eager rounds, the compiled model (right after
        # each eager call) measured slower than the DepthToSpace one after it, unlike any A/B
        ab, _ = side_by_side({"compiled": (lambda: out.run(x), 5),
                           **{flag: (lambda m=m: m.run(x), 5) for flag, m in plain.items()}},
                             dict.fromkeys(("compiled", *plain), "onnxruntime"))
    r = out.report
    end_to_end = ms["eager"] / ms["compiled"]
    end_to_end_fastest = fastest["eager"] / fastest["compiled"]
    float_layers = [f"{node}: {why}" for p in r.passes if p.name == "quantize_int8"
                    for node, why in p.details["float_layers"]]
    console.print(f"end to end: compile(resnet9, x86, budget_macs=3e9) -> {r.macs_after / 1e9:.2f}G "
                  f"MACs, {r.lowering['int8_layers']} int8 convs, ONNX Runtime "
                  f"{ms['compiled']:.1f} ms vs dense eager torch fp32 {ms['eager']:.1f} ms, in "
                  f"turns: {end_to_end:.1f}x (goal >= 22x); fastest calls "
                  f"{fastest['compiled']:.1f} vs {fastest['eager']:.1f} ms: "
                  f"{end_to_end_fastest:.1f}x; compile's own report: "
                  f"{r.latency_after['median_ms']:.1f} vs {r.latency_before['median_ms']:.1f} ms "
                  f"({r.speedup:.1f}x); int8 vs its float model "
                  f"{r.lowering['int8_psnr_vs_float']:.1f} dB; float layers: {float_layers}. "
                  f"In turns: "
                  f"{ab['compiled']:.1f} ms as compiled, {ab['nhwc_shuffles']:.1f} ms with "
                  f"DepthToSpace for the NHWC pixel shuffles, {ab['nhwc_norms']:.1f} ms with "
                  f"InstanceNormalization for the NHWC norms")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"threads": torch.get_num_threads(), "variants": rows,
                                   "weight_bits": bits, "environment": environment(),
                                   "end_to_end": {"eager_fp32_dense_ms": ms["eager"],
                                                  "compiled_int8_ms": ms["compiled"],
                                                  "ab_compiled_ms": ab["compiled"],
                                                  "ab_depth_to_space_ms": ab["nhwc_shuffles"],
                                                  "ab_nchw_instance_norms_ms": ab["nhwc_norms"],
                                                  "speedup": end_to_end,
                                                  "eager_fp32_dense_fastest_ms": fastest["eager"],
                                                  "compiled_int8_fastest_ms": fastest["compiled"],
                                                  "speedup_fastest": end_to_end_fastest,
                                                  "report": r.to_dict()}}, indent=2))
    console.print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()

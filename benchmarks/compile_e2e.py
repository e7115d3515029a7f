"""End to end: compile the CycleGAN ResNet-9 (ngf 64, 256x256) for x86 to 3e9 MACs.

Run: `make bench` (or `.venv/bin/python benchmarks/compile_e2e.py`). Prints compile time, MACs
and params before/after, and the latency of the result in ONNX Runtime against the original in
eager torch fp32, measured side by side in the same process with the same thread count (the
harness in gcc_gan.measure); writes benchmarks/results/compile_e2e.json. The weights are the
zoo's untrained ones: fidelity figures here measure the pruning damage before any fine-tuning.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
from rich.console import Console

import gcc_gan
from gcc_gan import zoo

RESULTS = Path(__file__).parent / "results" / "compile_e2e.json"


def main() -> None:
    console = Console(width=160)
    model = zoo.build("resnet", "standard")
    inputs = zoo.example_inputs("resnet", "standard")
    start = time.perf_counter()
    out = gcc_gan.compile(model, "x86", budget_macs=3e9, example_inputs=inputs)
    seconds = time.perf_counter() - start
    console.print(out.report)
    r = out.report
    console.print(f"compile time {seconds:.1f} s; MACs {r.macs_before / 1e9:.2f}G -> "
                  f"{r.macs_after / 1e9:.2f}G; latency {r.latency_before['median_ms']:.1f} ms "
                  f"(eager torch fp32, original) -> {r.latency_after['median_ms']:.1f} ms "
                  f"(ONNX Runtime, compiled): {r.speedup:.2f}x, {r.latency_after['threads']} threads")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"compile_seconds": seconds, "torch": torch.__version__,
                                   "report": r.to_dict()}, indent=2))
    console.print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()

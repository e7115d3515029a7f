"""Trace + cost-analysis time for ResNet-9 at 256x256, and the MACs table of the zoo.

Run: `make bench` (or `.venv/bin/python benchmarks/trace_cost.py`). Prints two tables and writes
benchmarks/results/trace_cost.json. Times are wall clock on this machine: the first trace in a
process pays torch.export's one-off start-up ("cold"); later ones are "warm" (median of runs).
Published figures are quoted from the papers for comparison; ours are computed.
"""

from __future__ import annotations

import json
import platform
import statistics
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

import gcc_gan
from gcc_gan import trace, zoo
from gcc_gan.summary import si

RESULTS = Path(__file__).parent / "results" / "trace_cost.json"
WARM_RUNS = 3

# (real, literature) MACs quoted by the literature for the standard configs, where one exists.
PUBLISHED = {
    "resnet": ((49.55e9, 56.8e9), "CycleGAN ResNet-9 as quoted by GAN Compression / CAT"),
    "unet": ((6.05e9, 18.1e9), "pix2pix U-Net-256 (torchprofile)"),
    "spade": ((None, 281e9), "GauGAN, Cityscapes 256x512, \"more\" upsampling (CAT)"),
    "stylegan2": ((None, 144e9), "StyleGAN2 config-f 1024 (Anycost GAN)"),
}


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def time_trace_and_cost(name: str, config: str) -> dict:
    model = zoo.build(name, config)
    inputs = zoo.example_inputs(name, config)

    def once() -> tuple[float, float]:
        t0 = time.perf_counter()
        graph = trace(model, inputs)
        t1 = time.perf_counter()
        graph.cost  # noqa: B018  (computes and caches the analysis)
        return t1 - t0, time.perf_counter() - t1

    cold = once()
    warm = [once() for _ in range(WARM_RUNS)]
    return {"model": name, "config": config, "cold_trace_s": cold[0], "cold_cost_s": cold[1],
            "warm_trace_s": statistics.median(w[0] for w in warm),
            "warm_cost_s": statistics.median(w[1] for w in warm),
            "warm_total_s": statistics.median(w[0] + w[1] for w in warm)}


def zoo_row(name: str) -> dict:
    graph = trace(zoo.build(name, "standard"), zoo.example_inputs(name, "standard"))
    c = graph.cost
    (pub_real, pub_lit), source = PUBLISHED.get(name, ((None, None), ""))
    return {"model": name, "macs": c.macs, "lit_macs": c.lit_macs, "params": c.params,
            "weight_bytes": sum(c.weight_bytes.values()),
            "peak_activation_bytes": c.peak_activation_bytes,
            "documented": zoo.documented_macs(name), "published_real": pub_real,
            "published_lit": pub_lit, "published_source": source,
            "unknown_ops": sorted(c.unknown_ops)}


def main() -> None:
    console = Console(width=160)
    timing = time_trace_and_cost("resnet", "standard")
    t = Table(title="trace + cost analysis, ResNet-9 (ngf 64) at 256x256", header_style="bold")
    for col in ("", "trace s", "analysis s", "total s"):
        t.add_column(col, justify="right")
    t.add_row("cold (first in process)", f"{timing['cold_trace_s']:.2f}",
              f"{timing['cold_cost_s']:.3f}", f"{timing['cold_trace_s'] + timing['cold_cost_s']:.2f}")
    t.add_row(f"warm (median of {WARM_RUNS})", f"{timing['warm_trace_s']:.2f}",
              f"{timing['warm_cost_s']:.3f}", f"{timing['warm_total_s']:.2f}")
    console.print(t)

    rows = []
    z = Table(title="zoo, standard configs, batch 1", header_style="bold")
    for col in ("model", "MACs real", "MACs lit.", "params", "weights", "peak act.",
                "published real / lit.", "ours / published"):
        z.add_column(col, justify="right", no_wrap=True)
    for name in sorted(zoo.ZOO):
        with console.status(f"tracing {name} ..."):
            row = zoo_row(name)
        rows.append(row)
        pub = " / ".join(si(v) if v else "-" for v in (row["published_real"], row["published_lit"]))
        ratio = " / ".join(f"{ours / v:.3f}" if v else "-" for ours, v in
                           ((row["macs"], row["published_real"]), (row["lit_macs"], row["published_lit"])))
        z.add_row(name, si(row["macs"]), si(row["lit_macs"]), si(row["params"]),
                  si(row["weight_bytes"], "B"), si(row["peak_activation_bytes"], "B"), pub, ratio)
    console.print(z)

    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({
        "machine": {"cpu": cpu_model(), "threads": torch.get_num_threads(),
                    "python": platform.python_version(), "torch": torch.__version__,
                    "gcc_gan": gcc_gan.__version__},
        "resnet9_trace": timing, "zoo": rows}, indent=2))
    console.print(f"{cpu_model()}, {torch.get_num_threads()} threads, torch {torch.__version__}; "
                  f"wrote {RESULTS}")


if __name__ == "__main__":
    main()

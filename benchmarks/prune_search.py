"""Channel pruning + budget search: ResNet-9 at 3e9 MACs, and every zoo model at 25%.

Run: `make bench` (or `.venv/bin/python benchmarks/prune_search.py`). Prints a table and writes
benchmarks/results/prune_search.json. "search" is the time from a traced graph to the chosen
channels: the channel analysis, importance and the bisection (CAT's one-step pruning; CAT
reports ~3.8 GPU-seconds for theirs). "rewrite" slices the weights and re-exports the program.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from gcc_gan import trace, zoo
from gcc_gan.channels import analyze_channels
from gcc_gan.channels.importance import default_importance
from gcc_gan.passes.channel_prune import apply_pruning
from gcc_gan.search import search_budget
from gcc_gan.summary import si

RESULTS = Path(__file__).parent / "results" / "prune_search.json"


def run(name: str, *, budget_macs: float | None = None, ratio: float | None = None) -> dict:
    model = zoo.build(name, "standard")
    graph = trace(model, zoo.example_inputs(name, "standard"))
    start = time.perf_counter()
    analysis = analyze_channels(graph)
    t_analysis = time.perf_counter() - start
    scores = default_importance(analysis)
    decision = search_budget(analysis, scores, budget_macs=budget_macs, ratio=ratio)
    t_search = time.perf_counter() - start
    start = time.perf_counter()
    pruned = apply_pruning(graph, analysis, decision.keep)
    t_rewrite = time.perf_counter() - start
    inputs = zoo.example_inputs(name, "standard", batch=1)
    with torch.no_grad():
        assert pruned(*inputs).shape == model(*inputs).shape
    return {"model": name, "budget_macs": decision.budget_macs, "macs_before": graph.macs,
            "macs_after": pruned.macs, "lit_macs_after": pruned.lit_macs,
            "achieved_over_budget": pruned.macs / decision.budget_macs,
            "params_before": graph.params, "params_after": pruned.params,
            "units": analysis.num_units, "groups": len(analysis.groups),
            "barriers": len(analysis.barriers), "frozen_macs": analysis.frozen_macs(),
            "analysis_s": t_analysis, "search_s": t_search, "rewrite_s": t_rewrite}


def main() -> None:
    console = Console(width=160)
    rows = [run("resnet", budget_macs=3e9)]
    with console.status("pruning the zoo to 25% ..."):
        rows += [run(name, ratio=0.25) for name in sorted(zoo.ZOO)]
    table = Table(title="prune_channels, standard configs, batch 1", header_style="bold")
    for col in ("model", "budget", "MACs before", "MACs after", "after/budget", "params before",
                "params after", "units / groups", "barriers", "search s", "rewrite s"):
        table.add_column(col, justify="right", no_wrap=True)
    for r in rows:
        table.add_row(r["model"], si(r["budget_macs"]), si(r["macs_before"]), si(r["macs_after"]),
                      f"{r['achieved_over_budget']:.4f}", si(r["params_before"]),
                      si(r["params_after"]), f"{r['units']} / {r['groups']}", str(r["barriers"]),
                      f"{r['search_s']:.3f}", f"{r['rewrite_s']:.2f}")
    console.print(table)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"torch": torch.__version__, "threads": torch.get_num_threads(),
                                   "runs": rows}, indent=2))
    console.print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()

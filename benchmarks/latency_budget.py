"""compile(resnet9, target="x86", budget_latency_ms=T) on this machine: each round's measured
latency and the final one, for T = 40 and 15 ms.

Run: `make bench` (or `.venv/bin/python benchmarks/latency_budget.py`), after `gcc-gan tune
--target x86` (benchmarks/cost_model.py runs it) so the search starts from measured kernel
costs; without a tuned profile it starts from the datasheet figures and needs more rounds.
ResNet-9 (ngf 64) at 256x256, int8 x86 pipeline, random calibration inputs. Budgets are judged
on the steady latency (compile's default `latency_statistic`: each timing's fastest call, what
the tuned cost model predicts); every round's median is printed next to it. Writes
benchmarks/results/latency_budget.json.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

import gcc_gan
from gcc_gan import targets
from gcc_gan.measure import environment
from gcc_gan.search import BudgetError

from common import parse_threads, resnet9_workload  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "latency_budget.json"
BUDGETS_MS = (40.0, 15.0)


def main() -> None:
    parse_threads()
    warnings.simplefilter("ignore")
    console = Console(width=160)
    model, x, calib = resnet9_workload()
    profile = targets.get("x86")
    console.print(f"x86 cost model: {profile.tuned or 'datasheet (run gcc-gan tune --target x86)'}")
    results = []
    for budget in BUDGETS_MS:
        with console.status(f"compile(resnet9, x86, budget_latency_ms={budget}) ..."):
            try:
                out = gcc_gan.compile(model, "x86", budget_latency_ms=budget,
                                      example_inputs=(x,), calib_data=calib)
            except BudgetError as exc:   # not reachable here: record what was measured
                console.print(f"budget {budget} ms: [red]not met[/red]: {exc}")
                results.append({"budget_ms": budget, "in_window": False, "error": str(exc)})
                continue
        r = out.report
        search = r.latency_search
        table = Table(title=f"budget {budget} ms: rounds", header_style="bold")
        for col in ("round", "MACs budget", "MACs", "predicted ms", "x correction", "aimed ms",
                    "measured ms (fastest)", "median ms"):
            table.add_column(col, justify="right")
        for rd in search["rounds"]:
            table.add_row(str(rd["round"]) + (" *" if rd["round"] == search["chosen"] + 1 else ""),
                          f"{rd['budget_macs'] / 1e9:.3f}G", f"{rd['macs'] / 1e9:.3f}G",
                          f"{rd['predicted_ms']:.2f}", f"{rd['correction']:.3f}",
                          f"{rd['corrected_ms']:.2f}", f"{rd['measured_ms']:.2f}",
                          f"{rd['measured_median_ms']:.2f}")
        console.print(table)
        final = r.latency_after["min_ms"]
        median = r.latency_after["median_ms"]
        ok = 0.85 * budget <= final <= budget
        console.print(f"final: {r.macs_after / 1e9:.3f}G MACs, measured again {final:.2f} ms "
                      f"fastest, {median:.2f} ms median; in [{0.85 * budget:.2f}, "
                      f"{budget:.2f}]: {ok} (by the median: "
                      f"{0.85 * budget <= median <= budget}); fidelity vs the dense model PSNR "
                      f"{r.fidelity['psnr']:.1f} dB (random weights)")
        results.append({"budget_ms": budget, "final_ms": final, "final_median_ms": median,
                        "in_window": ok, "statistic": search["statistic"],
                        "macs_after": r.macs_after, "rounds": search["rounds"],
                        "chosen_round": search["chosen"] + 1, "cost_model": r.cost_model,
                        "latency_after": r.latency_after})
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"threads": torch.get_num_threads(), "environment": environment(),
                                   "tuned_profile": profile.tuned, "results": results}, indent=2))
    console.print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()

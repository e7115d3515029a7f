"""`CompileReport`: what `compile` did, what it cost, and what it saved; JSON, markdown, terminal.

Everything in it is measured or computed in the run that produced it: MACs and params from the
graphs, latency from `gcc_gan.measure` (original model in eager torch and compressed artifact in
ONNX Runtime, timed side by side), fidelity from `gcc_gan.metrics` (compressed vs original
outputs on the calibration batches, or on the example inputs when none were given). The JSON
schema (`to_json`) is documented in the README and versioned by `schema`.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Any

from rich.console import Group
from rich.table import Table

from .summary import si

SCHEMA = "gcc-gan.compile-report/2"


@dataclass(frozen=True)
class PassEntry:
    name: str
    settings: dict[str, Any]
    macs_before: int
    macs_after: int
    params_before: int
    params_after: int
    seconds: float
    details: dict[str, Any] = field(default_factory=dict)  # the pass's own report, as JSON


@dataclass(frozen=True)
class LayerChange:
    module: str
    op: str
    macs_before: int
    macs_after: int
    params_before: int
    params_after: int


@dataclass(frozen=True)
class CompileReport:
    model: str
    target: str
    budget_macs: int | None
    macs_before: int
    macs_after: int
    lit_macs_before: int
    lit_macs_after: int
    params_before: int
    params_after: int
    weight_bytes_before: dict[str, int]
    weight_bytes_after: dict[str, int]
    latency_before: dict[str, Any] | None   # gcc_gan.measure.Latency as a dict (eager torch)
    latency_after: dict[str, Any] | None    # the lowered artifact (ONNX Runtime)
    fidelity: dict[str, Any]                # gcc_gan.metrics.Fidelity as a dict
    fidelity_inputs: str
    passes: tuple[PassEntry, ...]
    barriers: tuple[dict[str, Any], ...]
    layers: tuple[LayerChange, ...]
    lowering: dict[str, Any]
    environment: dict[str, str]
    compile_seconds: float
    notes: tuple[str, ...] = ()
    cost_model: dict[str, Any] | None = None    # the target's prediction for the result
    budget_latency_ms: float | None = None
    latency_search: dict[str, Any] | None = None  # gcc_gan.latency.LatencySearch, each round
    size: dict[str, Any] | None = None           # gcc_gan.size.SizeTable: bytes per storage form
    schema: str = SCHEMA

    @property
    def speedup(self) -> float | None:
        if not (self.latency_before and self.latency_after):
            return None
        return self.latency_before["median_ms"] / self.latency_after["median_ms"]

    def to_dict(self) -> dict[str, Any]:
        return jsonable(dataclasses.asdict(self)) | {"speedup": self.speedup}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_json(cls, text: str) -> "CompileReport":
        data = json.loads(text)
        data.pop("speedup", None)
        data["passes"] = tuple(PassEntry(**p) for p in data["passes"])
        data["layers"] = tuple(LayerChange(**lc) for lc in data["layers"])
        data["barriers"] = tuple(data["barriers"])
        data["notes"] = tuple(data["notes"])
        return cls(**data)

    def _summary_rows(self) -> list[tuple[str, str, str, str]]:
        def ratio(a, b):
            return f"{a / b:.3f}x" if b else "-"
        rows = [("MACs (real)", si(self.macs_before), si(self.macs_after),
                 ratio(self.macs_after, self.macs_before)),
                ("MACs (literature)", si(self.lit_macs_before), si(self.lit_macs_after),
                 ratio(self.lit_macs_after, self.lit_macs_before)),
                ("params", si(self.params_before), si(self.params_after),
                 ratio(self.params_after, self.params_before)),
                ("weights", si(sum(self.weight_bytes_before.values()), "B"),
                 si(sum(self.weight_bytes_after.values()), "B"),
                 ratio(sum(self.weight_bytes_after.values()), sum(self.weight_bytes_before.values())))]
        if self.speedup is not None:
            rows.append(("latency (ms, median)",
                         f"{self.latency_before['median_ms']:.2f} eager torch",
                         f"{self.latency_after['median_ms']:.2f} {self.latency_after['backend']}",
                         f"{self.speedup:.2f}x faster"))
        return rows

    def _fidelity_line(self) -> str:
        f = self.fidelity
        ssim = "n/a" if f.get("ssim") is None else f"{f['ssim']:.4f}"
        psnr = "inf (identical)" if f.get("psnr") in (None, math.inf) else f"{f['psnr']:.2f}"
        return (f"fidelity vs the original on {self.fidelity_inputs}: PSNR {psnr} dB, "
                f"SSIM {ssim}, max abs diff {f['max_abs_diff']:.3g}")

    def _cost_lines(self) -> list[str]:
        lines = []
        c = self.cost_model
        if c:
            lines += [f"Cost model ({c['model']}, {c['source']}): predicted {c['predicted_ms']:.3g} ms"
                      + (f", measured ({c.get('statistic', 'median')})/predicted "
                         f"{c['measured_over_predicted']:.2f}"
                         if c.get("measured_over_predicted") else ""), ""]
        if c and c.get("layers"):
            lines += [f"Crossbars: {c['crossbars']}, energy {c['energy_mj']:.4g} mJ per call", "",
                      "| layer | module | bits | crossbars | utilization | cycles | ADC conversions "
                      "| time (us) | energy (uJ) |", "|---|---|--:|--:|--:|--:|--:|--:|--:|"]
            lines += [f"| {x['node']} | {x['module']} | {x['bits']} | {x['crossbars']} | "
                      f"{x['utilization']:.0%} | {x['cycles']} | {x['adc_conversions']} | "
                      f"{x['seconds'] * 1e6:.1f} | {x['energy_j'] * 1e6:.3g} |" for x in c["layers"]]
            lines.append("")
        if self.size:
            lines += [f"Storage ({self.size['title']}):", "", "| form | bytes | x smaller | detail |",
                      "|---|--:|--:|---|"]
            lines += [f"| {r['name']} | {r['bytes']:,} | {r['ratio']:.1f}x | {r['detail']} |"
                      for r in self.size["rows"]]
            lines.append("")
        s = self.latency_search
        if s:
            kind = (f"measured, {_statistic(s)}" if s["measured"]
                    else "predicted (no device)")
            lines += [f"Latency budget {s['budget_latency_ms']} ms ({kind}); round "
                      f"{s['chosen'] + 1} kept, in [0.85 T, T]: {s['in_window']}", "",
                      "| round | MACs budget | MACs | predicted ms | corrected ms | measured ms "
                      "| median ms |", "|--:|--:|--:|--:|--:|--:|--:|"]
            lines += [f"| {r['round']} | {si(r['budget_macs'])} | {si(r['macs'])} | "
                      f"{r['predicted_ms']:.2f} | {r['corrected_ms']:.2f} | "
                      f"{_ms_or_dash(r['measured_ms'])} | "
                      f"{_ms_or_dash(r.get('measured_median_ms'))} |" for r in s["rounds"]]
            lines.append("")
        return lines

    def to_markdown(self) -> str:
        lines = [f"# gcc-gan compile report: {self.model} for {self.target}", "",
                 "| | before | after | change |", "|---|--:|--:|--:|"]
        lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in self._summary_rows()]
        lines += ["", self._fidelity_line(), ""] + self._cost_lines() + ["## Passes", ""]
        for p in self.passes:
            settings = ", ".join(f"{k}={v}" for k, v in p.settings.items() if v is not None)
            lines.append(f"- `{p.name}` ({settings}): MACs {si(p.macs_before)} -> "
                         f"{si(p.macs_after)}, params {si(p.params_before)} -> "
                         f"{si(p.params_after)}, {p.seconds:.2f} s")
        lines += ["", f"Barriers: {len(self.barriers)}"]
        lines += [f"- `{b['op']}` at {b['node']}: {b['units']} channels, {si(b['macs'])} MACs "
                  f"frozen ({b['source']})" for b in self.barriers]
        lines += ["", "## Layers", "", "| module | op | MACs before | MACs after | params before "
                  "| params after |", "|---|---|--:|--:|--:|--:|"]
        lines += [f"| {lc.module} | {lc.op} | {si(lc.macs_before)} | {si(lc.macs_after)} | "
                  f"{si(lc.params_before)} | {si(lc.params_after)} |" for lc in self.layers]
        lines += ["", "## Lowering and environment", ""]
        lines += [f"- {k}: {v}" for k, v in {**self.lowering, **self.environment}.items()]
        lines += [f"- note: {n}" for n in self.notes]
        lines.append(f"- compile time: {self.compile_seconds:.1f} s")
        return "\n".join(lines) + "\n"

    def __rich__(self) -> Group:
        table = Table(title=f"{self.model} -> {self.target}", header_style="bold",
                      caption=self._fidelity_line(), caption_justify="left")
        for col, justify in (("", "left"), ("before", "right"), ("after", "right"),
                             ("change", "right")):
            table.add_column(col, justify=justify)
        for row in self._summary_rows():
            table.add_row(*row)
        passes = Table(title="passes", header_style="bold")
        for col in ("pass", "MACs after", "params after", "seconds"):
            passes.add_column(col, justify="right" if col != "pass" else "left")
        for p in self.passes:
            passes.add_row(p.name, si(p.macs_after), si(p.params_after), f"{p.seconds:.2f}")
        extra = [f"barriers: {len(self.barriers)}"] + [f"note: {n}" for n in self.notes]
        c = self.cost_model
        if c:
            extra.insert(0, f"cost model ({c['model']}, {c['source']}): predicted "
                            f"{c['predicted_ms']:.3g} ms" + (f", {c['crossbars']} crossbars, "
                                                            f"{c['energy_mj']:.4g} mJ per call"
                                                            if c.get("layers") else ""))
        return Group(table, passes, *self._rounds_table(), *extra)

    def _rounds_table(self) -> list[Table]:
        s = self.latency_search
        if not s:
            return []
        kind = f"measured, {_statistic(s)}" if s["measured"] else "predicted, no device"
        rounds = Table(title=f"latency budget {s['budget_latency_ms']} ms: rounds ({kind})",
                       header_style="bold")
        for col in ("round", "MACs", "predicted ms", "corrected ms", "measured ms", "median ms"):
            rounds.add_column(col, justify="right")
        for r in s["rounds"]:
            mark = " *" if r["round"] == s["chosen"] + 1 else ""
            rounds.add_row(f"{r['round']}{mark}", si(r["macs"]), f"{r['predicted_ms']:.2f}",
                           f"{r['corrected_ms']:.2f}", _ms_or_dash(r["measured_ms"]),
                           _ms_or_dash(r.get("measured_median_ms")))
        return [rounds]


def _statistic(search: dict) -> str:
    """How a latency search's rounds were judged (reports before the choice were medians)."""
    return {"steady": "fastest call", "median": "median"}[search.get("statistic", "median")]


def _ms_or_dash(ms: float | None) -> str:
    return "-" if ms is None else f"{ms:.2f}"


def jsonable(value: Any) -> Any:
    """Plain JSON values: dataclasses to dicts, tuples to lists, callables to their names."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return jsonable(dataclasses.asdict(value))
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None  # JSON has no inf/nan; a null PSNR means identical outputs
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if callable(value):
        return getattr(value, "__qualname__", repr(value))
    return str(value)

"""The `gcc-gan` command line: compile a generator, inspect its graph and costs, list targets
and the zoo.

A model is named ``MODULE:FACTORY`` (``gcc_gan.zoo:resnet_generator``, ``my_pkg.nets:G``) or
``path/to/file.py:FACTORY``; the factory is called with the ``--arg key=value`` pairs and may be
a class. ``--weights`` loads a state_dict checkpoint (or one under a "state_dict" key).
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import torch
import typer
from rich.console import Console
from rich.table import Table

from . import targets as target_profiles
from . import zoo
from .api import compile as gcc_compile
from .ir import TraceError, trace
from .lower import LoweringError
from .search import BudgetError
from .channels import analyze_channels
from .summary import channel_table, si
from .tune import PASSES as TUNE_PASSES

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="gcc-gan: a hardware-aware compression compiler for GAN generators.")
# Piped output (logs, CI, `| less`) gets a wide page instead of rich's 80-column default.
console = Console(width=None if sys.stdout.isatty() else 180)
err = Console(stderr=True)


def _fail(message: str) -> None:
    err.print(f"[red]error:[/red] {message}", highlight=False)
    raise typer.Exit(2)


def _import_factory(spec: str):
    module_name, sep, attr = spec.rpartition(":")
    if not sep or not module_name or not attr:
        _fail(f"model {spec!r} must look like MODULE:FACTORY or path/to/file.py:FACTORY")
    try:
        if module_name.endswith(".py"):
            path = Path(module_name)
            if not path.is_file():
                _fail(f"no such file: {path}")
            loader = importlib.util.spec_from_file_location(path.stem, path)
            module = importlib.util.module_from_spec(loader)
            sys.modules[path.stem] = module
            loader.loader.exec_module(module)
        else:
            module = importlib.import_module(module_name)
    except ImportError as exc:
        _fail(f"cannot import {module_name!r}: {exc}")
    if not hasattr(module, attr):
        _fail(f"{module_name!r} has no attribute {attr!r}")
    return getattr(module, attr)


def _parse_kwargs(pairs: list[str]) -> dict:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            _fail(f"--arg {pair!r} must be key=value")
        try:
            out[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            out[key] = value  # a bare word is a string: --arg norm=batch
    return out


def _parse_shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(d) for d in text.split(","))
    except ValueError:
        _fail(f"--input-shape {text!r} must be comma-separated integers, e.g. 1,3,256,256")
    if not shape or any(d <= 0 for d in shape):
        _fail(f"--input-shape {text!r} must have positive sizes")
    return shape


def load_model(spec: str, kwargs: dict, weights: Path | None) -> torch.nn.Module:
    factory = _import_factory(spec)
    try:
        model = factory(**kwargs)
    except TypeError as exc:
        _fail(f"calling {spec} with {kwargs}: {exc}")
    if not isinstance(model, torch.nn.Module):
        _fail(f"{spec} returned {type(model).__name__}, not an nn.Module")
    if weights is not None:
        state = torch.load(weights, map_location="cpu", weights_only=True)
        state = state.get("state_dict", state) if isinstance(state, dict) else state
        try:
            model.load_state_dict(state)
        except RuntimeError as exc:
            _fail(f"{weights} does not fit {spec}: {exc}")
    return model.eval()


@app.command()
def info(
    model: Annotated[str, typer.Argument(help="MODULE:FACTORY or file.py:FACTORY")],
    input_shape: Annotated[list[str], typer.Option(
        "--input-shape", help="shape of one positional input, e.g. 1,3,256,256 (repeat per input)")],
    arg: Annotated[Optional[list[str]], typer.Option(help="factory argument key=value")] = None,
    weights: Annotated[Optional[Path], typer.Option(help="state_dict checkpoint")] = None,
    all_nodes: Annotated[bool, typer.Option("--all-nodes", help="show every op")] = False,
    channels: Annotated[bool, typer.Option(
        "--channels", help="also show the prunable channel groups and any barriers")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print totals as JSON")] = False,
) -> None:
    """Trace MODEL and print its per-layer cost table."""
    net = load_model(model, _parse_kwargs(arg or []), weights)
    inputs = tuple(torch.randn(_parse_shape(s)) for s in input_shape)
    with console.status(f"tracing {type(net).__name__} ..."):
        try:
            graph = trace(net, inputs)
        except TraceError as exc:
            _fail(str(exc))
        table = graph.summary(all_nodes=all_nodes)
    if as_json:
        c = graph.cost
        print(json.dumps({"model": graph.model_class, "tracer": graph.tracer,
                          "dynamic_batch": graph.dynamic_batch, "batch": c.batch, "macs": c.macs,
                          "lit_macs": c.lit_macs, "params": c.params,
                          "weight_bytes": dict(c.weight_bytes),
                          "activation_bytes": c.activation_bytes,
                          "peak_activation_bytes": c.peak_activation_bytes,
                          "elementwise_ops": c.elementwise_ops,
                          "unknown_ops": {k: list(v) for k, v in c.unknown_ops.items()},
                          "notes": graph.notes}, indent=2))
    else:
        console.print(table)
        if channels:
            console.print(channel_table(analyze_channels(graph)))


@app.command("compile")
def compile_cmd(
    model: Annotated[str, typer.Argument(help="MODULE:FACTORY or file.py:FACTORY")],
    input_shape: Annotated[list[str], typer.Option(
        "--input-shape", help="shape of one positional input, e.g. 1,3,256,256 (repeat per input)")],
    out: Annotated[Path, typer.Option("--out", help="output directory")],
    target: Annotated[str, typer.Option(help="target name (gcc-gan targets)")] = "x86",
    budget_macs: Annotated[Optional[float], typer.Option(help="MACs budget, e.g. 3e9")] = None,
    ratio: Annotated[Optional[float], typer.Option(help="or: keep this fraction of MACs")] = None,
    budget_latency_ms: Annotated[Optional[float], typer.Option(
        help="or: latency budget in ms on the target (cost model + measured rounds)")] = None,
    latency_statistic: Annotated[str, typer.Option(
        help="what the latency budget is judged on: steady (fastest call, as on a dedicated "
             "board) or median (the measuring machine as it is)")] = "steady",
    arg: Annotated[Optional[list[str]], typer.Option(help="factory argument key=value")] = None,
    weights: Annotated[Optional[Path], typer.Option(help="state_dict checkpoint")] = None,
    round_to: Annotated[Optional[int], typer.Option(
        help="kept channels per group: a multiple of this (default: the target's alignment)")] = None,
    min_psnr: Annotated[Optional[float], typer.Option(
        help="int8 floor: dB vs the float model; sensitive layers stay float")] = None,
    measure: Annotated[bool, typer.Option(help="time the original and the result")] = True,
) -> None:
    """Compress MODEL for TARGET to a MACs or latency budget; write the artifacts and report."""
    net = load_model(model, _parse_kwargs(arg or []), weights)
    inputs = tuple(torch.randn(_parse_shape(s)) for s in input_shape)
    try:
        compiled = gcc_compile(net, target, budget_macs=budget_macs, ratio=ratio,
                               budget_latency_ms=budget_latency_ms,
                               latency_statistic=latency_statistic, example_inputs=inputs,
                               output_dir=out, min_psnr=min_psnr, round_to=round_to,
                               measure=measure)
    except (TraceError, BudgetError, LoweringError, ValueError) as exc:
        _fail(str(exc))
    console.print(compiled.report)
    console.print(f"wrote {out}/: {', '.join(sorted(p.name for p in out.iterdir()))}")


def _alignment(t) -> str:
    multiple = t.output_channel_multiple
    return f"{t.channel_alignment}" + (f" (narrow: x{multiple})" if multiple > 1 else "")


@app.command("targets")
def targets_cmd() -> None:
    """List the compilation targets."""
    table = Table(title="targets", header_style="bold")
    for col in ("name", "description", "passes", "precisions", "align", "lowering",
                "latency from", "cost model"):
        table.add_column(col)
    for t in target_profiles.available():
        table.add_row(t.name, t.description, ", ".join(t.passes), ", ".join(t.precisions),
                      _alignment(t), ", ".join(t.lowering), t.measurement,
                      f"{t.cost_model} ({'tuned: ' + t.tuned if t.tuned else 'datasheet'})")
    console.print(table)


@app.command("tune")
def tune_cmd(
    target: Annotated[str, typer.Option(help="target name (gcc-gan targets)")] = "x86",
    size: Annotated[str, typer.Option(help="probe spread: full (minutes) or quick")] = "full",
    out: Annotated[Optional[Path], typer.Option(
        help="where to save the fitted profile (default: where compile finds it)")] = None,
    rpc: Annotated[Optional[str], typer.Option(
        help="measure on a board through a TVM RPC tracker: HOST:PORT:KEY")] = None,
    passes: Annotated[int, typer.Option(
        help="time every probe once per pass and fit the medians (more: steadier)")] = TUNE_PASSES,
) -> None:
    """Measure kernels on the device and fit TARGET's cost model; compile then uses the fit."""
    from .tune import rpc_measure, tune

    if size not in ("full", "quick"):
        _fail(f"--size must be full or quick, got {size!r}")
    try:
        profile = target_profiles.get(target, tuned=False)
        measure = rpc_measure(profile, rpc) if rpc else None
        result = tune(profile, measure=measure, size=size, save=out or True, passes=passes)
    except (ValueError, ImportError) as exc:
        _fail(str(exc))
    table = Table(title=f"{target}: fitted kernels", header_style="bold")
    for col in ("kernel", "probes", "overhead us", "ns/kMAC", "ns/kB", "ns/kweight", "ns/row",
                "median error"):
        table.add_column(col, justify="right")
    for key, fit in sorted(result.kernels.items()):
        err_text = "-" if fit.median_rel_error is None else f"{fit.median_rel_error:.1%}"
        table.add_row(key, str(fit.samples), f"{fit.overhead_s * 1e6:.1f}",
                      f"{fit.s_per_mac * 1e12:.3g}", f"{fit.s_per_byte * 1e12:.3g}",
                      f"{fit.s_per_weight * 1e12:.3g}", f"{fit.s_per_row * 1e9:.3g}", err_text)
    console.print(table)
    console.print(f"saved {result.path}")


@app.command("zoo")
def zoo_list() -> None:
    """List the reference generators with their standard-config MACs."""
    table = Table(title="gcc_gan.zoo", header_style="bold")
    for col in ("name", "factory", "standard config", "real MACs", "lit. MACs"):
        table.add_column(col)
    for name, entry in sorted(zoo.ZOO.items()):
        real, lit = zoo.documented_macs(name)
        kwargs = ", ".join(f"{k}={v}" for k, v in entry.configs["standard"].kwargs.items())
        size = entry.configs["standard"].input_size
        what = kwargs + (f"; {size[0]}x{size[1]} input" if size else "")
        table.add_row(name, entry.factory.__name__, what, si(real), si(lit))
    console.print(table)


def main() -> None:
    app()

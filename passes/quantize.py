"""`quantize_int8`: decide which layers run in int8, and with which scales.

The pass does not change the program: it annotates each chosen conv node with a `LayerQuant`
(`gcc_gan.quant`, under node.meta[QUANT_KEY]) holding the int8 parameters of its weight, its input and its
output, decided here from calibration (`gcc_gan.quant`). Lowering turns the annotations into
QDQ ONNX (`gcc_gan.lower.qdq`), where ONNX Runtime fuses DQ -> Conv -> Q into int8 kernels.

Chosen: ordinary convs whose weight is a stored tensor. Left in float, with the reason in the
report: transposed convs (ONNX Runtime has no int8 ConvTranspose on CPU; run
`deconv_to_subpixel` first), convs with computed weights (StyleGAN2's modulated convs), and the
layers a `min_psnr` floor sends back to float. Adds whose output is read only in 8 bits (by
int8 convs, int8 adds, or an instance norm that the lowering runs as an 8-bit unit) run in int8
too; other norms and elementwise ops stay float. A conv read only by a ReLU is quantized with
the ReLU's range (`gcc_gan.int8_graph.quantized_output`): the int8 kernel's saturation is the
ReLU. Those graph rules live in `gcc_gan.int8_graph`, which the cost model follows too.

Speed: int8 is not faster everywhere (the Anycost report's int8 model was slower than float).
Given a `SpeedCheck` (compile makes one when it measures on a device), each chosen conv is timed
alone on the target, in float and in int8, at its own shapes and with its own weights; where
int8 is slower than float by more than the check's margin, the layer stays float and the
report gives both times (on x86: a 7x7 conv reading the 3 RGB channels, whose int8 kernel
gathers 3-byte rows). Each geometry is timed once per check.

Mixed precision: each layer's sensitivity is the PSNR of the output when only that layer is
(fake-)quantized. Starting from all layers in int8, the most sensitive layer goes back to float
until the simulated PSNR of the whole model meets `min_psnr`. First and last layers are
candidates like any other.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import fx, nn

from gcc_gan.ir import GanGraph, ops
from gcc_gan.ir import edit
from gcc_gan.ir.meta import arg, attr, source_module
from gcc_gan.ir.shapes import BatchOneShapes
from gcc_gan.ir.trace import copy_module, trace
from gcc_gan.int8_graph import chosen_adds, conv_fed_by, quantized_output, residual_adds
from gcc_gan.metrics import psnr
from gcc_gan.quant import (ADD_QUANT_KEY, OBSERVERS, QUANT_KEY, AddQuant, LayerQuant, Observer,
                           fake_quantize, symmetric_qparams)
from gcc_gan.runtime import int8_pairs_saturate

@dataclass(frozen=True)
class QuantConfig:
    observer: str = "minmax"            # "minmax" | "percentile" | "mse", for activations
    percentile: float = 99.99
    per_channel: bool = False           # weights: one scale per output channel, or per tensor
    weight_bits: int | None = None      # 8 or 7; None: the target's `int8_weight_bits`
    activations: str = "uint8"          # "uint8" | "int8"
    min_psnr: float | None = None       # dB vs the float model; None: every eligible layer int8
    max_calib_batches: int = 8
    int8_adds: bool = True              # adds read only in 8 bits (into int8 convs) run in int8
    speed_check: bool = True            # with a SpeedCheck: keep float where int8 is slower

    def __post_init__(self):
        if self.observer not in OBSERVERS:
            raise ValueError(f"observer must be one of {OBSERVERS}, got {self.observer!r}")
        if self.activations not in ("uint8", "int8"):
            raise ValueError(f"activations must be 'uint8' or 'int8', got {self.activations!r}")
        if self.weight_bits not in (None, 7, 8):
            raise ValueError(f"weight_bits must be 7, 8 or None, got {self.weight_bits!r}")


@dataclass(frozen=True)
class QuantReport:
    layers: tuple[dict, ...]           # per int8 layer: node, module, scales, sensitivity
    float_layers: tuple[tuple[str, str], ...]  # (node (module), why it stays float)
    simulated_psnr: float              # int8 model vs float, simulated in torch
    calibration: str
    macs_before: int
    macs_after: int
    params_before: int
    params_after: int
    name: str = "quantize_int8"
    int8_adds: tuple[str, ...] = ()    # "node (module)" of each add run in int8
    weight_bits: int = 8
    weight_bits_why: str = ""


@dataclass(frozen=True)
class QuantResult:
    graph: GanGraph
    report: QuantReport
    plan: tuple[LayerQuant, ...] = field(repr=False, default=())


@dataclass
class SpeedCheck:
    """Times a conv alone on the target in float and in int8; remembers each geometry.

    The two are timed in turns (`rounds` rounds of a warm-up call and `repeats` timed calls
    each; the verdict is the median of the round medians): timed one after the other, a slow
    spell of a shared machine could land on one side and flip the verdict."""
    backend: object                  # a gcc_gan.backends.Backend: lowers and times on the device
    threads: int
    margin: float = 0.1              # int8 stays unless it is this much slower than float
    rounds: int = 5
    repeats: int = 5
    verdicts: dict = field(default_factory=dict)   # geometry -> (int8 ms, float ms)

    def times(self, probe: "_ConvProbe") -> tuple[float, float]:
        if probe.key not in self.verdicts:
            graph = trace(probe, (probe.example(),))
            inputs = graph.example_inputs
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # calibrating on the probe's input is the point
                int8 = quantize_int8(graph, calib_data=[inputs]).graph
            built = [self.backend.lower(g, calib=[inputs]) for g in (int8, graph)]
            rounds = [[self.backend.time(a, inputs, threads=self.threads, warmup=1,
                                         repeats=self.repeats).median_ms for a in built]
                      for _ in range(self.rounds)]
            self.verdicts[probe.key] = tuple(float(np.median(side)) for side in zip(*rounds))
        return self.verdicts[probe.key]


class _ConvProbe(nn.Module):
    """One conv node of a program as a program of its own: same op, weights and arguments."""

    def __init__(self, gm: fx.GraphModule, node: fx.Node, input_shape: tuple[int, ...]):
        super().__init__()
        self.op, self.rest, self.input_shape = node.target, tuple(node.args[3:]), input_shape
        self.weight = nn.Parameter(attr(gm, node.args[1].target).detach().clone())
        bias = node.args[2] if len(node.args) > 2 else None
        self.bias = None if bias is None else nn.Parameter(attr(gm, bias.target).detach().clone())
        self.key = (str(self.op), tuple(self.weight.shape), bias is None, repr(self.rest),
                    input_shape)

    @staticmethod
    def of(gm: fx.GraphModule, node: fx.Node, shapes: BatchOneShapes) -> "_ConvProbe | None":
        """None when an argument is computed at run time (nothing to time alone)."""
        bias = node.args[2] if len(node.args) > 2 else None
        if node.kwargs or any(isinstance(a, fx.Node) for a in node.args[3:]) or (
                bias is not None and not (isinstance(bias, fx.Node) and bias.op == "get_attr")):
            return None
        return _ConvProbe(gm, node, shapes.shape(node.args[0]))

    def example(self) -> torch.Tensor:
        return torch.randn(self.input_shape, generator=torch.Generator().manual_seed(0))

    def forward(self, x):
        return self.op(x, self.weight, self.bias, *self.rest)


def int8_candidates(gm: fx.GraphModule) -> tuple[list[fx.Node], list[tuple[str, str]]]:
    """The convs this pass can run in int8, and (node, why) for those it leaves in float."""
    chosen, skipped = [], []
    for node in gm.graph.nodes:
        if node.op != "call_function":
            continue
        p = ops.packet(node.target)
        if p in ops.ConvTranspose or (p in (torch.ops.aten.convolution, torch.ops.aten._convolution)
                                      and arg(node, 6, "transposed", False)):
            skipped.append((edit.label(node), "transposed conv: no int8 kernel in ONNX Runtime on "
                                          "CPU (deconv_to_subpixel rewrites it as a conv)"))
        elif p in ops.Conv:
            weight = node.args[1]
            if isinstance(weight, fx.Node) and weight.op == "get_attr":
                chosen.append(node)
            else:
                skipped.append((edit.label(node), "its weight is computed (e.g. modulated), "
                                              "not a stored tensor"))
    return chosen, skipped


def _batches(calib_data, example_inputs, limit: int) -> tuple[list[tuple], str]:
    if calib_data is None:
        warnings.warn("quantize_int8: no calib_data given; calibrating on the example inputs, "
                      "whose ranges may not be representative", stacklevel=3)
        return [example_inputs], "the example inputs (no calib_data given)"
    out = []
    for batch in calib_data:
        out.append(batch if isinstance(batch, tuple) else tuple(batch) if isinstance(batch, list)
                   else (batch,))
        if len(out) == limit:
            break
    return out, f"{len(out)} calibration batches"


class _Recorder(fx.Interpreter):
    def __init__(self, gm, watch: dict[str, Observer]):
        super().__init__(gm)
        self.watch = watch

    def run_node(self, n):
        out = super().run_node(n)
        if n.name in self.watch:
            self.watch[n.name].update(out)
        return out


class _FakeQuant(fx.Interpreter):
    """Runs the program with the chosen layers' inputs, weights and outputs fake-quantized."""

    def __init__(self, gm, plan: dict[str, LayerQuant]):
        super().__init__(gm)
        self.plan = plan

    def run_node(self, n):
        layer = self.plan.get(n.name)
        if layer is None:
            return super().run_node(n)
        args, kwargs = self.fetch_args_kwargs_from_env(n)
        if isinstance(layer, AddQuant):
            a, b = (fake_quantize(t, qp) for t, qp in zip(args, layer.input_qparams))
            return fake_quantize(n.target(a, b, **kwargs), layer.output_qparams)
        args = (fake_quantize(args[0], layer.input_qparams),
                fake_quantize(args[1], layer.weight_qparams), *args[2:])
        return fake_quantize(n.target(*args, **kwargs), layer.output_qparams)


def _simulated_psnr(gm, plan, batches, references) -> float:
    with torch.no_grad():
        outs = [_first(_FakeQuant(gm, plan).run(*b)) for b in batches]
    return psnr(torch.cat(outs), torch.cat(references))


def _first(out):
    return out if isinstance(out, torch.Tensor) else out[0]


def quantize_int8(graph: GanGraph, target=None, config: QuantConfig = QuantConfig(),
                  calib_data=None, speed: SpeedCheck | None = None) -> QuantResult:
    gm = copy_module(graph.module)
    chosen, skipped = int8_candidates(gm)
    bits, bits_why = weight_bits(config, target)
    batches, calibration = _batches(calib_data, graph.example_inputs, config.max_calib_batches)
    adds = residual_adds(gm) if config.int8_adds else []
    output = {node.name: quantized_output(node).name for node in chosen}
    watch = {}
    for name in [n for node in chosen for n in (node.args[0].name, output[node.name])] + [
            n.name for node in adds for n in (*node.args, node)]:
        watch.setdefault(name, Observer(config.observer, config.percentile))
    with torch.no_grad():
        references = []
        for batch in batches:
            references.append(_first(_Recorder(gm, watch).run(*batch)))
    plan: dict[str, LayerQuant] = {}
    for node in chosen:
        weight = attr(gm, node.args[1].target)
        plan[node.name] = LayerQuant(
            node=node.name, module=source_module(node), weight=node.args[1].target,
            input=node.args[0].name,
            weight_qparams=symmetric_qparams(weight, config.per_channel, bits=bits),
            input_qparams=watch[node.args[0].name].qparams(config.activations),
            output_qparams=watch[output[node.name]].qparams(config.activations),
            sensitivity_psnr=math.nan)
    if speed is not None and config.speed_check and plan:
        plan = _where_int8_pays(gm, plan, speed, skipped)
    if config.min_psnr is not None and plan:
        plan = _fit_floor(gm, plan, batches, references, config.min_psnr, skipped)
    int8_adds = _int8_adds(adds, plan, watch, config.activations)
    if int8_adds and config.min_psnr is not None and _simulated_psnr(
            gm, {**plan, **int8_adds}, batches, references) < config.min_psnr:
        skipped += [(f"{name} ({q.module})", f"add kept in float for min_psnr={config.min_psnr} dB")
                    for name, q in int8_adds.items()]
        int8_adds = {}
    for node in gm.graph.nodes:
        node.meta.pop(QUANT_KEY, None)
        node.meta.pop(ADD_QUANT_KEY, None)
        if node.name in plan:
            node.meta[QUANT_KEY] = plan[node.name]
        if node.name in int8_adds:
            node.meta[ADD_QUANT_KEY] = int8_adds[node.name]
    simulated = (_simulated_psnr(gm, {**plan, **int8_adds}, batches, references) if plan
                 else math.inf)
    quantized = GanGraph(module=gm, exported=graph.exported, tracer=graph.tracer,
                         model_class=graph.model_class, dynamic_batch=graph.dynamic_batch,
                         example_inputs=graph.example_inputs,
                         notes=[*graph.notes, f"int8 layers: {len(plan)}"])
    report = QuantReport(
        layers=tuple(_layer_entry(q) for q in plan.values()), float_layers=tuple(skipped),
        simulated_psnr=simulated, calibration=calibration, macs_before=graph.macs,
        macs_after=graph.macs, params_before=graph.params, params_after=graph.params,
        int8_adds=tuple(f"{name} ({q.module})" for name, q in int8_adds.items()),
        weight_bits=bits, weight_bits_why=bits_why)
    return QuantResult(quantized, report, tuple(plan.values()))


def weight_bits(config: QuantConfig, target=None) -> tuple[int, str]:
    """The int8 weights' bits (8 or 7) and why: the config's, else the target's, else (no
    target, or the target says "host") what this host's ONNX Runtime needs."""
    if config.weight_bits is not None:
        return config.weight_bits, "QuantConfig.weight_bits"
    wanted = getattr(target, "int8_weight_bits", "host")
    if wanted != "host":
        return wanted, f"target {target.name}"
    if int8_pairs_saturate():
        return 7, ("this host's ONNX Runtime int8 convs saturate int16 sums of uint8 x int8 "
                   "product pairs (an x86 CPU without VNNI): 7-bit weights keep them exact")
    return 8, "this host's ONNX Runtime int8 convs accumulate exactly"


def _int8_adds(adds: list[fx.Node], plan: dict[str, LayerQuant], watch: dict[str, Observer],
               activations: str) -> dict[str, AddQuant]:
    """An add runs in int8 where its output is read quantized anyway (`chosen_adds`): it then
    reads and writes a quarter of the bytes, and no DQ -> Add -> Q surrounds it. A tensor keeps
    one set of parameters wherever it is quantized (conv input/output, an earlier add's
    output); an add that feeds no int8 conv has its output's own range."""
    known = {q.input: q.input_qparams for q in plan.values()}
    known.update({q.node: q.output_qparams for q in plan.values()})
    selected = chosen_adds(adds, plan)
    chosen = {}
    for node in adds:
        if node.name not in selected:
            continue
        conv = conv_fed_by(node, plan)
        output = conv.input_qparams if conv is not None else watch[node.name].qparams(activations)
        inputs = tuple(known.get(a.name) or watch[a.name].qparams(activations) for a in node.args)
        chosen[node.name] = AddQuant(node=node.name, module=source_module(node),
                                     inputs=tuple(a.name for a in node.args),
                                     input_qparams=inputs, output_qparams=output)
        known[node.name] = output
    return chosen


def _where_int8_pays(gm, plan, speed: SpeedCheck, skipped) -> dict[str, LayerQuant]:
    shapes, nodes = BatchOneShapes(gm), {n.name: n for n in gm.graph.nodes}
    kept = {}
    for name, q in plan.items():
        probe = _ConvProbe.of(gm, nodes[name], shapes)
        int8_ms, float_ms = speed.times(probe) if probe is not None else (0.0, math.inf)
        if int8_ms > (1 + speed.margin) * float_ms:
            skipped.append((f"{name} ({q.module})", f"int8 is slower here: {int8_ms:.3g} ms "
                                                    f"against {float_ms:.3g} ms in float, this "
                                                    "conv alone on the target"))
        else:
            kept[name] = q
    return kept


def _fit_floor(gm, plan, batches, references, min_psnr, skipped) -> dict[str, LayerQuant]:
    sensitivity = {name: _simulated_psnr(gm, {name: q}, batches, references)
                   for name, q in plan.items()}
    plan = {name: LayerQuant(**{**q.__dict__, "sensitivity_psnr": sensitivity[name]})
            for name, q in plan.items()}
    order = sorted(plan, key=lambda name: sensitivity[name])  # most sensitive first
    kept = dict(plan)
    for name in order:
        if _simulated_psnr(gm, kept, batches, references) >= min_psnr:
            break
        kept.pop(name)
        skipped.append((f"{name} ({plan[name].module})",
                        f"kept in float for min_psnr={min_psnr} dB (alone in int8: "
                        f"{sensitivity[name]:.1f} dB)"))
    return kept


def _layer_entry(q: LayerQuant) -> dict:
    return {"node": q.node, "module": q.module, "weight_scale": [float(s) for s in
                                                                q.weight_qparams.scale[:4]],
            "per_channel": q.weight_qparams.axis is not None,
            "input_scale": float(q.input_qparams.scale[0]),
            "input_zero_point": int(q.input_qparams.zero_point[0]),
            "output_scale": float(q.output_qparams.scale[0]),
            "output_zero_point": int(q.output_qparams.zero_point[0]),
            "sensitivity_psnr": None if math.isnan(q.sensitivity_psnr) else q.sensitivity_psnr}

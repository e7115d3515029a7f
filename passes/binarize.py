"""`binarize`: 1-bit weights (sign * alpha) for the layers that tolerate them, 8 bits elsewhere.

For a ReRAM crossbar (ApGAN; the GAN-compression survey, section on quantization): a binarized
layer's weight is

    W_b[o] = alpha[o] * sign(W[o]),   alpha[o] = mean |W[o]|,   sign(0) = +1

per output channel o (axis 0 of a conv or linear weight, axis 1 of a transposed conv's);
multiplications become sign flips and one scaling per channel. The other layers keep 8 bits:
symmetric per-channel int8, W_8[o] = clamp(round(W[o] / s[o]), -127, 127) * s[o] with
s[o] = max |W[o]| / 127.

Which layers: `redundancy` (ApGAN's data-redundancy measure) r = c - h * w of the layer's input
(c channels of h x w; a linear's input is c x 1 x 1). A negative r marks a layer sensitive to
quantization error: layers with r >= `threshold` (0 in ApGAN) are binarized, the rest keep
8 bits. `sensitivity`: each layer's output PSNR on the example inputs with only that layer
binarized; the `fraction` of layers with the highest PSNR are binarized.

Invariant: the new graph's weight equals codes * scale exactly (float32; codes int8 in {-1, +1}
or [-127, 127]) and every layer's node carries a `WeightBits` under node.meta[BITS_KEY];
`weight_bits(gm)` reads the bits per layer for the crossbar cost model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from gcc_gan.ir import GanGraph, edit
from gcc_gan.ir.meta import node_val
from gcc_gan.ir.trace import copy_module
from gcc_gan.metrics import psnr
from gcc_gan.passes.kmeans_share import SHARE_KEY
from gcc_gan.passes.sparsify import SPARSE_KEY, WeightLayer, weight_layers

BITS_KEY = "gcc_gan.weight_bits"  # node.meta key of a layer's WeightBits
CRITERIA = ("redundancy", "sensitivity")


@dataclass(frozen=True)
class WeightBits:
    node: str
    module: str
    weight: str                 # get_attr target of the weight
    bits: int                   # 1 (sign * alpha) or 8 (int8 per channel)
    axis: int                   # output-channel axis of `scale`
    redundancy: float           # c - h * w of the layer's input
    scale: np.ndarray = field(repr=False, compare=False)  # float32 per output channel
    codes: np.ndarray = field(repr=False, compare=False)  # int8, the weight's shape

    def dequantized(self) -> np.ndarray:
        """codes * scale along `axis`, float32: the weight the new graph holds."""
        shape = [1] * self.codes.ndim
        shape[self.axis] = -1
        return self.codes.astype(np.float32) * self.scale.reshape(shape)


def weight_bits(graph_or_module) -> dict[str, int]:
    """node name -> bits per weight (1 or 8) of every layer `binarize` annotated."""
    gm = getattr(graph_or_module, "module", graph_or_module)
    return {n.name: n.meta[BITS_KEY].bits for n in gm.graph.nodes if BITS_KEY in n.meta}


def bit_layers(graph_or_module) -> dict[str, WeightBits]:
    """weight target -> its WeightBits (empty when the graph was not binarized)."""
    gm = getattr(graph_or_module, "module", graph_or_module)
    return {n.meta[BITS_KEY].weight: n.meta[BITS_KEY] for n in gm.graph.nodes
            if BITS_KEY in n.meta}


@dataclass(frozen=True)
class BinarizeConfig:
    criterion: str = "redundancy"   # "redundancy" (ApGAN's c - h*w) | "sensitivity"
    threshold: float = 0.0          # redundancy: binarize layers with c - h*w >= threshold
    fraction: float = 0.5           # sensitivity: share of layers binarized, least sensitive first
    keep_first_last: bool = False   # keep the first and last layer at 8 bits whatever the measure

    def __post_init__(self):
        if self.criterion not in CRITERIA:
            raise ValueError(f"criterion must be one of {CRITERIA}, got {self.criterion!r}")
        if not 0.0 <= self.fraction <= 1.0:
            raise ValueError(f"fraction must be in [0, 1] (the share of layers binarized), got "
                             f"{self.fraction!r}")


@dataclass(frozen=True)
class BinarizeReport:
    config: BinarizeConfig
    layers: tuple[dict, ...]        # per layer: node, module, bits, redundancy, sensitivity
    skipped: tuple[tuple[str, str], ...]
    criterion: str
    binarized: int                  # layers at 1 bit
    weight_bits_before: int         # the layers' weights at 32 bits
    weight_bits_after: int          # at 1 or 8 bits, plus one float32 scale per channel
    simulated_psnr: float           # output on the example inputs vs the input graph
    macs_before: int
    macs_after: int
    params_before: int
    params_after: int
    name: str = "binarize"


@dataclass(frozen=True)
class BinarizeResult:
    graph: GanGraph
    report: BinarizeReport


def binary_codes(w: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """(codes in {-1, +1} int8, alpha float32 per channel): sign(w) * mean |w| per channel."""
    moved = np.moveaxis(w, axis, 0).reshape(w.shape[axis], -1)
    alpha = np.abs(moved).astype(np.float64).mean(axis=1).astype(np.float32)
    return np.where(w >= 0, 1, -1).astype(np.int8), alpha


def int8_codes(w: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """(codes in [-127, 127] int8, scale float32 per channel): symmetric per-channel int8."""
    moved = np.moveaxis(w, axis, 0).reshape(w.shape[axis], -1)
    scale = (np.maximum(np.abs(moved).max(axis=1), 1e-12) / 127.0).astype(np.float32)
    shape = [1] * w.ndim
    shape[axis] = -1
    q = np.clip(np.round(w / scale.reshape(shape)), -127, 127)
    return q.astype(np.int8), scale


def redundancy(node) -> float:
    """ApGAN's c - h*w of the input of conv/linear `node` (c channels, h x w spatial)."""
    val = node_val(node.args[0])
    shape = tuple(int(d) for d in val.shape) if val is not None else ()
    if len(shape) < 2:
        return math.nan
    return float(shape[1] - math.prod(shape[2:]))


def _bits(layer: WeightLayer, w: np.ndarray, bits: int, r: float) -> WeightBits:
    codes, scale = (binary_codes if bits == 1 else int8_codes)(w, layer.out_axis)
    return WeightBits(layer.node, layer.module, layer.weight, bits, layer.out_axis, r,
                      scale, codes)


def _output(gm, inputs) -> torch.Tensor:
    with torch.no_grad():
        out = gm(*inputs)
    return out if isinstance(out, torch.Tensor) else out[0]


def _sensitivity(gm, layers, weights, inputs, reference) -> dict[str, float]:
    out = {}
    for layer in layers:
        w = weights[layer.weight]
        edit.replace_stored(gm, layer.weight, torch.from_numpy(_bits(layer, w, 1, 0.0).dequantized()))
        out[layer.weight] = psnr(_output(gm, inputs), reference)
        edit.replace_stored(gm, layer.weight, torch.from_numpy(w))
    return out


def binarize(graph: GanGraph, target=None, config: BinarizeConfig = BinarizeConfig()
             ) -> BinarizeResult:
    """Binarize the layers `config.criterion` picks and put the others at 8 bits; `target` is
    unused (the crossbar cost model reads the bits from the graph)."""
    gm = copy_module(graph.module)
    layers, skipped = weight_layers(gm)
    nodes = {n.name: n for n in gm.graph.nodes}
    chosen = []
    for layer in layers:
        taken = [k for k in (SHARE_KEY, SPARSE_KEY) if k in nodes[layer.node].meta]
        if taken:
            skipped.append((edit.label(nodes[layer.node]), (f"already annotated by {taken[0]}; "
                            "binarize works on dense float weights")))
        else:
            chosen.append(layer)
    weights = {l.weight: edit.stored(gm, nodes[l.node].args[1]).detach().numpy().copy()
               for l in chosen}
    red = {l.weight: redundancy(nodes[l.node]) for l in chosen}
    reference = _output(gm, graph.example_inputs)
    sens: dict[str, float] = {}
    if config.criterion == "redundancy":
        binary = {l.weight for l in chosen if red[l.weight] >= config.threshold}
    else:
        sens = _sensitivity(gm, chosen, weights, graph.example_inputs, reference)
        order = sorted(chosen, key=lambda l: -sens[l.weight])  # least sensitive first
        binary = {l.weight for l in order[:round(config.fraction * len(chosen))]}
    if config.keep_first_last and chosen:
        binary -= {chosen[0].weight, chosen[-1].weight}

    entries, bits_before, bits_after = [], 0, 0
    for layer in chosen:
        w = weights[layer.weight]
        wb = _bits(layer, w, 1 if layer.weight in binary else 8, red[layer.weight])
        edit.replace_stored(gm, layer.weight, torch.from_numpy(wb.dequantized()))
        nodes[layer.node].meta[BITS_KEY] = wb
        bits_before += 32 * w.size
        bits_after += wb.bits * w.size + 32 * wb.scale.size
        entries.append({"node": layer.node, "module": layer.module, "bits": wb.bits,
                        "redundancy": wb.redundancy, "sensitivity_psnr": sens.get(layer.weight)})
    simulated = psnr(_output(gm, graph.example_inputs), reference) if entries else math.inf
    new = edit.retraced_keeping_annotations(graph, gm, f"binarized {len(binary)} layers, {len(entries) - len(binary)} at "
                             "8 bits") if entries else graph
    report = BinarizeReport(
        config=config, layers=tuple(entries), skipped=tuple(skipped), criterion=config.criterion,
        binarized=sum(e["bits"] == 1 for e in entries), weight_bits_before=bits_before,
        weight_bits_after=bits_after, simulated_psnr=simulated, macs_before=graph.macs,
        macs_after=new.macs, params_before=graph.params, params_after=new.params)
    return BinarizeResult(new, report)

"""Cost model of a ReRAM crossbar accelerator (ISAAC/PUMA-style), per layer.

A conv is a matrix-vector product per output pixel: rows = Cin/g * k*k inputs, columns =
Cout/g outputs, each weight bit-sliced over `bits / cell_bits` cells. Every layer holds its
weights resident, so

    crossbars   = g * ceil(Cin/g * k*k / rows) * ceil(Cout/g * bits / cell_bits / cols)
    reads       = pixels * input_bits             (inputs are applied one bit per read; all
                                                    crossbars of the layer read in parallel)
    read time   = max(read_ns, columns used per crossbar / adc_samples_per_s)   (one shared ADC)
    conversions = reads * columns in use over all crossbars
    energy      = conversions * adc_power_w / adc_samples_per_s + reads * crossbars * read_energy

A transposed conv maps each input pixel to Cin/g rows and Cout/g * k*k columns (the scatter
form). Layers run one after another (batch 1, no inter-layer pipelining), norms and activations
run in the digital units at `digital_ops_per_s`. `bits` per layer come from the binarize pass's
annotation; layers without one use `weight_bits`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from gcc_gan.ir.shapes import BatchOneShapes

from . import Target
from .roofline import layer_geometry

_MAC_COST_KINDS = ("conv", "conv_transpose", "matmul")


@dataclass(frozen=True)
class CrossbarLayer:
    node: str
    module: str
    bits: int
    crossbars: int
    utilization: float       # programmed cells / cells of the crossbars used
    cycles: int              # crossbar reads, one after another
    adc_conversions: int
    seconds: float
    energy_j: float


@dataclass(frozen=True)
class CrossbarReport:
    layers: tuple[CrossbarLayer, ...]
    crossbars: int
    seconds: float           # crossbar layers + digital ops
    energy_j: float
    digital_seconds: float
    digital_energy_j: float

    @property
    def ms(self) -> float:
        return self.seconds * 1e3


def _layer(nc, geometry, bits: int, xb: Mapping[str, float]) -> CrossbarLayer:
    rows, cols, cell_bits = int(xb["rows"]), int(xb["cols"]), int(xb["cell_bits"])
    slices = math.ceil(bits / cell_bits)
    if geometry.kind == "conv_transpose":   # scatter: one input pixel -> a k*k patch
        k_rows, k_cols = geometry.cin_g, geometry.cout // geometry.groups * geometry.kernel
        pixels = math.prod(nc.in_shapes[0]) // (geometry.cin_g * geometry.groups)
    else:
        k_rows, k_cols = geometry.cin_g * geometry.kernel, geometry.cout // geometry.groups
        pixels = math.prod(nc.out_shape) // geometry.cout
    row_tiles = math.ceil(k_rows / rows)
    col_tiles = math.ceil(k_cols * slices / cols)
    crossbars = geometry.groups * row_tiles * col_tiles
    used_cols = geometry.groups * row_tiles * k_cols * slices
    reads = pixels * int(xb["input_bits"])
    per_read = max(xb["read_ns"] * 1e-9, min(k_cols * slices, cols) / xb["adc_samples_per_s"])
    conversions = reads * used_cols
    energy = (conversions * xb["adc_power_w"] / xb["adc_samples_per_s"]
              + reads * crossbars * xb["read_energy_pj"] * 1e-12)
    cells = geometry.groups * k_rows * k_cols * slices
    return CrossbarLayer(node=nc.name, module=nc.module, bits=bits, crossbars=crossbars,
                         utilization=cells / (crossbars * rows * cols), cycles=reads,
                         adc_conversions=conversions, seconds=reads * per_read, energy_j=energy)


def estimate(graph, target: Target, bits: Mapping[str, int] | None = None) -> CrossbarReport:
    """Crossbars, cycles, time and energy per layer of `graph` on the crossbar `target`."""
    xb = target.crossbar
    if not xb:
        raise ValueError(f"target {target.name!r} has no [crossbar] table")
    bits = dict(bits or {})
    fx_nodes = {n.name: n for n in graph.module.graph.nodes}
    shapes = BatchOneShapes(graph.module)
    layers, digital_ops = [], 0
    for nc in graph.cost.nodes:
        geometry = (layer_geometry(fx_nodes[nc.name], nc.kind, shapes)
                    if nc.kind in _MAC_COST_KINDS else None)
        if geometry is None:
            digital_ops += nc.elementwise
            continue
        layers.append(_layer(nc, geometry, int(bits.get(nc.name, xb["weight_bits"])), xb))
    digital_s = digital_ops / xb["digital_ops_per_s"]
    digital_j = digital_ops * xb["digital_energy_pj"] * 1e-12
    return CrossbarReport(layers=tuple(layers), crossbars=sum(l.crossbars for l in layers),
                          seconds=sum(l.seconds for l in layers) + digital_s,
                          energy_j=sum(l.energy_j for l in layers) + digital_j,
                          digital_seconds=digital_s, digital_energy_j=digital_j)

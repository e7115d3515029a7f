"""Per-layer latency model for CPUs and GPUs: a roofline made linear, fitted per kernel kind.

A kernel's time is overhead + work/peak + bytes/bandwidth + weights * c (`KernelFit`); the
sum, rather than the max, of compute and memory time keeps the model linear in its
coefficients, so `tune` can fit all kinds at once to measured programs by non-negative least
squares on relative error (`fit_programs`). Efficiency depends on alignment and shape through
the features:

    work    = MACs * pad(Cin/g)/(Cin/g) * pad(Cout)/Cout   pad(c) = c rounded up to the target's
              (convs, matmuls)                              channel alignment (fp32 Cin: for
                                                            Cin >= it)
            = elements                                     (norms, pointwise ops)
    nbytes  = 4 * (input + output elements)                activations cross memory in fp32
    weights = weight elements                              packing + few-pixels inefficiency

A program's latency is the sum over its kernels plus one per-call overhead (`model/overhead`).
Views cost nothing; ops with no kernel kind (unknown ops) are listed, never guessed. In an int8
program, pads, shuffles and norm units between int8 convs are kernels of dtype int8, and every
float <-> 8-bit conversion is a `quantize` kernel of its own (`targets/int8_runtime.py`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy.optimize import nnls
from torch import fx

from gcc_gan.ir import edit, ops
from gcc_gan.ir.meta import arg, source_module
from gcc_gan.ir.shapes import BatchOneShapes

from . import KernelFit, Target
from .int8_runtime import int8_domain

KINDS = ("conv", "depthwise", "conv_transpose", "matmul", "norm", "pointwise", "transcendental",
         "resample", "pad", "movement", "shuffle", "quantize")
MODEL_OVERHEAD = "model/overhead"   # a kernel key whose overhead_s is the per-call cost
_POINTWISE = {"activation", "arithmetic", "resample", "reduction"}
MAC_KINDS = {"conv", "depthwise", "conv_transpose", "matmul"}
_MAC_COST_KINDS = {"conv", "conv_transpose", "matmul"}   # gcc_gan.cost node kinds
_ELEMENT_KINDS = {"norm", "pointwise", "transcendental", "resample", "quantize"}
# activations a runtime evaluates through exp/tanh polynomials: ~2x a ReLU's time per element
# (measured: tanh 0.15-0.22 ns, ReLU 0.08-0.14 ns an element at 0.3-4M elements)
_TRANSCENDENTAL = ops.op_set("tanh", "tanh_", "sigmoid", "sigmoid_", "exp", "elu", "elu_",
                             "gelu", "gelu_", "silu", "silu_", "softplus", "mish", "erf", "selu",
                             "celu", "logit", "log", "pow", "pow_")


# KernelFit's coefficients, in the order of Kernel.features()
FEATURES = ("overhead_s", "s_per_mac", "s_per_byte", "s_per_weight", "s_per_row")


@dataclass(frozen=True)
class Kernel:
    node: str
    module: str
    kind: str          # one of KINDS
    dtype: str         # "fp32", "int8", ...
    work: float
    nbytes: float
    weights: float
    rows: float = 0.0  # contiguous runs walked one by one (pads): KernelFit

    @property
    def key(self) -> str:
        """The fit this kernel's time comes from: "kind/dtype"."""
        return f"{self.kind}/{self.dtype}"

    def features(self) -> np.ndarray:
        """The kernel's values of `FEATURES`, in order."""
        return np.array([1.0, self.work, self.nbytes, self.weights, self.rows])


@dataclass(frozen=True)
class LayerEstimate:
    node: str
    module: str
    kind: str
    dtype: str
    seconds: float


@dataclass(frozen=True)
class Prediction:
    seconds: float
    layers: tuple[LayerEstimate, ...]
    fitted: bool                 # every kernel kind used had a measured fit
    source: str                  # "datasheet" or the tuned profile's path

    @property
    def ms(self) -> float:
        return self.seconds * 1e3


def _padded(c: int, align: int) -> int:
    return -(-c // align) * align if c >= align else c


def _whole_blocks(c: int, align: int) -> int:
    """Kernels compute whole blocks of output channels, narrow layers too: a 7x7 conv from 16 to
    3 channels at 256x256 measured 8.0 ms against 3.9 ms for the same MACs as 21 outputs
    (passes/split_taps.py). Narrow fp32 *inputs* (RGB) take dedicated paths, so `_padded`
    spares them; int8 ones do not (`_alignment_factor`)."""
    return -(-c // align) * align


@dataclass(frozen=True)
class Geometry:
    kind: str            # conv, depthwise, conv_transpose, matmul
    cin_g: int           # input channels per group (the reduction's channel part)
    cout: int
    weights: int
    groups: int = 1
    kernel: int = 1      # kernel positions (kh * kw)


def layer_geometry(node: fx.Node, cost_kind: str, shapes: BatchOneShapes) -> Geometry | None:
    """Channels and weight count of a conv/matmul node at batch 1 (a modulated conv's
    computed weight has the batch in its shape: `shapes` evaluates it without guarding)."""
    if len(node.args) < 2 or not isinstance(node.args[1], fx.Node):
        return None
    w, x = shapes.shape(node.args[1]), shapes.shape(node.args[0])
    weights = math.prod(w)
    if cost_kind == "matmul":
        return Geometry("matmul", w[-1], w[0] if len(w) > 1 else 1, weights)
    cin = x[1]
    if edit.is_transposed(node):   # weight (Cin, Cout/g, k...)
        groups = max(cin // max(w[0] // max(_groups_arg(node), 1), 1), 1)
        return Geometry("conv_transpose", w[0] // groups, w[1] * groups, weights, groups,
                        math.prod(w[2:]))
    groups = max(cin // w[1], 1)
    kind = "depthwise" if groups > 1 and groups == cin else "conv"
    return Geometry(kind, w[1], w[0], weights, groups, math.prod(w[2:]))


def _groups_arg(node: fx.Node) -> int:
    index = 8 if ops.packet(node.target) in ops.Conv else 6   # aten.convolution vs conv_transpose
    groups = arg(node, index, "groups", 1)
    return groups if isinstance(groups, int) else 1


def _alignment_factor(g: Geometry, align: int, dtype: str) -> float:
    """Work per MAC from channel blocks. int8 convs pad narrow inputs too: their im2col gathers
    whole pixels, so a 4x4 stride-2 int8 conv to 32 channels at 256 px took 230-390 us for 3, 4,
    8 and 16 input channels alike (MACs: 1 to 5), where fp32 has a direct path for RGB inputs."""
    if g.kind == "matmul":
        return 1.0
    out = _whole_blocks(g.cout, align) / g.cout
    if g.kind == "depthwise":
        return out
    cin = _whole_blocks(g.cin_g, align) if dtype == "int8" else _padded(g.cin_g, align)
    return out * cin / g.cin_g


# What runtimes fold into the conv before them (ONNX Runtime's Conv+BatchNorm and Conv+activation
# fusions; the ONNX exporter already folds eval batch norms): measured, the fp32 U-Net's 6 leaky
# ReLUs and SNGAN's batch norms and ReLUs vanish from ONNX Runtime's optimized graph.
_FOLDED_NORMS = ops.op_set("batch_norm", "native_batch_norm", "_native_batch_norm_legit_no_training")
_FUSED_ACTIVATIONS = ops.op_set("relu", "relu_", "leaky_relu", "leaky_relu_", "sigmoid",
                                "tanh", "hardtanh", "hardtanh_", "clamp")


def fused_epilogues(gm: fx.GraphModule) -> set[str]:
    """Nodes a runtime runs inside the conv before them, so they cost no kernel of their own:
    an eval batch norm right after a conv or transposed conv, and an activation right after a
    conv (or its folded norm), each the sole user of what it follows."""
    anchor: dict[str, str] = {}
    for node in gm.graph.nodes:
        if node.op != "call_function":
            continue
        p = ops.packet(node.target)
        if p in ops.Conv or p in ops.ConvTranspose:
            anchor[node.name] = "conv_transpose" if edit.is_transposed(node) else "conv"
            continue
        src = node.args[0] if node.args and isinstance(node.args[0], fx.Node) else None
        if src is None or src.name not in anchor or len(src.users) != 1:
            continue
        if p in _FOLDED_NORMS or (p in _FUSED_ACTIVATIONS and anchor[src.name] == "conv"):
            anchor[node.name] = f"{anchor[src.name]}+"
    return {name for name, a in anchor.items() if a.endswith("+")}


def _copied_view(node: fx.Node, nc) -> bool:
    """A view the lowered program copies: a crop, a gather or a reordering (`ops.ReorderingView`)
    that changes the shape or the order of its input. The sub-pixel rewrite's crops are Slices
    that ONNX Runtime runs as copies: 0.35 ms of a 15 ms int8 ResNet at 128x128, costed as free
    before."""
    if nc.act_bytes != 0 or ops.packet(node.target) not in ops.ReorderingView:
        return False
    if not nc.in_shapes:
        return False
    shape = nc.in_shapes[0]
    order = _permutation(node, len(shape))
    if order is not None:   # free when only size-1 dims move
        moved = [d for d in order if shape[d] > 1]
        return moved != sorted(moved)
    return tuple(nc.out_shape) != tuple(shape)


def _permutation(node: fx.Node, rank: int) -> list[int] | None:
    """The dim order a permute/transpose/t produces (None for other ops)."""
    p = ops.packet(node.target)
    if p in ops.op_set("permute"):
        return [d % rank for d in node.args[1]]
    if p in ops.op_set("transpose", "t"):
        a, b = (node.args[1] % rank, node.args[2] % rank) if len(node.args) > 2 else (0, 1)
        order = list(range(rank))
        order[a], order[b] = order[b], order[a]
        return order
    return None


def _elementwise_kind(node: fx.Node, cost_kind: str, int8: set[str]) -> str:
    """The kernel kind of a node without MACs. Kinds whose runtime kernels walk memory
    differently get fits of their own: one fit for ReLUs and resizes together missed both
    (52% median error in a tune), as one for concats and reflection pads did (27%)."""
    p = ops.packet(node.target)
    if cost_kind == "resample":
        return "resample"
    if cost_kind in _POINTWISE:
        return "transcendental" if p in _TRANSCENDENTAL else "pointwise"
    if cost_kind == "norm":
        return "norm"
    if p in ops.Pad:
        return "pad"
    if p in ops.Shuffle:
        # after an int8 conv the lowering shuffles whole channel runs in NHWC
        # (lower/nhwc.py: nhwc_pixel_shuffles): a plain copy, not a per-byte shuffle
        source = node.args[0]
        return "movement" if getattr(source, "name", None) in int8 else "shuffle"
    return "movement"


def _free_epilogue(node: fx.Node, fused: set[str], int8: set[str], domain) -> bool:
    """Whether `node` runs inside a kernel before it: a float conv's fused epilogue, a ReLU the
    Q of an int8 conv, a QLINEAR op or a norm unit absorbs. Other activations after an int8
    conv are kernels of their own (QLinearLeakyRelu, or DQ then a float Tanh)."""
    if domain is not None and node.name in domain.folded:
        return True
    src = node.args[0] if node.args else None
    if not (isinstance(src, fx.Node) and src.name in int8):
        return node.name in fused
    return (ops.packet(node.target) in ops.Relu and node.name in domain.conversions
            and node.name not in domain.eight_bit)


def _rows(shape, dtype: str) -> float:
    """The rows a pad copies one at a time: N*C*H in fp32 (NCHW), N*H in 8 bits (NHWC, whole
    pixels). At 98k elements, fp32 reflection pads took 23, 37, 59 and 112 us for 780, 1584,
    3264 and 6912 rows (6 channels at 128 px to 384 at 16 px)."""
    if not shape or len(shape) < 3:
        return 0.0
    rows = math.prod(shape[:-1])
    return float(rows // shape[1] if dtype == "int8" and len(shape) == 4 else rows)


def kernels(graph, target: Target, *, int8: Iterable[str] = (),
            structured_sparse: Iterable[str] = ()) -> list[Kernel]:
    """The kernels a program runs: one per costed node that moves or computes data, and with
    `int8` convs one per float <-> 8-bit conversion.

    `structured_sparse` names convs whose N:M masks the target's kernels skip (2:4 on sparse
    tensor cores): their work is scaled by the kept fraction."""
    int8, sparse = set(int8), set(structured_sparse)
    fx_nodes = {n.name: n for n in graph.module.graph.nodes}
    shapes = BatchOneShapes(graph.module)
    align = max(target.channel_alignment, 1)
    fused = fused_epilogues(graph.module)
    domain = int8_domain(graph.module, int8) if int8 else None
    eight_bit = domain.eight_bit | domain.norm_units if domain else frozenset()
    out = []
    for nc in graph.cost.nodes:
        copied = _copied_view(fx_nodes[nc.name], nc)
        if ((nc.kind == "movement" and nc.act_bytes == 0 and not copied)
                or _free_epilogue(fx_nodes[nc.name], fused, int8, domain)):
            continue   # free views (in-place pointwise ops still run one), fused epilogues
        out_elems = math.prod(nc.out_shape) if nc.out_shape else 0
        # a copied view reads only what it keeps
        in_elems = out_elems if copied else sum(math.prod(s) for s in nc.in_shapes if s)
        geometry = layer_geometry(fx_nodes[nc.name], nc.kind, shapes) if nc.kind in _MAC_COST_KINDS else None
        if geometry is not None:
            kind, weights = geometry.kind, geometry.weights
            dtype = "int8" if nc.name in int8 else "fp32"
            work = (nc.macs * _alignment_factor(geometry, align, dtype)
                    * (0.5 if nc.name in sparse else 1))
        elif nc.kind in _POINTWISE or nc.kind in ("norm", "movement"):
            kind = _elementwise_kind(fx_nodes[nc.name], nc.kind, int8)
            weights, work = 0, nc.elementwise or out_elems
        else:
            continue
        if kind in MAC_KINDS:
            dtype = "int8" if nc.name in int8 else "fp32"
        else:   # 8-bit movers, int8 adds and norm units (targets/int8_runtime.py)
            dtype = "int8" if nc.name in eight_bit else "fp32"
        out.append(Kernel(node=nc.name, module=nc.module, kind=kind, dtype=dtype, work=work,
                          nbytes=4.0 * (in_elems + out_elems), weights=weights,
                          rows=_rows(nc.out_shape, dtype) if kind == "pad" else 0.0))
    for name in domain.conversions if domain else ():
        elems = math.prod(shapes.shape(fx_nodes[name]))
        out.append(Kernel(node=f"{name} (Q/DQ)", module=source_module(fx_nodes[name]),
                          kind="quantize", dtype="int8", work=elems, nbytes=5.0 * elems,
                          weights=0))
    return out



def datasheet_fit(target: Target, kind: str, dtype: str) -> KernelFit:
    """The fit a profile's figures imply: overhead, 1/peak, 1/bandwidth, weights read once."""
    peak = target.peak_macs_per_s.get(dtype) or target.peak_macs_per_s.get("fp32")
    bandwidth = target.bandwidth_bytes_per_s
    weight_bytes = 1 if dtype == "int8" else 4
    per_elem = 1.0 / peak if kind in _ELEMENT_KINDS else 0.0
    return KernelFit(overhead_s=target.op_overhead_s,
                     s_per_mac=1.0 / peak if kind in MAC_KINDS else per_elem,
                     s_per_byte=1.0 / bandwidth,
                     s_per_weight=weight_bytes / bandwidth if kind in MAC_KINDS else 0.0)


def fit_for(target: Target, kind: str, dtype: str) -> tuple[KernelFit, bool]:
    """The tuned fit of a kernel kind when there is one, else the datasheet's (and False)."""
    tuned = target.kernels.get(f"{kind}/{dtype}")
    return (tuned, True) if tuned is not None else (datasheet_fit(target, kind, dtype), False)


def predict(graph, target: Target, *, int8: Iterable[str] = (),
            structured_sparse: Iterable[str] = ()) -> Prediction:
    """Predicted latency of one call of `graph` on `target`, per layer and in total."""
    layers, fitted = [], True
    for k in kernels(graph, target, int8=int8, structured_sparse=structured_sparse):
        fit, measured = fit_for(target, k.kind, k.dtype)
        fitted &= measured
        layers.append(LayerEstimate(k.node, k.module, k.kind, k.dtype,
                                    fit.seconds(k.work, k.nbytes, k.weights, k.rows)))
    call = target.kernels.get(MODEL_OVERHEAD)
    total = sum(layer.seconds for layer in layers) + (call.overhead_s if call else 0.0)
    return Prediction(seconds=total, layers=tuple(layers), fitted=fitted and call is not None,
                      source=target.tuned or "datasheet")


def macs_proxy_fit(samples: Iterable[tuple[float, float]]) -> float:
    """Seconds per MAC of the best MACs-only proxy (t = c * MACs) on (macs, seconds) samples,
    fitted on relative error like the kernel fits: the baseline the cost model is judged by."""
    macs, seconds = (np.array(v, dtype=float) for v in zip(*samples))
    r = macs / seconds   # minimises sum((c * r - 1)^2)
    return float(np.sum(r) / np.sum(r ** 2))


def fit_programs(programs: Sequence[tuple[Sequence[Kernel], float]],
                 call_overhead: float = 0.0) -> dict[str, KernelFit]:
    """One fit per "kind/dtype" key from measured programs: (the kernels a program runs, its
    measured seconds per call, `call_overhead` included).

    All keys are fitted at once, by non-negative least squares of the programs' kernel times on
    their summed features, so a program may run several kernels (an int8 conv between the Q and
    DQ that a lone one needs). The error minimised is relative to each program's measured time:
    relative to its kernel time alone (measured minus the call overhead), the smallest probes,
    whose kernels take ~0 of a few microseconds, outweighed the rest (a norm fitted to them
    predicted 182 us for one measured at 671). Feature columns are scaled to unit norm first
    (MACs and bytes differ by orders of magnitude); all-zero columns get a zero coefficient.
    """
    keys = sorted({k.key for kernels_, _ in programs for k in kernels_})
    width = len(FEATURES)
    column = {key: width * i for i, key in enumerate(keys)}
    features = np.zeros((len(programs), width * len(keys)))
    for row, (kernels_, _) in enumerate(programs):
        for k in kernels_:
            features[row, column[k.key]:column[k.key] + width] += k.features()
    measured = np.array([seconds for _, seconds in programs], dtype=float)
    a = features / measured[:, None]
    scale = np.linalg.norm(a, axis=0)
    scale[scale == 0] = 1.0
    coef, _ = nnls(a / scale, (measured - call_overhead) / measured)
    coef = coef / scale
    rel = np.abs(features @ coef + call_overhead - measured) / measured
    fits = {}
    for key in keys:
        rows = [r for r, (kernels_, _) in enumerate(programs)
                if any(k.key == key for k in kernels_)]
        c = dict(zip(FEATURES, map(float, coef[column[key]:column[key] + width])))
        fits[key] = KernelFit(**c, samples=len(rows), median_rel_error=float(np.median(rel[rows])))
    return fits

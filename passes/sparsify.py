"""`sparsify`: unstructured magnitude sparsity (global, uniform or ERK densities) and N:M.

Layer densities (STU-GAN, section 4.1; Evci et al. 2020, RigL). For a kernel of shape
(n_out, n_in, k_h, k_w) the Erdos-Renyi-Kernel density is

    d_l = eps * (n_out + n_in + k_h + k_w) / (n_out * n_in * k_h * k_w)

with one eps chosen so that sum_l d_l * |W_l| = density * sum_l |W_l| (the global parameter
budget). A layer whose d_l would exceed 1 stays dense, and eps is solved again over the rest
until no layer exceeds 1. Fully connected kernels (n_out, n_in) give Erdos-Renyi densities by
the same formula. `uniform` gives every layer d_l = density; `global` keeps the density * N
largest |w| over all layers together (one magnitude threshold).

Within a layer the round(d_l * |W_l|) largest |w| are kept. N:M (2:4 for sparse tensor cores)
keeps the N largest |w| of every M consecutive weights along the input-channel axis (axis 1 of
a conv or linear weight, axis 0 of a transposed conv's); a layer whose input-channel count is
not a multiple of M stays dense.

Invariant: the new graph's weights equal mask * w exactly, and each sparsified layer's node
carries a `LayerMask` under node.meta[SPARSE_KEY]. Zeros save nothing on runtimes without
sparse kernels (ONNX Runtime on CPU, eager torch): the masks pay off in storage
(`gcc_gan.encode`) and on targets that list the pattern; the report says so.

`weight_layers`, shared by the weight passes, finds the layers whose weight is a stored tensor;
they end with `edit.retraced_keeping_annotations`, so each keeps the others' annotations.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import fx

from gcc_gan.ir import GanGraph, edit, ops
from gcc_gan.ir.meta import source_module
from gcc_gan.ir.trace import copy_module


def erk_densities(shapes: dict[str, tuple[int, ...]], density: float) -> dict[str, float]:
    """Per-layer ERK densities for kernels `shapes` meeting the global `density` (0 < d <= 1).

    Returned densities are in (0, 1]; sum(d * numel) == density * sum(numel) up to rounding.
    """
    if not 0.0 < density <= 1.0:
        raise ValueError(f"density must be in (0, 1], got {density!r}; density is the fraction "
                         "of weights kept (sparsity 0.8 is density 0.2)")
    bad = {name: s for name, s in shapes.items() if len(s) == 0 or math.prod(s) <= 0}
    if bad:
        raise ValueError(f"erk_densities: empty or scalar kernel shapes {bad}; pass only the "
                         "weight tensors of convs and linears")
    numel = {name: math.prod(s) for name, s in shapes.items()}
    raw = {name: sum(s) / numel[name] for name, s in shapes.items()}
    if density >= 1.0:
        return {name: 1.0 for name in shapes}
    dense: set[str] = set()
    while True:
        budget = density * sum(numel.values()) - sum(numel[n] for n in dense)
        eps = budget / sum(raw[n] * numel[n] for n in shapes if n not in dense)
        over = {n for n in shapes if n not in dense and eps * raw[n] > 1.0}
        if not over:
            break
        dense |= over
    return {n: 1.0 if n in dense else eps * raw[n] for n in shapes}


SPARSE_KEY = "gcc_gan.sparsity"  # node.meta key of a sparsified layer's LayerMask
_WEIGHT_KEYS = ("gcc_gan.weight_share", "gcc_gan.weight_bits")  # kmeans_share, binarize
DISTRIBUTIONS = ("global", "uniform", "erk")


@dataclass(frozen=True)
class LayerMask:
    node: str
    module: str
    weight: str                 # get_attr target of the weight
    pattern: str                # "unstructured" or "N:M"
    density: float              # kept fraction
    mask: np.ndarray = field(repr=False, compare=False)  # bool, the weight's shape; True = kept


def layer_masks(graph_or_module) -> dict[str, LayerMask]:
    """weight target -> the LayerMask annotated on the node reading it (empty: not sparsified)."""
    gm = getattr(graph_or_module, "module", graph_or_module)
    return {n.meta[SPARSE_KEY].weight: n.meta[SPARSE_KEY] for n in gm.graph.nodes
            if SPARSE_KEY in n.meta}


@dataclass(frozen=True)
class WeightLayer:
    node: str
    module: str
    weight: str                 # get_attr target
    kind: str                   # "conv", "conv_transpose", "linear"
    out_axis: int               # the weight's output-channel axis
    in_axis: int                # the weight's input-channel axis


def weight_layers(gm: fx.GraphModule) -> tuple[list[WeightLayer], list[tuple[str, str]]]:
    """Convs, transposed convs and linears whose weight is a stored tensor, and the others
    (with the reason they are left alone)."""
    layers, skipped, seen = [], [], set()
    for node in gm.graph.nodes:
        if node.op != "call_function":
            continue
        p = ops.packet(node.target)
        if p in ops.Conv | ops.ConvTranspose:
            kind = "conv_transpose" if edit.is_transposed(node) else "conv"
        elif p is torch.ops.aten.linear:
            kind = "linear"
        else:
            continue
        w = node.args[1]
        if edit.stored(gm, w) is None:
            skipped.append((edit.label(node), ("its weight is computed (e.g. modulated), not a "
                                               "stored tensor")))
        elif w.target in seen:
            skipped.append((edit.label(node), (f"shares its weight {w.target} with an earlier "
                                               "layer (handled there)")))
        else:
            seen.add(w.target)
            out_axis, in_axis = (1, 0) if kind == "conv_transpose" else (0, 1)
            layers.append(WeightLayer(node.name, source_module(node), w.target, kind,
                                      out_axis, in_axis))
    return layers, skipped


@dataclass(frozen=True)
class SparsifyConfig:
    sparsity: float = 0.7           # fraction of weights zeroed (unstructured)
    distribution: str = "erk"       # "erk" | "uniform" | "global"
    pattern: str = "auto"           # "auto" | "unstructured" | "N:M" ("2:4"); auto: 2:4 on gpu

    def __post_init__(self):
        if not 0.0 <= self.sparsity < 1.0:
            raise ValueError(f"sparsity must be in [0, 1) (the fraction of weights zeroed), got "
                             f"{self.sparsity!r}")
        if self.distribution not in DISTRIBUTIONS:
            raise ValueError(f"distribution must be one of {DISTRIBUTIONS}, got "
                             f"{self.distribution!r}")
        if self.pattern not in ("auto", "unstructured"):
            parse_nm(self.pattern)


def parse_nm(pattern: str) -> tuple[int, int]:
    """'2:4' -> (2, 4); raises for anything that is not N:M with 0 < N < M."""
    try:
        n, m = (int(p) for p in pattern.split(":"))
    except ValueError:
        n = m = 0
    if not 0 < n < m:
        raise ValueError(f"pattern must be 'auto', 'unstructured' or 'N:M' with 0 < N < M "
                         f"(e.g. '2:4'), got {pattern!r}")
    return n, m


def _target_pattern(target) -> str:
    """'2:4' for targets with 2:4 kernels (a profile listing it, or a gpu/cuda name)."""
    if target is None:
        return "unstructured"
    if isinstance(target, str):
        from gcc_gan import targets
        try:
            target = targets.get(target)
        except ValueError:
            return "2:4" if any(k in target.lower() for k in ("gpu", "cuda")) else "unstructured"
    if "2:4" in getattr(target, "sparsity", ()):
        return "2:4"
    name = str(getattr(target, "name", "")).lower()
    return "2:4" if "gpu" in name or "cuda" in name else "unstructured"


@dataclass(frozen=True)
class SparsifyReport:
    config: SparsifyConfig
    layers: tuple[dict, ...]        # per layer: node, module, shape, density, nonzeros
    dense_layers: tuple[tuple[str, str], ...]  # (node (module), why it keeps every weight)
    pattern: str
    distribution: str
    density: float                  # kept fraction over the sparsified layers' weights
    nonzero_macs: int               # MACs if zero weights were skipped (needs sparse kernels)
    speedup_note: str
    macs_before: int
    macs_after: int                 # dense kernels compute the zeros: unchanged
    params_before: int
    params_after: int               # nonzero parameters
    name: str = "sparsify"


@dataclass(frozen=True)
class SparsifyResult:
    graph: GanGraph
    report: SparsifyReport


def topk_mask(w: np.ndarray, keep: int) -> np.ndarray:
    """bool mask of the `keep` largest |w| (ties broken by position)."""
    flat = np.abs(w).reshape(-1)
    mask = np.zeros(flat.size, bool)
    if keep >= flat.size:
        mask[:] = True
    elif keep > 0:
        mask[np.argpartition(-flat, keep - 1, kind="introselect")[:keep]] = True
    return mask.reshape(w.shape)


def nm_mask(w: np.ndarray, n: int, m: int, in_axis: int) -> np.ndarray:
    """Keep the n largest |w| of every m consecutive weights along `in_axis` (ties: first)."""
    moved = np.moveaxis(np.abs(w), in_axis, -1)
    groups = moved.reshape(-1, m)
    order = np.argsort(-groups, axis=1, kind="stable")
    mask = np.zeros(groups.shape, bool)
    np.put_along_axis(mask, order[:, :n], True, axis=1)
    return np.moveaxis(mask.reshape(moved.shape), -1, in_axis)


def _densities(weights: dict[str, np.ndarray], config: SparsifyConfig) -> dict[str, float]:
    density = 1.0 - config.sparsity
    if config.distribution == "erk":
        return erk_densities({k: w.shape for k, w in weights.items()}, density)
    return {k: density for k in weights}


def sparsify(graph: GanGraph, target=None, config: SparsifyConfig = SparsifyConfig()
             ) -> SparsifyResult:
    """Zero the smallest-magnitude weights of every stored conv/linear weight of `graph`."""
    pattern = _target_pattern(target) if config.pattern == "auto" else config.pattern
    gm = copy_module(graph.module)
    layers, dense = weight_layers(gm)
    nodes = {n.name: n for n in gm.graph.nodes}
    chosen = []
    for layer in layers:
        taken = [k for k in _WEIGHT_KEYS if k in nodes[layer.node].meta]
        if taken:
            dense.append((f"{layer.node} ({layer.module})", (f"already annotated by {taken[0]}; "
                          "run sparsify before share_weights_kmeans / binarize")))
        else:
            chosen.append(layer)
    weights = {l.weight: edit.stored(gm, nodes[l.node].args[1]).detach().numpy() for l in chosen}
    masks: dict[str, np.ndarray] = {}
    if pattern != "unstructured":
        n, m = parse_nm(pattern)
        for l in chosen:
            if weights[l.weight].shape[l.in_axis] % m:
                dense.append((f"{l.node} ({l.module})", (f"{weights[l.weight].shape[l.in_axis]} "
                              f"input channels: not a multiple of {m} for {pattern}")))
            else:
                masks[l.weight] = nm_mask(weights[l.weight], n, m, l.in_axis)
    elif config.distribution == "global" and weights:
        flat = np.concatenate([np.abs(w).reshape(-1) for w in weights.values()])
        keep = topk_mask(flat, round((1.0 - config.sparsity) * flat.size))
        start = 0
        for k, w in weights.items():
            masks[k] = keep[start:start + w.size].reshape(w.shape)
            start += w.size
    elif weights:
        densities = _densities(weights, config)
        masks = {k: topk_mask(w, round(densities[k] * w.size)) for k, w in weights.items()}

    entries, zeroed, nonzero_macs = [], 0, graph.macs
    for l in chosen:
        if l.weight not in masks:
            continue
        mask, w = masks[l.weight], weights[l.weight]
        edit.replace_stored(gm, l.weight, torch.from_numpy(np.where(mask, w, np.zeros_like(w))))
        kept = int(mask.sum())
        nodes[l.node].meta[SPARSE_KEY] = LayerMask(l.node, l.module, l.weight, pattern,
                                                   kept / mask.size, mask)
        zeroed += mask.size - kept
        nonzero_macs -= round(graph.cost[l.node].macs * (1 - kept / mask.size))
        entries.append({"node": l.node, "module": l.module, "shape": list(mask.shape),
                        "density": kept / mask.size, "nonzeros": kept})
    total = sum(masks[k].size for k in masks)
    density = (total - zeroed) / total if total else 1.0
    note = ("no speedup is claimed: ONNX Runtime on CPU and eager torch run dense kernels and "
            "compute the zeros; the masks shrink storage once encoded (gcc_gan.encode) and pay "
            f"in time only on a runtime with {pattern} sparse kernels")
    new = edit.retraced_keeping_annotations(graph, gm, f"sparsified {len(entries)} layers ({pattern}, "
                             f"density {density:.3f})") if entries else graph
    report = SparsifyReport(
        config=config, layers=tuple(entries), dense_layers=tuple(dense), pattern=pattern,
        distribution=config.distribution if pattern == "unstructured" else pattern,
        density=density, nonzero_macs=nonzero_macs, speedup_note=note,
        macs_before=graph.macs, macs_after=new.macs, params_before=graph.params,
        params_after=graph.params - zeroed)
    return SparsifyResult(new, report)

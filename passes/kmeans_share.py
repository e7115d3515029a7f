"""`share_weights_kmeans`: replace each layer's weights by entries of a 2^b-entry codebook.

1-D k-means (Lloyd) on a layer's weights, or on each output channel's. In 1-D, clusters of the
optimal assignment for sorted centroids c_0 <= ... <= c_{k-1} are contiguous runs of the sorted
values, split at the midpoints m_j = (c_j + c_{j+1}) / 2 (a value equal to m_j goes to the lower
cluster, as argmin over |x - c| does). So one Lloyd step is

    b_j   = #{x <= m_{j-1}}  (binary search in the sorted values; b_0 = 0, b_k = n)
    c_j'  = (S[b_{j+1}] - S[b_j]) / (b_{j+1} - b_j)      S = prefix sums of the sorted values

O(k log n) per step after one O(n log n) sort; an empty cluster keeps its centroid. It stops
when the boundaries repeat (the assignment is a fixed point) or after `max_iter` steps. Init:
`linear` (evenly spaced over [min, max]; Han et al. 2016 found it best for weights, since it
keeps large weights), `quantile` (equal-count), or `kmeans++` (D^2 sampling on an evenly spaced
sample of the sorted values, at most `KMEANSPP_SAMPLE` per row).

Pruned weights (a `LayerMask` from `sparsify`) stay exact zeros: entry 0 of the codebook is
reserved as 0.0 and the kept weights share the other 2^b - 1 entries.

Invariant: the new graph's weight equals codebook[indices] exactly (float32), its node carries
a `WeightShare` under node.meta[SHARE_KEY], and lowering (`gcc_gan.lower.lut`) stores it in
ONNX as the uint8 indices and the float32 codebook with a Gather, so the file shrinks.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch

from gcc_gan.ir import GanGraph, edit
from gcc_gan.ir.trace import copy_module
from gcc_gan.passes.sparsify import SPARSE_KEY, weight_layers

SHARE_KEY = "gcc_gan.weight_share"  # node.meta key of a layer's WeightShare
INITS = ("linear", "quantile", "kmeans++")
KMEANSPP_SAMPLE = 8192


@dataclass(frozen=True)
class WeightShare:
    node: str
    module: str
    weight: str                 # get_attr target of the weight (the ONNX initializer name)
    bits: int
    axis: int | None            # output-channel axis of per-channel codebooks; None: per layer
    zero_reserved: bool         # codebook entry 0 is 0.0 for pruned weights
    codebook: np.ndarray = field(repr=False, compare=False)  # float32 (rows, 2^bits)
    indices: np.ndarray = field(repr=False, compare=False)   # uint8, the weight's shape

    def offsets(self) -> np.ndarray:
        """Row offset of each weight into the flattened codebook (broadcastable to indices)."""
        if self.axis is None:
            return np.zeros((1,) * self.indices.ndim, np.int64)
        shape = [1] * self.indices.ndim
        shape[self.axis] = -1
        return (np.arange(self.codebook.shape[0]) * self.codebook.shape[1]).reshape(shape)

    def shared_weight(self) -> np.ndarray:
        """codebook[indices], float32, the weight's shape."""
        return self.codebook.reshape(-1)[self.indices.astype(np.int64) + self.offsets()]


def weight_shares(graph_or_module) -> dict[str, WeightShare]:
    """weight target -> its WeightShare (empty when the graph was not k-means shared)."""
    gm = getattr(graph_or_module, "module", graph_or_module)
    return {n.meta[SHARE_KEY].weight: n.meta[SHARE_KEY] for n in gm.graph.nodes
            if SHARE_KEY in n.meta}


@dataclass(frozen=True)
class KmeansConfig:
    bits: int = 8                   # codebook of 2^bits entries, 2..8
    per_channel: bool = False       # one codebook per output channel instead of per layer
    init: str = "linear"            # "linear" | "quantile" | "kmeans++"
    max_iter: int = 300
    seed: int = 0                   # kmeans++ sampling

    def __post_init__(self):
        if not (isinstance(self.bits, int) and 2 <= self.bits <= 8):
            raise ValueError(f"bits must be an integer in 2..8 (indices are stored as uint8), "
                             f"got {self.bits!r}")
        if self.init not in INITS:
            raise ValueError(f"init must be one of {INITS}, got {self.init!r}")
        if self.max_iter < 1:
            raise ValueError(f"max_iter must be >= 1, got {self.max_iter}")


@dataclass(frozen=True)
class KmeansReport:
    config: KmeansConfig
    layers: tuple[dict, ...]        # per layer: node, module, shape, bits, iterations, rel_mse
    skipped: tuple[tuple[str, str], ...]
    bits: int
    per_channel: bool
    init: str
    kmeans_seconds: float           # clustering alone (sort + Lloyd), all layers
    bytes_before: int               # the shared layers' weights in float32
    bytes_after: int                # their packed b-bit indices plus float32 codebooks
    macs_before: int
    macs_after: int
    params_before: int
    params_after: int
    name: str = "share_weights_kmeans"


@dataclass(frozen=True)
class KmeansResult:
    graph: GanGraph
    report: KmeansReport


def _init(s: np.ndarray, n: np.ndarray, k: int, how: str, seed: int) -> np.ndarray:
    """(rows, k) sorted initial centroids from sorted rows `s` with `n` valid values each."""
    last = np.maximum(n - 1, 0)
    lo = s[:, 0].astype(np.float64)
    hi = np.take_along_axis(s, last[:, None], axis=1)[:, 0].astype(np.float64)
    lo, hi = np.where(n > 0, lo, 0.0), np.where(n > 0, hi, 0.0)
    if how == "linear":
        return lo[:, None] + (hi - lo)[:, None] * np.linspace(0.0, 1.0, k)[None, :]
    if how == "quantile":
        pos = np.floor((np.arange(k) + 0.5)[None, :] / k * n[:, None]).astype(np.int64)
        c = np.take_along_axis(s, np.minimum(pos, last[:, None]), axis=1)
        return np.where(n[:, None] > 0, c, 0.0)
    rng = np.random.default_rng(seed)
    m = min(KMEANSPP_SAMPLE, s.shape[1])
    pos = np.minimum((np.arange(m)[None, :] * n[:, None]) // m, last[:, None])
    x = np.where(n[:, None] > 0, np.take_along_axis(s, pos, axis=1), 0.0)
    rows = np.arange(len(x))
    centers = np.empty((len(x), k))
    centers[:, 0] = x[rows, rng.integers(0, m, len(x))]
    d2 = (x - centers[:, :1]) ** 2
    for j in range(1, k):
        total = d2.sum(axis=1, keepdims=True)
        p = np.where(total > 0, d2 / np.where(total > 0, total, 1.0), 1.0 / m)
        pick = (p.cumsum(axis=1) < rng.random((len(x), 1))).sum(axis=1).clip(0, m - 1)
        centers[:, j] = x[rows, pick]
        d2 = np.minimum(d2, (x - centers[:, j:j + 1]) ** 2)
    return np.sort(centers, axis=1)


def _keys(v: np.ndarray) -> np.ndarray:
    """Order-preserving uint64 keys of float32 values (-0.0 keyed as +0.0, NaN above +inf)."""
    u = (v + np.float32(0)).view(np.uint32).astype(np.uint64)
    return np.where(u >= 0x80000000, 0xFFFFFFFF - u, u | 0x80000000)


def _down32(m: np.ndarray) -> np.ndarray:
    """The largest float32 <= m: for float32 x, x <= m iff x <= _down32(m), and m < x iff
    _down32(m) < x, so float64 midpoints compare exactly against float32 weights."""
    m32 = m.astype(np.float32)
    return np.where(m32 > m, np.nextafter(m32, np.float32(-np.inf)), m32)


def _row_keys(values: np.ndarray) -> np.ndarray:
    """(row << 32 | key) of a (rows, cols) float32 array: rows sorted within stay sorted across
    rows, so one searchsorted serves all rows."""
    return (np.arange(len(values), dtype=np.uint64)[:, None] << np.uint64(32)) | _keys(values)


def _boundaries(sorted_keys: np.ndarray, n: np.ndarray, width: int, c: np.ndarray) -> np.ndarray:
    """(rows, k+1): b_0 = 0, b_j = #{x <= m_{j-1}}, b_k = n, for every row at once."""
    mids = _down32((c[:, :-1] + c[:, 1:]) / 2)
    q = _row_keys(mids)
    start = (np.arange(len(c)) * width)[:, None]
    inner = np.minimum(np.searchsorted(sorted_keys, q.reshape(-1), side="right")
                       .reshape(q.shape) - start, n[:, None])
    return np.concatenate([np.zeros((len(c), 1), np.int64), inner, n[:, None]], axis=1)


def kmeans_1d(rows: np.ndarray, k: int, init: str = "linear", max_iter: int = 300,
              seed: int = 0, centroids: np.ndarray | None = None):
    """Lloyd's k-means on each row of `rows` (float32 values; NaN marks an absent value).

    Returns (centroids (rows, k) float64 sorted, labels (rows, cols) int64 with -1 for NaN,
    iterations, converged). `centroids`, when given, replaces the init (for tests).
    """
    rows = np.asarray(rows)
    if rows.ndim != 2 or rows.dtype != np.float32:
        raise ValueError(f"kmeans_1d expects a 2-D float32 array (one clustering per row), got "
                         f"shape {rows.shape} of {rows.dtype}")
    s = np.sort(rows, axis=1)                     # NaN sorts last
    n = (~np.isnan(rows)).sum(axis=1)
    width = rows.shape[1]
    c = (np.sort(np.asarray(centroids, np.float64), axis=1) if centroids is not None
         else _init(s, n, k, init, seed))
    sorted_keys = _row_keys(s).reshape(-1)
    prefix = np.zeros(s.size + 1)
    np.cumsum(np.nan_to_num(s).reshape(-1), dtype=np.float64, out=prefix[1:])
    start = (np.arange(len(s)) * width)[:, None]
    b_prev, converged, it = None, False, 0
    while True:
        b = _boundaries(sorted_keys, n, width, c)
        if b_prev is not None and np.array_equal(b, b_prev):
            converged = True
            break
        if it == max_iter:
            break
        counts = b[:, 1:] - b[:, :-1]
        sums = prefix[start + b[:, 1:]] - prefix[start + b[:, :-1]]
        c = np.where(counts > 0, sums / np.maximum(counts, 1), c)
        b_prev, it = b, it + 1
    # label = #{midpoints < x}: the cluster whose (m_{j-1}, m_j] holds x, as the boundaries say
    labels = count_below(_down32((c[:, :-1] + c[:, 1:]) / 2), rows, s, n)
    return c, labels, it, converged


def count_below(mids: np.ndarray, x: np.ndarray, s: np.ndarray, n: np.ndarray) -> np.ndarray:
    """#{m in mids[r] : m < x[r, i]} for every row r (mids float32, sorted per row; `s` the rows
    sorted, `n` their valid counts), -1 for NaN: searchsorted(mids[r], x[r], 'left') per row.

    A monotone bucket map f (per row: the clipped, scaled offset, truncated) decides it for every
    x whose bucket holds no midpoint: f(m) < f(x) implies m < x and f(m) > f(x) implies m > x.
    Only the few x sharing a bucket with a midpoint are searched, by their exact keys.
    """
    rows, width = x.shape
    bins = int(min(1 << 16, max(256, width)))
    last = np.maximum(n - 1, 0)
    lo = s[:, :1]
    span = (s[np.arange(rows), last].astype(np.float64) - lo[:, 0]).astype(np.float64)
    scale = np.where(span > 0, (bins - 1) / np.where(span > 0, span, 1), 0).astype(np.float32)
    offset = (np.arange(rows) * bins)[:, None]

    def bucket(v):
        return offset + np.clip(np.nan_to_num((v - lo) * scale[:, None]), 0, bins - 1
                                ).astype(np.int64)

    fm = bucket(mids)                              # sorted globally: rows in order
    below = (np.searchsorted(fm.reshape(-1), np.arange(rows * bins), side="left")
             - np.repeat(np.arange(rows) * mids.shape[1], bins))
    mixed = np.zeros(rows * bins, bool)
    mixed[fm.reshape(-1)] = True
    fx = bucket(x)
    out = below[fx]
    fix = np.flatnonzero(mixed[fx])
    if len(fix):
        r = fix // width
        mid_keys = _row_keys(mids).reshape(-1)
        x_keys = (r.astype(np.uint64) << np.uint64(32)) | _keys(x.reshape(-1)[fix])
        out.reshape(-1)[fix] = (np.searchsorted(mid_keys, x_keys, side="left")
                                - r * mids.shape[1])
    out[np.isnan(x)] = -1
    return out


def _rows(w: np.ndarray, mask: np.ndarray | None, axis: int | None) -> np.ndarray:
    x = w.astype(np.float32)
    if mask is not None:
        x = np.where(mask, x, np.nan)
    return x.reshape(1, -1) if axis is None else np.moveaxis(x, axis, 0).reshape(x.shape[axis], -1)


def _share(w: np.ndarray, mask, axis, config: KmeansConfig):
    """The codebook (rows, 2^b) float32 and uint8 indices (w's shape) for one weight."""
    k_total = 1 << config.bits
    k = k_total - 1 if mask is not None else k_total
    c, labels, it, converged = kmeans_1d(_rows(w, mask, axis), k, config.init, config.max_iter,
                                         config.seed)
    if mask is not None:
        c = np.concatenate([np.zeros((len(c), 1)), c], axis=1)
        labels = labels + 1                      # -1 (pruned) -> entry 0, the reserved zero
    codebook = c.astype(np.float32)
    if axis is None:
        idx = labels.reshape(w.shape)
    else:
        moved = list(w.shape)
        moved.insert(0, moved.pop(axis))
        idx = np.moveaxis(labels.reshape(moved), 0, axis)
    return codebook, idx.astype(np.uint8), it, converged


def packed_bytes(count: int, bits: int) -> int:
    """Bytes of `count` indices of `bits` bits packed densely."""
    return (count * bits + 7) // 8


def share_weights_kmeans(graph: GanGraph, target=None, config: KmeansConfig = KmeansConfig()
                         ) -> KmeansResult:
    """Cluster every stored conv/linear weight of `graph` into a 2^bits codebook; `target`
    is unused (every runtime reads float weights; the gain is storage)."""
    gm = copy_module(graph.module)
    layers, skipped = weight_layers(gm)
    nodes = {n.name: n for n in gm.graph.nodes}
    entries, seconds, before, after = [], 0.0, 0, 0
    for layer in layers:
        node = nodes[layer.node]
        if "gcc_gan.weight_bits" in node.meta:
            skipped.append((edit.label(node), "binarized / 8-bit already (binarize)"))
            continue
        w = edit.stored(gm, node.args[1]).detach().numpy()
        lm = node.meta.get(SPARSE_KEY)
        mask = lm.mask if lm is not None else None
        axis = layer.out_axis if config.per_channel else None
        values = int(mask.sum()) if mask is not None else w.size
        rows = 1 if axis is None else w.shape[axis]
        if packed_bytes(w.size, config.bits) + 4 * rows * (1 << config.bits) >= 4 * w.size:
            skipped.append((edit.label(node), (f"{w.size} weights: {rows} codebook(s) of "
                            f"{1 << config.bits} float32 entries would not make it smaller")))
            continue
        start = time.perf_counter()
        codebook, idx, it, converged = _share(w, mask, axis, config)
        seconds += time.perf_counter() - start
        share = WeightShare(layer.node, layer.module, layer.weight, config.bits, axis,
                            mask is not None, codebook, idx)
        shared = share.shared_weight()
        edit.replace_stored(gm, layer.weight, torch.from_numpy(shared))
        node.meta[SHARE_KEY] = share
        err = float(np.mean((shared.astype(np.float64) - w) ** 2))
        before += 4 * w.size
        after += packed_bytes(w.size if mask is None else values, config.bits) + codebook.nbytes
        entries.append({"node": layer.node, "module": layer.module, "shape": list(w.shape),
                        "bits": config.bits, "codebooks": rows, "iterations": it,
                        "converged": converged,
                        "rel_mse": err / max(float(np.mean(w.astype(np.float64) ** 2)), 1e-30)})
    new = edit.retraced_keeping_annotations(graph, gm, f"k-means weight sharing: {len(entries)} layers at "
                             f"{config.bits} bits") if entries else graph
    report = KmeansReport(
        config=config, layers=tuple(entries), skipped=tuple(skipped), bits=config.bits,
        per_channel=config.per_channel, init=config.init, kmeans_seconds=seconds,
        bytes_before=before, bytes_after=after, macs_before=graph.macs, macs_after=new.macs,
        params_before=graph.params, params_after=new.params)
    return KmeansResult(new, report)

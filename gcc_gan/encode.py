"""Entropy-coded weight artifacts: k-means indices, sparsity masks and 1/8-bit codes, Huffman-coded.

Format (one file): b"GCCZ" | u8 version | u32 header length | zlib'd JSON header | blob. The header
lists every tensor of the program (parameters, buffers, constants) with its shape, dtype, kind
and the byte ranges of its streams in the blob:

    raw       the tensor's bytes as stored
    lut       float32 codebook + indices (`share_weights_kmeans`); with a mask only the kept
              positions' indices are coded and pruned weights decode to codebook entry 0 (= 0.0)
    sparse    the bool mask + the kept values as float32 (`sparsify` alone)
    codes     int8 codes + float32 scale per channel (`binarize`); 1-bit codes as sign bits

A stream of byte symbols is stored raw or canonical-Huffman-coded, whichever is smaller. Masks
and sign bits are packed 8 to a byte (np.packbits) before coding. Codes are limited to
`MAX_LEN` bits (counts are halved until they fit), so decoding is a table lookup on MAX_LEN-bit
windows; the bit length of every `CHUNK` symbols is stored, so all chunks decode in lockstep,
vectorised over chunks.

Invariant: decoding gives back exactly the tensors of the program: a tensor whose annotation
does not reproduce its stored value bit for bit is written raw instead.
"""

from __future__ import annotations

import heapq
import io
import json
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .ir import edit
from .ir.meta import attr
from .ir.trace import copy_module
from .passes.binarize import WeightBits, bit_layers
from .passes.kmeans_share import WeightShare, weight_shares
from .passes.sparsify import layer_masks

MAGIC, VERSION = b"GCCZ", 1
MAX_LEN = 16
CHUNK = 1024


# ---- canonical Huffman over byte symbols -------------------------------------------------

def code_lengths(counts: np.ndarray, max_len: int = MAX_LEN) -> np.ndarray:
    """Huffman code lengths (0 for absent symbols), at most `max_len` bits."""
    counts = np.asarray(counts, np.int64)
    while True:
        present = np.flatnonzero(counts)
        lengths = np.zeros(len(counts), np.int64)
        if len(present) == 1:
            lengths[present] = 1
            return lengths
        heap = [(int(counts[s]), i, [int(s)]) for i, s in enumerate(present)]
        heapq.heapify(heap)
        tie = len(heap)
        while len(heap) > 1:
            c1, _, s1 = heapq.heappop(heap)
            c2, _, s2 = heapq.heappop(heap)
            lengths[s1 + s2] += 1
            heapq.heappush(heap, (c1 + c2, tie, s1 + s2))
            tie += 1
        if lengths.max(initial=0) <= max_len:
            return lengths
        counts = np.where(counts > 0, np.maximum(counts >> 1, 1), 0)


def canonical_codes(lengths: np.ndarray) -> np.ndarray:
    """Canonical codes for `lengths`: by (length, symbol), each the previous + 1, shifted left
    when the length grows."""
    codes = np.zeros(len(lengths), np.int64)
    code, prev = 0, 0
    for s in sorted(np.flatnonzero(lengths), key=lambda s: (lengths[s], s)):
        code <<= int(lengths[s]) - prev
        codes[s], prev = code, int(lengths[s])
        code += 1
    return codes


def huffman_encode(symbols: np.ndarray) -> bytes:
    """u32 count | u8 max symbol | code lengths | u16 bits of each CHUNK | payload bytes."""
    symbols = np.asarray(symbols, np.uint8).reshape(-1)
    if symbols.size == 0:
        return struct.pack("<IB", 0, 0)
    top = int(symbols.max())
    lengths = code_lengths(np.bincount(symbols, minlength=top + 1))
    codes = canonical_codes(lengths)
    lens, vals = lengths[symbols], codes[symbols]
    start = np.cumsum(lens) - lens
    bits = np.zeros(int(lens.sum()), np.uint8)
    for j in range(int(lengths.max())):
        sel = np.flatnonzero(lens > j)
        bits[start[sel] + j] = (vals[sel] >> (lens[sel] - 1 - j)) & 1
    chunk_bits = np.add.reduceat(lens, np.arange(0, symbols.size, CHUNK)).astype(np.uint16)
    return (struct.pack("<IB", symbols.size, top) + lengths.astype(np.uint8).tobytes()
            + chunk_bits.tobytes() + np.packbits(bits).tobytes())


def huffman_decode(data: bytes) -> np.ndarray:
    """The uint8 symbols `huffman_encode` wrote."""
    n, top = struct.unpack_from("<IB", data)
    if n == 0:
        return np.zeros(0, np.uint8)
    pos = 5
    lengths = np.frombuffer(data, np.uint8, top + 1, pos).astype(np.int64)
    pos += top + 1
    chunks = -(-n // CHUNK)
    chunk_bits = np.frombuffer(data, np.uint16, chunks, pos).astype(np.int64)
    payload = np.frombuffer(data, np.uint8, offset=pos + 2 * chunks)
    longest = int(lengths.max())
    codes = canonical_codes(lengths)
    table_sym = np.zeros(1 << longest, np.uint8)
    table_len = np.zeros(1 << longest, np.int64)
    for s in np.flatnonzero(lengths):   # every window starting with code s decodes to s
        lo = int(codes[s]) << (longest - int(lengths[s]))
        table_sym[lo:lo + (1 << (longest - int(lengths[s])))] = s
        table_len[lo:lo + (1 << (longest - int(lengths[s])))] = lengths[s]
    padded = np.zeros(payload.size + 8, np.uint32)   # zeros past the end: windows stay in range
    padded[:payload.size] = payload
    window = (padded[:-3] << 24) | (padded[1:-2] << 16) | (padded[2:-1] << 8) | padded[3:]
    at = np.concatenate([[0], np.cumsum(chunk_bits)[:-1]])
    out = np.zeros((chunks, CHUNK), np.uint8)
    mask = np.uint32((1 << longest) - 1)
    for i in range(min(n, CHUNK)):
        word = window[at >> 3]
        v = (word >> (32 - longest - (at & 7)).astype(np.uint32)) & mask
        out[:, i] = table_sym[v]
        at = at + table_len[v]
        at = np.minimum(at, 8 * payload.size)  # the last chunk may run past its end
    return out.reshape(-1)[:n]


def encode_stream(symbols: np.ndarray) -> bytes:
    """u8 mode (0 raw, 1 Huffman) + the smaller of the two encodings of uint8 `symbols`."""
    raw = np.asarray(symbols, np.uint8).reshape(-1).tobytes()
    coded = huffman_encode(symbols)
    if len(coded) < len(raw) + 4:
        return b"\x01" + coded
    return b"\x00" + struct.pack("<I", len(raw)) + raw


def decode_stream(data: bytes) -> np.ndarray:
    if data[:1] == b"\x01":
        return huffman_decode(data[1:])
    (n,) = struct.unpack_from("<I", data, 1)
    return np.frombuffer(data, np.uint8, n, 5).copy()


# ---- the artifact ---------------------------------------------------------------------------

@dataclass(frozen=True)
class DecodedLayer:
    kind: str                               # "lut", "sparse" or "codes"
    mask: np.ndarray | None = field(default=None, repr=False)
    indices: np.ndarray | None = field(default=None, repr=False)   # lut: uint8, weight's shape
    codebook: np.ndarray | None = field(default=None, repr=False)  # lut: float32 (rows, K)
    codes: np.ndarray | None = field(default=None, repr=False)     # codes: int8
    scale: np.ndarray | None = field(default=None, repr=False)     # codes: float32 per channel
    bits: int = 32


@dataclass(frozen=True)
class CompressedModel:
    model_class: str
    tensors: dict[str, np.ndarray] = field(repr=False)   # name -> decoded value
    layers: dict[str, DecodedLayer] = field(repr=False)  # weight name -> its decoded streams
    nbytes: int
    notes: tuple[str, ...] = ()

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {k: torch.from_numpy(v.copy()) for k, v in self.tensors.items()}

    def load_into(self, module: torch.nn.Module) -> torch.nn.Module:
        """A copy of `module` (the program the artifact was saved from, e.g. graph.module)
        holding the decoded tensors; raises if a tensor has no place or the wrong shape."""
        out = copy_module(module)
        for name, value in self.tensors.items():
            try:
                holder, attr_name = edit.owner(out, name)
                old = getattr(holder, attr_name)
            except AttributeError as exc:
                raise ValueError(f"the artifact holds {name!r}, which the module lacks: load it "
                                 f"into the program it was saved from") from exc
            if tuple(old.shape) != value.shape:
                raise ValueError(f"{name}: the artifact holds shape {value.shape}, the module "
                                 f"{tuple(old.shape)}: load it into the program it was saved from")
            edit.replace_stored(out, name, torch.from_numpy(value.copy()))
        return out


def program(graph_or_result):
    """(GanGraph or None, its fx GraphModule) of a GanGraph, a pass result or a GraphModule."""
    graph = graph_or_result.graph if hasattr(graph_or_result, "report") else graph_or_result
    gm = getattr(graph, "module", graph)
    if not isinstance(gm, torch.nn.Module) or not hasattr(gm, "graph"):
        raise TypeError(f"save_compressed expects a GanGraph, a pass result or an fx "
                        f"GraphModule, got {type(graph_or_result).__name__}")
    return graph, gm


def stored_tensors(gm) -> dict[str, torch.Tensor]:
    """Every tensor the program holds: parameters, buffers and get_attr constants, by name."""
    out = dict(gm.named_parameters())
    out.update(dict(gm.named_buffers()))
    for node in gm.graph.find_nodes(op="get_attr"):
        obj = attr(gm, node.target)
        if isinstance(obj, torch.Tensor):
            out.setdefault(node.target, obj)
    return out


class _Blob:
    def __init__(self):
        self.buf = io.BytesIO()

    def put(self, data: bytes) -> list[int]:
        at = self.buf.tell()
        self.buf.write(data)
        return [at, len(data)]


def weight_annotations(gm) -> tuple[dict, dict, dict]:
    """weight name -> WeightShare, LayerMask, WeightBits: what the weight passes annotated."""
    return weight_shares(gm), layer_masks(gm), bit_layers(gm)


def _entry(name: str, t: np.ndarray, shares, masks, bits, blob: _Blob) -> dict:
    entry = {"name": name, "shape": list(t.shape), "dtype": str(t.dtype), "kind": "raw"}
    mask = masks[name].mask if name in masks else None
    if name in shares and mask is not None and not shares[name].zero_reserved:
        mask = None                  # shared after sparsify? then every index is coded
    if name in shares and np.array_equal(shares[name].shared_weight().view(np.uint32),
                                         t.view(np.uint32)):
        s = shares[name]
        idx = s.indices.reshape(-1) if mask is None else s.indices[mask]
        entry.update(kind="lut", bits=s.bits, axis=s.axis, codebook=blob.put(s.codebook.tobytes()),
                     rows=s.codebook.shape[0], indices=blob.put(encode_stream(idx)))
    elif name in bits and np.array_equal(bits[name].dequantized().view(np.uint32),
                                         t.view(np.uint32)):
        b = bits[name]
        codes = np.packbits(b.codes.reshape(-1) > 0) if b.bits == 1 else b.codes.view(np.uint8)
        entry.update(kind="codes", bits=b.bits, axis=b.axis, scale=blob.put(b.scale.tobytes()),
                     codes=blob.put(encode_stream(codes)))
        mask = None
    elif mask is not None and not t[~mask].any():
        entry.update(kind="sparse", values=blob.put(t[mask].astype(np.float32).tobytes()))
    else:
        return {**entry, "data": blob.put(t.tobytes())}
    if mask is not None:
        entry["mask"] = blob.put(encode_stream(np.packbits(mask.reshape(-1))))
    return entry


def encode_bytes(graph_or_result) -> bytes:
    """The artifact of a GanGraph (or a pass result, or its GraphModule), as bytes."""
    graph, gm = program(graph_or_result)
    shares, masks, bits = weight_annotations(gm)
    blob, entries = _Blob(), []
    for name, tensor in stored_tensors(gm).items():
        t = tensor.detach().cpu().contiguous().numpy()
        if t.dtype != np.float32:
            entries.append({"name": name, "shape": list(t.shape), "dtype": str(t.dtype),
                            "kind": "raw", "data": blob.put(t.tobytes())})
        else:
            entries.append(_entry(name, t, shares, masks, bits, blob))
    header = zlib.compress(json.dumps(
        {"format": "gcc-gan.compressed", "version": VERSION,
         "model_class": getattr(graph, "model_class", type(gm).__name__), "tensors": entries},
        separators=(",", ":")).encode(), 9)
    return MAGIC + struct.pack("<BI", VERSION, len(header)) + header + blob.buf.getvalue()


def _decode(e: dict, blob: memoryview) -> tuple[np.ndarray, DecodedLayer | None]:
    def seg(key):
        at, n = e[key]
        return bytes(blob[at:at + n])

    shape, kind = tuple(e["shape"]), e["kind"]
    if kind == "raw":
        return np.frombuffer(seg("data"), np.dtype(e["dtype"])).reshape(shape).copy(), None
    size = int(np.prod(shape))
    mask = (np.unpackbits(decode_stream(seg("mask")), count=size).astype(bool).reshape(shape)
            if "mask" in e else None)
    if kind == "sparse":
        t = np.zeros(shape, np.float32)
        t[mask] = np.frombuffer(seg("values"), np.float32)
        return t, DecodedLayer("sparse", mask=mask)
    if kind == "lut":
        codebook = np.frombuffer(seg("codebook"), np.float32).reshape(e["rows"], -1).copy()
        coded = decode_stream(seg("indices"))
        idx = coded.reshape(shape) if mask is None else np.zeros(shape, np.uint8)
        if mask is not None:
            idx[mask] = coded
        t = WeightShare("", "", e["name"], e["bits"], e["axis"], mask is not None, codebook,
                        idx).shared_weight()
        return t, DecodedLayer("lut", mask=mask, indices=idx, codebook=codebook, bits=e["bits"])
    if kind == "codes":
        scale = np.frombuffer(seg("scale"), np.float32).copy()
        raw = decode_stream(seg("codes"))
        codes = (np.where(np.unpackbits(raw, count=size), 1, -1).astype(np.int8)
                 if e["bits"] == 1 else raw.view(np.int8)).reshape(shape)
        t = WeightBits("", "", e["name"], e["bits"], e["axis"], 0.0, scale, codes).dequantized()
        return t, DecodedLayer("codes", codes=codes, scale=scale, bits=e["bits"])
    raise ValueError(f"tensor {e['name']}: unknown kind {kind!r}; the artifact was written by a "
                     "newer gcc_gan: upgrade to read it")


def decode_bytes(data: bytes) -> CompressedModel:
    """The CompressedModel of artifact bytes; raises ValueError on anything else."""
    if data[:4] != MAGIC:
        raise ValueError("not a gcc-gan compressed artifact (bad magic); write one with "
                         "gcc_gan.encode.save_compressed")
    version, hlen = struct.unpack_from("<BI", data, 4)
    if version != VERSION:
        raise ValueError(f"artifact version {version}, this gcc_gan reads {VERSION}")
    header = json.loads(zlib.decompress(data[9:9 + hlen]))
    blob = memoryview(data)[9 + hlen:]
    tensors, layers = {}, {}
    for e in header["tensors"]:
        tensors[e["name"]], layer = _decode(e, blob)
        if layer is not None:
            layers[e["name"]] = layer
    return CompressedModel(header["model_class"], tensors, layers, len(data))


def save_compressed(graph_or_result, path: str | Path) -> int:
    """Write the artifact of a GanGraph / pass result to `path`; returns its size in bytes."""
    data = encode_bytes(graph_or_result)
    Path(path).write_bytes(data)
    return len(data)


def load_compressed(path: str | Path) -> CompressedModel:
    """Read and decode an artifact written by `save_compressed`."""
    return decode_bytes(Path(path).read_bytes())

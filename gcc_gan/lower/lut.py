"""k-means shared weights in ONNX: a float32 codebook, uint8 indices and a Gather per weight.

For a weight W shared by `share_weights_kmeans` (a `WeightShare`: codebook rows of K = 2^b
entries, one per layer or per output channel, and an index per weight), the initializer W is
replaced by

    W = Gather(codebook_flat, Reshape(unpack(indices)) + offsets)        (offsets: row * K)

so the Conv keeps reading a tensor named W. Indices are stored as a uint8 initializer: for b = 2
or 4 packed 8 / b to a byte (first index in the high bits), unpacked in the graph with integer
Div and Mod by powers of 2^b; otherwise one byte each. Every input of these nodes is an
initializer, so ONNX Runtime folds them at session start: the file shrinks, the kernels run
on the same float32 weights, and the outputs equal the fp32 model's.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def packed_indices(indices: np.ndarray, bits: int) -> np.ndarray:
    """uint8 indices, 8 // bits to a byte (high bits first) when bits divides 8, else one each."""
    flat = indices.reshape(-1).astype(np.uint8)
    if bits >= 8 or 8 % bits:
        return flat
    per = 8 // bits
    padded = np.zeros(-(-flat.size // per) * per, np.uint8)
    padded[:flat.size] = flat
    shifts = (bits * np.arange(per - 1, -1, -1)).astype(np.uint8)
    return np.bitwise_or.reduce(padded.reshape(-1, per) << shifts, axis=1).astype(np.uint8)


def _const(graph: onnx.GraphProto, name: str, value: np.ndarray) -> str:
    graph.initializer.append(numpy_helper.from_array(value, name))
    return name


def _lut_nodes(graph: onnx.GraphProto, share) -> list[onnx.NodeProto]:
    w, bits, count = share.weight, share.bits, share.indices.size
    packed = packed_indices(share.indices, bits)
    _const(graph, f"{w}.codebook", share.codebook.reshape(-1).astype(np.float32))
    _const(graph, f"{w}.indices", packed)
    nodes = [helper.make_node("Cast", [f"{w}.indices"], [f"{w}.idx32"], to=TensorProto.INT32)]
    idx = f"{w}.idx32"
    if packed.size != count:  # unpack: (byte // 2^(b*(per-1-t))) mod 2^b for t < per
        per = 8 // bits
        divisors = (1 << (bits * np.arange(per - 1, -1, -1))).astype(np.int32)
        nodes += [
            helper.make_node("Reshape", [idx, _const(graph, f"{w}.col", np.array([-1, 1]))],
                             [f"{w}.col_idx"]),
            helper.make_node("Div", [f"{w}.col_idx", _const(graph, f"{w}.div", divisors)],
                             [f"{w}.shifted"]),
            helper.make_node("Mod", [f"{w}.shifted",
                                     _const(graph, f"{w}.mod", np.array(1 << bits, np.int32))],
                             [f"{w}.digits"]),
            helper.make_node("Reshape", [f"{w}.digits", _const(graph, f"{w}.flat",
                                                               np.array([-1]))], [f"{w}.all"]),
            helper.make_node("Slice", [f"{w}.all", _const(graph, f"{w}.start", np.array([0])),
                                       _const(graph, f"{w}.end", np.array([count]))],
                             [f"{w}.unpacked"]),
        ]
        idx = f"{w}.unpacked"
    shape = _const(graph, f"{w}.shape", np.array(share.indices.shape, np.int64))
    nodes.append(helper.make_node("Reshape", [idx, shape], [f"{w}.idx"]))
    idx = f"{w}.idx"
    if share.axis is not None:
        offsets = share.offsets().astype(np.int32)
        nodes.append(helper.make_node("Add", [idx, _const(graph, f"{w}.offsets", offsets)],
                                      [f"{w}.row_idx"]))
        idx = f"{w}.row_idx"
    nodes.append(helper.make_node("Gather", [f"{w}.codebook", idx], [w], axis=0,
                                  name=f"{w}.lut"))
    return nodes


def to_lut(model_bytes: bytes, shares) -> tuple[bytes, list[str]]:
    """The model with each shared weight's initializer replaced by its LUT form, and the
    weights the model lacks (or holds in another shape or type: left as they are)."""
    model = onnx.load_model_from_string(model_bytes)
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    new_nodes, missing = [], []
    for share in shares:
        init = inits.get(share.weight)
        if (init is None or init.data_type != TensorProto.FLOAT
                or tuple(init.dims) != share.indices.shape):
            missing.append(share.weight)
            continue
        graph.initializer.remove(init)
        new_nodes += _lut_nodes(graph, share)
    nodes = new_nodes + list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes)
    return model.SerializeToString(), missing


def with_lut(graph, lowered):
    """`lowered` (an OnnxModel of `graph`) with k-means shared weights stored as LUTs."""
    from gcc_gan.passes.kmeans_share import weight_shares

    shares = weight_shares(graph.module)
    if not shares:
        return lowered
    data, missing = to_lut(lowered.data, shares.values())
    notes = [*lowered.notes, (f"{len(shares) - len(missing)} weights stored as k-means LUTs "
                              "(uint8 indices + float32 codebook, Gather)")]
    if missing:
        notes.append(f"k-means weights the ONNX graph lacks or holds quantized, left as they "
                     f"are: {missing}")
    return dataclasses.replace(lowered, data=data, notes=tuple(notes), _session=[])

"""size_table: each row's bytes from the annotations, computed by hand here; +encoding is the
artifact's real length; rows for passes that did not run are left out; renderings."""

import numpy as np
import pytest

from gcc_gan import trace, zoo
from gcc_gan.encode import encode_bytes
from gcc_gan.passes.binarize import binarize, bit_layers
from gcc_gan.passes.kmeans_share import KmeansConfig, share_weights_kmeans, weight_shares
from gcc_gan.passes.sparsify import SparsifyConfig, layer_masks, sparsify
from gcc_gan.size import SizeRow, SizeTable, size_table


@pytest.fixture(scope="module")
def resnet():
    return trace(zoo.build("resnet"), zoo.example_inputs("resnet"))


def _rows(table):
    return {r.name: r.bytes for r in table.rows}


def test_dense_rows(resnet):
    table = size_table(resnet)
    rows = _rows(table)
    state = resnet.module.state_dict()
    assert list(rows) == ["fp32", "int8", "+encoding"]
    assert rows["fp32"] == 4 * sum(t.numel() for t in state.values())
    weights = {n.args[1].target: n for n in resnet.graph.nodes
               if n.op == "call_function" and "conv" in str(n.target)}
    out_channels = {k: state[k].shape[1 if "transpose" in str(n.target) else 0]
                    for k, n in weights.items()}
    expected = sum(t.numel() + 4 * out_channels[k] if k in weights else 4 * t.numel()
                   for k, t in state.items())
    assert rows["int8"] == expected
    assert rows["+encoding"] == len(encode_bytes(resnet))


def test_kmeans_and_sparsity_rows(resnet):
    sparse = sparsify(resnet, config=SparsifyConfig(sparsity=0.8)).graph
    shared = share_weights_kmeans(sparse, config=KmeansConfig(bits=4)).graph
    table = size_table(shared)
    rows = _rows(table)
    assert list(rows) == ["fp32", "int8", "k-means 4-bit", "+sparsity 80%", "+encoding"]
    state = shared.module.state_dict()
    shares, masks = weight_shares(shared), layer_masks(shared)
    rest = sum(4 * t.numel() for k, t in state.items() if k not in shares)
    assert rows["k-means 4-bit"] == rest + sum((s.indices.size * 4 + 7) // 8 + 64
                                               for s in shares.values())
    assert rows["+sparsity 80%"] == rest + sum(
        (int(masks[k].mask.sum()) * 4 + 7) // 8 + (masks[k].mask.size + 7) // 8 + 64
        for k in shares)
    assert rows["+sparsity 80%"] < rows["k-means 4-bit"] < rows["int8"] < rows["fp32"]
    assert rows["+encoding"] == len(encode_bytes(shared))
    assert table.ratio(table.rows[-1]) == rows["fp32"] / rows["+encoding"]


def test_binarize_row_and_renderings(resnet):
    graph = binarize(resnet).graph
    table = size_table(graph, encode=False)
    bits = bit_layers(graph)
    rows = _rows(table)
    state = graph.module.state_dict()
    assert rows["1/8-bit"] == sum(4 * t.numel() for k, t in state.items() if k not in bits) + \
        sum((b.codes.size * b.bits + 7) // 8 + 4 * b.scale.size for b in bits.values())
    assert "+encoding" not in rows
    md = table.to_markdown()
    assert md.count("\n| ") == 1 + len(table.rows) and "1/8-bit" in md and "vs fp32" in md
    assert "1/8-bit" in str(table)
    custom = SizeTable("t", (SizeRow("fp32", 100), SizeRow("x", 25, psnr=31.25)))
    assert "31.2 dB" in custom.to_markdown() and custom.to_dict()["rows"][1]["ratio"] == 4.0
    assert np.isinf(custom.ratio(SizeRow("empty", 0)))

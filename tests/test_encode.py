"""encode: canonical Huffman round trips (length-limited, near the entropy), and artifacts of
every weight pass decode to exactly the program's tensors, indices, masks and codes."""

import numpy as np
import pytest
import torch

from gcc_gan import trace, zoo
from gcc_gan.encode import (MAX_LEN, canonical_codes, code_lengths, decode_bytes,
                            decode_stream, encode_bytes, encode_stream, huffman_decode,
                            huffman_encode, load_compressed, save_compressed)
from gcc_gan.passes.binarize import BinarizeConfig, binarize, bit_layers
from gcc_gan.passes.kmeans_share import KmeansConfig, share_weights_kmeans, weight_shares
from gcc_gan.passes.sparsify import SparsifyConfig, layer_masks, sparsify

RNG = np.random.default_rng(0)
STREAMS = {
    "empty": np.zeros(0, np.uint8),
    "one symbol": np.full(3000, 7, np.uint8),
    "single": np.array([200], np.uint8),
    "uniform bytes": RNG.integers(0, 256, 5000).astype(np.uint8),
    "geometric": np.minimum(RNG.geometric(0.3, 20000), 255).astype(np.uint8),
    "k-means 4-bit": np.clip(np.round(RNG.normal(8, 2, 30000)), 0, 15).astype(np.uint8),
    # counts 2^0 .. 2^24 would give a 25-bit code without the length limit
    "skewed": RNG.permutation(np.repeat(np.arange(25, dtype=np.uint8),
                                        (1 << np.arange(25)) // 64 + 1)),
}


@pytest.mark.parametrize("name", list(STREAMS))
def test_huffman_round_trips(name):
    data = STREAMS[name]
    assert np.array_equal(huffman_decode(huffman_encode(data)), data)
    assert np.array_equal(decode_stream(encode_stream(data)), data)


def test_codes_are_canonical_prefix_free_and_length_limited():
    counts = np.array([1 << i for i in range(30)], np.int64)   # Fibonacci-like skew
    lengths = code_lengths(counts)
    assert lengths.max() <= MAX_LEN and (lengths > 0).all()
    assert sum(2.0 ** -lengths) <= 1.0                           # Kraft: a prefix code exists
    codes = canonical_codes(lengths)
    words = [format(int(c), f"0{int(l)}b") for c, l in zip(codes, lengths)]
    assert len(set(words)) == len(words)
    assert not any(a != b and b.startswith(a) for a in words for b in words)


def test_huffman_is_within_a_bit_per_symbol_of_the_entropy():
    data = STREAMS["k-means 4-bit"]
    p = np.bincount(data) / data.size
    entropy_bits = -(p[p > 0] * np.log2(p[p > 0])).sum() * data.size
    payload_bits = 8 * len(huffman_encode(data))
    assert entropy_bits <= payload_bits <= entropy_bits + data.size + 8 * 64
    # uniform random bytes cannot be compressed: the stream falls back to raw
    assert encode_stream(STREAMS["uniform bytes"])[:1] == b"\x00"


@pytest.fixture(scope="module")
def resnet():
    return trace(zoo.build("resnet"), zoo.example_inputs("resnet"))


@pytest.fixture(scope="module")
def variants(resnet):
    g = resnet
    sparse = sparsify(g, config=SparsifyConfig(sparsity=0.7)).graph
    return {
        "dense": g,
        "kmeans 4-bit": share_weights_kmeans(g, config=KmeansConfig(bits=4)).graph,
        "sparse": sparse,
        "sparse + kmeans 5-bit": share_weights_kmeans(sparse, config=KmeansConfig(bits=5)).graph,
        "2:4 + kmeans per channel": share_weights_kmeans(
            sparsify(g, "gpu").graph, config=KmeansConfig(bits=3, per_channel=True)).graph,
        "binarize": binarize(g, config=BinarizeConfig(criterion="sensitivity")).graph,
    }


def test_artifacts_round_trip_exactly(variants, tmp_path):
    x = zoo.example_inputs("resnet", seed=3)
    for name, graph in variants.items():
        path = tmp_path / f"{name}.gccz"
        size = save_compressed(graph, path)
        loaded = load_compressed(path)
        assert size == path.stat().st_size == loaded.nbytes
        state = graph.module.state_dict()
        assert loaded.tensors.keys() >= state.keys()
        for key, value in state.items():      # bit for bit, not just close
            got, want = loaded.tensors[key], value.numpy()
            assert np.array_equal(got.view(np.uint8), want.view(np.uint8)), key
        for key, share in weight_shares(graph).items():
            layer = loaded.layers[key]
            assert layer.kind == "lut" and np.array_equal(layer.indices, share.indices)
            assert np.array_equal(layer.codebook, share.codebook)
        for key, m in layer_masks(graph).items():
            assert np.array_equal(loaded.layers[key].mask, m.mask), (name, key)
        for key, b in bit_layers(graph).items():
            assert np.array_equal(loaded.layers[key].codes, b.codes)
            assert np.array_equal(loaded.layers[key].scale, b.scale)
        with torch.no_grad():
            assert torch.equal(loaded.load_into(graph.module)(*x), graph.module(*x)), name


def test_encoding_shrinks_sparse_shared_weights_below_their_packed_size(resnet, variants):
    v = variants
    dense = len(encode_bytes(v["dense"]))
    assert dense >= 4 * resnet.params                    # float32 raw, plus a header
    assert len(encode_bytes(v["kmeans 4-bit"])) < dense / 6
    shared = v["sparse + kmeans 5-bit"]
    shares, masks = weight_shares(shared), layer_masks(shared)
    packed = sum((int(masks[k].mask.sum()) * 5 + 7) // 8 + (masks[k].mask.size + 7) // 8
                 for k in shares)
    coded = sum(len(encode_stream(s.indices[masks[k].mask]))
                + len(encode_stream(np.packbits(masks[k].mask))) for k, s in shares.items())
    assert coded < packed


def test_bad_artifacts_and_modules_are_refused(resnet, tmp_path):
    with pytest.raises(ValueError, match="not a gcc-gan compressed artifact"):
        decode_bytes(b"PK\x03\x04 not ours")
    loaded = decode_bytes(encode_bytes(resnet))
    with pytest.raises(ValueError, match="load it into the program it was saved from"):
        loaded.load_into(trace(zoo.build("dcgan"), zoo.example_inputs("dcgan")).module)
    with pytest.raises(TypeError, match="expects a GanGraph"):
        encode_bytes(torch.zeros(3))

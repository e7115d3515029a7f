"""share_weights_kmeans: the fast 1-D Lloyd equals a naive Lloyd from the same init, weights
become codebook entries (per layer, per channel, with pruned zeros kept), the ONNX LUT form runs
in ONNX Runtime like the torch module and shrinks the file, and the input graph is untouched."""

import dataclasses

import numpy as np
import onnx
import pytest
import torch

from gcc_gan import trace, zoo
from gcc_gan.lower import lower_onnx
from gcc_gan.lower.lut import packed_indices, to_lut
from gcc_gan.passes.kmeans_share import (KmeansConfig, count_below, kmeans_1d,
                                         share_weights_kmeans, weight_shares)
from gcc_gan.passes.sparsify import SparsifyConfig, layer_masks, sparsify
from tests.passes.graph_checks import assert_same_output, assert_unchanged, snapshot


def naive_lloyd(x: np.ndarray, init: np.ndarray, max_iter: int = 300):
    """Textbook Lloyd: argmin assignment (ties to the lower index), mean update, an empty
    cluster keeps its centroid, stop when the assignment repeats."""
    x = x.astype(np.float64)
    c, prev = init.astype(np.float64).copy(), None
    for it in range(max_iter + 1):
        labels = np.argmin(np.abs(x[:, None] - c[None, :]), axis=1)
        if prev is not None and np.array_equal(labels, prev):
            return c, labels, it
        if it == max_iter:
            return c, labels, it
        for j in range(len(c)):
            if (labels == j).any():
                c[j] = x[labels == j].mean()
        prev = labels


@pytest.fixture(scope="module")
def resnet():
    return trace(zoo.build("resnet"), zoo.example_inputs("resnet", batch=2))


@pytest.mark.parametrize("seed", range(6))
def test_fast_lloyd_equals_naive_lloyd_from_the_same_init(seed):
    rng = np.random.default_rng(seed)
    k = (4, 8, 16)[seed % 3]
    x = (rng.standard_normal((3, 300)) * rng.uniform(0.01, 1.0)).astype(np.float32)
    if seed % 2:
        x[:, rng.random(300) < 0.3] = np.nan           # absent values (pruned weights)
    init = np.stack([np.sort(rng.choice(r[~np.isnan(r)], k, replace=False)) for r in x])
    c, labels, it, converged = kmeans_1d(x, k, centroids=init.astype(np.float64))
    assert converged
    for r in range(3):
        valid = ~np.isnan(x[r])
        c_ref, labels_ref, _ = naive_lloyd(x[r][valid], init[r])
        np.testing.assert_array_equal(labels[r][valid], labels_ref)
        np.testing.assert_allclose(c[r], c_ref, rtol=1e-10, atol=1e-12)
        assert (labels[r][~valid] == -1).all()
    assert it == max(naive_lloyd(x[r][~np.isnan(x[r])], init[r])[2] for r in range(3))


def test_an_empty_cluster_keeps_its_centroid_as_in_naive_lloyd():
    x = np.random.default_rng(3).uniform(-1, 1, (1, 500)).astype(np.float32)
    init = np.array([[-0.5, 0.0, 0.5, 50.0]])          # nothing is nearest to 50
    c, labels, _, converged = kmeans_1d(x, 4, centroids=init)
    c_ref, labels_ref, _ = naive_lloyd(x[0], init[0])
    assert converged and c[0, 3] == 50.0 and not (labels == 3).any()
    np.testing.assert_array_equal(labels[0], labels_ref)
    np.testing.assert_allclose(c[0], c_ref, rtol=1e-10)


@pytest.mark.parametrize("init", ["linear", "quantile"])
def test_built_in_inits_match_naive_lloyd_from_the_documented_start(init):
    x = np.random.default_rng(7).standard_normal((1, 2000)).astype(np.float32)
    s = np.sort(x[0]).astype(np.float64)
    start = (np.linspace(s[0], s[-1], 8) if init == "linear"
             else s[np.floor((np.arange(8) + 0.5) / 8 * s.size).astype(int)])
    c, labels, _, _ = kmeans_1d(x, 8, init=init)
    c_ref, labels_ref, _ = naive_lloyd(x[0], start)
    np.testing.assert_array_equal(labels[0], labels_ref)
    np.testing.assert_allclose(c[0], c_ref, rtol=1e-10)


def test_kmeanspp_gives_sorted_codebooks_and_a_lower_error_than_one_cluster():
    x = np.random.default_rng(1).standard_normal((2, 5000)).astype(np.float32)
    c, labels, _, _ = kmeans_1d(x, 16, init="kmeans++", seed=3)
    assert (np.diff(c, axis=1) >= 0).all()
    err = np.mean((np.take_along_axis(c, labels, 1) - x) ** 2)
    assert err < 0.05 * np.var(x)


def test_count_below_is_searchsorted_exactly_at_the_midpoints():
    rng = np.random.default_rng(2)
    mids = np.sort(rng.standard_normal((2, 15)).astype(np.float32), axis=1)
    x = rng.standard_normal((2, 4000)).astype(np.float32)
    x[:, :15] = mids                                   # exactly on a midpoint: lower cluster
    x[:, 15:30] = np.nextafter(mids, np.float32(np.inf))
    x[:, 30:45] = np.nextafter(mids, np.float32(-np.inf))
    s = np.sort(x, axis=1)
    got = count_below(mids, x, s, np.full(2, x.shape[1]))
    for r in range(2):
        np.testing.assert_array_equal(got[r], np.searchsorted(mids[r], x[r], side="left"))


def test_shared_weights_are_codebook_entries_and_the_input_is_untouched(resnet):
    snap = snapshot(resnet)
    result = share_weights_kmeans(resnet, config=KmeansConfig(bits=4))
    assert_unchanged(resnet, snap)
    shares = weight_shares(result.graph)
    assert len(shares) == len(result.report.layers) == 10 and not weight_shares(resnet)
    state = result.graph.module.state_dict()
    for name, share in shares.items():
        w = state[name].numpy()
        assert share.codebook.shape == (1, 16) and share.indices.dtype == np.uint8
        np.testing.assert_array_equal(w, share.shared_weight())
        assert len(np.unique(w)) <= 16
        original = resnet.module.state_dict()[name].numpy()
        # each weight sits at its nearest codebook entry (Lloyd's fixed point)
        nearest = np.abs(original[..., None] - share.codebook[0]).min(axis=-1)
        np.testing.assert_allclose(np.abs(w - original), nearest, rtol=1e-5, atol=1e-7)
    r = result.report
    assert r.bytes_after < r.bytes_before / 6 and r.kmeans_seconds > 0
    assert r.macs_after == r.macs_before and r.params_after == r.params_before


def test_per_channel_codebooks_and_pruned_zeros(resnet):
    sparse = sparsify(resnet, config=SparsifyConfig(sparsity=0.6)).graph
    result = share_weights_kmeans(sparse, config=KmeansConfig(bits=3, per_channel=True))
    shares, masks = weight_shares(result.graph), layer_masks(result.graph)
    assert shares.keys() == masks.keys()            # sparsify's annotations survive
    state = result.graph.module.state_dict()
    for name, share in shares.items():
        w, mask = state[name].numpy(), masks[name].mask
        assert share.zero_reserved and (share.codebook[:, 0] == 0).all()
        assert (w[~mask] == 0).all() and (share.indices[~mask] == 0).all()
        moved = np.moveaxis(w, share.axis, 0).reshape(w.shape[share.axis], -1)
        assert share.codebook.shape[0] == moved.shape[0]
        assert max(len(np.unique(row)) for row in moved) <= 8


@pytest.fixture(scope="module")
def fp32_onnx(resnet):
    return lower_onnx(resnet)


def _check_lut_model(data: bytes, shares, bits: int):
    model = onnx.load_model_from_string(data)
    inits = {i.name: i for i in model.graph.initializer}
    assert sum(n.op_type == "Gather" for n in model.graph.node) == len(shares)
    for name, share in shares.items():
        assert name not in inits                     # the float weight is gone
        stored = onnx.numpy_helper.to_array(inits[f"{name}.indices"])
        assert stored.dtype == np.uint8
        assert stored.size == (-(-share.indices.size * bits // 8) if 8 % bits == 0
                               else share.indices.size)


def test_lower_onnx_stores_luts_that_run_in_ort_like_the_torch_module(resnet, fp32_onnx):
    result = share_weights_kmeans(resnet, config=KmeansConfig(bits=2, per_channel=True))
    lowered = lower_onnx(result.graph)               # the hook in lower_onnx applies the LUTs
    shares = weight_shares(result.graph)
    _check_lut_model(lowered.data, shares, 2)
    assert any("k-means LUTs" in n for n in lowered.notes)
    x = zoo.example_inputs("resnet", batch=3, seed=4)
    with torch.no_grad():
        assert_same_output(lowered.run(*x), result.graph(*x))
    assert len(lowered.data) < 0.4 * len(fp32_onnx.data)


@pytest.mark.parametrize("bits,per_channel", [(4, False), (3, False), (6, True), (8, False)])
def test_lut_forms_of_each_width_match_the_torch_module(resnet, fp32_onnx, bits, per_channel):
    result = share_weights_kmeans(resnet, config=KmeansConfig(bits=bits, per_channel=per_channel))
    shares = weight_shares(result.graph)
    data, missing = to_lut(fp32_onnx.data, shares.values())
    assert not missing
    _check_lut_model(data, shares, bits)
    lut = dataclasses.replace(fp32_onnx, data=data, _session=[])
    x = zoo.example_inputs("resnet", batch=2, seed=5)
    with torch.no_grad():
        assert_same_output(lut.run(*x), result.graph(*x))
    assert len(data) < len(fp32_onnx.data) * (0.5 if bits <= 4 else 0.7)


def test_packed_indices_put_the_first_index_in_the_high_bits():
    idx = np.array([1, 2, 3, 0, 3], np.uint8)
    assert packed_indices(idx, 2).tolist() == [0b01101100, 0b11000000]
    assert packed_indices(idx, 4).tolist() == [0x12, 0x30, 0x30]
    assert packed_indices(idx, 3).tolist() == idx.tolist()


def test_bad_configs_say_what_to_do():
    with pytest.raises(ValueError, match="bits must be an integer in 2..8"):
        KmeansConfig(bits=9)
    with pytest.raises(ValueError, match="init must be one of"):
        KmeansConfig(init="random")
    with pytest.raises(ValueError, match="2-D float32"):
        kmeans_1d(np.zeros(10), 4)

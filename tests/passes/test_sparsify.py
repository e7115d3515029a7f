"""sparsify: ERK densities follow the formula and meet the budget, global/uniform/ERK magnitude
masks, valid 2:4 masks on the gpu target, masked weights zeroed in the new graph only, and a
report that claims no speed on dense runtimes."""

import math

import numpy as np
import pytest
import torch

from gcc_gan import trace, zoo
from gcc_gan.passes.sparsify import (SPARSE_KEY, SparsifyConfig, erk_densities, layer_masks,
                                     sparsify)
from tests.passes.graph_checks import assert_unchanged, snapshot

SHAPES = {"first": (64, 3, 7, 7), "mid": (128, 64, 3, 3), "big": (256, 256, 3, 3),
          "fc": (10, 512), "last": (3, 64, 7, 7)}


@pytest.fixture(scope="module")
def resnet():
    return trace(zoo.build("resnet"), zoo.example_inputs("resnet"))


@pytest.mark.parametrize("density", [0.05, 0.2, 0.5, 0.9])
def test_erk_densities_follow_the_formula_and_meet_the_budget(density):
    d = erk_densities(SHAPES, density)
    numel = {k: math.prod(s) for k, s in SHAPES.items()}
    kept = sum(d[k] * numel[k] for k in SHAPES)
    assert kept == pytest.approx(density * sum(numel.values()), rel=1e-12)
    assert all(0 < v <= 1 for v in d.values())
    sparse = [k for k in SHAPES if d[k] < 1]
    assert sparse
    # one eps for every layer that is not dense: d_l / ((sum of dims) / (product of dims))
    eps = {k: d[k] / (sum(SHAPES[k]) / numel[k]) for k in sparse}
    assert max(eps.values()) == pytest.approx(min(eps.values()), rel=1e-12)
    # the dense layers are the ones the formula would push past 1
    for k, shape in SHAPES.items():
        if d[k] == 1:
            assert next(iter(eps.values())) * sum(shape) / numel[k] > 1


def test_erk_by_hand_on_two_layers():
    # raw scores: a = 4/4 = 1, b = 8/16 = 0.5; eps * (1*4 + 0.5*16) = 0.5 * 20 -> eps = 10/12
    d = erk_densities({"a": (2, 2), "b": (4, 4)}, 0.5)
    assert d["a"] == pytest.approx(10 / 12) and d["b"] == pytest.approx(5 / 12)
    # at a higher density `a` would exceed 1: it is dense and b takes the rest of the budget
    d = erk_densities({"a": (2, 2), "b": (4, 4)}, 0.9)
    assert d["a"] == 1.0 and d["b"] == pytest.approx((0.9 * 20 - 4) / 16)


def test_erk_rejects_densities_outside_0_1():
    with pytest.raises(ValueError, match="density must be in"):
        erk_densities(SHAPES, 0.0)
    with pytest.raises(ValueError, match="sparsity 0.8 is density 0.2"):
        erk_densities(SHAPES, 1.5)
    assert erk_densities(SHAPES, 1.0) == {k: 1.0 for k in SHAPES}


@pytest.mark.parametrize("distribution", ["erk", "uniform", "global"])
def test_magnitude_masks_zero_the_new_graph_only(resnet, distribution):
    snap = snapshot(resnet)
    result = sparsify(resnet, config=SparsifyConfig(sparsity=0.7, distribution=distribution))
    assert_unchanged(resnet, snap)
    masks = layer_masks(result.graph)
    assert len(masks) == 10 and not layer_masks(resnet)
    original, state = resnet.module.state_dict(), result.graph.module.state_dict()
    total = sum(m.mask.size for m in masks.values())
    kept = sum(int(m.mask.sum()) for m in masks.values())
    assert kept / total == pytest.approx(0.3, abs=len(masks) / total)
    assert result.report.density == pytest.approx(kept / total)
    for name, m in masks.items():
        w0, w = original[name].numpy(), state[name].numpy()
        np.testing.assert_array_equal(w, np.where(m.mask, w0, 0))
        if distribution != "global" and m.density < 1:  # magnitude order inside a layer
            assert np.abs(w0[m.mask]).min() >= np.abs(w0[~m.mask]).max()
    if distribution == "uniform":
        assert all(m.density == pytest.approx(0.3, abs=1 / m.mask.size) for m in masks.values())
    if distribution == "global":   # one threshold over all layers
        kept_min = min(np.abs(original[k].numpy()[m.mask]).min() for k, m in masks.items())
        cut_max = max(np.abs(original[k].numpy()[~m.mask]).max() for k, m in masks.items())
        assert kept_min >= cut_max
    if distribution == "erk":
        shapes = {k: tuple(m.mask.shape) for k, m in masks.items()}
        expected = erk_densities(shapes, 0.3)
        for k, m in masks.items():
            assert m.density == pytest.approx(expected[k], abs=1 / m.mask.size)


def test_2_4_masks_on_the_gpu_target(resnet):
    result = sparsify(resnet, "gpu")
    assert result.report.pattern == "2:4"
    masks = layer_masks(result.graph)
    original, state = resnet.module.state_dict(), result.graph.module.state_dict()
    nodes = {n.name: n for n in result.graph.graph.nodes}
    for name, m in masks.items():
        node = nodes[m.node]
        in_axis = 0 if "transpose" in str(node.target) else 1
        w = np.moveaxis(state[name].numpy(), in_axis, -1).reshape(-1, 4)
        groups = np.moveaxis(m.mask, in_axis, -1).reshape(-1, 4)
        assert (groups.sum(axis=1) == 2).all()            # exactly 2 kept in every 4
        assert ((w != 0).sum(axis=1) <= 2).all()          # so at most 2 nonzeros
        w0 = np.abs(np.moveaxis(original[name].numpy(), in_axis, -1).reshape(-1, 4))
        kept = np.where(groups, w0, np.inf).min(axis=1)
        cut = np.where(groups, -np.inf, w0).max(axis=1)
        assert (kept >= cut).all()                        # the 2 largest of each group
        assert m.pattern == "2:4" and SPARSE_KEY in node.meta
    # the first conv has 3 input channels: not a multiple of 4, left dense and reported
    assert any("not a multiple of 4" in why for _, why in result.report.dense_layers)
    assert len(masks) == 9


def test_report_claims_no_speed_on_dense_runtimes(resnet):
    r = sparsify(resnet, config=SparsifyConfig(sparsity=0.8)).report
    assert r.macs_after == r.macs_before
    assert r.nonzero_macs < r.macs_before
    assert "no speedup is claimed" in r.speedup_note
    assert r.params_after == r.params_before - sum(
        round((1 - layer["density"]) * np.prod(layer["shape"])) for layer in r.layers)


def test_sparse_graph_runs_and_configs_say_what_is_wrong(resnet):
    result = sparsify(resnet, config=SparsifyConfig(sparsity=0.5, pattern="1:4"))
    x = zoo.example_inputs("resnet", seed=2)
    with torch.no_grad():
        assert torch.isfinite(result.graph(*x)).all()
    with pytest.raises(ValueError, match="fraction of weights zeroed"):
        SparsifyConfig(sparsity=1.0)
    with pytest.raises(ValueError, match="'N:M' with 0 < N < M"):
        SparsifyConfig(pattern="4:2")
    with pytest.raises(ValueError, match="distribution must be one of"):
        SparsifyConfig(distribution="random")

"""binarize: binarized layers hold sign(w) * mean|w| per output channel, the others int8 per
channel; ApGAN's redundancy picks the layers, or per-layer sensitivity does; `weight_bits`
gives the crossbar cost model bits per node; the input graph is untouched."""

import math

import numpy as np
import pytest
import torch

from gcc_gan import trace, zoo
from gcc_gan.passes.binarize import (BITS_KEY, BinarizeConfig, binarize, bit_layers,
                                     weight_bits)
from tests.passes.graph_checks import assert_unchanged, snapshot


@pytest.fixture(scope="module")
def dcgan():
    return trace(zoo.build("dcgan"), zoo.example_inputs("dcgan"))


@pytest.fixture(scope="module")
def resnet():
    return trace(zoo.build("resnet"), zoo.example_inputs("resnet"))


def conv_nodes(graph):
    return [n for n in graph.graph.nodes if n.op == "call_function"
            and ("conv" in str(n.target) or "linear" in str(n.target))]


def test_binarized_layers_reproduce_sign_times_alpha(dcgan):
    snap = snapshot(dcgan)
    result = binarize(dcgan)
    assert_unchanged(dcgan, snap)
    original, state = dcgan.module.state_dict(), result.graph.module.state_dict()
    ones = [b for b in bit_layers(result.graph).values() if b.bits == 1]
    assert ones
    for b in ones:
        w0 = original[b.weight]
        # a transposed conv's weight is (C_in, C_out, k, k): alpha per output channel = axis 1
        assert b.axis == 1
        alpha = w0.abs().mean(dim=(0, 2, 3), dtype=torch.float64).float()
        expected = torch.where(w0 >= 0, 1.0, -1.0) * alpha.view(1, -1, 1, 1)
        torch.testing.assert_close(state[b.weight], expected, rtol=1e-6, atol=0)
        assert torch.equal(state[b.weight], torch.from_numpy(b.dequantized()))
        assert set(b.codes.reshape(-1).tolist()) <= {-1, 1}


def test_the_other_layers_are_int8_per_channel(resnet):
    result = binarize(resnet)
    original, state = resnet.module.state_dict(), result.graph.module.state_dict()
    eights = [b for b in bit_layers(result.graph).values() if b.bits == 8]
    assert len(eights) == 10                      # no layer of a 32x32 ResNet has c >= h*w
    for b in eights:
        w0, w = original[b.weight].numpy(), state[b.weight].numpy()
        moved = np.moveaxis(w0, b.axis, 0).reshape(w0.shape[b.axis], -1)
        np.testing.assert_allclose(b.scale, np.abs(moved).max(axis=1) / 127, rtol=1e-6)
        shape = [1] * w.ndim
        shape[b.axis] = -1
        assert (np.abs(w - w0) <= b.scale.reshape(shape) / 2 + 1e-7).all()
        assert np.abs(b.codes).max() <= 127
        np.testing.assert_array_equal(w, b.dequantized())


def test_redundancy_measure_picks_the_layers(dcgan):
    result = binarize(dcgan)
    bits = weight_bits(result.graph)
    assert bits == weight_bits(result.graph.module)     # a GanGraph or its GraphModule
    for node in conv_nodes(dcgan):
        _, c, h, w = node.args[0].meta["val"].shape      # the layer's input
        r = c - h * w
        assert bits[node.name] == (1 if r >= 0 else 8), (node.name, r)
        entry = next(e for e in result.report.layers if e["node"] == node.name)
        assert entry["redundancy"] == r
    assert result.report.binarized == sum(b == 1 for b in bits.values()) >= 1
    assert result.report.weight_bits_after < result.report.weight_bits_before / 4
    # ApGAN's threshold is 0; a higher one binarizes fewer layers
    stricter = weight_bits(binarize(dcgan, config=BinarizeConfig(threshold=16)).graph)
    assert sum(b == 1 for b in stricter.values()) < result.report.binarized
    kept = weight_bits(binarize(dcgan, config=BinarizeConfig(keep_first_last=True)).graph)
    first, last = conv_nodes(dcgan)[0].name, conv_nodes(dcgan)[-1].name
    assert kept[first] == kept[last] == 8


def test_sensitivity_binarizes_the_least_sensitive_fraction(resnet):
    result = binarize(resnet, config=BinarizeConfig(criterion="sensitivity", fraction=0.5))
    layers = result.report.layers
    assert result.report.binarized == 5
    by_psnr = sorted(layers, key=lambda e: -e["sensitivity_psnr"])
    assert {e["node"] for e in by_psnr[:5]} == {e["node"] for e in layers if e["bits"] == 1}
    assert all(BITS_KEY in n.meta for n in conv_nodes(result.graph))
    assert 0 < result.report.simulated_psnr < math.inf
    with pytest.raises(ValueError, match="criterion must be one of"):
        BinarizeConfig(criterion="random")

"""Eager checks of every zoo generator, and its documented MACs against the hook counter.

Tiny configs run for real: output shape, finite, moderate and not flat values, per-sample
independence in eval mode (StyleGAN2 folds the batch into conv groups, so this checks the
folding), determinism under a seed. The standard configs' documented MACs are checked with the
forward-hook counter on the meta device; the slow tests also run the standard models for real.
"""

from __future__ import annotations

import pytest
import torch
from torch.utils import _pytree as pytree

from gcc_gan.zoo import ZOO, registry
from tests.zoo.hook_macs import count_macs, count_zoo_macs_on_meta

# zoo name -> output shape (without batch) of its tiny and standard configs
TINY_OUTPUT = {
    "resnet": (3, 32, 32), "unet": (3, 32, 32), "inception": (3, 32, 32), "dcgan": (3, 32, 32),
    "rrdb": (3, 64, 64), "rrdb_pixelshuffle": (3, 64, 64), "sngan": (3, 32, 32),
    "sngan_sn": (3, 32, 32), "spade": (3, 32, 64), "stylegan2": (3, 32, 32),
}
STANDARD_OUTPUT = {
    "resnet": (3, 256, 256), "unet": (3, 256, 256), "inception": (3, 256, 256),
    "dcgan": (3, 64, 64), "rrdb": (3, 256, 256), "rrdb_pixelshuffle": (3, 256, 256),
    "sngan": (3, 32, 32), "sngan_sn": (3, 32, 32), "spade": (3, 256, 512),
    "stylegan2": (3, 1024, 1024),
}
NAMES = sorted(ZOO)


def test_every_entry_is_covered():
    assert set(TINY_OUTPUT) == set(STANDARD_OUTPUT) == set(ZOO)


def select(inputs, i: int):
    """Sample i of every tensor in a (nested) input tuple, keeping the batch dimension."""
    return pytree.tree_map(lambda t: t[i:i + 1] if isinstance(t, torch.Tensor) else t, inputs)


def run(name: str, seed: int = 0, input_seed: int = 0) -> torch.Tensor:
    model = registry.build(name, seed=seed)
    with torch.no_grad():
        return model(*registry.example_inputs(name, seed=input_seed))


@pytest.mark.parametrize("name", NAMES)
def test_tiny_forward_at_batch_1_and_3(name):
    """Right shape, finite, no blow-up, not flat; each sample's output independent of the rest
    of its batch."""
    model = registry.build(name)
    inputs = registry.example_inputs(name, batch=3)
    with torch.no_grad():
        whole = model(*inputs)
        singles = [model(*select(inputs, i)) for i in range(3)]
    assert whole.shape == (3, *TINY_OUTPUT[name])
    assert torch.isfinite(whole).all()
    assert whole.abs().max() < 20, f"{name}: eval output blew up to {whole.abs().max():.3g}"
    assert whole.std() > 1e-4, f"{name}: eval output is flat"
    for i, single in enumerate(singles):
        assert single.shape == (1, *TINY_OUTPUT[name])
        torch.testing.assert_close(single, whole[i:i + 1], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_deterministic_under_seed(name):
    assert torch.equal(run(name, seed=0), run(name, seed=0))
    assert not torch.equal(run(name, seed=0), run(name, seed=1))
    assert not torch.equal(run(name, input_seed=0), run(name, input_seed=1))


@pytest.mark.parametrize("name", NAMES)
def test_meta_hook_count_equals_real_count(name):
    real = count_macs(registry.build(name), registry.example_inputs(name))
    assert real[0] > 0
    assert count_zoo_macs_on_meta(name, "tiny") == real


@pytest.mark.parametrize("name", NAMES)
def test_documented_macs_match_hook_count(name):
    documented = registry.documented_macs(name)
    counted = count_zoo_macs_on_meta(name, "standard")
    for doc, count, kind in zip(documented, counted, ("real", "literature")):
        assert doc == pytest.approx(count, rel=1e-3), (
            f"{name}: documented {kind} MACs {doc:.5g}, hooks count {count:.5g}")


@pytest.mark.parametrize("name, real, lit, rel", [
    ("resnet", 49.55e9, 56.8e9, 2e-3),   # CycleGAN ResNet-9 (GAN Compression, CAT)
    ("unet", 6.05e9, 18.1e9, 3e-3),      # pix2pix U-Net-256
    ("stylegan2", None, 144e9, 5e-3),    # Anycost GAN: config-f 1024 "consumes 144G MACs"
    ("spade", None, 281e9, 2e-3),        # CAT / GAN Compression: GauGAN, Cityscapes, "more"
])
def test_published_figures(name, real, lit, rel):
    counted_real, counted_lit = count_zoo_macs_on_meta(name, "standard")
    if real is not None:
        assert counted_real == pytest.approx(real, rel=rel)
    assert counted_lit == pytest.approx(lit, rel=rel)


def test_spade_parameters_match_published():
    """GauGAN on Cityscapes: 93.0M parameters (GAN Compression, CAT)."""
    with torch.device("meta"):
        spade = registry.build("spade", "standard")
    assert sum(p.numel() for p in spade.parameters()) == pytest.approx(93.0e6, rel=1e-3)


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_standard_forward(name):
    """The standard models for real at batch 1: shape, finite, and the same hook count."""
    model = registry.build(name, "standard")
    inputs = registry.example_inputs(name, "standard")
    with torch.no_grad():
        out = model(*inputs)
    assert out.shape == (1, *STANDARD_OUTPUT[name]) and torch.isfinite(out).all()
    assert count_macs(model, inputs) == count_zoo_macs_on_meta(name, "standard")

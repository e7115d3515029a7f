"""Eager checks of the SNGAN, GauGAN (SPADE) and StyleGAN2 zoo generators.

Tiny configs run for real: output shape, finite and moderate values, per-sample independence in
eval mode (StyleGAN2 folds the batch into conv groups, so this checks the folding), determinism
under a seed, and each model's own paths (spectral norm, the SPADE VAE input and norm variants,
StyleGAN2 style mixing and truncation). The standard configs' documented MACs are checked with
the forward-hook counter on the meta device (shapes only); the slow tests also run the standard
models for real.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

import tests.zoo.hook_rules  # noqa: F401  (registers the StyleGAN2 functional-conv rules)
from gcc_gan.zoo import registry
from tests.zoo.hook_macs import count_macs

# zoo name -> output shape (without batch) of its tiny config
TINY_OUTPUT = {
    "sngan": (3, 32, 32),
    "sngan_sn": (3, 32, 32),
    "spade": (3, 32, 64),
    "stylegan2": (3, 32, 32),
}
NAMES = sorted(TINY_OUTPUT)
STANDARD_OUTPUT = {"sngan": (3, 32, 32), "sngan_sn": (3, 32, 32), "spade": (3, 256, 512),
                   "stylegan2": (3, 1024, 1024)}


def to_meta(x):
    if isinstance(x, (list, tuple)):
        return type(x)(to_meta(v) for v in x)
    return x.to("meta")


def select(x, i: int):
    """Sample i of every tensor in a (nested) input tuple, keeping the batch dimension."""
    if isinstance(x, (list, tuple)):
        return type(x)(select(v, i) for v in x)
    return x[i:i + 1]


def run(name: str, seed: int = 0, input_seed: int = 0, batch: int = 1, **overrides) -> torch.Tensor:
    model = registry.build(name, seed=seed, **overrides)
    with torch.no_grad():
        return model(*registry.example_inputs(name, batch=batch, seed=input_seed, **overrides))


def hook_count_on_meta(name: str, config: str) -> tuple[float, float]:
    with torch.device("meta"):
        model = registry.build(name, config)
    return count_macs(model, to_meta(registry.example_inputs(name, config)))


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
    assert whole.std() > 1e-3, f"{name}: eval output is flat"
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
    assert hook_count_on_meta(name, "tiny") == real


@pytest.mark.parametrize("name", NAMES)
def test_documented_macs_match_hook_count(name):
    documented = registry.documented_macs(name)
    counted = hook_count_on_meta(name, "standard")
    for doc, count, kind in zip(documented, counted, ("real", "literature")):
        assert doc == pytest.approx(count, rel=1e-3), (
            f"{name}: documented {kind} MACs {doc:.5g}, hooks count {count:.5g}")


def test_published_figures():
    """Anycost GAN: StyleGAN2 (1024, config-f) "consumes 144G MACs" (torchprofile convention).
    GAN Compression / CAT: GauGAN on Cityscapes, 93.0M parameters and 281G MACs, which is the
    num_upsampling_layers="more" variant their code runs, our standard config (the SPADE
    repository's default "normal" counts 292.7G)."""
    assert hook_count_on_meta("stylegan2", "standard")[1] == pytest.approx(144e9, rel=5e-3)
    with torch.device("meta"):
        spade = registry.build("spade", "standard")
        seg = registry.example_inputs("spade", "standard")[0].to("meta")
    assert sum(p.numel() for p in spade.parameters()) == pytest.approx(93.0e6, rel=1e-3)
    assert count_macs(spade, (seg,)) == pytest.approx((281e9, 281e9), rel=2e-3)


def test_sngan_sn_parametrizes_every_conv_and_linear():
    model = registry.build("sngan_sn")
    layers = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert len(layers) == 1 + 3 * 3 + 1
    assert all(parametrize.is_parametrized(m, "weight") for m in layers)
    assert not any(parametrize.is_parametrized(m) for m in registry.build("sngan").modules())


def test_spade_uses_syncbatchnorm_and_spectral_norm_on_block_convs():
    model = registry.build("spade")
    norms = [m for m in model.modules() if isinstance(m, nn.SyncBatchNorm)]
    assert norms and not any(n.affine for n in norms)
    block = model.up_0
    assert block.learned_shortcut and not model.head_0.learned_shortcut
    for conv in (block.conv_0, block.conv_1, block.conv_s):
        assert parametrize.is_parametrized(conv, "weight")
    assert not parametrize.is_parametrized(block.norm_0.mlp_gamma)
    assert block.conv_s.bias is None


def test_spade_vae_path_takes_a_latent():
    model = registry.build("spade", z_dim=8)
    seg, z = registry.example_inputs("spade", batch=2, z_dim=8)
    assert z.shape == (2, 8)
    with torch.no_grad():
        out = model(seg, z)
        other = model(seg, torch.randn(2, 8))
    assert out.shape == (2, *TINY_OUTPUT["spade"]) and torch.isfinite(out).all()
    assert not torch.allclose(out, other)
    assert isinstance(model.fc, nn.Linear)


def test_spade_input_is_one_hot_plus_edges():
    (seg,) = registry.example_inputs("spade", batch=2)
    labels, edges = seg[:, :-1], seg[:, -1]
    assert torch.equal(labels.sum(1), torch.ones_like(edges))
    assert set(edges.unique().tolist()) == {0.0, 1.0}


@pytest.mark.parametrize("overrides, shape", [
    (dict(norm="batch", spectral_norm=False), (3, 32, 64)),
    (dict(norm="instance"), (3, 32, 64)),
    (dict(num_upsampling_layers="more", crop_size=(64, 128)), (3, 64, 128)),
    (dict(num_upsampling_layers="most", crop_size=(128, 128)), (3, 128, 128)),
])
def test_spade_variants_run(overrides, shape):
    out = run("spade", batch=2, **overrides)
    assert out.shape == (2, *shape) and torch.isfinite(out).all()


def test_spade_rejects_unknown_options():
    with pytest.raises(ValueError, match="num_upsampling_layers"):
        registry.build("spade", num_upsampling_layers="many")
    with pytest.raises(ValueError, match="norm"):
        registry.build("spade", norm="group")


def test_stylegan2_style_mixing():
    model = registry.build("stylegan2")
    z1, z2 = torch.randn(2, 16), torch.randn(2, 16)
    with torch.no_grad():
        one = model([z1])
        assert torch.equal(model([z1, z1]), one)
        assert torch.equal(model([z1, z2], inject_index=model.n_latent), one)
        assert torch.equal(model([z1, z2], inject_index=0), model([z2]))
        mixed = model([z1, z2])
    assert mixed.shape == one.shape and torch.isfinite(mixed).all()
    assert not torch.allclose(mixed, one) and not torch.allclose(mixed, model([z2]))


def test_stylegan2_truncation():
    model = registry.build("stylegan2")
    (styles,) = registry.example_inputs("stylegan2", batch=3)
    with torch.no_grad():
        full = model(styles)
        assert torch.equal(model(styles, truncation=1.0), full)
        centre = model(styles, truncation=0.0)
        half = model(styles, truncation=0.5)
    torch.testing.assert_close(centre, centre[:1].expand_as(centre))  # every z -> mean w
    assert not torch.allclose(half, full) and torch.isfinite(half).all()
    assert model.mean_latent.abs().sum() > 0


def test_stylegan2_channel_table():
    """Rosinality's config-f table at the defaults: 512 up to 32, then 256*cm / (res / 64)."""
    with torch.device("meta"):
        model = registry.build("stylegan2", "standard")
    channels = [model.conv1.conv.out_channel] + [c.conv.out_channel for c in model.convs[1::2]]
    assert channels == [512, 512, 512, 512, 512, 256, 128, 64, 32]  # 4 .. 1024
    assert model.n_latent == 18


def test_stylegan2_rejects_odd_resolution():
    with pytest.raises(ValueError, match="power of two"):
        registry.build("stylegan2", resolution=48)


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_standard_forward(name):
    """The standard models for real at batch 1: shape, finite, and the same hook count."""
    model = registry.build(name, "standard")
    inputs = registry.example_inputs(name, "standard")
    with torch.no_grad():
        out = model(*inputs)
    assert out.shape == (1, *STANDARD_OUTPUT[name]) and torch.isfinite(out).all()
    assert count_macs(model, inputs) == hook_count_on_meta(name, "standard")

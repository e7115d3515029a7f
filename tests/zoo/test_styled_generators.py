"""Architecture details of the normalised and styled generators: SNGAN with spectral norm,
GauGAN (SPADE) and StyleGAN2 (style mixing, truncation, channel table)."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

from gcc_gan.zoo import registry


def run(name: str, batch: int = 1, **overrides) -> torch.Tensor:
    model = registry.build(name, **overrides)
    with torch.no_grad():
        return model(*registry.example_inputs(name, batch=batch, **overrides))


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
    assert out.shape == (2, 3, 32, 64) and torch.isfinite(out).all()
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

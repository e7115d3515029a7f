"""Eager checks of the ResNet, U-Net, CAT inception, DCGAN and ESRGAN (RRDB) zoo generators.

Tiny configs are run for real: output shape, finite and moderate values, per-sample independence
in eval mode, determinism under a seed. The standard configs' documented MACs are checked against
the forward-hook counter run on the meta device (shapes only, no arithmetic), which counts exactly
what a real forward counts (checked on the tiny configs) in a fraction of the time.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from gcc_gan.zoo import registry
from tests.zoo.hook_macs import count_macs

# zoo name -> output shape (without batch) of its tiny config
TINY_OUTPUT = {
    "resnet": (3, 32, 32),
    "unet": (3, 32, 32),
    "inception": (3, 32, 32),
    "dcgan": (3, 32, 32),
    "rrdb": (3, 64, 64),
    "rrdb_pixelshuffle": (3, 64, 64),
}
NAMES = sorted(TINY_OUTPUT)


def run(name: str, seed: int) -> torch.Tensor:
    model = registry.build(name, seed=seed)
    with torch.no_grad():
        return model(*registry.example_inputs(name))


def hook_count_on_meta(name: str, config: str) -> tuple[float, float]:
    entry = registry.ZOO[name]
    with torch.device("meta"):
        model = entry.factory(**entry.configs[config].kwargs).eval()
    inputs = tuple(x.to("meta") for x in registry.example_inputs(name, config))
    return count_macs(model, inputs)


@pytest.mark.parametrize("name", NAMES)
def test_tiny_forward_at_batch_1_and_3(name):
    """Right shape, finite, no blow-up; each sample's output independent of its batch-mates."""
    model = registry.build(name)
    (x,) = registry.example_inputs(name, batch=3)
    with torch.no_grad():
        whole = model(x)
        singles = [model(x[i:i + 1]) for i in range(3)]
    assert whole.shape == (3, *TINY_OUTPUT[name])
    assert torch.isfinite(whole).all()
    assert whole.abs().max() < 20, f"{name}: eval output blew up to {whole.abs().max():.3g}"
    for i, single in enumerate(singles):
        assert single.shape == (1, *TINY_OUTPUT[name])
        torch.testing.assert_close(single, whole[i:i + 1], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_deterministic_under_seed(name):
    assert torch.equal(run(name, seed=0), run(name, seed=0))
    assert not torch.equal(run(name, seed=0), run(name, seed=1))


@pytest.mark.parametrize("name", NAMES)
def test_meta_hook_count_equals_real_count(name):
    model = registry.build(name)
    real = count_macs(model, registry.example_inputs(name))
    assert hook_count_on_meta(name, "tiny") == real


@pytest.mark.parametrize("name", NAMES)
def test_documented_macs_match_hook_count(name):
    documented = registry.documented_macs(name)
    counted = hook_count_on_meta(name, "standard")
    for doc, count, kind in zip(documented, counted, ("real", "literature")):
        assert doc == pytest.approx(count, rel=1e-3), (
            f"{name}: documented {kind} MACs {doc:.4g}, hooks count {count:.4g}")


def test_published_figures():
    """CycleGAN ResNet-9 and pix2pix U-Net-256 as the GAN-compression literature reports them."""
    assert hook_count_on_meta("resnet", "standard") == pytest.approx((49.55e9, 56.8e9), rel=2e-3)
    assert hook_count_on_meta("unet", "standard") == pytest.approx((6.05e9, 18.1e9), rel=3e-3)


def test_cat_teacher_block_structure():
    model = registry.build("inception", "standard")
    block = model.blocks[0]
    convs = [m for m in block.modules() if isinstance(m, nn.Conv2d)]
    depthwise = [c for c in convs if c.groups > 1]
    assert len(block.branches) == 6
    assert [c.kernel_size[0] for c in depthwise] == [1, 3, 5]
    assert all(c.groups == c.in_channels == c.out_channels == 256 // 6 for c in depthwise)
    norms = [m for m in model.modules() if isinstance(m, nn.InstanceNorm2d)]
    assert norms and all(n.affine for n in norms)


def test_unet_dropout_only_in_middle_levels():
    model = registry.build("unet", num_downs=7, use_dropout=True)
    assert sum(isinstance(m, nn.Dropout) for m in model.modules()) == 7 - 5


def test_rrdb_variants_use_their_upsampler():
    nearest, shuffle = registry.build("rrdb"), registry.build("rrdb_pixelshuffle")
    assert any(isinstance(m, nn.Upsample) for m in nearest.modules())
    assert any(isinstance(m, nn.PixelShuffle) for m in shuffle.modules())
    assert not any(isinstance(m, nn.PixelShuffle) for m in nearest.modules())


@pytest.mark.parametrize("name, overrides, shape", [
    ("resnet", dict(norm="batch"), (3, 32, 32)),
    ("resnet", dict(norm="none", padding_type="zero"), (3, 32, 32)),
    ("resnet", dict(affine=True, padding_type="replicate", use_dropout=True), (3, 32, 32)),
    ("unet", dict(norm="instance", use_dropout=True, num_downs=5, input_nc=1), (3, 32, 32)),
    ("inception", dict(norm="batch", output_nc=1), (1, 32, 32)),
    ("dcgan", dict(img_size=8, nc=1), (1, 8, 8)),
    ("rrdb", dict(scale=2, in_nc=1, out_nc=1), (1, 32, 32)),
    ("rrdb_pixelshuffle", dict(scale=2), (3, 32, 32)),
])
def test_tiny_variants_run(name, overrides, shape):
    model = registry.build(name, **overrides)
    with torch.no_grad():
        out = model(*registry.example_inputs(name, **overrides))
    assert out.shape == (1, *shape) and torch.isfinite(out).all()


def test_conv_bias_dropped_only_before_batchnorm():
    """CycleGAN's use_bias: BatchNorm's beta makes a conv bias redundant; the last conv keeps it."""
    for norm, biased in (("batch", False), ("instance", True), ("none", True)):
        convs = [m for m in registry.build("resnet", norm=norm).modules()
                 if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
        assert all((c.bias is not None) == biased for c in convs[:-1])
        assert convs[-1].bias is not None


@pytest.mark.parametrize("name, overrides", [
    ("resnet", dict(norm="group")),
    ("resnet", dict(padding_type="circular")),
    ("unet", dict(num_downs=4)),
    ("inception", dict(norm="none")),
    ("inception", dict(kernel_sizes=(2, 3))),
    ("dcgan", dict(img_size=48)),
    ("rrdb", dict(scale=3)),
    ("rrdb", dict(upsample="bilinear")),
])
def test_rejects_bad_arguments(name, overrides):
    with pytest.raises(ValueError):
        registry.build(name, **overrides)

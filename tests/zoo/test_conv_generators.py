"""Architecture details of the plain conv generators: CycleGAN ResNet, pix2pix U-Net, CAT's
inception teacher, DCGAN and ESRGAN's RRDB (options, variants, rejected arguments)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from gcc_gan.zoo import registry


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

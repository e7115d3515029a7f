"""The real-data tasks (scikit-image photographs, scikit-learn digits), GAN training and
FID/KID-digits."""

import pytest
import torch

from gcc_gan import trace, zoo
from gcc_gan.train.fid import (DigitsClassifier, digits_scores, frechet_distance,
                               kernel_inception_distance)
from gcc_gan.train.gan import Discriminator, GanConfig, GanTrainer, sample
from gcc_gan.train.loop import run_steps
from gcc_gan.train.tasks import (SR_HELD_OUT, GlobalResidual, NoisyPatches, SRConfig, SRPatches,
                                 degrade, digits, noisy_pairs, sr_metrics, sr_pairs)


def test_sr_patches_are_aligned_pairs_from_training_photographs_only():
    with pytest.raises(ValueError, match="held out"):
        SRPatches(names=("astronaut", "coffee"))
    patches = SRPatches(SRConfig(patch=32, batch=4), names=("astronaut",))
    lr, hr = next(patches)
    assert lr.shape == (4, 3, 8, 8) and hr.shape == (4, 3, 32, 32)
    assert 0 <= lr.min() and lr.max() <= 1
    # LR is the degraded HR: re-degrading the HR crop agrees away from the crop border
    assert (degrade(hr)[..., 2:-2, 2:-2] - lr[..., 2:-2, 2:-2]).abs().max() < 0.03
    state = patches.state_dict()
    a = next(patches)[0]
    patches.load_state_dict(state)
    assert torch.equal(next(patches)[0], a)


def test_noisy_patches_add_fresh_noise_of_sigma_and_resume():
    patches = NoisyPatches(SRConfig(scale=1, patch=32, batch=8), 0.1, names=("astronaut",))
    noisy, clean = next(patches)
    assert noisy.shape == clean.shape == (8, 3, 32, 32)
    assert (noisy - clean).std() == pytest.approx(0.1, rel=0.1)
    state = patches.state_dict()
    a = next(patches)
    patches.load_state_dict(state)
    b = next(patches)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_a_global_residual_with_a_silent_net_is_the_identity():
    class Silent(torch.nn.Module):
        def forward(self, x):
            return torch.zeros_like(x)

    pairs = noisy_pairs(SR_HELD_OUT[:1], 0.1)
    assert pairs[0][0].shape[1] % 4 == 0 and pairs[0][0].shape[2] % 4 == 0
    identity = sr_metrics(GlobalResidual(Silent()), pairs, scale=1)["psnr"]
    assert identity == pytest.approx(sr_metrics(torch.nn.Identity(), pairs, scale=1)["psnr"])
    assert 15 < identity < 25  # sigma 0.1 noise: about 20 dB


def test_sr_metrics_run_a_program_traced_on_patches_at_photograph_size():
    pairs = sr_pairs(SR_HELD_OUT[:1])
    model = zoo.rrdb_generator(nf=4, nb=1, gc=4)
    graph = trace(model, (torch.rand(1, 3, 8, 8),))
    eager, traced = sr_metrics(model, pairs), sr_metrics(graph.module, pairs)
    assert traced["psnr"] == pytest.approx(eager["psnr"], abs=1e-4)
    bicubic = sr_metrics(torch.nn.Upsample(scale_factor=4, mode="bicubic"), pairs)
    assert 20 < bicubic["psnr"] < 40 and 0 < bicubic["ssim"] < 1


def test_digits_are_in_the_tanh_range():
    x, y = digits(16)
    assert x.shape == (1797, 1, 16, 16) and y.shape == (1797,)
    assert x.min() == -1 and x.max() == 1


def test_fid_and_kid_are_zero_for_the_same_set_and_grow_with_a_shift():
    a = torch.randn(400, 8, generator=torch.Generator().manual_seed(0))
    assert frechet_distance(a, a) == pytest.approx(0, abs=1e-6)
    assert frechet_distance(a, a + 1.0) == pytest.approx(8.0, rel=1e-6)  # |mu shift|^2
    b = torch.randn(400, 8, generator=torch.Generator().manual_seed(1))
    same, _ = kernel_inception_distance(a, b, subsets=5, subset_size=200)
    shifted, _ = kernel_inception_distance(a, b + 1.0, subsets=5, subset_size=200)
    assert abs(same) < shifted


def test_gan_training_steps_and_scores_digits():
    x, _ = digits(16)
    gen = zoo.dcgan_generator(nz=8, ngf=4, nc=1, img_size=16)
    trainer = GanTrainer(gen, Discriminator(1, 4, 16), x, GanConfig(nz=8, batch=16))
    history = run_steps(trainer.step, 5, state=trainer.state(), progress=False)
    assert history.steps == 5 and all(p.grad is not None for p in gen.parameters())
    images = sample(gen, 64, nz=8)
    assert images.shape == (64, 1, 16, 16)
    scores = digits_scores(DigitsClassifier(16), images, x[:64])
    assert scores["fid"] > 0 and set(scores) == {"fid", "kid", "kid_std"}

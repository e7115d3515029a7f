"""Lottery tickets (IMP with rewinding) and STU-GAN sparse training on a tiny regression net:
loss decreases, masks hold their density, masked weights stay zero, runs resume."""

import pytest
import torch

from gcc_gan.train.lottery import LotteryConfig, lottery
from gcc_gan.train.loop import CheckpointConfig
from gcc_gan.train.masks import Masks, kernels, prune_magnitude
from gcc_gan.train.sparse_train import SparseConfig, erk_masks, sparse_train
from tests.train.tiny import conv_net, regression_trainer


def assert_masked(model, masks):
    for name, p in kernels(model).items():
        assert torch.all(p[~masks[name]] == 0), name


def test_magnitude_pruning_removes_the_exact_fraction_of_smallest_weights():
    model = conv_net()
    masks = prune_magnitude(model, Masks.dense(model), 0.3)
    assert masks.kept == masks.total - round(0.3 * masks.total)
    kept = torch.cat([p.detach().abs()[masks[n]] for n, p in kernels(model).items()])
    dropped = torch.cat([p.detach().abs()[~masks[n]] for n, p in kernels(model).items()])
    assert dropped.max() <= kept.min()


def test_lottery_reaches_the_sparsity_rewinds_and_trains_the_ticket(tmp_path):
    trainer = regression_trainer(30)
    config = LotteryConfig(sparsity=0.6, rounds=2, steps=30, rewind_step=5,
                           checkpoint_dir=tmp_path, checkpoint_every=10, progress=False)
    result = lottery(trainer, config)
    assert result.masks.density() == pytest.approx(0.4, abs=0.02)
    assert [r["density"] for r in result.rounds] == pytest.approx(
        [1.0, 1 - config.rate, 0.4], abs=0.02)
    assert_masked(trainer.model, result.masks)
    h = result.history
    assert h.first_step == 5 and h.steps == 30  # the ticket restarts from step k = 5
    assert h.mean("loss", last=5) < h.mean("loss", first=5)
    again = lottery(regression_trainer(30), config)  # finished: resumes, trains nothing more
    assert again.history.resumed_from == 30
    assert torch.equal(torch.cat([again.masks[n].flatten() for n in again.masks]),
                       torch.cat([result.masks[n].flatten() for n in result.masks]))


def test_erk_masks_meet_the_global_density_with_denser_small_layers():
    model = conv_net(width=16)
    masks = erk_masks(model, 0.75, torch.Generator().manual_seed(0))
    assert masks.density() == pytest.approx(0.25, abs=0.01)
    d = masks.densities()
    assert d["0.weight"] > d["2.weight"]  # 1->16 (144 weights) denser than 16->16 (2304)


def test_sparse_training_explores_at_a_fixed_parameter_count_and_learns():
    trainer = regression_trainer(60)
    counts = {}

    result = sparse_train(trainer, SparseConfig(sparsity=0.7, steps=60, delta_t=10,
                                                prune_rate=0.5, progress=False))
    assert len(result.updates) == 5 and all(u["moved"] > 0 for u in result.updates)
    assert result.masks.density() == pytest.approx(0.3, abs=0.01)
    start = erk_masks(conv_net(), 0.7, torch.Generator().manual_seed(0))
    for name in result.masks:  # every layer keeps its ERK count through every exploration
        counts[name] = int(result.masks[name].sum())
        assert counts[name] == int(start[name].sum())
    assert_masked(trainer.model, result.masks)
    h = result.history
    assert h.mean("loss", last=5) < 0.7 * h.mean("loss", first=5)


def test_sparse_training_resumes_with_its_masks(tmp_path):
    config = SparseConfig(sparsity=0.7, steps=20, delta_t=5, progress=False,
                          checkpoint=CheckpointConfig(tmp_path, every=10))
    full = sparse_train(regression_trainer(20), SparseConfig(sparsity=0.7, steps=20, delta_t=5,
                                                             progress=False))
    short = SparseConfig(**{**config.__dict__, "steps": 20})
    first = regression_trainer(20)
    trainer_steps = first.step

    def crash(t):
        if t == 13:
            raise KeyboardInterrupt
        return trainer_steps(t)
    first.step = crash
    with pytest.raises(KeyboardInterrupt):
        sparse_train(first, short)
    resumed = sparse_train(regression_trainer(20), config)
    assert resumed.history.resumed_from == 10
    assert [u["step"] for u in resumed.updates] == [u["step"] for u in full.updates]
    for name in full.masks:
        assert torch.equal(resumed.masks[name], full.masks[name])

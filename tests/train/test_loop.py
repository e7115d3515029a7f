"""The training loop: resume from the newest checkpoint continues at the saved step, exactly."""

import pytest
import torch

from gcc_gan.train.loop import (CheckpointConfig, CheckpointError, latest_checkpoint,
                                run_steps)
from tests.train.tiny import conv_net, regression_trainer


class Crash(Exception):
    pass


def crashing(step, at):
    def wrapped(t):
        if t == at:
            raise Crash
        return step(t)
    return wrapped


def test_resume_continues_at_the_saved_step_and_matches_an_uninterrupted_run(tmp_path):
    reference = regression_trainer(10)
    full = run_steps(reference.step, 10, state=reference.state())

    ckpt = CheckpointConfig(tmp_path / "run", every=5)
    first = regression_trainer(10)
    with pytest.raises(Crash):
        run_steps(crashing(first.step, 7), 10, state=first.state(), checkpoint=ckpt)
    assert latest_checkpoint(ckpt.directory)[0] == 5

    second = regression_trainer(10)  # a new process: fresh objects, same arguments
    resumed = run_steps(second.step, 10, state=second.state(), checkpoint=ckpt)
    assert resumed.resumed_from == 5
    assert resumed.steps == 10 and len(resumed.records) == 10
    assert resumed.records[:5] == full.records[:5]
    for a, b in zip(reference.model.parameters(), second.model.parameters()):
        torch.testing.assert_close(a, b)
    assert latest_checkpoint(ckpt.directory)[0] == 10


def test_loss_decreases_and_only_the_newest_checkpoints_are_kept(tmp_path):
    trainer = regression_trainer(40)
    ckpt = CheckpointConfig(tmp_path, every=10, keep=2)
    history = run_steps(trainer.step, 40, state=trainer.state(), checkpoint=ckpt)
    assert history.mean("loss", last=5) < 0.5 * history.mean("loss", first=5)
    assert sorted(p.name for p in tmp_path.glob("step_*.pt")) == ["step_00000030.pt",
                                                                   "step_00000040.pt"]
    again = regression_trainer(40)  # finished: resuming runs no step
    assert run_steps(again.step, 40, state=again.state(), checkpoint=ckpt).resumed_from == 40


def test_a_checkpoint_of_another_model_says_what_to_do(tmp_path):
    trainer = regression_trainer(2)
    run_steps(trainer.step, 2, state=trainer.state(), checkpoint=CheckpointConfig(tmp_path))
    other = regression_trainer(4)
    other.model = conv_net(width=4)
    with pytest.raises(CheckpointError, match="delete it to start over"):
        run_steps(other.step, 4, state={"model": other.model},
                  checkpoint=CheckpointConfig(tmp_path))


def test_a_fresh_start_deletes_the_old_runs_checkpoints(tmp_path):
    old = regression_trainer(6)
    run_steps(old.step, 6, state=old.state(), checkpoint=CheckpointConfig(tmp_path, every=3))
    new = regression_trainer(4)
    history = run_steps(new.step, 4, state=new.state(),
                        checkpoint=CheckpointConfig(tmp_path, every=2, resume=False))
    assert history.resumed_from == 0
    assert sorted(p.name for p in tmp_path.glob("step_*.pt")) == ["step_00000002.pt",
                                                                   "step_00000004.pt"]

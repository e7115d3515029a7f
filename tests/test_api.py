"""gcc_gan.compile end to end: every zoo model, save/load, the report, and the errors users hit."""

import copy
import json

import pytest
import torch

import gcc_gan
from gcc_gan import TraceError, zoo
from gcc_gan.train import DistillConfig
from gcc_gan.search import BudgetError

NAMES = sorted(zoo.ZOO)


FLOAT = ["fold_norms", "prune_channels"]
TINY = 1  # tiny models' groups are narrower than x86's 16-channel alignment


@pytest.mark.parametrize("name", NAMES)
def test_every_zoo_model_compiles_at_25_percent(name, tmp_path):
    """In float, the ONNX model must agree with `.module`; int8 is checked below."""
    model = zoo.build(name)
    out = gcc_gan.compile(model, "x86", ratio=0.25, example_inputs=zoo.example_inputs(name),
                          passes=FLOAT, round_to=TINY, measure=False)
    assert out.report.macs_after <= 0.25 * out.report.macs_before
    for batch in (1, 4):
        x = zoo.example_inputs(name, batch=batch, seed=batch)
        with torch.no_grad():
            expected = out.module(*x)
        assert (out.run(*x) - expected).abs().max().item() <= 1e-4
    loaded = gcc_gan.load(out.save(tmp_path / name))
    x = zoo.example_inputs(name, batch=4, seed=7)
    assert torch.equal(loaded.run(*x), out.run(*x))
    with torch.no_grad():
        assert torch.equal(loaded.module(*x), out.module(*x))
    assert loaded.report == out.report


# the float test above covers every model by default; these int8 runs are the slowest ones
HEAVY_INT8 = {"spade", "inception", "rrdb_pixelshuffle", "sngan_sn"}


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in HEAVY_INT8
                                  else n for n in NAMES])
def test_every_zoo_model_compiles_to_int8_at_25_percent(name, tmp_path):
    calib = [zoo.example_inputs(name, batch=2, seed=s) for s in range(2)]
    out = gcc_gan.compile(zoo.build(name), "x86", ratio=0.25, example_inputs=calib[0],
                          calib_data=calib, round_to=TINY, measure=False)
    assert [p.name for p in out.report.passes][-1] == "quantize_int8"
    low = out.report.lowering
    assert low["int8_layers"] == 0 or low["int8_psnr_vs_float"] > 30
    bits = next(p.details["weight_bits"] for p in out.report.passes if p.name == "quantize_int8")
    assert any("int8 weights are 7-bit" in n for n in out.report.notes) == (bits == 7)
    for batch in (1, 4):
        x = zoo.example_inputs(name, batch=batch, seed=batch)
        with torch.no_grad():
            assert out.run(*x).shape == out.module(*x).shape
    x = zoo.example_inputs(name, batch=4, seed=7)
    assert torch.equal(gcc_gan.load(out.save(tmp_path / name)).run(*x), out.run(*x))


def test_compile_never_modifies_the_users_model():
    model = zoo.build("unet").train()
    state = copy.deepcopy(model.state_dict())
    gcc_gan.compile(model, ratio=0.3, example_inputs=zoo.example_inputs("unet"), round_to=TINY,
                    measure=False)
    assert model.training
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())


def test_report_measures_latency_and_fidelity_and_round_trips(tmp_path):
    model = zoo.build("resnet")
    calib = [zoo.example_inputs("resnet", batch=2, seed=s) for s in range(3)]
    out = gcc_gan.compile(model, budget_macs=0.5 * 5947392, example_inputs=calib[0],
                          calib_data=calib, output_dir=tmp_path, round_to=TINY)
    r = out.report
    assert r.latency_before["backend"] == "torch" and r.latency_after["backend"] == "onnxruntime"
    assert r.speedup and r.speedup > 0
    assert r.fidelity_inputs == "3 calibration batches" and r.fidelity["samples"] == 6
    assert 0 < r.fidelity["ssim"] <= 1 and r.fidelity["psnr"] > 0
    assert [p.name for p in r.passes] == ["fold_norms", "deconv_to_subpixel", "split_taps",
                                          "prune_channels", "quantize_int8"]
    # 8 convs + 2 sub-pixel ones: int8, or float where int8 timed slower here (tiny inputs)
    quant = next(p for p in r.passes if p.name == "quantize_int8")
    slower = [why for _, why in quant.details["float_layers"] if "int8 is slower here" in why]
    assert r.lowering["int8_layers"] + len(slower) == 10
    assert r.lowering["int8_psnr_vs_float"] is None or r.lowering["int8_psnr_vs_float"] > 30
    prune = next(p for p in r.passes if p.name == "prune_channels")
    assert prune.settings["budget_macs"] == 0.5 * r.macs_before
    assert r.layers and r.environment["torch"] == torch.__version__
    data = json.loads((tmp_path / "report.json").read_text())
    assert data["schema"] == "gcc-gan.compile-report/2" and data["macs_after"] == r.macs_after
    assert gcc_gan.CompileReport.from_json(r.to_json()) == r
    md = (tmp_path / "report.md").read_text()
    assert "## Passes" in md and "## Layers" in md and "latency" in md
    assert {"model.onnx", "model.pt2", "example_inputs.pt", "report.json", "report.md"} <= \
        {p.name for p in tmp_path.iterdir()}


def test_without_a_budget_pruning_is_skipped_and_said():
    out = gcc_gan.compile(zoo.build("dcgan"), example_inputs=zoo.example_inputs("dcgan"),
                          measure=False)
    assert [p.name for p in out.report.passes] == ["fold_norms", "deconv_to_subpixel", "split_taps",
                                                   "quantize_int8"]
    assert ("prune_channels skipped: no budget_macs=, ratio= or budget_latency_ms= given"
            in out.report.notes)


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(ratio=0.5), ValueError, "needs example_inputs="),
    (dict(ratio=0.5, example_inputs="x", target="tpu"), ValueError,
     "unknown target 'tpu'; available: arm, gpu, reram, x86"),
    (dict(budget_macs=10, example_inputs=None), ValueError, "needs example_inputs="),
    (dict(budget_macs=1e6, ratio=0.5, example_inputs="x"), ValueError, "not several"),
    (dict(budget_latency_ms=20, ratio=0.5, example_inputs="x"), ValueError, "not several"),
    (dict(budget_latency_ms=20, example_inputs="x", passes=["fold_norms"]), ValueError,
     "needs prune_channels"),
    (dict(ratio=0.5, example_inputs="x", passes=["quantize"]), ValueError, "unknown passes"),
])
def test_bad_calls_say_what_to_do(kwargs, error, message):
    if kwargs.get("example_inputs") == "x":
        kwargs["example_inputs"] = zoo.example_inputs("resnet")
    with pytest.raises(error, match=message):
        gcc_gan.compile(zoo.build("resnet"), **kwargs)


def test_unreachable_budget_states_the_minimum():
    with pytest.raises(BudgetError, match="smallest reachable"):
        gcc_gan.compile(zoo.build("resnet"), budget_macs=100,
                        example_inputs=zoo.example_inputs("resnet"), measure=False)


def test_wrong_input_shape_names_the_fix():
    with pytest.raises(TraceError, match="example inputs do not fit the model"):
        gcc_gan.compile(zoo.build("resnet"), ratio=0.5, example_inputs=(torch.randn(1, 4, 32, 32),),
                        round_to=TINY)


def test_load_of_a_non_model_directory_says_what_is_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing model.onnx"):
        gcc_gan.load(tmp_path)


def test_compiled_module_trains():
    out = gcc_gan.compile(zoo.build("resnet"), ratio=0.3, example_inputs=zoo.example_inputs("resnet"),
                          passes=FLOAT, round_to=TINY, measure=False)
    params = [p for p in out.module.parameters() if p.requires_grad]
    assert params
    optimizer = torch.optim.SGD(params, lr=1e-2)
    x, target = zoo.example_inputs("resnet", batch=2, seed=3)[0], torch.zeros(2, 3, 32, 32)
    losses = []
    for _ in range(3):
        optimizer.zero_grad()
        loss = (out.module(x) - target).pow(2).mean()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert all(p.grad is not None for p in params)
    assert losses[-1] < losses[0]


def test_arm_compile_without_the_cross_compiler_keeps_the_onnx_artifact(tmp_path, monkeypatch):
    pytest.importorskip("tvm")
    import shutil
    real_which = shutil.which

    def which(name, *args, **kwargs):
        return None if name.startswith("aarch64") else real_which(name, *args, **kwargs)

    monkeypatch.setattr(shutil, "which", which)
    with pytest.warns(UserWarning, match="apt-get install gcc-aarch64-linux-gnu"):
        out = gcc_gan.compile(zoo.build("resnet"), "arm", ratio=0.5, round_to=TINY,
                              example_inputs=zoo.example_inputs("resnet"), measure=False,
                              output_dir=tmp_path)
    assert out.tvm is None and (tmp_path / "model.onnx").exists()
    assert (tmp_path / "report.json").exists() and not (tmp_path / "model_arm.so").exists()
    assert any("not built" in n and "gcc-aarch64-linux-gnu" in n for n in out.report.notes)


def test_arm_compile_saves_an_aarch64_library(tmp_path):
    pytest.importorskip("tvm")
    import shutil
    if shutil.which("aarch64-linux-gnu-gcc") is None:
        pytest.skip("no aarch64-linux-gnu-gcc (apt-get install gcc-aarch64-linux-gnu)")
    out = gcc_gan.compile(zoo.build("resnet"), "arm", ratio=0.5, round_to=TINY,
                          example_inputs=zoo.example_inputs("resnet"), measure=False,
                          output_dir=tmp_path)
    header = (tmp_path / "model_arm.so").read_bytes()[:20]
    assert header[:4] == b"\x7fELF" and int.from_bytes(header[18:20], "little") == 0xB7
    assert out.report.lowering["tvm_target"]["mtriple"] == "aarch64-linux-gnu"
    assert any("cross-compiled" in n for n in out.report.notes)
    assert out.report.lowering["int8_layers"] > 0   # the ONNX artifact is int8 as on x86


@pytest.mark.slow
def test_compile_finetunes_the_pruned_program_from_the_original():
    model, x = zoo.build("resnet"), zoo.example_inputs("resnet")
    data = [zoo.example_inputs("resnet", batch=2, seed=s)[0] for s in range(4)]
    plain = gcc_gan.compile(model, ratio=0.4, example_inputs=x, passes=FLOAT, round_to=TINY,
                            measure=False, calib_data=[(b,) for b in data])
    tuned = gcc_gan.compile(model, ratio=0.4, example_inputs=x, passes=FLOAT, round_to=TINY,
                            measure=False, calib_data=[(b,) for b in data],
                            finetune=DistillConfig(steps=30, lr=1e-3), finetune_data=data)
    entry = tuned.report.passes[-1]
    assert entry.name == "finetune" and entry.details["steps"] == 30
    assert entry.details["loss_last"] < entry.details["loss_first"]
    assert tuned.report.macs_after == plain.report.macs_after
    assert tuned.report.fidelity["psnr"] > plain.report.fidelity["psnr"]


def test_finetune_runs_after_pruning_and_before_int8():
    model, x = zoo.build("resnet"), zoo.example_inputs("resnet")
    data = [zoo.example_inputs("resnet", batch=2, seed=s)[0] for s in range(2)]
    out = gcc_gan.compile(model, ratio=0.4, example_inputs=x, round_to=TINY, measure=False,
                          calib_data=[(b,) for b in data], finetune=DistillConfig(steps=3))
    names = [p.name for p in out.report.passes]
    assert names[names.index("prune_channels") + 1] == "finetune" and names[-1] == "quantize_int8"
    with pytest.raises(ValueError, match="finetune= needs data"):
        gcc_gan.compile(model, ratio=0.4, example_inputs=x, passes=FLOAT, round_to=TINY,
                        measure=False, finetune=DistillConfig(steps=2))

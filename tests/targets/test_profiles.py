"""Target profiles: the shipped TOML files, registering a new board, and tuned overlays."""

import dataclasses
import json
import warnings

import pytest

from gcc_gan import targets
from gcc_gan.measure import environment
from gcc_gan.targets import KernelFit, Target

BOARD = """
name = "board"
description = "a test board"
passes = ["fold_norms", "prune_channels"]
lowering = ["onnx"]
measurement = "cost-model"
channel_alignment = 4
precisions = ["fp32"]
bandwidth_bytes_per_s = 1e9
[peak_macs_per_s]
fp32 = 1e9
"""


def test_the_four_targets_ship_with_their_facts():
    names = {t.name for t in targets.available()}
    assert {"x86", "arm", "gpu", "reram"} <= names
    x86, arm, gpu, reram = (targets.get(n, tuned=False) for n in ("x86", "arm", "gpu", "reram"))
    assert "int8" in x86.precisions and "quantize_int8" in x86.passes and x86.channel_alignment == 16
    assert "quantize_int8" in arm.passes and arm.tvm_target["mtriple"] == "aarch64-linux-gnu"
    assert "tvm" in arm.lowering
    assert gpu.channel_alignment == 8 and "2:4" in gpu.sparsity and "fp16" in gpu.precisions
    assert reram.cost_model == "crossbar" and reram.crossbar["rows"] == reram.crossbar["cols"] == 128
    for t in (x86, arm, gpu):
        assert all(t.peak_macs_per_s[p] > 0 for p in t.precisions)


def test_a_board_is_one_toml_file_or_one_register_call():
    board = targets.register(Target.from_toml(BOARD, "board.toml"))
    try:
        assert targets.get("board") is board and board.peak_macs_per_s["fp32"] == 1e9
        assert "board" in {t.name for t in targets.available()}
    finally:
        targets._REGISTRY.pop("board")


@pytest.mark.parametrize("text, message", [
    (BOARD.replace("channel_alignment = 4", "flops = 3"), r"unknown keys \['flops'\]"),
    (BOARD.replace('name = "board"\n', ""), r"missing keys \['name'\]"),
    (BOARD.replace("fp32 = 1e9", "int8 = 1e9"), "needs peak_macs_per_s for each precision"),
    (BOARD.replace('measurement = "cost-model"', 'measurement = "oscilloscope"'), "measurement must"),
    (BOARD.replace("channel_alignment = 4", 'cost_model = "crossbar"'), r"needs a \[crossbar\]"),
    (BOARD.replace("channel_alignment = 4", "int8_weight_bits = 4"), "int8_weight_bits must be"),
])
def test_bad_profiles_say_what_is_wrong(text, message):
    with pytest.raises(ValueError, match=message):
        Target.from_toml(text, "board.toml")


def test_unknown_target_lists_the_available_ones():
    with pytest.raises(ValueError, match="unknown target 'tpu'; available: arm, gpu, reram, x86"):
        targets.get("tpu")


def test_a_tuned_profile_is_found_by_get_and_says_where_from(tmp_path, monkeypatch):
    monkeypatch.setenv("GCC_GAN_HOME", str(tmp_path))
    plain = targets.get("x86")
    assert plain.tuned is None and not plain.kernels
    fit = KernelFit(overhead_s=1e-5, s_per_mac=1e-11, s_per_byte=2e-11, s_per_weight=3e-11,
                    samples=12, median_rel_error=0.05)
    path = targets.save_tuned(plain, {"conv/fp32": fit}, {"probes": 12})
    assert path == tmp_path / "tuned" / "x86.json"
    tuned = targets.get("x86")
    assert tuned.tuned == str(path) and tuned.kernels["conv/fp32"] == fit
    assert targets.get("x86", tuned=False).kernels == {}
    assert dataclasses.replace(tuned, kernels={}, tuned=None) == plain


def test_a_tuned_file_for_another_target_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("GCC_GAN_HOME", str(tmp_path))
    path = targets.save_tuned(targets.get("arm"), {}, {})
    path.rename(targets.tuned_path("x86"))
    with pytest.raises(ValueError, match="not a tuned profile of target 'x86'"):
        targets.get("x86")
    assert json.loads(targets.tuned_path("x86").read_text())["target"] == "arm"


def test_a_profile_tuned_on_another_cpu_warns(tmp_path, monkeypatch):
    monkeypatch.setenv("GCC_GAN_HOME", str(tmp_path))
    here = environment()
    targets.save_tuned(targets.get("x86"), {}, {"environment": here})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        targets.get("x86")   # tuned here: silent
    other = {**here, "avx512_vnni": "no" if here["avx512_vnni"] == "yes" else "yes"}
    targets.save_tuned(targets.get("x86", tuned=False), {}, {"environment": other})
    with pytest.warns(UserWarning, match="tuned on another CPU .*avx512_vnni.*re-run `gcc-gan tune"):
        targets.get("x86")

"""`tune`: probes go through trace (and int8), the fit reproduces the device, compile uses it."""

import numpy as np
import pytest
from typer.testing import CliRunner

import gcc_gan
from gcc_gan import targets, zoo
from gcc_gan.cli import app
from gcc_gan.measure import Latency
from gcc_gan.targets.roofline import MODEL_OVERHEAD, kernels
from gcc_gan.tune import CHAINS, spread, tune

TRUTH = {"fp32": np.array([2e-5, 1e-11, 5e-11, 3e-10, 1e-8]),
         "int8": np.array([3e-5, 3e-12, 8e-11, 1e-10, 4e-9])}
CALL = 1e-4


def fake_device(graph, inputs):
    """A deterministic device whose kernels follow known coefficients."""
    x86 = targets.get("x86", tuned=False)
    from gcc_gan.quant import quant_plan
    int8 = [layer.node for layer in quant_plan(graph.module)]
    seconds = CALL + sum(TRUTH[k.dtype] @ k.features() for k in kernels(graph, x86, int8=int8))
    ms = seconds * 1e3
    return Latency(ms, ms, ms, ms, ms, 1, 0, 1, "fake")


def test_the_spread_covers_every_kernel_kind_and_int8():
    probes = spread(targets.get("x86"), "full")
    labels = " ".join(p.label for p in probes)
    for kind in ("conv k1", "conv k3", "conv k7", "depthwise", "conv_transpose", "linear", "norm",
                 "relu", "add", "reflection_pad", "zero_pad", "cat", "upsample", "pixel_shuffle"):
        assert kind in labels
    # transposed convs also where generators run them: from a 1-px latent and at 4-8 px
    upsampling = [p.label for p in probes if p.label.startswith("conv_transpose")]
    assert any(" s1 " in label for label in upsampling)
    assert any(label.endswith(("@4", "@8")) for label in upsampling)
    assert sum(p.int8 for p in probes) == 120 and len(probes) == 197
    chains = [p for p in probes if not p.label.startswith(("conv k", "depthwise")) and p.int8]
    assert {p.label.rsplit(" ", 2)[0] for p in chains} == {name for name, _, _ in CHAINS}
    assert [p.label for p in spread(targets.get("x86"), "quick", seed=1)] == \
        [p.label for p in spread(targets.get("x86"), "quick", seed=1)]


def test_tune_recovers_the_device_and_compile_uses_it(tmp_path, monkeypatch):
    monkeypatch.setenv("GCC_GAN_HOME", str(tmp_path))
    result = tune("x86", measure=fake_device, size="quick")
    assert result.path == targets.tuned_path("x86") and result.path.exists()
    assert result.kernels[MODEL_OVERHEAD].overhead_s == pytest.approx(CALL, rel=1e-3)
    conv = result.kernels["conv/fp32"]
    assert np.allclose([conv.overhead_s, conv.s_per_mac, conv.s_per_byte, conv.s_per_weight],
                       TRUTH["fp32"][:4], rtol=1e-3, atol=1e-9)
    assert result.kernels["pad/fp32"].s_per_row == pytest.approx(TRUTH["fp32"][4], rel=1e-3)
    assert "conv/int8" in result.kernels and "depthwise/int8" in result.kernels
    assert all(f.median_rel_error < 1e-3 for k, f in result.kernels.items() if f.samples > 1)
    out = gcc_gan.compile(zoo.build("resnet"), "x86", ratio=0.5, example_inputs=zoo.example_inputs("resnet"),
                          round_to=1, measure=False)
    assert out.report.cost_model["source"] == str(result.path)


def test_a_target_without_a_device_needs_a_measure_function():
    with pytest.raises(ValueError, match="no local measurement backend"):
        tune("arm", size="quick", save=False)


def test_cli_tune_prints_the_fits(tmp_path, monkeypatch):
    monkeypatch.setattr("gcc_gan.tune.default_measure", lambda target: fake_device)
    out = tmp_path / "x86.json"
    result = CliRunner().invoke(app, ["tune", "--target", "x86", "--size", "quick", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "conv/fp32" in result.output and out.exists()
    bad = CliRunner().invoke(app, ["tune", "--size", "huge"])
    assert bad.exit_code == 2 and "--size must be full or quick" in bad.output


def test_each_probe_is_timed_in_passes_and_slow_passes_do_not_reach_the_fit(tmp_path):
    calls = {}

    def spelled_device(graph, inputs):
        """fake_device, but slower during each probe's second and third timings (slow spells:
        a median over the passes would fit them), with calls spread above the fastest."""
        calls[id(graph)] = calls.get(id(graph), 0) + 1
        fastest = fake_device(graph, inputs).min_ms * (1.0, 1.5, 1.3)[calls[id(graph)] - 1]
        return Latency(1.2 * fastest, 1.1 * fastest, 1.4 * fastest, fastest, 2 * fastest,
                       20, 0, 1, "fake")

    result = tune("x86", measure=spelled_device, size="quick", save=tmp_path / "x86.json")
    assert set(calls.values()) == {3}   # every probe, the call-overhead ones too, once a pass
    conv = result.kernels["conv/fp32"]
    assert np.allclose([conv.overhead_s, conv.s_per_mac, conv.s_per_byte, conv.s_per_weight],
                       TRUTH["fp32"][:4], rtol=1e-3, atol=1e-9)
    with pytest.raises(ValueError, match="passes must be at least 1"):
        tune("x86", measure=fake_device, size="quick", save=False, passes=0)


def test_backend_measure_lowers_each_graph_once(monkeypatch):
    from gcc_gan.backends import get_backend
    from gcc_gan.tune import backend_measure
    backend = get_backend("onnxruntime")
    lowered = []
    monkeypatch.setattr(backend, "lower", lambda graph, calib=None: lowered.append(graph) or graph)
    monkeypatch.setattr(backend, "time",
                        lambda artifact, inputs, **kw: fake_device(artifact, inputs))
    measure = backend_measure(backend)
    probe = spread(targets.get("x86"), "quick")[0]
    graph = gcc_gan.trace(probe.module, probe.inputs)
    for _ in range(3):
        measure(graph, probe.inputs)
    assert lowered == [graph]

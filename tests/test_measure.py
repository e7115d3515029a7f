"""The latency harness: call counts, statistics, thread handling, ORT sessions, environment.

No test asserts an absolute time: only counts, orderings and statistics of a fake clock.
"""

import time

import onnxruntime as ort
import pytest
import torch
from torch import nn

from gcc_gan import measure, runtime
from gcc_gan.measure import (Latency, environment, steady_ms, time_call, time_onnx,
                             time_torch)
from gcc_gan.runtime import ort_session


class FakeClock:
    """Stands in for the `time` module: each call of `work` advances it by the next duration."""

    def __init__(self, durations_s):
        self.now = 0.0
        self.durations = iter(durations_s)
        self.calls = 0

    def perf_counter(self):
        return self.now

    def work(self):
        self.calls += 1
        self.now += next(self.durations)


def test_time_call_statistics_on_a_fake_clock(monkeypatch):
    clock = FakeClock([1.0, 1.0] + [k / 1e3 for k in range(1, 6)])  # warm-up, then 1..5 ms
    monkeypatch.setattr(measure, "time", clock)
    lat = time_call(clock.work, warmup=2, repeats=5, threads=3, backend="fake")
    assert clock.calls == 7
    assert (lat.median_ms, lat.p25_ms, lat.p75_ms) == pytest.approx((3.0, 2.0, 4.0))
    assert (lat.min_ms, lat.max_ms, lat.spread) == pytest.approx((1.0, 5.0, 2.0))
    assert (lat.repeats, lat.warmup, lat.threads, lat.backend) == (5, 2, 3, "fake")


def test_time_call_runs_until_min_seconds(monkeypatch):
    clock = FakeClock([0.01] * 100)
    monkeypatch.setattr(measure, "time", clock)
    lat = time_call(clock.work, warmup=1, repeats=3, min_seconds=0.25, threads=1, backend="fake")
    assert lat.repeats == 25 and clock.calls == 26


def test_time_call_with_a_sleeping_function():
    calls = []
    lat = time_call(lambda: (calls.append(1), time.sleep(1e-3)), warmup=2, repeats=6,
                    threads=1, backend="sleep")
    assert len(calls) == 8 and lat.repeats == 6
    assert 0 < lat.min_ms <= lat.p25_ms <= lat.median_ms <= lat.p75_ms <= lat.max_ms
    assert lat.spread >= 0


def test_time_call_rejects_zero_repeats():
    with pytest.raises(ValueError, match="repeats"):
        time_call(lambda: None, repeats=0, threads=1, backend="none")


def test_latency_str():
    lat = Latency(median_ms=12.34, p25_ms=12.1, p75_ms=12.5, min_ms=12.0, max_ms=13.0,
                  repeats=10, warmup=2, threads=2, backend="onnxruntime")
    assert str(lat) == "12.3 ms (IQR 0.4, n=10, 2 threads, onnxruntime)"


def small_conv():
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 3, 3, padding=1))


def test_time_torch_restores_threads():
    before = torch.get_num_threads()
    lat = time_torch(small_conv().eval(), torch.randn(1, 3, 16, 16), threads=1, repeats=3)
    assert lat.median_ms > 0 and lat.threads == 1 and lat.backend == "torch"
    assert torch.get_num_threads() == before


def test_time_torch_defaults_to_current_threads_and_restores_on_error():
    before = torch.get_num_threads()
    assert time_torch(small_conv(), (torch.randn(1, 3, 8, 8),), repeats=2).threads == before
    with pytest.raises(RuntimeError):
        time_torch(small_conv(), torch.randn(1, 5, 8, 8), threads=1)  # wrong channel count
    assert torch.get_num_threads() == before


@pytest.fixture(scope="module")
def onnx_bytes():
    program = torch.onnx.export(small_conv().eval(), (torch.randn(1, 3, 16, 16),), dynamo=True)
    proto = program.model_proto
    proto.ir_version = min(proto.ir_version, 10)  # onnxruntime 1.31 rejects newer IR versions
    return proto.SerializeToString()


def test_ort_session_and_time_onnx(onnx_bytes, tmp_path):
    session = ort_session(onnx_bytes, threads=1)
    assert isinstance(session, ort.InferenceSession)
    assert session.get_providers() == ["CPUExecutionProvider"]
    name = session.get_inputs()[0].name
    x = torch.randn(1, 3, 16, 16)
    lat = time_onnx(session, {name: x}, warmup=1, repeats=3)  # torch tensors are converted
    assert lat.threads == 1 and lat.backend == "onnxruntime" and lat.repeats == 3
    assert lat.median_ms > 0

    path = tmp_path / "model.onnx"
    path.write_bytes(onnx_bytes)
    from_path = ort_session(path)
    options = from_path.get_session_options()
    assert options.intra_op_num_threads == runtime.default_threads()
    assert options.inter_op_num_threads == 1
    assert options.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    lat = time_onnx(from_path, {name: x.numpy()}, warmup=0, repeats=2)
    assert lat.threads == runtime.default_threads()


def test_environment_has_the_keys():
    env = environment()
    assert set(env) == {"python", "torch", "onnx", "onnxruntime", "numpy", "platform", "cpu",
                        "logical_cores", "torch_threads", "avx512_vnni", "avx512f", "avx2"}
    assert all(isinstance(v, str) and v for v in env.values())
    assert env["onnxruntime"] == ort.__version__
    assert all(env[flag] in {"yes", "no", "unknown"} for flag in measure.CPU_FLAGS)


def test_side_by_side_timing_takes_turns_so_a_slow_spell_hits_everyone(monkeypatch):
    """A machine slow (x3) for the middle rounds: timed in turns, both contenders see it and
    their ratio stays 2; timed one after the other, the second would have taken it alone."""
    from gcc_gan.measure import time_side_by_side

    clock = FakeClock([])
    order: list[str] = []
    slow = {4, 5, 6}

    def call(name, ms):
        def fn():
            order.append(name)
            rnd = order.count("a") - 1  # the round this call belongs to
            clock.now += ms / 1e3 * (3 if rnd in slow else 1)
        return fn

    monkeypatch.setattr(measure, "time", clock)
    timed = time_side_by_side({"a": (call("a", 2.0), 1), "b": (call("b", 1.0), 2)}, rounds=10,
                              warmup=0, threads=2, backends={"a": "torch", "b": "onnxruntime"})
    assert order[:6] == ["a", "b", "b", "a", "b", "b"]
    assert timed["a"].repeats == 10 and timed["b"].repeats == 20
    assert timed["a"].median_ms / timed["b"].median_ms == pytest.approx(2.0)
    assert (timed["a"].backend, timed["b"].threads) == ("torch", 2)


def test_the_steady_latency_is_the_fastest_call_over_timings():
    slow = Latency.from_samples([0.030, 0.031, 0.040], warmup=0, threads=1, backend="fake")
    quiet = Latency.from_samples([0.024, 0.026, 0.027], warmup=0, threads=1, backend="fake")
    assert steady_ms([slow, quiet, slow]) == pytest.approx(24.0)
    with pytest.raises(ValueError, match="no timings"):
        steady_ms([])

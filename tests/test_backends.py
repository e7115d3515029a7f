"""Measurement backends: each returns a Latency from the shared harness; TVM over RPC runs on a
loopback tracker + server started here; a missing TVM says how to install it.

No test asserts an absolute time: only that figures are positive, ordered and labelled.
"""

import dataclasses
import socket
import sys
import time

import pytest

from gcc_gan import trace, zoo
from gcc_gan.backends import BACKENDS, OnnxRuntimeBackend, get_backend
from gcc_gan.lower import LoweringError, TvmUnavailable
from gcc_gan.lower import onnx as onnx_lowering
from gcc_gan.measure import Latency

RPC_KEY = "gcc-gan-loopback"


@pytest.fixture(scope="module")
def graph():
    return trace(zoo.build("resnet"), zoo.example_inputs("resnet"))  # ngf 8, 2 blocks, 32 px


def _sane(latency: Latency, backend: str, threads: int, repeats: int) -> None:
    assert isinstance(latency, Latency)
    assert latency.backend == backend and latency.threads == threads
    assert latency.repeats >= repeats
    assert 0 < latency.min_ms <= latency.p25_ms <= latency.median_ms <= latency.p75_ms \
        <= latency.max_ms


def test_registry_names_the_three_backends():
    assert set(BACKENDS) == {"onnxruntime", "tvm", "tvm-rpc"}
    with pytest.raises(KeyError, match="unknown backend 'tflite'; known: onnxruntime"):
        get_backend("tflite")


class _Fixed(OnnxRuntimeBackend):
    """Times nothing: every call 'takes' `ms`; records the repeats asked for."""

    def __init__(self, ms):
        self.ms, self.asked = ms, []

    def with_threads(self, artifact, threads):
        return artifact

    def time(self, artifact, inputs, *, threads, warmup=2, repeats=10):
        self.asked.append(repeats)
        return Latency.from_samples([self.ms / 1e3] * repeats, warmup=warmup, threads=threads,
                                    backend="fixed")


@pytest.mark.parametrize("ms, asked", [(2.0, [10, 500]), (40.0, [10, 25]), (250.0, [10]),
                                       (1e-4, [10, 1000])])
def test_time_for_times_about_a_window_of_calls(ms, asked):
    backend = _Fixed(ms)
    latency = backend.time_for(None, (), threads=1, seconds=1.0)
    assert backend.asked == asked and latency.repeats == asked[-1]


def test_onnxruntime_measure(graph):
    latency = get_backend("onnxruntime").measure(graph, graph.example_inputs, threads=1,
                                                 repeats=3)
    _sane(latency, "onnxruntime", 1, 3)


def test_onnxruntime_time_reuses_one_lowering_across_thread_counts(graph):
    backend = OnnxRuntimeBackend()
    model = backend.lower(graph)
    for threads in (1, 2):
        _sane(backend.time(model, zoo.example_inputs("resnet", batch=2), threads=threads,
                           repeats=3), "onnxruntime", threads, 3)


def test_onnxruntime_time_for_runs_both_timings_on_one_session(graph, monkeypatch):
    """A lowering made without a thread count gets one session for `threads`: a second, fresh
    session for the timed window would run its cold first calls inside the window."""
    backend = OnnxRuntimeBackend()
    model = backend.lower(graph)
    made = []
    real = onnx_lowering.ort_session
    monkeypatch.setattr(onnx_lowering, "ort_session",
                        lambda *a, **k: made.append(1) or real(*a, **k))
    backend.time_for(model, graph.example_inputs, threads=1, seconds=0.05)
    assert len(made) == 1 and model.threads is None


def test_latency_from_remote_samples_matches_the_harness_statistics():
    latency = Latency.from_samples([0.004, 0.001, 0.003, 0.002], warmup=1, threads=2,
                                   backend="tvm-rpc:board")
    assert (latency.min_ms, latency.median_ms, latency.max_ms) == pytest.approx((1, 2.5, 4))
    assert (latency.p25_ms, latency.p75_ms) == pytest.approx((1.75, 3.25))
    assert latency.repeats == 4 and latency.backend == "tvm-rpc:board"


def test_missing_tvm_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "tvm", None)  # import tvm now raises ImportError
    for name, options in (("tvm", {}), ("tvm-rpc", {"tracker_host": "127.0.0.1",
                                                        "tracker_port": 9190, "key": "board",
                                                        "target": {"kind": "llvm"}})):
        with pytest.raises(TvmUnavailable, match=r"pip install 'gcc-gan\[tvm\]'"):
            get_backend(name, **options)
    from gcc_gan.lower import lower_tvm
    with pytest.raises(ImportError, match=r"TVM lowering needs Apache TVM.*gcc-gan\[tvm\]"):
        lower_tvm(None)


def test_tvm_local_measure(graph):
    pytest.importorskip("tvm", reason="apache-tvm is not installed: pip install 'gcc-gan[tvm]'")
    backend = get_backend("tvm")
    model = backend.lower(graph)
    _sane(backend.time(model, graph.example_inputs, threads=1, repeats=3), "tvm", 1, 3)
    batch = zoo.example_inputs("resnet", batch=2)  # run one sample at a time
    _sane(backend.time(model, batch, threads=2, repeats=2), "tvm", 2, 2)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def rpc_tracker():
    """A tracker and one server registered under RPC_KEY, on free loopback ports."""
    pytest.importorskip("tvm", reason="apache-tvm is not installed: pip install 'gcc-gan[tvm]'")
    pytest.importorskip("tornado", reason="TVM's RPC tracker needs tornado")
    pytest.importorskip("psutil", reason="TVM's RPC server shutdown needs psutil")
    from tvm import rpc
    from tvm.rpc.tracker import Tracker

    port = _free_port()
    tracker = Tracker(host="127.0.0.1", port=port, port_end=port + 1, silent=True)
    server = None
    try:
        server_port = _free_port()
        server = rpc.Server(host="127.0.0.1", port=server_port, port_end=server_port + 1,
                            key=RPC_KEY, tracker_addr=("127.0.0.1", tracker.port), silent=True)
        client = rpc.connect_tracker("127.0.0.1", tracker.port)
        deadline = time.monotonic() + 60
        while RPC_KEY not in client.summary()["queue_info"]:
            assert time.monotonic() < deadline, "the RPC server did not register in 60 s"
            time.sleep(0.1)
        yield tracker
    finally:
        if server is not None:  # before the tracker, which it would otherwise try to reach
            server.terminate()
        tracker.terminate()


def _loopback(tracker, key=RPC_KEY):
    return get_backend("tvm-rpc", tracker_host="127.0.0.1", tracker_port=tracker.port, key=key,
                       target={"kind": "llvm"})  # the board is this host


@pytest.mark.timeout(180)  # a session left open would block the next request forever
def test_tvm_rpc_loopback_measure(graph, rpc_tracker):
    backend = _loopback(rpc_tracker)
    model = backend.lower(graph)
    latency = backend.time(model, graph.example_inputs, threads=1, repeats=3)
    _sane(latency, f"tvm-rpc:{RPC_KEY}", 1, 3)
    assert latency.repeats == 3 and latency.warmup == 2
    with pytest.raises(ValueError, match="times batch 1"):
        backend.time(model, zoo.example_inputs("resnet", batch=2), threads=1)
    # the board's result is checked against torch before timing: a wrong build is an error
    sample, expected = model.reference
    wrong = dataclasses.replace(model, reference=(sample, tuple(e + 1e-2 for e in expected)))
    with pytest.raises(LoweringError, match=f"on device '{RPC_KEY}'.*wrong on the board"):
        backend.time(wrong, sample, threads=1, repeats=1)
    # the failed run's session was closed: the board is free again
    _sane(backend.time(model, sample, threads=1, repeats=2), f"tvm-rpc:{RPC_KEY}", 1, 2)


def test_tvm_rpc_unknown_key_is_a_clear_error(rpc_tracker):
    backend = _loopback(rpc_tracker, key="no-such-board")
    with pytest.raises(ConnectionError, match=f"no device with key 'no-such-board'.*"
                                              f"keys: \\['{RPC_KEY}'\\]"):
        backend.session()

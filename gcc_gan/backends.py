"""Measurement backends: lower a GanGraph for where it will run, and time it there.

Invariant: every backend returns a `gcc_gan.measure.Latency` with the same meaning: the
median and quartiles of `repeats` timed calls of the whole generator, after `warmup` untimed
ones, at the batch of the given inputs, on `threads` threads, with `backend` naming where it
ran. Local backends time through `measure.time_call`; the remote one through TVM's
`time_evaluator` on the board (one call per repeat; the evaluator's own discarded call counts
towards `warmup`), so network round trips are not in the figure.

    backend = BACKENDS["tvm"]()                       # or get_backend("tvm-rpc", tracker_host=...)
    artifact = backend.lower(graph)                   # once
    backend.time(artifact, inputs, threads=4)         # -> Latency, as often as needed

TVM's builds are untuned (no schedule search): conv kernels are plain loop nests without
parallel loops, so `threads` sets TVM's pool but the kernels use one core. The backends that
need TVM raise `TvmUnavailable` (an ImportError) naming ``pip install 'gcc-gan[tvm]'``.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
import gc
import tempfile
import traceback
from pathlib import Path
from typing import Any, ClassVar

import torch

from .ir import GanGraph
from .lower import LoweringError, OnnxModel, TvmModel, lower_onnx, lower_tvm
from .lower.tvm import check_outputs, require_tvm
from .measure import Latency, time_call, time_onnx


class Backend(ABC):
    """Lower once with `lower`, time as often as needed with `time`; `measure` does both."""

    name: ClassVar[str]

    @abstractmethod
    def lower(self, graph: GanGraph, *, calib: list[tuple] | None = None) -> Any:
        """The artifact this backend runs, built from `graph`."""

    @abstractmethod
    def time(self, artifact: Any, inputs: tuple, *, threads: int, warmup: int = 2,
             repeats: int = 10) -> Latency:
        """Latency of `artifact` on `inputs`."""

    def time_for(self, artifact: Any, inputs: tuple, *, threads: int, seconds: float = 1.0,
                 max_repeats: int = 1000) -> Latency:
        """`time` over about `seconds` of calls (at least 10): a shared machine's slow spells
        last seconds, and 10 calls of a 2 ms model fall inside one (two 10-call runs of one
        U-Net measured 1.5 and 2.2 ms)."""
        artifact = self.with_threads(artifact, threads)   # one session for both timings
        first = self.time(artifact, inputs, threads=threads, repeats=10)
        repeats = max(10, min(max_repeats, round(seconds * 1e3 / max(first.median_ms, 1e-3))))
        return first if repeats == 10 else self.time(artifact, inputs, threads=threads,
                                                     warmup=0, repeats=repeats)

    def with_threads(self, artifact: Any, threads: int) -> Any:
        """`artifact` ready to run on `threads` threads (the same object where that is free)."""
        return artifact

    def measure(self, graph: GanGraph, inputs: tuple, *, threads: int, warmup: int = 2,
                repeats: int = 10, calib: list[tuple] | None = None) -> Latency:
        artifact = self.lower(graph, calib=calib)
        return self.time(artifact, inputs, threads=threads, warmup=warmup, repeats=repeats)


class OnnxRuntimeBackend(Backend):
    """ONNX Runtime on this CPU: `lower_onnx` (QDQ int8 when the graph carries a plan)."""

    name = "onnxruntime"

    def lower(self, graph: GanGraph, *, calib: list[tuple] | None = None) -> OnnxModel:
        return lower_onnx(graph, calib=calib)

    def with_threads(self, artifact: OnnxModel, threads: int) -> OnnxModel:
        # ORT fixes its thread count when the session is made: another count, another session
        if artifact.threads == threads:
            return artifact
        return dataclasses.replace(artifact, threads=threads, _session=[])

    def time(self, artifact: OnnxModel, inputs: tuple, *, threads: int, warmup: int = 2,
             repeats: int = 10) -> Latency:
        model = self.with_threads(artifact, threads)
        feeds = model.feeds(inputs)
        batch = next(iter(feeds.values())).shape[0] if feeds else 1
        if model.dynamic_batch or batch == 1:
            return time_onnx(model.session(), feeds, warmup=warmup, repeats=repeats)
        return time_call(lambda: model.run(*inputs), warmup=warmup, repeats=repeats,
                         threads=threads, backend=self.name)


class TvmBackend(Backend):
    """TVM on this CPU: `lower_tvm` for `target` (default: the host's llvm target)."""

    name = "tvm"

    def __init__(self, target: dict | None = None):
        require_tvm("the 'tvm' backend")
        self.target = target

    def lower(self, graph: GanGraph, *, calib: list[tuple] | None = None) -> TvmModel:
        return lower_tvm(graph, self.target)  # fp32: an int8 plan is noted, not applied

    def time(self, artifact: TvmModel, inputs: tuple, *, threads: int, warmup: int = 2,
             repeats: int = 10) -> Latency:
        tvm = require_tvm("the 'tvm' backend")
        main = artifact.vm()["main"]
        samples = [[tvm.runtime.tensor(a) for a in s] for s in artifact.samples(inputs)]
        previous = tvm.get_global_func("runtime.NumThreads")()
        configure = tvm.get_global_func("runtime.config_threadpool")
        configure(1, threads)
        try:
            return time_call(lambda: [main(*s) for s in samples], warmup=warmup,
                             repeats=repeats, threads=threads, backend=self.name)
        finally:
            configure(1, previous)


class TvmRpcBackend(Backend):
    """TVM on a board reached through an RPC tracker: cross-compile, upload, time there.

    The board runs ``python -m tvm.exec.rpc_server --tracker HOST:PORT --key KEY``. Before
    timing, the uploaded library is run once on the lowering's example inputs and checked
    against torch (`tolerance`), since a cross build cannot be checked on this machine.
    A board serves one session at a time: `time` holds it while timing and frees it before
    returning (also on error); a request waits while someone else holds the board.
    """

    name = "tvm-rpc"

    def __init__(self, tracker_host: str, tracker_port: int, key: str, target: dict, *,
                 session_timeout: float = 600, tolerance: float = 1e-4):
        require_tvm("the 'tvm-rpc' backend")
        self.tracker_host, self.tracker_port, self.key = tracker_host, int(tracker_port), key
        self.target, self.session_timeout, self.tolerance = dict(target), session_timeout, tolerance

    def lower(self, graph: GanGraph, *, calib: list[tuple] | None = None) -> TvmModel:
        return lower_tvm(graph, self.target, tolerance=self.tolerance)

    def session(self):
        """An RPC session on a free device with this backend's key (errors say what is up)."""
        from tvm import rpc

        where = f"tracker {self.tracker_host}:{self.tracker_port}"
        try:
            tracker = rpc.connect_tracker(self.tracker_host, self.tracker_port)
            queues = tracker.summary().get("queue_info", {})
        except Exception as exc:
            raise ConnectionError(f"cannot reach the TVM RPC {where} ({exc}); start it with "
                                  "`python -m tvm.exec.rpc_tracker --port PORT`") from exc
        if self.key not in queues:
            raise ConnectionError(f"no device with key {self.key!r} is registered at {where} "
                                  f"(keys: {sorted(queues) or 'none'}); on the board run "
                                  f"`python -m tvm.exec.rpc_server --tracker HOST:PORT "
                                  f"--key {self.key}`")
        return tracker.request(self.key, priority=1, session_timeout=self.session_timeout)

    def time(self, artifact: TvmModel, inputs: tuple, *, threads: int, warmup: int = 2,
             repeats: int = 10) -> Latency:
        samples = artifact.samples(inputs)
        if len(samples) != 1:
            raise ValueError(f"the tvm-rpc backend times batch 1 (TVM models are built at "
                             f"batch 1); got a batch of {len(samples)}")
        remote = self.session()
        try:
            seconds = self._time_on_device(remote, artifact, samples[0], threads=threads,
                                           warmup=warmup, repeats=repeats)
        except BaseException as exc:
            traceback.clear_frames(exc.__traceback__)  # its frames hold remote objects
            raise
        finally:
            # The board serves one session at a time, and the session lasts as long as any
            # remote object (module, VM, tensors) lives; TVM's objects form reference cycles.
            del remote
            gc.collect()
        return Latency.from_samples(seconds, warmup=max(warmup, 1), threads=threads,
                                    backend=f"{self.name}:{self.key}")

    def _time_on_device(self, remote, artifact: TvmModel, sample: list, *, threads: int,
                        warmup: int, repeats: int) -> list[float]:
        tvm = require_tvm("the 'tvm-rpc' backend")
        with tempfile.TemporaryDirectory() as tmp:
            library = artifact.export_library(Path(tmp) / "gcc_gan_model.so")
            remote.upload(str(library))
        device = remote.cpu()
        remote.get_function("runtime.config_threadpool")(1, threads)
        vm = tvm.relax.VirtualMachine(remote.load_module(library.name), device)
        self._check_on_device(vm, device, artifact)
        args = [tvm.runtime.tensor(a, device) for a in sample]
        for _ in range(max(warmup - 1, 0)):
            vm["main"](*args)
        evaluator = vm.time_evaluator("main", device, number=1, repeat=repeats)
        return list(evaluator(*args).results)

    def _check_on_device(self, vm, device, artifact: TvmModel) -> None:
        tvm = require_tvm("the 'tvm-rpc' backend")
        sample, expected = artifact.reference
        arrays = artifact.samples(sample)[0]
        vm.set_input("main", *[tvm.runtime.tensor(a, device) for a in arrays])
        vm.invoke_stateful("main")
        outs = vm.get_outputs("main")
        outs = outs if isinstance(outs, (list, tuple)) else [outs]
        got = [torch.from_numpy(o.numpy()) for o in outs]
        try:
            check_outputs(f"on device {self.key!r}", expected, got, self.tolerance)
        except LoweringError as exc:
            raise LoweringError(f"{exc}: the build for {self.target} is wrong on the board; "
                                "measure it after fixing the lowering") from exc


BACKENDS: dict[str, type[Backend]] = {
    OnnxRuntimeBackend.name: OnnxRuntimeBackend,
    TvmBackend.name: TvmBackend,
    TvmRpcBackend.name: TvmRpcBackend,
}


def get_backend(name: str, **options: Any) -> Backend:
    """The backend registered as `name`, constructed with `options` (tvm-rpc needs some)."""
    if name not in BACKENDS:
        raise KeyError(f"unknown backend {name!r}; known: {', '.join(BACKENDS)}")
    return BACKENDS[name](**options)

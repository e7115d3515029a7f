"""One latency harness for eager PyTorch and ONNX Runtime.

Invariant: a before/after ratio in a report comes from two `Latency`s measured by this harness
in the same process, with the same warm-up, repeat count and thread count, each recorded on the
result. Single runs on a shared CPU are noisy, so a `Latency` is the distribution of
`repeats` timed calls (median and quartiles), never one sample; `environment()` records the
machine the figures came from.

Two statistics, for two questions. The median of a timing is what a call costs on the machine
as it is now. The steady latency (`steady_ms`: the fastest call over several timings spread
over minutes) is what the program costs when it has the cores: interference from other tenants
only adds time (the rationale of Python's `timeit`). On this 2-core VM the two disagree by
design: over 3 minutes, 0.4-s medians of one program moved by 13-31% (coefficient of
variation), and in random pairs of 4-timing sets, the medians of the two sets agreed to +-10%
for 42-69% of 7 programs, their fastest calls for 87-99%. The cost model is fitted to, and
judged against, the steady latency, which a repeat run reproduces.
"""

from __future__ import annotations

import os
import platform
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch

CPU_FLAGS = ("avx512_vnni", "avx512f", "avx2")


@dataclass(frozen=True)
class Latency:
    """Wall-clock times of `repeats` calls after `warmup` untimed ones, in milliseconds."""

    median_ms: float
    p25_ms: float
    p75_ms: float
    min_ms: float
    max_ms: float
    repeats: int
    warmup: int
    threads: int
    backend: str

    @classmethod
    def from_samples(cls, seconds, *, warmup: int, threads: int, backend: str) -> "Latency":
        """The distribution of per-call times (seconds), timed here or on a remote device."""
        if len(seconds) == 0:
            raise ValueError("no timed calls to summarise")
        ms = np.asarray(seconds, dtype=float) * 1e3
        p25, median, p75 = np.percentile(ms, [25, 50, 75])
        return cls(median_ms=float(median), p25_ms=float(p25), p75_ms=float(p75),
                   min_ms=float(ms.min()), max_ms=float(ms.max()), repeats=len(ms),
                   warmup=warmup, threads=threads, backend=backend)

    @property
    def spread(self) -> float:
        """Interquartile range in ms: the noise to weigh a difference of medians against."""
        return self.p75_ms - self.p25_ms

    def __str__(self) -> str:
        threads = f"{self.threads} thread{'s' if self.threads != 1 else ''}"
        return (f"{_ms(self.median_ms)} ms (IQR {_ms(self.spread)}, n={self.repeats}, "
                f"{threads}, {self.backend})")


def _ms(value: float) -> str:
    # one decimal hides sub-millisecond layers; three significant digits keep them visible
    return f"{value:.1f}" if value >= 1 else f"{value:.3g}"


def steady_ms(timings) -> float:
    """The fastest call over `timings` (`Latency`s of one program, from timings spread over
    time): the latency without other tenants' interference, which the cost model predicts."""
    timings = list(timings)
    if not timings:
        raise ValueError("no timings to take the steady latency of")
    return min(statistic_ms(latency, "steady") for latency in timings)


STATISTICS = ("steady", "median")


def check_statistic(statistic: str) -> None:
    if statistic not in STATISTICS:
        raise ValueError(f"latency statistic must be one of {', '.join(STATISTICS)}, "
                         f"got {statistic!r}")


def statistic_ms(latency: Latency, statistic: str) -> float:
    """`latency`'s "steady" (fastest call) or "median" figure, in ms."""
    check_statistic(statistic)
    return latency.min_ms if statistic == "steady" else latency.median_ms


def time_call(fn: Callable[[], Any], *, warmup: int = 2, repeats: int = 10,
              min_seconds: float = 0.0, threads: int, backend: str) -> Latency:
    """Call `fn()` `warmup` times untimed, then time at least `repeats` calls.

    Calls continue past `repeats` until the timed calls add up to `min_seconds`, so fast
    functions get enough samples for stable quartiles. Warm-up absorbs one-off costs (lazy
    allocation, kernel selection, caches) that a deployed generator pays once.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    for _ in range(warmup):
        fn()
    seconds: list[float] = []
    while len(seconds) < repeats or sum(seconds) < min_seconds:
        start = time.perf_counter()
        fn()
        seconds.append(time.perf_counter() - start)
    return Latency.from_samples(seconds, warmup=warmup, threads=threads, backend=backend)


def time_side_by_side(calls: Mapping[str, tuple[Callable[[], Any], int]], *, rounds: int = 10,
                      warmup: int = 2, threads: int, backends: Mapping[str, str]
                      ) -> dict[str, Latency]:
    """Time several functions in turns: each round calls every one (`calls[name]` is
    (fn, calls per round)), so all see the same machine. A shared machine has slow spells of
    seconds (measured here: one ORT model at 26 ms, then 36-41 ms for a few seconds, then 26
    again), which would bias a comparison of two timings taken one after the other."""
    for fn, _ in calls.values():
        for _ in range(warmup):
            fn()
    seconds: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(rounds):
        for name, (fn, per_round) in calls.items():
            for _ in range(per_round):
                start = time.perf_counter()
                fn()
                seconds[name].append(time.perf_counter() - start)
    return {name: Latency.from_samples(s, warmup=warmup, threads=threads, backend=backends[name])
            for name, s in seconds.items()}


def time_torch(module: torch.nn.Module, inputs: torch.Tensor | tuple[torch.Tensor, ...], *,
               threads: int | None = None, warmup: int = 2, repeats: int = 10) -> Latency:
    """Latency of the eager forward `module(*inputs)` under `torch.inference_mode()`.

    The module runs as it is: call `.eval()` first, as for deployment. torch's thread count
    is process-wide, so it is set for the measurement and restored afterwards, even on error.
    """
    args = (inputs,) if isinstance(inputs, torch.Tensor) else tuple(inputs)
    previous = torch.get_num_threads()
    threads = previous if threads is None else threads
    torch.set_num_threads(threads)
    try:
        with torch.inference_mode():
            return time_call(lambda: module(*args), warmup=warmup, repeats=repeats,
                             threads=threads, backend="torch")
    finally:
        torch.set_num_threads(previous)


def time_onnx(session: ort.InferenceSession, feeds: Mapping[str, Any], *, warmup: int = 2,
              repeats: int = 10) -> Latency:
    """Latency of `session.run` on `feeds` (input name -> array; torch tensors are converted)."""
    # convert once, outside the timed loop, so both backends are timed on the model alone
    arrays = {name: value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else value
              for name, value in feeds.items()}
    threads = session.get_session_options().intra_op_num_threads
    return time_call(lambda: session.run(None, arrays), warmup=warmup, repeats=repeats,
                     threads=threads, backend="onnxruntime")


def _cpuinfo() -> dict[str, str]:
    """The first processor's 'key: value' lines of /proc/cpuinfo; empty where there is none."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {}
    info: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            info.setdefault(key.strip(), value.strip())
    return info


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def environment() -> dict[str, str]:
    """What a latency figure depends on: library versions, CPU model, cores, ISA extensions."""
    cpuinfo = _cpuinfo()
    flags = set(cpuinfo["flags"].split()) if "flags" in cpuinfo else None
    env = {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "onnx": _version("onnx"),
        "onnxruntime": ort.__version__,
        "numpy": np.__version__,
        "platform": platform.platform(),
        "cpu": cpuinfo.get("model name") or platform.processor() or "unknown",
        "logical_cores": str(os.cpu_count()),
        "torch_threads": str(torch.get_num_threads()),
    }
    for flag in CPU_FLAGS:
        env[flag] = "unknown" if flags is None else ("yes" if flag in flags else "no")
    return env

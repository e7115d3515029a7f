"""`tune`: measure a spread of kernels on the device and fit the target's cost model.

Each probe is a small torch module (one conv of some shape, a norm, ..., and on int8 targets
chains of int8 convs with what runs between them) that goes through the same trace -> (int8) ->
lower -> measure path as `compile`, so what is fitted is what compile deploys. A probe's latency
is its fastest call over `PASSES` timings, one in each pass over all probes
(`measure.steady_ms`). Every probe's kernels (`targets.roofline.kernels`) and latency go
into one fit of all "kind/dtype" keys at once (`targets.roofline.fit_programs`), given the
per-call overhead (`call_overhead`: of the smallest program, a ReLU on one element); the fit
is saved where `targets.get` finds it.

The spread is drawn from a fixed seed over kernel sizes, channel counts (aligned and not),
strides and resolutions, so a tuned profile is reproducible on the same machine.
"""

from __future__ import annotations

import datetime
import random
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from . import targets as target_profiles
from .ir import trace
from .backends import Backend, get_backend
from .measure import Latency, environment, steady_ms
from .passes.quantize import quantize_int8
from .progress import progress_bar
from .targets import KernelFit, Target
from .targets.roofline import (MAC_KINDS, MODEL_OVERHEAD, Kernel, fit_programs, kernels,
                                macs_proxy_fit)

Measure = Callable[[object, tuple], Latency]   # (GanGraph, inputs) -> latency on the device
# Each probe is timed once per pass over all of them, and its fastest call over the passes is
# fitted: one timing (20 calls, milliseconds for most probes) falls inside one of a shared
# machine's slow spells, which last seconds (here, one program's 1-s medians spread over +-15%).
PASSES = 3
WIDTHS = (8, 16, 24, 32, 48, 64, 96, 128, 192, 256)
RESOLUTIONS = (16, 32, 64, 128)


@dataclass(frozen=True)
class Probe:
    label: str
    module: nn.Module
    inputs: tuple
    int8: bool = False           # also measure it quantized (convs on int8 targets)


@dataclass(frozen=True)
class TuneResult:
    target: Target               # the profile with the fitted kernels
    kernels: dict[str, KernelFit]
    samples: list[tuple[tuple[Kernel, ...], float]]   # (a probe's kernels, its measured seconds)
    macs_proxy: dict[str, float]  # dtype -> seconds per MAC of the MACs-only proxy
    path: Path | None


class _Add(nn.Module):
    def forward(self, a, b):
        return a + b


class _Cat(nn.Module):
    def forward(self, a, b):
        return torch.cat([a, b], dim=1)


def _x(c: int, hw: int) -> torch.Tensor:
    return torch.randn(1, c, hw, hw)


def _conv1(cin: int, cout: int) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 1)


class _ResidualJoin(nn.Module):
    """Two convs added, then padded into a third: the add runs in int8 (QLinearAdd)."""

    def __init__(self, c: int):
        super().__init__()
        self.a, self.b, self.out = _conv1(c, c), _conv1(c, c), _conv1(c, c)

    def forward(self, x):
        return self.out(nn.functional.pad(self.a(x) + self.b(x), (1, 1, 1, 1), mode="reflect"))


class _Concat(nn.Module):
    """Two convs concatenated through a ReLU into a third: QLinearConcat, the ReLU absorbed."""

    def __init__(self, c: int):
        super().__init__()
        self.a, self.b, self.out = _conv1(c, c), _conv1(c, c), _conv1(2 * c, c)

    def forward(self, x):
        return self.out(torch.relu(torch.cat([self.a(x), self.b(x)], 1)))


def _stack(c: int, layers: int, k: int) -> nn.Sequential:
    """`layers` kxk convs from c to c channels, each padded by reflection and followed by a ReLU."""
    body: list[nn.Module] = []
    for _ in range(layers):
        body += [nn.ReflectionPad2d(k // 2), nn.Conv2d(c, c, k), nn.ReLU()]
    return nn.Sequential(*body)


# Chains of int8 convs: a lone int8 conv pays the Q, DQ and layout transposes at its ends, which
# a generator's int8 convs mostly do not, and norms, pads, adds and shuffles between int8 convs
# run as 8-bit kernels of their own (targets/int8_runtime.py); each kind is fitted from these.
# Their convs are small, so that what runs between them, and what each conv costs whatever its
# size, are a large part of the time: fitted on lone convs and 2-conv chains alone, 16-channel
# 3x3 int8 convs at 32 px were predicted at 5 us a layer (conv and pad) and ran in 20.
# (label, MACs / (C^2 H W), module for C channels)
CHAINS = (
    ("conv stack", 6 * 9, lambda c: _stack(c, 6, 3)),
    ("1x1 stack", 6, lambda c: _stack(c, 6, 1)),
    ("norm chain", 2, lambda c: nn.Sequential(_conv1(c, c), nn.InstanceNorm2d(c), nn.ReLU(),
                                              nn.ReflectionPad2d(1), _conv1(c, c))),
    ("relu chain", 2, lambda c: nn.Sequential(_conv1(c, c), nn.ReLU(), _conv1(c, c))),
    ("leaky chain", 2, lambda c: nn.Sequential(_conv1(c, c), nn.LeakyReLU(0.2), _conv1(c, c))),
    ("concat", 4, _Concat),
    ("residual join", 3, _ResidualJoin),
    ("sub-pixel chain", 8, lambda c: nn.Sequential(_conv1(c, 4 * c), nn.PixelShuffle(2),
                                                   _conv1(c, c))),
)


def spread(target: Target, size: str = "full", seed: int = 0) -> list[Probe]:
    """The probes to measure: "full" (197 probes, minutes) or "quick" (a few per kind, seconds)."""
    rng = random.Random(seed)
    n = {"full": 1, "quick": 0}[size]
    int8 = "int8" in target.precisions and "quantize_int8" in target.passes
    probes: list[Probe] = []

    def conv_probes(count, shape):
        """`count` single-conv probes of shapes drawn by `shape()`, in the MACs probes span."""
        found = []
        while len(found) < count:
            cin, cout, k, stride, hw = shape()
            if 2e5 <= cin * cout * k * k * (hw // stride) ** 2 <= 8e8:
                found.append(Probe(f"conv k{k} s{stride} {cin}->{cout} @{hw}",
                                   nn.Conv2d(cin, cout, k, stride, k // 2), (_x(cin, hw),), int8))
        return found

    def any_conv():
        k = rng.choices((1, 3, 7), (3, 6, 1))[0]
        cin = rng.choice((3, *WIDTHS)) if k == 7 else rng.choice(WIDTHS)
        return cin, rng.choice(WIDTHS), k, rng.choice((1, 1, 2)), rng.choice(RESOLUTIONS)

    probes += conv_probes(48 if n else 6, any_conv)
    # where generators run convs that those miss: the RGB stem (3 input channels at the image's
    # size) and the bottleneck (hundreds of channels at 1-8 px, where reading the weights is the
    # time: 512->512 3x3 int8 convs at 2-4 px ran in 1.5-2x what probes at 16-128 px predicted)
    probes += conv_probes(6 if n else 1, lambda: (
        3, rng.choice(WIDTHS[:6]), *rng.choice(((7, 1), (3, 1), (4, 2))), rng.choice((64, 128, 256))))
    probes += conv_probes(8 if n else 1, lambda: (
        rng.choice((128, 256, 384, 512)), rng.choice((128, 256, 512)), rng.choice((3, 4)),
        rng.choice((1, 2)), rng.choice((2, 4, 8))))
    for _ in range(10 if n else 2):
        c, hw = rng.choice(WIDTHS[1:]), rng.choice(RESOLUTIONS)
        probes.append(Probe(f"depthwise 3x3 {c} @{hw}", nn.Conv2d(c, c, 3, 1, 1, groups=c),
                            (_x(c, hw),), int8))
    # generators upsample from a latent at 1 px (k4 s1) and through 4-8 px with the most
    # channels: probes at 16-64 px alone fitted a weight term that put a DCGAN's and a U-Net's
    # transposed convs at 2-16x their time
    for _ in range(18 if n else 2):
        cin, cout = rng.choice(WIDTHS), rng.choice(WIDTHS)
        hw = rng.choice((4, 8, *RESOLUTIONS[:3]))
        k, pad, out_pad = rng.choice(((3, 1, 1), (4, 1, 0)))
        probes.append(Probe(f"conv_transpose k{k} {cin}->{cout} @{hw}",
                            nn.ConvTranspose2d(cin, cout, k, 2, pad, out_pad), (_x(cin, hw),)))
    for _ in range(3 if n else 1):
        cin, cout = rng.choice((64, 100, 128, 256)), rng.choice((128, 256, 512))
        probes.append(Probe(f"conv_transpose k4 s1 {cin}->{cout} @1",
                            nn.ConvTranspose2d(cin, cout, 4, 1, 0), (_x(cin, 1),)))
    for _ in range(6 if n else 2):
        fin, fout = rng.choice((64, 128, 256, 512)), rng.choice((256, 1024, 4096, 8192))
        probes.append(Probe(f"linear {fin}->{fout}", nn.Linear(fin, fout), (torch.randn(1, fin),)))
    for name, macs_per_c2hw2, make in CHAINS if int8 else ():
        while sum(p.label.startswith(name) for p in probes) < (6 if n else 1):
            c, hw = rng.choice(WIDTHS), rng.choice(RESOLUTIONS)
            if 2e5 <= macs_per_c2hw2 * c * c * hw * hw <= 1e9:
                probes.append(Probe(f"{name} {c} @{hw}", make(c), (_x(c, hw),), int8))
    elementwise = (("norm", lambda c: nn.InstanceNorm2d(c), 1, 10),
                   ("relu", lambda c: nn.ReLU(), 1, 4), ("tanh", lambda c: nn.Tanh(), 1, 4),
                   ("leaky_relu", lambda c: nn.LeakyReLU(0.2), 1, 4), ("add", lambda c: _Add(), 2, 4),
                   ("reflection_pad", lambda c: nn.ReflectionPad2d(1), 1, 8),
                   ("zero_pad", lambda c: nn.ZeroPad2d(1), 1, 4),
                   ("cat", lambda c: _Cat(), 2, 4),
                   ("upsample", lambda c: nn.Upsample(scale_factor=2), 1, 4),
                   ("pixel_shuffle", lambda c: nn.PixelShuffle(2), 1, 4))
    # up to 256 px: generators run norms and pads on 4M-element tensors, past the caches that
    # 128-px probes fit in (a 64-channel norm at 256 px: 0.41 ns an element, 0.22 at 128 px)
    for name, make, arity, count in elementwise:
        drawn = 0
        while drawn < (count if n else 1):
            c, hw = rng.choice(WIDTHS), rng.choice((*RESOLUTIONS, 256))
            if c * hw * hw <= 8e6:
                probes.append(Probe(f"{name} {c} @{hw}", make(c),
                                    tuple(_x(c, hw) for _ in range(arity))))
                drawn += 1
    return probes


def _probe_graphs(probe: Probe):
    """(graph, int8 node names) for the probe in float, and quantized when it asks for int8."""
    graph = trace(probe.module, probe.inputs)
    yield graph, ()
    if probe.int8:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # calibrating on the probe's own input is the point
            result = quantize_int8(graph, calib_data=[probe.inputs])
        yield result.graph, tuple(layer.node for layer in result.plan)


def overhead_probes() -> tuple[Probe, Probe]:
    """One and three ReLUs on one element: the difference is two tiny kernels, the rest of
    the one-ReLU latency is what every call pays (session dispatch, input/output copies)."""
    one = torch.randn(1, 1, 1, 1)
    return (Probe("1 relu on one element", nn.Sequential(nn.ReLU()), (one,)),
            Probe("3 relus on one element", nn.Sequential(nn.ReLU(), nn.Tanh(), nn.ReLU()), (one,)))


def call_overhead(measure: Measure, passes: int = 1) -> float:
    """Seconds every call pays beyond its kernels."""
    t1, t3 = _time_in_passes(measure, [(trace(p.module, p.inputs), p.inputs, None)
                                       for p in overhead_probes()], passes, "the device")
    return max(t1 - max(t3 - t1, 0.0) / 2, 0.0)


def tune(target: str | Target, *, measure: Measure | None = None, size: str = "full",
         save: bool | Path = True, seed: int = 0, passes: int = PASSES) -> TuneResult:
    """Measure `spread(target)` with `measure` (default: the target's measurement backend) in
    `passes` passes over all probes, fit each kernel kind to the probes' fastest calls, and
    save the fitted profile (to `save` when it is a path)."""
    profile = target_profiles.get(target, tuned=False)
    measure = measure or default_measure(profile)
    probes = spread(profile, size, seed)
    overhead = call_overhead(measure, passes)
    programs = []   # (graph, inputs, kernels): every probe in float, and in int8 where it asks
    tracing = f"tracing {len(probes)} probes for {profile.name}"
    with progress_bar(tracing, total=len(probes)) as advance:
        for probe in probes:
            for graph, int8 in _probe_graphs(probe):
                found = tuple(kernels(graph, profile, int8=int8))
                if not found:
                    raise RuntimeError(f"tune probe {probe.label!r} traced to no kernel")
                programs.append((graph, probe.inputs, found))
            advance()
    timed = _time_in_passes(measure, programs, passes, profile.name)
    samples = [(found, seconds) for (_, _, found), seconds in zip(programs, timed)]
    macs: dict[str, list[tuple[float, float]]] = {}
    for (graph, _, found), seconds in zip(programs, timed):
        mac_kernels = [k for k in found if k.kind in MAC_KINDS]
        if mac_kernels:
            macs.setdefault(mac_kernels[0].dtype, []).append((_macs(graph), seconds))
    fits = fit_programs(samples, overhead)
    fits[MODEL_OVERHEAD] = KernelFit(overhead_s=overhead, s_per_mac=0.0, s_per_byte=0.0, samples=1)
    proxy = {dtype: macs_proxy_fit(rows) for dtype, rows in macs.items()}
    path = None
    if save:
        meta = {"tuned_at": datetime.datetime.now().isoformat(timespec="seconds"),
                "probes": len(probes), "size": size, "seed": seed,
                "macs_proxy_s_per_mac": proxy, "environment": environment()}
        path = target_profiles.save_tuned(profile, fits, meta,
                                          save if isinstance(save, Path) else None)
    fitted = profile.with_kernels(fits, str(path) if path else "tune (not saved)")
    return TuneResult(target=fitted, kernels=fits, samples=samples, macs_proxy=proxy, path=path)


def _time_in_passes(measure: Measure, programs: list, passes: int, target: str) -> list[float]:
    """Seconds of each (graph, inputs, _)'s fastest call over `passes` timings, one per pass
    over all: the steady latency (`measure.steady_ms`)."""
    if passes < 1:
        raise ValueError(f"passes must be at least 1, got {passes}")
    timings: list[list[Latency]] = [[] for _ in programs]
    label = f"timing on {target} ({passes} passes)"
    with progress_bar(label, total=passes * len(programs)) as advance:
        for _ in range(passes):
            for program_timings, (graph, inputs, _) in zip(timings, programs):
                program_timings.append(measure(graph, inputs))
                advance()
    return [steady_ms(program_timings) / 1e3 for program_timings in timings]


def _macs(graph) -> float:
    return float(max(graph.macs, 1))


def default_measure(target: Target) -> Measure:
    """The target's measurement backend as a (graph, inputs) -> Latency function."""
    if target.measurement == "cost-model":
        raise ValueError(f"target {target.name!r} has no local measurement backend (its profile "
                         f"says 'cost-model'): pass measure=backend_measure(TvmRpcBackend(...)) "
                         f"for your board, or run `gcc-gan tune --rpc HOST:PORT:KEY`")
    return backend_measure(get_backend(target.measurement))


def backend_measure(backend: Backend) -> Measure:
    """`backend` as a Measure that lowers each graph once: `tune` times it in every pass."""
    threads = torch.get_num_threads()
    lowered: dict[int, tuple] = {}   # id(graph) -> (graph, artifact); the graph pins the id

    def measure(graph, inputs) -> Latency:
        if id(graph) not in lowered:
            lowered[id(graph)] = (graph, backend.lower(graph, calib=[inputs]))
        # enough calls for stable quartiles on kernels of a few microseconds
        return backend.time(lowered[id(graph)][1], inputs, threads=threads, repeats=20)
    return measure


def rpc_measure(target: Target, spec: str) -> Measure:
    """Measure on a board through a TVM RPC tracker given as HOST:PORT:KEY."""
    host, port, key = (spec.split(":") + ["", "", ""])[:3]
    if not (host and port.isdigit() and key):
        raise ValueError(f"--rpc {spec!r} must be HOST:PORT:KEY, e.g. 127.0.0.1:9190:pixel")
    if not target.tvm_target:
        raise ValueError(f"target {target.name!r} has no tvm_target to build for the board")
    return backend_measure(get_backend("tvm-rpc", tracker_host=host, tracker_port=int(port),
                                       key=key, target=dict(target.tvm_target)))

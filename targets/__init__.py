"""Hardware targets as data: one TOML profile per target in this folder, loaded into `Target`.

Adding a board is adding a TOML file (or calling `register`). A profile says what the target
can run (precisions, sparsity patterns, channel alignment), what its cost model needs (peak
MAC/s per dtype, memory bandwidth, per-op overhead; crossbar geometry for ReRAM), the default
pass pipeline, and how the result is lowered and measured.

`gcc-gan tune --target NAME` measures kernels on the device and fits the cost model; the fit is
saved under `tuned_dir()` and `get(NAME)` returns the profile with it (`Target.tuned` says
from where), so `compile` uses measured kernel costs without being asked.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tomllib
import warnings
from dataclasses import dataclass, field, fields
from importlib import resources
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping

from gcc_gan.measure import CPU_FLAGS, environment

COST_MODELS = ("roofline", "crossbar")
MEASUREMENTS = ("onnxruntime", "tvm", "tvm-rpc", "cost-model")


@dataclass(frozen=True)
class KernelFit:
    """Seconds of one kernel = overhead_s + work * s_per_mac + nbytes * s_per_byte
    + weights * s_per_weight + rows * s_per_row.

    `work` is the MACs the hardware really issues (channels padded up to the target's
    alignment), or the element count of an elementwise kernel; `nbytes` the activations read
    and written; `weights` the weight count, whose term covers weight traffic and the lost
    efficiency of few output pixels per weight (t = macs/peak * (1 + P0/pixels) = macs/peak +
    weights * P0/peak); `rows` the contiguous runs a pad walks one by one (an fp32 NCHW pad:
    C*H of them; an 8-bit NHWC one: H). A profile's datasheet figures give a first fit
    (1/peak, 1/bandwidth);
    `tune` replaces it with a least-squares fit on measured kernels.
    """

    overhead_s: float
    s_per_mac: float
    s_per_byte: float
    s_per_weight: float = 0.0
    samples: int = 0            # measured probes that ran this kind (0: datasheet)
    median_rel_error: float | None = None  # on those probes
    s_per_row: float = 0.0      # profiles tuned before session 12 have none

    def seconds(self, work: float, nbytes: float, weights: float = 0.0, rows: float = 0.0
                ) -> float:
        return (self.overhead_s + work * self.s_per_mac + nbytes * self.s_per_byte
                + weights * self.s_per_weight + rows * self.s_per_row)


@dataclass(frozen=True)
class Target:
    name: str
    description: str
    passes: tuple[str, ...]                  # the default pipeline, in order
    lowering: tuple[str, ...]                # artifacts: "onnx", "tvm"
    measurement: str                         # a backend of gcc_gan.backends, or "cost-model"
    cost_model: str = "roofline"             # "roofline" (CPU/GPU) or "crossbar" (ReRAM)
    channel_alignment: int = 1               # pruning keeps channel counts multiples of this
    # conv kernels take a slower path when a layer's output-channel count is not a multiple of
    # this; rewrites that choose an output count (split_taps) round up to it with zero outputs
    output_channel_multiple: int = 1
    precisions: tuple[str, ...] = ("fp32",)
    # int8 weights use 8 or 7 bits; "host": 7 where this host's ONNX Runtime int8 kernels
    # saturate int16 sums of product pairs (x86 without VNNI), else 8
    int8_weight_bits: int | str = 8
    sparsity: tuple[str, ...] = ()           # patterns with kernels: "unstructured", "2:4"
    peak_macs_per_s: Mapping[str, float] = field(default_factory=dict)  # dtype -> MAC/s
    bandwidth_bytes_per_s: float = 0.0
    op_overhead_s: float = 0.0               # launch/dispatch cost of one kernel
    tvm_target: Mapping[str, Any] | None = None   # TVM target dict for lowering="tvm"
    crossbar: Mapping[str, float] | None = None   # ReRAM geometry and circuit figures
    kernels: Mapping[str, KernelFit] = field(default_factory=dict)  # "conv/int8" -> fit
    tuned: str | None = None                 # the tuned-profile file the kernels came from

    def __post_init__(self):
        if self.cost_model not in COST_MODELS:
            raise ValueError(f"target {self.name}: cost_model must be one of {COST_MODELS}, "
                             f"got {self.cost_model!r}")
        if self.measurement not in MEASUREMENTS:
            raise ValueError(f"target {self.name}: measurement must be one of {MEASUREMENTS}, "
                             f"got {self.measurement!r}")
        if self.cost_model == "roofline":
            missing = [p for p in self.precisions if p not in self.peak_macs_per_s]
            if missing or self.bandwidth_bytes_per_s <= 0:
                raise ValueError(f"target {self.name}: a roofline profile needs peak_macs_per_s "
                                 f"for each precision (missing {missing}) and "
                                 f"bandwidth_bytes_per_s > 0")
        if self.int8_weight_bits not in (7, 8, "host"):
            raise ValueError(f"target {self.name}: int8_weight_bits must be 7, 8 or 'host', "
                             f"got {self.int8_weight_bits!r}")
        if self.cost_model == "crossbar" and not self.crossbar:
            raise ValueError(f"target {self.name}: cost_model 'crossbar' needs a [crossbar] table")

    @classmethod
    def from_toml(cls, text: str, source: str = "<string>") -> "Target":
        data = tomllib.loads(text)
        known = {f.name for f in fields(cls)} - {"kernels", "tuned"}
        required = {f.name for f in fields(cls)
                    if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}
        unknown, missing = set(data) - known, required - set(data)
        if unknown or missing:
            raise ValueError(f"target profile {source}: unknown keys {sorted(unknown)}, "
                             f"missing keys {sorted(missing)}")
        for key in ("passes", "lowering", "precisions", "sparsity"):
            if key in data:
                data[key] = tuple(data[key])
        for key in ("peak_macs_per_s", "tvm_target", "crossbar"):
            if key in data:
                data[key] = MappingProxyType(data[key])
        return cls(**data)

    def with_kernels(self, kernels: Mapping[str, KernelFit], source: str) -> "Target":
        return dataclasses.replace(self, kernels=MappingProxyType(dict(kernels)), tuned=source)


_REGISTRY: dict[str, Target] = {}


def register(target: Target) -> Target:
    _REGISTRY[target.name] = target
    return target


def tuned_dir() -> Path:
    """Where `gcc-gan tune` saves fitted profiles: $GCC_GAN_HOME/tuned (default ~/.cache/gcc-gan)."""
    home = os.environ.get("GCC_GAN_HOME") or Path.home() / ".cache" / "gcc-gan"
    return Path(home) / "tuned"


def tuned_path(name: str) -> Path:
    return tuned_dir() / f"{name}.json"


def save_tuned(target: Target, kernels: Mapping[str, KernelFit], meta: Mapping[str, Any],
               path: Path | None = None) -> Path:
    path = path or tuned_path(target.name)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"schema": "gcc-gan.tuned-target/1", "target": target.name, **meta,
               "kernels": {k: dataclasses.asdict(v) for k, v in kernels.items()}}
    path.write_text(json.dumps(payload, indent=2))
    return path


def load_tuned(target: Target, path: Path) -> Target:
    data = json.loads(path.read_text())
    if data.get("schema") != "gcc-gan.tuned-target/1" or data.get("target") != target.name:
        raise ValueError(f"{path} is not a tuned profile of target {target.name!r}; "
                         f"re-run `gcc-gan tune --target {target.name}`")
    kernels = {k: KernelFit(**v) for k, v in data["kernels"].items()}
    _warn_if_tuned_on_another_cpu(data.get("environment") or {}, path, target.name)
    return target.with_kernels(kernels, str(path))


def _warn_if_tuned_on_another_cpu(tuned: Mapping[str, str], path: Path, name: str) -> None:
    """Kernel costs carry over only to the CPU they were measured on: without VNNI, ONNX
    Runtime's int8 convs peak at half the MAC/s (183 against 364 GMAC/s on two cores)."""
    here = environment()
    differ = [f"{key}: {tuned[key]} there, {here[key]} here" for key in ("cpu", *CPU_FLAGS)
              if key in tuned and tuned[key] != here[key]]
    if differ:
        warnings.warn(f"{path} was tuned on another CPU ({'; '.join(differ)}): its kernel costs "
                      f"may not hold here; re-run `gcc-gan tune --target {name}`", stacklevel=3)


def get(name: str | Target, *, tuned: bool = True) -> Target:
    """The profile `name`, with its tuned kernel fits when `gcc-gan tune` saved some."""
    if isinstance(name, Target):
        return name
    if name not in _REGISTRY:
        raise ValueError(f"unknown target {name!r}; available: {', '.join(sorted(_REGISTRY))}. "
                         "Add a profile with gcc_gan.targets.register(Target(...)).")
    target = _REGISTRY[name]
    path = tuned_path(name)
    return load_tuned(target, path) if tuned and path.exists() else target


def available() -> list[Target]:
    return [get(n) for n in sorted(_REGISTRY)]


for _profile in sorted(resources.files(__name__).iterdir(), key=lambda p: p.name):
    if _profile.name.endswith(".toml"):
        register(Target.from_toml(_profile.read_text(), _profile.name))

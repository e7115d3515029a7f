"""Hardware targets as data: one TOML profile per target in this folder, loaded into `Target`.

Adding a board is adding a TOML file (or calling `register`). A profile names the default pass
pipeline, the lowering backend, the measurement backend and the channel alignment that pruning
rounds to. Cost-model parameters (peak MAC/s per dtype, bandwidth) join with the targets issue.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, fields
from importlib import resources


@dataclass(frozen=True)
class Target:
    name: str
    description: str
    passes: tuple[str, ...]
    lowering: str
    measurement: str
    channel_alignment: int = 1

    @classmethod
    def from_toml(cls, text: str, source: str = "<string>") -> "Target":
        data = tomllib.loads(text)
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        missing = {f.name for f in fields(cls) if f.name not in data and f.name != "channel_alignment"}
        if unknown or missing:
            raise ValueError(f"target profile {source}: unknown keys {sorted(unknown)}, "
                             f"missing keys {sorted(missing)}")
        return cls(**{**data, "passes": tuple(data["passes"])})


_REGISTRY: dict[str, Target] = {}


def register(target: Target) -> Target:
    _REGISTRY[target.name] = target
    return target


def get(name: str) -> Target:
    if name not in _REGISTRY:
        raise ValueError(f"unknown target {name!r}; available: {', '.join(sorted(_REGISTRY))}. "
                         "Add a profile with gcc_gan.targets.register(Target(...)).")
    return _REGISTRY[name]


def available() -> list[Target]:
    return [_REGISTRY[n] for n in sorted(_REGISTRY)]


for _profile in sorted(resources.files(__name__).iterdir(), key=lambda p: p.name):
    if _profile.name.endswith(".toml"):
        register(Target.from_toml(_profile.read_text(), _profile.name))

"""Registry of reference generators: a name maps to a factory, its configs and its example inputs.

Every factory's docstring carries one line of the form

    Standard config (<what the standard config is>): <real>e<exp> real MACs, <lit>e<exp> literature MACs.

stating the multiply-accumulates at batch 1 of its ``standard`` config; `documented_macs` parses
it and the tests check it against an independent count, so the docstring cannot drift.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import torch
from torch import nn

InputMaker = Callable[[Mapping[str, Any], int, torch.Generator], tuple]

_MACS_LINE = re.compile(
    r"Standard config \((?P<what>[^)]*)\):\s*(?P<real>[\d.]+e\d+) real MACs,\s*"
    r"(?P<lit>[\d.]+e\d+) literature MACs"
)


@dataclass(frozen=True)
class ZooConfig:
    """Factory keyword arguments plus the input size they are meant for."""

    kwargs: Mapping[str, Any]
    input_size: tuple[int, int] | None = None  # (H, W) of image inputs; None for latent-only models


@dataclass(frozen=True)
class ZooEntry:
    name: str
    factory: Callable[..., nn.Module]
    # (factory kwargs, input_size, batch, generator) -> the positional example inputs of forward
    make_inputs: Callable[[Mapping[str, Any], tuple[int, int] | None, int, torch.Generator], tuple]
    configs: Mapping[str, ZooConfig] = field(default_factory=dict)  # "tiny" and "standard" at least


ZOO: dict[str, ZooEntry] = {}


def register(entry: ZooEntry) -> ZooEntry:
    missing = {"tiny", "standard"} - set(entry.configs)
    if missing:
        raise ValueError(f"zoo entry {entry.name!r} lacks configs {sorted(missing)}")
    if entry.name in ZOO:
        raise ValueError(f"zoo entry {entry.name!r} registered twice")
    ZOO[entry.name] = entry
    return entry


def _entry(name: str) -> ZooEntry:
    try:
        return ZOO[name]
    except KeyError:
        raise KeyError(f"no zoo model {name!r}; known: {', '.join(sorted(ZOO))}") from None


def build(name: str, config: str = "tiny", *, seed: int = 0, **overrides: Any) -> nn.Module:
    """Build zoo model `name` in `config` ("tiny" or "standard"), seeded, in eval mode."""
    entry = _entry(name)
    torch.manual_seed(seed)
    return entry.factory(**{**entry.configs[config].kwargs, **overrides}).eval()


def example_inputs(name: str, config: str = "tiny", *, batch: int = 1, seed: int = 0,
                   **overrides: Any) -> tuple:
    """Positional example inputs for `build(name, config, **overrides)` at `batch`."""
    entry = _entry(name)
    cfg = entry.configs[config]
    gen = torch.Generator().manual_seed(seed)
    return entry.make_inputs({**cfg.kwargs, **overrides}, cfg.input_size, batch, gen)


def documented_macs(name: str) -> tuple[float, float]:
    """(real, literature) MACs of the standard config, read from the factory's docstring."""
    doc = _entry(name).factory.__doc__ or ""
    m = _MACS_LINE.search(" ".join(doc.split()))
    if m is None:
        raise ValueError(f"{name}: factory docstring has no 'Standard config (...): ... MACs' line")
    return float(m["real"]), float(m["lit"])

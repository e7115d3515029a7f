"""An independent MACs count: forward hooks on modules during a real forward pass.

This is deliberately a different method from the graph analysis in `gcc_gan.cost`: it reads
module attributes and the real input/output tensors of each module call, never the traced IR.
Conventions (the same the project documents): MACs are the multiply-accumulates of conv,
transposed conv, linear and matmul-like layers; a transposed conv costs
``input.numel() * (C_out/groups) * prod(kernel)`` real MACs and
``output.numel() * (C_in/groups) * prod(kernel)`` in the literature (torchprofile) convention;
elementwise work, norms and interpolation are not MACs. Counts are per batch of the inputs given.

Zoo modules that call functional convs (e.g. StyleGAN2's modulated conv) register a rule with
`hook_rule(ModuleClass)` in `hook_rules.py`; a rule returns (real, literature) MACs for one call.
`count_zoo_macs_on_meta` runs a zoo model on the meta device: shapes only, so standard configs
cost milliseconds (the tests check it equals a real forward's count on the tiny configs).
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import nn
from torch.utils import _pytree as pytree

Rule = Callable[[nn.Module, tuple, object], tuple[float, float]]
_RULES: dict[type, Rule] = {}


def hook_rule(cls: type) -> Callable[[Rule], Rule]:
    def deco(fn: Rule) -> Rule:
        _RULES[cls] = fn
        return fn
    return deco


@hook_rule(nn.Conv1d)
@hook_rule(nn.Conv2d)
@hook_rule(nn.Conv3d)
def _conv(m, inputs, out):
    macs = out.numel() * (m.in_channels // m.groups) * math.prod(m.kernel_size)
    return macs, macs


@hook_rule(nn.ConvTranspose1d)
@hook_rule(nn.ConvTranspose2d)
@hook_rule(nn.ConvTranspose3d)
def _conv_transpose(m, inputs, out):
    k = math.prod(m.kernel_size)
    real = inputs[0].numel() * (m.out_channels // m.groups) * k
    lit = out.numel() * (m.in_channels // m.groups) * k
    return real, lit


@hook_rule(nn.Linear)
def _linear(m, inputs, out):
    macs = out.numel() * m.in_features
    return macs, macs


def _rule_for(module: nn.Module) -> Rule | None:
    for cls in type(module).__mro__:
        if cls in _RULES:
            return _RULES[cls]
    return None


@torch.no_grad()
def count_macs(model: nn.Module, inputs: tuple) -> tuple[float, float]:
    """(real, literature) MACs of one forward of `model` on `inputs`, summed over module calls."""
    totals = [0.0, 0.0]

    def hook(module, args, out):
        real, lit = _rule_for(module)(module, args, out)
        totals[0] += real
        totals[1] += lit

    handles = [m.register_forward_hook(hook) for m in model.modules() if _rule_for(m) is not None]
    try:
        model(*inputs)
    finally:
        for h in handles:
            h.remove()
    return totals[0], totals[1]


def count_zoo_macs_on_meta(name: str, config: str) -> tuple[float, float]:
    from gcc_gan.zoo import registry

    with torch.device("meta"):
        model = registry.build(name, config)
    inputs = pytree.tree_map(lambda t: t.to("meta") if isinstance(t, torch.Tensor) else t,
                             registry.example_inputs(name, config))
    return count_macs(model, inputs)


from tests.zoo import hook_rules  # noqa: E402,F401  (registers the zoo's functional-conv rules)

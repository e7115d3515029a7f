"""One entry point to a target's cost model: `estimate(graph, target)`.

The profile's `cost_model` picks the model (the only place that branches on it); both return
an object with `.seconds`/`.ms` and per-layer rows. Which convs run in int8 comes from the
graph's int8 plan when it has one, or, before quantization, from the convs the int8 pass would
choose when the target's pipeline quantizes (`assume_int8`). Bits per crossbar layer come
from the binarize pass's annotations (8 where there are none).
"""

from __future__ import annotations

from gcc_gan.passes.binarize import weight_bits
from gcc_gan.passes.quantize import int8_candidates
from gcc_gan.passes.sparsify import layer_masks
from gcc_gan.quant import quant_plan

from . import Target, crossbar, roofline


def int8_nodes(graph, target: Target, assume_int8: bool = False) -> tuple[str, ...]:
    plan = quant_plan(graph.module)
    if plan:
        return tuple(layer.node for layer in plan)
    if assume_int8 and "int8" in target.precisions and "quantize_int8" in target.passes:
        return tuple(node.name for node in int8_candidates(graph.module)[0])
    return ()


def sparse_kernel_nodes(graph, target: Target) -> tuple[str, ...]:
    """Convs with 2:4 masks, when the target has 2:4 sparse kernels (unstructured masks never
    speed up dense kernels, so they are not counted)."""
    if "2:4" not in target.sparsity:
        return ()
    return tuple(m.node for m in layer_masks(graph).values() if m.pattern == "2:4")


def _roofline(graph, target, assume_int8, bits):
    return roofline.predict(graph, target, int8=int8_nodes(graph, target, assume_int8),
                            structured_sparse=sparse_kernel_nodes(graph, target))


def _crossbar(graph, target, assume_int8, bits):
    return crossbar.estimate(graph, target, weight_bits(graph) if bits is None else bits)


ESTIMATORS = {"roofline": _roofline, "crossbar": _crossbar}


def estimate(graph, target: Target, *, assume_int8: bool = False, bits=None):
    """The target's cost model on `graph`: a roofline `Prediction` or a `CrossbarReport`."""
    return ESTIMATORS[target.cost_model](graph, target, assume_int8, bits)

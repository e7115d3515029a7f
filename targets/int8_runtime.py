"""Where an int8 program's tensors are 8-bit at run time, as gcc_gan's ONNX lowering builds it.

The lowering (`gcc_gan.lower.qdq`) quantizes each int8 conv's input and output and each int8
add's operands and output; ONNX Runtime fuses them into int8 kernels. Pads, pixel shuffles,
slices and reshapes move to the 8-bit side of a Q or DQ (`move_data_movement_into_int8`), and
an instance norm between int8 convs runs as one NHWC unit, DQ -> norm -> activations -> Q
(`gcc_gan.lower.nhwc`), whose ReLU the Q absorbs. Everywhere else that a float tensor meets an
8-bit consumer, or an 8-bit tensor a float one, the program runs a conversion: Q or DQ, with the
NCHW <-> NHWC transpose around int8 convs. ONNX Runtime runs leaky ReLUs, sigmoids and concats
between 8-bit tensors in 8 bits too, and a mover after an 8-bit tensor gets its own DQ after it. Measured (ONNX Runtime, 2 threads): a lone 64-channel
3x3 int8 conv at 64x64 spends 40% of its 390 us in them (Q 36, transposes 58 + 35, DQ 36 us),
time that a chain of int8 convs pays only at its ends; the norm unit costs ~0.9 ns an element
against ~0.25 for a float InstanceNormalization.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from torch import fx

from gcc_gan.ir import ops
from gcc_gan.int8_graph import int8_add_nodes, norm_activations, quantized_output

# ops that only move values: the lowering runs them on the 8-bit side of a Q or DQ
MOVERS = ops.ValueMover
# ops ONNX Runtime runs on 8-bit tensors where their inputs are dequantized and their output
# quantized (QLinearLeakyRelu, QLinearSigmoid, QLinearConcat); float readers of the output then
# read it through a DQ
QLINEAR = ops.op_set("leaky_relu", "leaky_relu_", "sigmoid", "sigmoid_", "cat")
# what a Q absorbs after a norm unit, a QLINEAR op or an int8 conv (ONNX Runtime drops a ReLU
# before a Q whose zero point is the minimum); other activations run in float inside a unit
_FOLDED = ops.Relu


@dataclass(frozen=True)
class Int8Domain:
    eight_bit: frozenset[str]          # nodes whose output is 8-bit at run time
    norm_units: frozenset[str]         # norms run as a DQ -> norm -> activations -> Q unit
    folded: frozenset[str]             # activations of those units that the Q absorbs
    conversions: tuple[str, ...]       # tensors converted between float and 8 bits (once each)


def int8_domain(gm: fx.GraphModule, int8: Iterable[str]) -> Int8Domain:
    convs = set(int8)
    nodes = [n for n in gm.graph.nodes if n.op in ("placeholder", "call_function")]
    adds = set(int8_add_nodes(gm, convs)) if convs else set()
    # an 8-bit op needs all its inputs 8-bit, which may be decided after the op is reached:
    # grow the set until it stops changing (each round only adds)
    by_name = {n.name: n for n in nodes}
    # ReLUs whose range an int8 conv's output is quantized with (`quantized_output`)
    relus = {quantized_output(by_name[c]).name for c in convs if c in by_name} - convs
    found = _eight_bit(nodes, convs, adds, relus, frozenset())
    for _ in nodes:
        again = _eight_bit(nodes, convs, adds, relus, found.eight_bit)
        if again.eight_bit == found.eight_bit:
            break
        found = again
    return found


def _eight_bit(nodes, convs, adds, relus, known) -> Int8Domain:
    reads: dict[tuple[str, str], bool] = {}

    def reads_8bit(user: fx.Node, tensor: fx.Node) -> bool:
        """Whether `user` reads `tensor` as 8 bits: an int8 conv's input, an int8 add's operand,
        or a mover or 8-bit op whose output only such readers read (the lowering hoists their Q
        above it)."""
        key = (user.name, tensor.name)
        if key not in reads:
            reads[key] = False   # the graph has no cycles; this only guards re-entry
            if user.name in convs:
                found = bool(user.args) and user.args[0] is tensor
            elif user.name in adds:
                found = True
            elif _is(user, MOVERS) and user.args and user.args[0] is tensor:
                found = _read_8bit(user, reads_8bit)
            elif _is(user, QLINEAR):
                others = [a for a in _tensor_args(user) if a is not tensor]
                found = all(a.name in known for a in others) and _any_reads_8bit(user, reads_8bit)
            elif _absorbed_relu(user, tensor, relus):
                found = _read_8bit(user, reads_8bit)
            else:
                found = False
            reads[key] = found
        return reads[key]

    eight_bit: set[str] = set()
    units: set[str] = set()
    folded: set[str] = set()
    for node in nodes:
        if node.name in convs or node.name in adds:
            eight_bit.add(node.name)
        elif _is(node, MOVERS) and node.args and isinstance(node.args[0], fx.Node):
            # DQ -> mover becomes mover -> DQ, one per reader; mover -> Q becomes Q -> mover
            if node.args[0].name in eight_bit or _read_8bit(node, reads_8bit):
                eight_bit.add(node.name)
        elif _is(node, QLINEAR):
            if (all(a.name in eight_bit for a in _tensor_args(node))
                    and _any_reads_8bit(node, reads_8bit)):
                eight_bit.add(node.name)
        elif node.args and _absorbed_relu(node, node.args[0], relus):
            if node.args[0].name in eight_bit and _read_8bit(node, reads_8bit):
                eight_bit.add(node.name)
                folded.add(node.name)
        elif _is(node, ops.InstanceNorm) and node.args and isinstance(node.args[0], fx.Node):
            tail = _unit_tail(node, eight_bit, reads_8bit)
            if tail is not None:
                units.add(node.name)
                eight_bit.add(tail[-1].name if tail else node.name)
                folded.update(a.name for a in tail if _is(a, _FOLDED))
    inside = {a.name for n in nodes if n.name in units for a in norm_activations(n)}
    conversions: list[str] = []
    for node in nodes:
        if node.name in inside:
            continue
        readers = [u for u in node.users if u.op == "call_function"]
        if node.name in eight_bit:
            # read in float by someone outside a unit, or returned: one DQ
            float_readers = [u for u in readers if not reads_8bit(u, node) and u.name not in units
                             and u.name not in eight_bit]
            if float_readers or len(readers) < len(node.users):
                conversions.append(node.name)
        elif any(reads_8bit(u, node) for u in readers):
            conversions.append(node.name)
    return Int8Domain(frozenset(eight_bit), frozenset(units), frozenset(folded),
                      tuple(conversions))


def _read_8bit(node: fx.Node, reads_8bit) -> bool:
    return bool(node.users) and all(reads_8bit(u, node) for u in node.users)


def _any_reads_8bit(node: fx.Node, reads_8bit) -> bool:
    """Whether a reader quantizes `node`'s output: then the QDQ form has its Q right after it
    (every reader reads the DQ after that Q), the pattern ONNX Runtime fuses into one 8-bit op."""
    return any(reads_8bit(u, node) for u in node.users)


def _absorbed_relu(node: fx.Node, tensor, relus) -> bool:
    """A ReLU whose input's Q takes its parameters: the only reader of a QLINEAR op's output,
    or the ReLU an int8 conv's output is quantized for (`relus`). Where every reader reads it
    in 8 bits, ONNX Runtime drops it with the DQ -> Q around it."""
    return (_is(node, _FOLDED) and isinstance(tensor, fx.Node) and node.args[0] is tensor
            and (node.name in relus or (_is(tensor, QLINEAR) and len(tensor.users) == 1)))


def _tensor_args(node: fx.Node) -> list[fx.Node]:
    flat = [a for arg in node.args for a in (arg if isinstance(arg, (list, tuple)) else [arg])]
    return [a for a in flat if isinstance(a, fx.Node)]


def _is(node: fx.Node, packets) -> bool:
    return node.op == "call_function" and ops.packet(node.target) in packets


def _unit_tail(norm: fx.Node, eight_bit: set[str], reads_8bit) -> list[fx.Node] | None:
    """The activations of `norm`'s unit when it runs as one (its input 8-bit and read by it
    alone, its last output read in 8 bits by every reader), else None."""
    src = norm.args[0]
    if src.name not in eight_bit or len(src.users) != 1:
        return None
    chain = norm_activations(norm)
    return chain if _read_8bit(chain[-1] if chain else norm, reads_8bit) else None

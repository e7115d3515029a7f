"""Accessors for fx node metadata: the one place that knows the metadata keys.

Shapes live only in ``node.meta["val"]`` (a FakeTensor, or a SymInt for size computations), as
torch.export writes them; the source module path comes from ``nn_module_stack`` and the user's
source line from ``stack_trace``. Keys this project adds are namespaced under ``gcc_gan.``.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import fx

_TORCH_DIR = str(Path(torch.__file__).parent)
_GCC_DIR = str(Path(__file__).resolve().parents[1])
_FRAME = re.compile(r'File "(?P<file>[^"]+)", line (?P<line>\d+), in (?P<func>\S+)\n\s*(?P<code>.*)')


def node_val(node: fx.Node):
    """The traced value of `node`: a FakeTensor, a SymInt, a tuple of those, or None."""
    return node.meta.get("val")


def attr(gm: fx.GraphModule, target: str):
    """The object a get_attr target names (``encoder.1.weight``)."""
    obj = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def arg(node: fx.Node, index: int, name: str, default=None):
    """Argument `name` of a call, given by keyword or at position `index` of the op's schema."""
    if name in node.kwargs:
        return node.kwargs[name]
    return node.args[index] if len(node.args) > index else default


def source_module(node: fx.Node) -> str:
    """Dotted path of the innermost user module that produced `node` ('' for the top level)."""
    stack = node.meta.get("nn_module_stack")
    if not stack:
        return ""
    path, _cls = list(stack.values())[-1]
    return "" if path.startswith("_empty_nn_module_stack") else path


def is_user_file(filename: str) -> bool:
    """True for code the user wrote (not torch's, not ours, not the standard library)."""
    return not (filename.startswith(_TORCH_DIR) or filename.startswith(_GCC_DIR)
                or "/lib/python3" in filename and "site-packages" not in filename)


def source_line(node: fx.Node) -> str:
    """'file:line in func: code' of the user's line that produced `node`, or ''."""
    trace = node.meta.get("stack_trace") or ""
    frames = [m for m in _FRAME.finditer(trace) if is_user_file(m["file"])]
    if not frames:
        return ""
    m = frames[-1]
    return f"{m['file']}:{m['line']} in {m['func']}: {m['code'].strip()}"

"""Lower a GanGraph to a TVM Relax program built for a CPU target (this host, or a board).

Invariant: what `lower_tvm` returns was checked against the torch program on this machine
(max |tvm - torch| <= tolerance * max(1, |torch|) on the first example sample), unless its
target is another architecture, which cannot run here: then `parity_max_abs_diff` is None, the
notes say so, and the `tvm-rpc` backend checks it on the board before timing it.

Shapes are static at batch 1. TVM's importer cannot take torch.export's symbolic batch, so the
program is exported again at the first sample of the example inputs; `run` takes any batch and
runs it one sample at a time.

The exported program is decomposed to core ATen here (as TVM's importer would), so an op TVM
has no rule for is named with the node, module and user line that produced it. Targets are
dicts, as TVM's `Target` takes them (``{"kind": "llvm", "mtriple": "aarch64-linux-gnu",
"mattr": ["+neon"]}``); a library for another architecture is linked by the cross compiler
`CROSS_COMPILERS` names for it.
"""

from __future__ import annotations

import contextlib
import io
import os
import platform
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils import _pytree as pytree

from ..ir import GanGraph
from ..ir.meta import source_line, source_module
from ..quant import quant_plan
from ..quiet import quiet_loggers
from .onnx import LoweringError

INSTALL_HINT = "pip install 'gcc-gan[tvm]'"
# architecture (first field of the LLVM triple) -> (cross compiler, Debian/Ubuntu package)
CROSS_COMPILERS = {
    "aarch64": ("aarch64-linux-gnu-gcc", "gcc-aarch64-linux-gnu"),
    "arm": ("arm-linux-gnueabihf-gcc", "gcc-arm-linux-gnueabihf"),
    "riscv64": ("riscv64-linux-gnu-gcc", "gcc-riscv64-linux-gnu"),
}
# C++ warnings TVM prints while building that are not about the user's program
_BENIGN_NATIVE = ("Fast mode segfaults", "BlockBuilder destroyed", "Scope Saving:",
                  "Scope Loaded:")


class TvmUnavailable(ImportError):
    """Apache TVM (or a part of it the caller needs) is not installed."""


class CrossCompilerMissing(LoweringError):
    """The C cross compiler that links a library for the target is not on PATH."""


def require_tvm(what: str = "TVM lowering"):
    """The `tvm` package, or TvmUnavailable saying how to install it."""
    try:
        import tvm
        from tvm import relax  # noqa: F401  (the part gcc-gan needs; absent in old builds)
    except ImportError as exc:
        raise TvmUnavailable(f"{what} needs Apache TVM (apache-tvm>=0.27), which is not "
                             f"importable here ({exc}); install it with: {INSTALL_HINT}") from exc
    return tvm


def host_target() -> dict:
    """An llvm target for this machine's CPU (LLVM's name for it, e.g. znver4, when valid)."""
    require_tvm()
    from tvm.target import codegen

    cpu, triple = codegen.llvm_get_system_cpu(), codegen.llvm_get_system_triple()
    valid = cpu and cpu != "generic" and codegen.llvm_is_valid_cpu(cpu, triple)
    return {"kind": "llvm", "mcpu": cpu} if valid else {"kind": "llvm"}


def target_arch(target: dict) -> str:
    """The architecture a target's code runs on: its triple's first field, or this host's."""
    triple = target.get("mtriple")
    return triple.split("-")[0] if triple else platform.machine()


def is_cross(target: dict) -> bool:
    return target_arch(target) != platform.machine()


def cross_compiler(target: dict) -> str:
    """The compiler that links a shared library for `target` on this host; raises if absent."""
    arch = target_arch(target)
    entry = next((v for k, v in CROSS_COMPILERS.items() if arch.startswith(k)), None)
    if entry is None:
        raise LoweringError(f"no cross compiler known for architecture {arch!r} (target "
                            f"{target}); known: {sorted(CROSS_COMPILERS)}")
    compiler, package = entry
    if shutil.which(compiler) is None:
        raise CrossCompilerMissing(f"linking for {arch} needs the cross compiler {compiler}, "
                                   f"which is not on PATH; install it (Debian/Ubuntu: apt-get "
                                   f"install {package})")
    return compiler


@dataclass(eq=False)
class TvmModel:
    executable: Any                          # tvm.relax VMExecutable
    target: dict
    input_shapes: tuple[tuple[int, ...], ...]  # of the tensor inputs, at batch 1
    parity_max_abs_diff: float | None        # None: not run here (another architecture)
    notes: tuple[str, ...] = ()
    reference: tuple = ()                    # (batch-1 inputs, torch outputs) for device checks
    _vm: list = field(default_factory=list, repr=False)

    @property
    def cross(self) -> bool:
        return is_cross(self.target)

    def vm(self):
        """The Relax VM on this host's CPU; refuses a library built for another architecture."""
        if self.cross:
            raise RuntimeError(f"this TVM model is built for {target_arch(self.target)}, not "
                               f"this host ({platform.machine()}): export_library() it and run "
                               "it on the board, or measure it with the 'tvm-rpc' backend")
        if not self._vm:
            tvm = require_tvm()
            self._vm.append(tvm.relax.VirtualMachine(self.executable, tvm.cpu()))
        return self._vm[0]

    def samples(self, inputs: tuple) -> list[list]:
        """The tensor inputs split into batch-1 samples of numpy arrays, shapes checked."""
        leaves = [t for t in pytree.tree_leaves(inputs) if isinstance(t, torch.Tensor)]
        if len(leaves) != len(self.input_shapes):
            raise ValueError(f"the model takes {len(self.input_shapes)} tensor inputs, "
                             f"got {len(leaves)}")
        for i, (t, shape) in enumerate(zip(leaves, self.input_shapes)):
            if tuple(t.shape[1:]) != shape[1:]:
                raise ValueError(f"input {i} has shape {tuple(t.shape)}; this TVM model was "
                                 f"built for {shape} (any batch): lower again for other sizes")
        batch = leaves[0].shape[0] if leaves else 1
        arrays = [t.detach().cpu().contiguous().numpy() for t in leaves]
        return [[a[i:i + 1] for a in arrays] for i in range(batch)]

    def run(self, *inputs) -> torch.Tensor | tuple[torch.Tensor, ...]:
        """Run on this host, any batch (one sample at a time); inputs as the torch module takes."""
        tvm = require_tvm()
        vm = self.vm()
        per_sample = []
        for sample in self.samples(inputs):
            outs = vm["main"](*[tvm.runtime.tensor(a) for a in sample])
            per_sample.append([torch.from_numpy(o.numpy()) for o in outs])
        tensors = tuple(torch.cat(parts) for parts in zip(*per_sample))
        return tensors[0] if len(tensors) == 1 else tensors

    def export_library(self, path: str | Path) -> Path:
        """A shared library loadable by TVM's runtime on the target (cross-linked if needed)."""
        require_tvm()
        from tvm.support import cc

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fcompile = cc.cross_compiler(cross_compiler(self.target)) if self.cross else None
        with _filtered_native_stderr():
            self.executable.export_library(str(path), fcompile=fcompile)
        return path


def lower_tvm(graph: GanGraph, target: dict | None = None, *, check_parity: bool = True,
              tolerance: float = 1e-4) -> TvmModel:
    """A TVM Relax build of `graph` for `target` (default: this host, `host_target()`).

    Raises TvmUnavailable without TVM, and LoweringError when an op has no TVM rule, the build
    fails, or (host targets with `check_parity`) TVM disagrees with the torch program.
    """
    tvm = require_tvm()
    target = dict(host_target() if target is None else target)
    if target.get("kind") != "llvm":
        raise LoweringError(f"TVM lowering builds CPU (kind 'llvm') targets only, got {target}; "
                            "use a dict like {'kind': 'llvm', 'mtriple': 'aarch64-linux-gnu'}")
    try:
        tvm_target = tvm.target.Target(target)
    except Exception as exc:
        raise LoweringError(f"TVM rejects the target {target}: {_one_line(exc)}") from exc
    notes = [("static shapes at batch 1 (TVM's importer takes no symbolic batch); run() takes "
              "any batch one sample at a time")]
    if quant_plan(graph.module):
        notes.append("the int8 plan is not applied: TVM lowering is fp32")
    sample = _first_sample(graph.example_inputs)
    program = _static_program(graph, sample)
    mod = _relax_module(graph, program)
    try:
        with _filtered_native_stderr():
            executable = tvm.compile(mod, target=tvm_target)
    except Exception as exc:
        raise LoweringError(f"TVM could not build {graph.model_class} for {target}: "
                            f"{_one_line(exc)}") from exc
    with torch.no_grad():
        expected = tuple(t.detach() for t in pytree.tree_leaves(graph(*sample)))
    shapes = tuple(tuple(t.shape) for t in pytree.tree_leaves(sample)
                   if isinstance(t, torch.Tensor))
    model = TvmModel(executable=executable, target=target, input_shapes=shapes,
                     parity_max_abs_diff=None, notes=tuple(notes), reference=(sample, expected))
    if model.cross:
        model.notes += ((f"parity not checked here: built for {target_arch(target)}; the "
                         "tvm-rpc backend checks it on the board"),)
    elif not check_parity:
        model.notes += ("parity not checked (check_parity=False)",)
    else:  # the first sample: every sample runs the same batch-1 program
        got = model.run(*sample)
        model.parity_max_abs_diff = check_outputs(
            f"{graph.model_class}, batch 1", expected,
            [got] if isinstance(got, torch.Tensor) else list(got), tolerance)
    return model


def check_outputs(label: str, expected, got, tolerance: float) -> float:
    """Max |got - expected| over outputs; LoweringError when above tolerance * max(1, |ref|)."""
    worst = 0.0
    for e, g in zip(expected, got):
        diff = (e - g).abs().max().item()
        worst = max(worst, diff)
        if diff > tolerance * max(1.0, e.abs().max().item()):
            raise LoweringError(f"TVM disagrees with the torch program by {diff:.3g} "
                                f"({label}; tolerance {tolerance:g})")
    return worst


def _static_program(graph: GanGraph, sample: tuple) -> torch.export.ExportedProgram:
    """The program exported at batch 1 with static shapes (the given one when it already is)."""
    ep = graph.exported
    if ep is not None and not graph.dynamic_batch and _batch(graph.example_inputs) == 1:
        return ep
    try:
        with quiet_loggers("torch"), contextlib.redirect_stderr(io.StringIO()):
            return torch.export.export(graph.module, sample, strict=False)
    except Exception as exc:
        raise LoweringError(f"re-exporting {graph.model_class} at a static batch of 1 for TVM "
                            f"failed: {_one_line(exc)}") from exc


def _relax_module(graph: GanGraph, program: torch.export.ExportedProgram):
    """Relax IR of the program; LoweringError names the op and node TVM cannot import."""
    from tvm.relax.frontend.torch import from_exported_program
    from tvm.relax.frontend.torch.exported_program_translator import ExportedProgramImporter

    try:
        with quiet_loggers("torch"):
            program = program.run_decompositions()
    except Exception as exc:
        raise LoweringError(f"decomposing {graph.model_class} to core ATen ops for TVM failed: "
                            f"{_one_line(exc)}") from exc
    rules = ExportedProgramImporter().convert_map
    missing = [n for n in program.graph.nodes
               if n.op == "call_function" and n.target.__name__ not in rules]
    if missing:
        ops = sorted({n.target.__name__ for n in missing})
        raise LoweringError(f"TVM's importer has no rule for {', '.join(ops)} in "
                            f"{graph.model_class}: {_where(missing[0])}. Rewrite that part of "
                            "the model with supported ops, or lower to ONNX instead")
    try:
        with _filtered_native_stderr():
            return from_exported_program(program, run_ep_decomposition=False)
    except Exception as exc:
        node = _failing_node(exc)
        where = _where(node) if node is not None else "node unknown"
        op = node.target.__name__ if node is not None and node.op == "call_function" else "?"
        raise LoweringError(f"TVM could not import {op} in {graph.model_class} ({where}): "
                            f"{_one_line(exc)}") from exc


def _where(node) -> str:
    parts = [f"node {node.name} ({getattr(node.target, '__name__', node.target)})"]
    if source_module(node):
        parts.append(f"module {source_module(node)}")
    if source_line(node):
        parts.append(f"at {source_line(node)}")
    return ", ".join(parts)


def _failing_node(exc: BaseException):
    """The fx node TVM's importer was translating when it raised (a local of its loop)."""
    tb, node = exc.__traceback__, None
    while tb is not None:
        if tb.tb_frame.f_code.co_name == "_translate_fx_graph":
            node = tb.tb_frame.f_locals.get("node", node)
        tb = tb.tb_next
    return node


def _first_sample(inputs: tuple) -> tuple:
    return pytree.tree_map(lambda t: t[:1] if isinstance(t, torch.Tensor) and t.dim() else t,
                           inputs)


def _batch(inputs: tuple) -> int:
    leaves = [t for t in pytree.tree_leaves(inputs) if isinstance(t, torch.Tensor) and t.dim()]
    return leaves[0].shape[0] if leaves else 1


def _one_line(exc: BaseException) -> str:
    """The exception's type and its last line (TVM puts its C++ backtrace first)."""
    lines = [line for line in str(exc).strip().splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[-1].strip()[:300] if lines else ''}"


@contextlib.contextmanager
def _filtered_native_stderr():
    """TVM's C++ side logs to file descriptor 2 (whatever `sys.stderr` is): keep its lines,
    minus the `_BENIGN_NATIVE` ones."""
    fd = 2
    with contextlib.suppress(AttributeError, OSError, ValueError):
        sys.stderr.flush()
    saved = os.dup(fd)
    with tempfile.TemporaryFile(mode="w+b") as capture:
        os.dup2(capture.fileno(), fd)
        try:
            yield
        finally:
            os.dup2(saved, fd)
            os.close(saved)
            capture.seek(0)
            kept = [line for line in capture.read().decode(errors="replace").splitlines(True)
                    if not any(b in line for b in _BENIGN_NATIVE)]
            if kept:
                os.write(fd, "".join(kept).encode())

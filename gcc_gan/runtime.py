"""The ONNX Runtime session every part of gcc-gan uses: lowering's parity check, `run`, and
latency measurement run the same configuration, so what is checked is what is timed.
"""

from __future__ import annotations

import os
from pathlib import Path

import onnxruntime as ort
import torch


def default_threads() -> int:
    """Logical cores, capped at torch's thread count so ORT and torch are timed alike."""
    return min(os.cpu_count() or 1, torch.get_num_threads())


def ort_session(onnx_path_or_bytes: str | Path | bytes, *,
                threads: int | None = None) -> ort.InferenceSession:
    """A CPU ONNX Runtime session with all graph optimisations and a fixed thread count.

    The thread count is stored in the session's options (`intra_op_num_threads`), where
    `time_onnx` reads it back. inter-op parallelism is 1: a generator is a chain of ops, and
    a second pool would only compete with the intra-op one for the same cores.
    """
    options = ort.SessionOptions()
    options.intra_op_num_threads = default_threads() if threads is None else threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Idle ORT workers otherwise spin for a while after each run, stealing the cores from
    # whatever runs next: the eager-torch side of a side-by-side timing, or the user's code.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    model = onnx_path_or_bytes if isinstance(onnx_path_or_bytes, bytes) else str(onnx_path_or_bytes)
    return ort.InferenceSession(model, sess_options=options, providers=["CPUExecutionProvider"])

"""Lowering: from a GanGraph to a deployable artifact (ONNX run by ONNX Runtime; TVM Relax for
CPU targets, this host or a cross-compiled board, when `gcc-gan[tvm]` is installed)."""

from .onnx import LoweringError, OnnxModel, lower_onnx
from .tvm import TvmModel, TvmUnavailable, lower_tvm

__all__ = ["LoweringError", "OnnxModel", "TvmModel", "TvmUnavailable", "lower_onnx",
           "lower_tvm"]

"""Lowering: from a GanGraph to a deployable artifact (ONNX run by ONNX Runtime, for now)."""

from .onnx import LoweringError, OnnxModel, lower_onnx

__all__ = ["LoweringError", "OnnxModel", "lower_onnx"]

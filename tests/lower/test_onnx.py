"""ONNX lowering: dynamic batch, loadable IR, module-path initializers, parity, static fallback."""

import onnx
import pytest
import torch
from torch import nn

from gcc_gan import trace, zoo
from gcc_gan.lower import LoweringError, OnnxModel, lower_onnx
from gcc_gan.lower.onnx import MAX_IR_VERSION


def test_resnet_lowers_with_dynamic_batch_and_named_initializers():
    graph = trace(zoo.build("resnet"), zoo.example_inputs("resnet"))
    lowered = lower_onnx(graph)
    proto = onnx.load_model_from_string(lowered.data)
    assert lowered.dynamic_batch and lowered.opset >= 17
    assert proto.ir_version <= MAX_IR_VERSION
    assert isinstance(proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param, str)
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # symbolic batch
    names = {init.name for init in proto.graph.initializer}
    assert {"encoder.1.weight", "decoder.0.weight"} <= names  # traceable to module paths
    for batch in (1, 4):
        x = zoo.example_inputs("resnet", batch=batch, seed=batch)
        assert (lowered.run(*x) - graph(*x)).abs().max() <= 1e-4
    assert lowered.parity_max_abs_diff <= 1e-4


def test_batch_dependent_groups_fall_back_to_batch_1_and_run_any_batch():
    graph = trace(zoo.build("stylegan2"), zoo.example_inputs("stylegan2", batch=2))
    lowered = lower_onnx(graph)
    assert not lowered.dynamic_batch
    assert lowered.notes[0].startswith("lowered at batch 1 (dynamic-batch export failed:")
    x = zoo.example_inputs("stylegan2", batch=3, seed=1)
    assert (lowered.run(*x) - graph(*x)).abs().max() <= 1e-4


def test_parity_failure_is_an_error(monkeypatch):
    graph = trace(nn.Sequential(nn.Conv2d(3, 8, 3), nn.Tanh()).eval(), (torch.randn(1, 3, 16, 16),))
    real_run = OnnxModel.run
    monkeypatch.setattr(OnnxModel, "run", lambda self, *x: real_run(self, *x) + 1e-3)
    with pytest.raises(LoweringError, match="disagrees with the torch program .* by 0.001"):
        lower_onnx(graph)


def test_run_checks_the_number_of_inputs():
    graph = trace(zoo.build("resnet"), zoo.example_inputs("resnet"))
    lowered = lower_onnx(graph)
    with pytest.raises(ValueError, match="takes 1 tensor inputs"):
        lowered.run(torch.randn(1, 3, 32, 32), torch.randn(1, 3, 32, 32))

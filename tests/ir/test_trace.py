"""The tracer on the idioms real generator code uses, its fallbacks, and its error message."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import gcc_gan
from gcc_gan import TraceError, trace


def _parity(graph, model, make_inputs, batches=(1, 3)):
    for b in batches:
        args = make_inputs(b)
        with torch.no_grad():
            expected, got = model(*args), graph(*args)
        assert got.shape == expected.shape
        assert (got - expected).abs().max().item() <= 1e-5


class ListOfLatents(nn.Module):
    """StyleGAN-style: a list of latents, mixed; shape unpacking; modules built in forward."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 4 * 4 * 8)
        self.conv = nn.Conv2d(8, 3, 3, padding=1)

    def forward(self, styles):
        w = styles[0] if len(styles) == 1 else 0.5 * (styles[0] + styles[1])
        b, _ = w.shape
        x = self.fc(w).view(b, 8, 4, 4)
        x = nn.Upsample(scale_factor=2, mode="nearest")(x)  # built inside forward
        return torch.tanh(self.conv(nn.LeakyReLU(0.2)(x)))


class CudaBranch(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x):
        if x.is_cuda:  # real code picks fused CUDA kernels this way
            return F.relu(self.conv(x.half())).float()
        n, c, h, w = x.shape
        return F.relu(self.conv(x)).reshape(n, -1, h, w)


class Normed(nn.Module):
    """Spectral norm (new and old style), weight norm and SyncBatchNorm, as GAN code uses them."""

    def __init__(self):
        super().__init__()
        self.a = nn.utils.parametrizations.spectral_norm(nn.Conv2d(3, 8, 3, padding=1))
        self.b = nn.utils.spectral_norm(nn.Conv2d(8, 8, 3, padding=1))
        self.c = nn.utils.parametrizations.weight_norm(nn.Conv2d(8, 8, 1))
        self.bn = nn.SyncBatchNorm(8)

    def forward(self, x):
        return self.c(F.relu(self.bn(self.b(self.a(x)))))


@pytest.mark.parametrize("model,make_inputs", [
    (ListOfLatents(), lambda b: ([torch.randn(b, 8)],)),
    (ListOfLatents(), lambda b: ([torch.randn(b, 8), torch.randn(b, 8)],)),
    (CudaBranch(), lambda b: (torch.randn(b, 3, 16, 16),)),
    (Normed(), lambda b: (torch.randn(b, 3, 16, 16),)),
], ids=["one-latent", "two-latents", "is_cuda", "normed"])
def test_generator_idioms_trace_with_dynamic_batch(model, make_inputs):
    model.eval()
    graph = trace(model, make_inputs(1))
    assert graph.tracer == "export"
    assert graph.dynamic_batch
    _parity(graph, model, make_inputs, batches=(1, 4))


def test_parametrizations_are_baked_and_reported():
    model = Normed().eval()
    graph = trace(model, (torch.randn(1, 3, 16, 16),))
    assert any("baked parametrizations" in n for n in graph.notes)
    note = next(n for n in graph.notes if "baked" in n)
    assert "a.weight" in note and "b.weight" in note and "c.weight" in note
    # the power iteration is gone from the program: only convs and a norm compute
    kinds = {c.kind for c in graph.cost.nodes}
    assert "matmul" not in kinds


def test_user_model_is_unchanged_by_tracing():
    model = Normed()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        model(x)  # one training-mode step: the spectral norms' u, v and the BN stats move
    model.train()
    calls = []
    model.b.register_forward_hook(lambda m, i, o: calls.append(id(m)))
    before = copy.deepcopy(model.state_dict())
    modes = {name: m.training for name, m in model.named_modules()}
    hooks = {name: (dict(m._forward_hooks), dict(m._forward_pre_hooks))
             for name, m in model.named_modules()}

    trace(model, (x,))

    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert modes == {name: m.training for name, m in model.named_modules()}
    assert hooks == {name: (dict(m._forward_hooks), dict(m._forward_pre_hooks))
                     for name, m in model.named_modules()}
    assert nn.utils.parametrize.is_parametrized(model.a)
    assert calls and id(model.b) not in calls  # hooks were traced on a copy, not on yours
    model.eval()
    with torch.no_grad():
        assert model(x).shape == (2, 8, 16, 16)  # and the user's model still runs


class DataDependent(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 1)

    def forward(self, x):
        if x.mean() > 0:  # depends on the input's values: no static graph can express it
            return self.conv(x)
        return x


def test_trace_error_names_class_exception_and_source_line():
    with pytest.raises(TraceError) as info:
        trace(DataDependent(), (torch.randn(1, 3, 8, 8),))
    message = str(info.value)
    assert "could not trace DataDependent" in message
    assert "GuardOnDataDependentSymNode" in message
    assert f"{__file__}:" in message and "if x.mean() > 0" in message
    assert "What to do:" in message and "torch.cond" in message


class BufferGain(nn.Module):
    """Branches on a buffer's value: export refuses, symbolic tracing decides on the stored value."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 1)
        self.register_buffer("gain", torch.tensor(2.0))

    def forward(self, x):
        if self.gain > 1:
            return self.conv(x) * self.gain
        return self.conv(x)


def test_falls_back_to_symbolic_trace_and_says_so():
    model = BufferGain().eval()
    graph = trace(model, (torch.randn(1, 3, 8, 8),))
    assert graph.tracer == "symbolic_trace+export"
    assert any("traced by symbolic_trace+export after" in n for n in graph.notes)
    _parity(graph, model, lambda b: (torch.randn(b, 3, 8, 8),))


class PinsBatch(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 1)

    def forward(self, x):
        return self.conv(x).view(2, -1)  # the code fixes the batch at 2


def test_static_batch_when_the_model_pins_it():
    model = PinsBatch().eval()
    graph = trace(model, (torch.randn(2, 3, 8, 8),))
    assert not graph.dynamic_batch
    assert any("batch dimension is static" in n for n in graph.notes)
    assert graph.cost.batch == 2
    _parity(graph, model, lambda b: (torch.randn(2, 3, 8, 8),), batches=(2,))


def test_single_tensor_input_and_type_errors():
    graph = trace(CudaBranch().eval(), torch.randn(1, 3, 8, 8))
    assert graph.example_inputs[0].shape == (1, 3, 8, 8)
    with pytest.raises(TypeError, match="expects an nn.Module"):
        trace(lambda x: x, (torch.randn(1),))


def test_public_api_exports():
    for name in ("trace", "GanGraph", "TraceError", "zoo", "CostAnalysis", "LayerTable"):
        assert hasattr(gcc_gan, name)

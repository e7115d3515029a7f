"""Cost analysis: MACs by op family against independent counts, params, bytes, unknown ops."""

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from gcc_gan import trace
from tests.zoo.hook_macs import count_macs


@st.composite
def conv_layers(draw):
    transposed = draw(st.booleans())
    groups = draw(st.sampled_from([1, 2, 4]))
    cin = groups * draw(st.integers(1, 3))
    cout = groups * draw(st.integers(1, 3))
    k = draw(st.sampled_from([1, 2, 3, 4, 5]))
    stride = draw(st.integers(1, 3))
    dilation = draw(st.integers(1, 2))
    padding = draw(st.integers(0, k // 2))
    if transposed:
        output_padding = draw(st.integers(0, max(stride, dilation) - 1))
        layer = nn.ConvTranspose2d(cin, cout, k, stride, padding, output_padding, groups,
                                   dilation=dilation)
    else:
        layer = nn.Conv2d(cin, cout, k, stride, padding, dilation, groups)
    size = draw(st.integers(k * dilation + 1, 12))
    return layer, size


@settings(max_examples=30, deadline=None)
@given(conv_layers(), st.integers(1, 3))
def test_conv_macs_match_hook_count(layer_and_size, batch):
    layer, size = layer_and_size
    x = torch.randn(batch, layer.in_channels, size, size)
    graph = trace(layer.eval(), (x,))
    real, lit = count_macs(layer, (x[:1],))  # the graph is costed at batch 1
    assert graph.macs == real
    assert graph.lit_macs == lit
    assert graph.params == sum(p.numel() for p in layer.parameters())


class MatmulFamily(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(12, 6)
        self.w = nn.Parameter(torch.randn(6, 5))
        self.b = nn.Parameter(torch.randn(5))

    def forward(self, x, y):
        h = self.fc(x)                                  # 12*6 per row, rows: 4
        h = torch.addmm(self.b, h.flatten(0, 1), self.w)  # after flatten: 4 rows * 6 * 5
        a = torch.bmm(y, y.transpose(1, 2))             # 3x4x7 @ 3x7x4: 3*4*4*7 per sample
        e = torch.einsum("bij,bjk->bik", y, y.transpose(1, 2))
        att = F.scaled_dot_product_attention(y[:, None], y[:, None], y[:, None])
        return h.sum() + a.sum() + e.sum() + att.sum()


def test_matmul_family_macs():
    x, y = torch.randn(1, 4, 12), torch.randn(1, 3, 4, 7).flatten(1, 1).view(1 * 3, 4, 7)
    graph = trace(MatmulFamily().eval(), (x, y), dynamic_batch=False)
    expected = {"linear": 4 * 6 * 12, "addmm": 4 * 5 * 6, "bmm": 3 * 4 * 4 * 7,
                "einsum": 3 * 4 * 4 * 7, "scaled_dot_product_attention": 3 * 4 * 4 * (7 + 7)}
    got = {}
    for node in graph.cost.nodes:
        if node.kind == "matmul":
            got[node.op] = got.get(node.op, 0) + node.macs
    for op, macs in expected.items():
        # export may lower einsum to bmm; then the bmm total carries it
        assert got.get(op, 0) == macs or (op == "einsum" and got["bmm"] == 2 * macs)
    assert graph.macs == sum(expected.values())


class ModulatedConv(nn.Module):
    """StyleGAN2's fused modulated conv: batch folded into groups, per-sample weights."""

    def __init__(self, cin=4, cout=6, k=3):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(1, cout, cin, k, k))
        self.affine = nn.Linear(8, cin)

    def forward(self, x, w):
        b, cin, h, wd = x.shape
        style = self.affine(w).view(b, 1, cin, 1, 1)
        weight = self.weight * style
        weight = weight * torch.rsqrt(weight.pow(2).sum([2, 3, 4], keepdim=True) + 1e-8)
        out = F.conv2d(x.reshape(1, b * cin, h, wd), weight.view(-1, cin, 3, 3), padding=1,
                       groups=b)
        return out.view(b, -1, h, wd)


@pytest.mark.parametrize("batch", [1, 3])
def test_modulated_conv_costs_one_sample(batch):
    model = ModulatedConv().eval()
    x, w = torch.randn(batch, 4, 8, 8), torch.randn(batch, 8)
    graph = trace(model, (x, w))
    assert graph.dynamic_batch
    conv = 6 * 8 * 8 * 4 * 9
    assert graph.macs == conv + 8 * 4  # the conv plus the style affine, one sample
    assert (graph(x, w) - model(x, w)).abs().max() <= 1e-5


class Tied(nn.Module):
    def __init__(self):
        super().__init__()
        self.enc = nn.Linear(16, 16, bias=False)
        self.dec = nn.Linear(16, 16, bias=False)
        self.dec.weight = self.enc.weight  # shared tensor
        self.register_buffer("scale", torch.ones(16, dtype=torch.float16))

    def forward(self, x):
        return self.dec(torch.relu(self.enc(x))) * self.scale.float()


def test_shared_params_count_once_and_bytes_by_dtype():
    graph = trace(Tied().eval(), (torch.randn(2, 16),))
    assert graph.params == 16 * 16
    assert graph.weight_bytes == {"float32": 16 * 16 * 4, "float16": 16 * 2}
    assert sum(n.params for n in graph.cost.nodes) == 16 * 16


def test_activation_bytes_elementwise_and_peak():
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(inplace=True),
                          nn.Conv2d(8, 8, 3, padding=1), nn.Tanh()).eval()
    graph = trace(model, (torch.randn(1, 3, 16, 16),))
    t = 8 * 16 * 16 * 4  # one 8x16x16 fp32 activation
    assert graph.activation_bytes == 3 * t  # conv, conv, tanh; the in-place relu writes nothing
    assert graph.elementwise_ops == 2 * 8 * 16 * 16  # relu and tanh
    # at the second conv the input image is freed; the relu'd map and the conv output are live
    assert graph.peak_activation_bytes == 2 * t


@torch.library.custom_op("gcc_gan_test::mystery", mutates_args=())
def mystery(x: torch.Tensor) -> torch.Tensor:
    return x * 2


@mystery.register_fake
def _(x):
    return torch.empty_like(x)


class UsesUnknownOp(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 1)

    def forward(self, x):
        return mystery(self.conv(x))


def test_unknown_op_is_reported_never_guessed():
    graph = trace(UsesUnknownOp().eval(), (torch.randn(1, 3, 4, 4),))
    assert list(graph.cost.unknown_ops) == ["gcc_gan_test.mystery.default"]
    row = next(n for n in graph.cost.nodes if n.kind == "unknown")
    assert row.macs == 0 and row.elementwise == 0
    text = str(graph.summary())
    assert "unknown op gcc_gan_test.mystery.default at mystery, not costed" in text
    assert "test_cost.py" in text and "return mystery(self.conv(x))" in text  # the user's line


def test_summary_table_prints_layers_and_totals():
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.InstanceNorm2d(8, affine=True),
                          nn.ReLU(), nn.ConvTranspose2d(8, 3, 4, 2, 1)).eval()
    graph = trace(model, (torch.randn(1, 3, 8, 8),))
    text = str(graph.summary())
    for piece in ("conv2d", "conv_transpose2d", "instance_norm", "1x3x8x8", "1x8x8x8", "lit. MACs",
                  "total at batch 1", "traced by export, batch dynamic"):
        assert piece in text, piece
    assert "relu" not in text  # activations are in the totals, not rows, unless all_nodes
    assert "relu" in str(graph.summary(all_nodes=True))
    assert math.isclose(graph.lit_macs / graph.macs,
                        (8 * 8 * 3 * 9 * 8 + 16 * 16 * 3 * 8 * 16) / (8 * 8 * 3 * 9 * 8 + 8 * 8 * 8 * 3 * 16))

"""deconv_to_subpixel: the sub-pixel math over every (stride, kernel, padding, output padding,
groups) the op allows, random traced transposed convs, zoo models, ONNX Runtime, and the
transposed convs that must stay (with their reasons); the input graph is never touched."""

import dataclasses
import itertools

import onnx
import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from gcc_gan import trace, zoo
from gcc_gan.ir import ops
from gcc_gan.lower import lower_onnx
from gcc_gan.passes.deconv_to_subpixel import (SubpixelConfig, SubpixelReport, deconv_to_subpixel,
                                               plan_subpixel, subpixel_conv_transpose2d,
                                               subpixel_weight)
from tests.passes.graph_checks import (assert_report_counts, assert_same_output,
                                      assert_unchanged, snapshot)

aten = torch.ops.aten
DECONV = ops.ConvTranspose | ops.op_set("convolution")


def deconv_nodes(graph):
    return [n for n in graph.graph.nodes if n.op == "call_function"
            and ops.packet(n.target) in DECONV
            and (ops.packet(n.target) in ops.ConvTranspose or n.args[6] is True)]


def check_parity(model, graph, result, make_inputs, batches=(1, 3)):
    for batch in batches:
        inputs = make_inputs(batch)
        with torch.no_grad():
            ref = model(*inputs)
            assert_same_output(result.graph(*inputs), ref)
            assert_same_output(graph(*inputs), ref)


def check_report(graph, result):
    r = result.report
    assert isinstance(r, SubpixelReport) and r.name == "deconv_to_subpixel"
    assert_report_counts(graph, result)


# ---- the math, exhaustively (eager, float64) ----------------------------------------------------

def all_cases():
    """Every stride 1..3, kernel 1..5, padding 0..k-1, output padding < stride, groups 1/2/dw."""
    sizes = itertools.cycle([(3, 9), (4, 4), (9, 3), (5, 7), (6, 8)])
    for s, k in itertools.product((1, 2, 3), range(1, 6)):
        for p, op, groups in itertools.product(range(k), range(s), ("1", "2", "dw")):
            h, w = next(sizes)
            if (h - 1) * s - 2 * p + k + op > 0 and (w - 1) * s - 2 * p + k + op > 0:
                yield s, k, p, op, groups, (h, w)


def test_subpixel_math_is_exact_for_every_case_the_op_allows():
    gen = torch.Generator().manual_seed(0)
    cases = list(all_cases())
    assert len(cases) > 250
    for i, (s, k, p, op, groups, (h, w)) in enumerate(cases):
        g, cin_g, cout_g = {"1": (1, 3, 2), "2": (2, 2, 3), "dw": (4, 1, 1)}[groups]
        weight = torch.randn(g * cin_g, cout_g, k, k, generator=gen, dtype=torch.float64)
        bias = torch.randn(g * cout_g, generator=gen, dtype=torch.float64) if i % 2 else None
        x = torch.randn(2, g * cin_g, h, w, generator=gen, dtype=torch.float64)
        ref = F.conv_transpose2d(x, weight, bias, s, p, op, g)
        plan = plan_subpixel((k, k), s, (p, p), (op, op), g)
        torch.testing.assert_close(subpixel_conv_transpose2d(x, weight, bias, plan), ref,
                                   atol=1e-12, rtol=1e-12, msg=lambda m: f"{(s, k, p, op, g)}: {m}")
        assert all(0 <= c < s for crop in plan.crop for c in crop)


@pytest.mark.parametrize("k, s, p, op", [(3, 2, 5, 1), (2, 2, 4, 0), (1, 1, 1, 0), (5, 3, 9, 2),
                                         (4, 3, 1, 2), (3, 2, (0, 2), (1, 0))])
def test_large_and_uneven_padding_cut_the_input_exactly(k, s, p, op):
    """padding >= kernel (allowed while the output is non-empty) cuts input rows instead."""
    p, op = (p, p) if isinstance(p, int) else p, (op, op) if isinstance(op, int) else op
    gen = torch.Generator().manual_seed(1)
    weight = torch.randn(2, 3, k, k + 1, generator=gen, dtype=torch.float64)
    bias = torch.randn(3, generator=gen, dtype=torch.float64)
    x = torch.randn(1, 2, 9, 8, generator=gen, dtype=torch.float64)
    ref = F.conv_transpose2d(x, weight, bias, s, p, op)
    plan = plan_subpixel((k, k + 1), s, p, op, 1)
    torch.testing.assert_close(subpixel_conv_transpose2d(x, weight, bias, plan), ref)


def test_subpixel_weight_layout_orders_channels_group_channel_phase():
    """Depthwise, k=2, s=2: each phase gets one tap, channel n = o*4 + a*2 + b."""
    w = torch.arange(2 * 1 * 2 * 2, dtype=torch.float32).reshape(2, 1, 2, 2)
    v = subpixel_weight(w, 2, groups=2)
    assert v.shape == (8, 1, 1, 1)
    assert v.flatten().tolist() == w.flatten().tolist()  # W[c, 0, a, b] -> n = c*4 + a*2 + b


# ---- traced transposed convs, generated ---------------------------------------------------------

@st.composite
def deconv_case(draw):
    s, k = draw(st.integers(2, 3)), draw(st.integers(1, 5))
    p, op = draw(st.integers(0, k - 1)), draw(st.integers(0, s - 1))
    groups = draw(st.sampled_from([1, 2, "depthwise"]))
    per_in, per_out = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    if groups == "depthwise":
        groups, per_in, per_out = draw(st.integers(2, 4)), 1, 1
    h, w = draw(st.integers(3, 9)), draw(st.integers(3, 9))
    if min(h, w) - 1 < (2 * p - k - op) / s + 1:  # output would be empty: not a valid layer
        h = w = 9
    bias = draw(st.booleans())
    torch.manual_seed(draw(st.integers(0, 2**16)))
    conv = nn.ConvTranspose2d(groups * per_in, groups * per_out, k, s, p, op, groups, bias)
    if bias:
        nn.init.normal_(conv.bias)
    return nn.Sequential(conv).eval(), groups * per_in, (h, w)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(deconv_case())
def test_rewriting_one_transposed_conv_is_exact(case):
    model, cin, (h, w) = case
    make_inputs = lambda b: (torch.randn(b, cin, h, w, generator=torch.Generator().manual_seed(b)),)
    graph = trace(model, make_inputs(1))
    snap = snapshot(graph)
    result = deconv_to_subpixel(graph)
    assert result.report.rewritten == ("conv_transpose2d (0)",)
    assert result.report.skipped == ()
    assert deconv_nodes(result.graph) == []
    assert any(n.target is aten.conv2d.default for n in result.graph.graph.nodes)
    check_parity(model, graph, result, make_inputs)
    check_report(graph, result)
    assert_unchanged(graph, snap)


class TwoDeconvs(nn.Module):
    """Transposed convs among other ops: a residual, a concat skip, norms, padding, a shared
    weight, stride 1, 2 and 3, grouped and depthwise, a padding that cuts input rows."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.norm = nn.InstanceNorm2d(8, affine=True)
        self.up = nn.ConvTranspose2d(8, 6, 3, stride=2, padding=1)        # 2H - 1: crop front only
        self.up3 = nn.ConvTranspose2d(14, 4, 4, stride=3, padding=6, output_padding=2, groups=2)
        self.same = nn.ConvTranspose2d(4, 4, 3, stride=1, padding=1, groups=4, bias=False)
        self.head = nn.Conv2d(4, 3, 1)

    def forward(self, x):
        h = torch.relu(self.norm(self.stem(x)))
        u = F.pad(torch.relu(self.up(h)), (0, 1, 0, 1), mode="replicate")
        u = torch.cat([u, F.interpolate(h, scale_factor=2.0)], dim=1)
        v = self.up3(u)
        v = v + self.same(v) + F.conv_transpose2d(v, self.same.weight, groups=4, padding=1)
        return torch.tanh(self.head(v))


def test_model_with_several_transposed_convs_and_other_ops_lowers_without_convtranspose():
    torch.manual_seed(0)
    model = TwoDeconvs().eval()
    make_inputs = lambda b: (torch.randn(b, 3, 5, 7, generator=torch.Generator().manual_seed(b)),)
    graph = trace(model, make_inputs(2))
    snap = snapshot(graph)
    result = deconv_to_subpixel(graph)
    assert len(result.report.rewritten) == 4 and result.report.skipped == ()
    assert deconv_nodes(result.graph) == []
    check_parity(model, graph, result, make_inputs)
    check_report(graph, result)
    assert_unchanged(graph, snap)
    state = result.graph.module.state_dict()
    assert "up.subpixel_weight" in state and "up.weight" not in state
    assert "same.subpixel_weight_1" not in state  # the shared weight is rearranged once
    assert plan_subpixel((4, 4), 3, (6, 6), (2, 2), 2).extra == ((-1, -1), (-1, -1))  # up3 cuts
    assert plan_subpixel((3, 3), 2, (1, 1), (0, 0), 1).crop == ((1, 0), (1, 0))       # up
    lowered = lower_onnx(result.graph)  # raises unless ONNX Runtime matches the torch program
    kinds = {n.op_type for n in onnx.load_model_from_string(lowered.data).graph.node}
    assert "ConvTranspose" not in kinds and {"Conv", "DepthToSpace"} <= kinds


@pytest.mark.filterwarnings("ignore:.*LeafSpec.*:FutureWarning")  # torch's run_decompositions
def test_decomposed_graph_rewrites_transposed_convolution():
    model = nn.Sequential(nn.ConvTranspose2d(4, 6, 4, stride=2, padding=1, groups=2)).eval()
    make_inputs = lambda b: (torch.randn(b, 4, 5, 5),)
    graph = trace(model, make_inputs(2))
    ep = graph.exported.run_decompositions()
    graph = dataclasses.replace(graph, module=ep.module(), exported=ep)
    assert [n.target for n in deconv_nodes(graph)] == [aten.convolution.default]
    result = deconv_to_subpixel(graph)
    assert len(result.report.rewritten) == 1 and deconv_nodes(result.graph) == []
    check_parity(model, graph, result, make_inputs)


# ---- zoo models ---------------------------------------------------------------------------------

ZOO_CASES = {"resnet": 2, "unet": 5, "dcgan": 4}  # transposed convs rewritten (tiny config)


@pytest.mark.parametrize("name", sorted(ZOO_CASES))
def test_zoo_models_rewrite_every_transposed_conv(name):
    model = zoo.build(name)
    make_inputs = lambda b: zoo.example_inputs(name, batch=b, seed=b)
    graph = trace(model, make_inputs(1))
    snap, n_deconvs = snapshot(graph), len(deconv_nodes(graph))
    result = deconv_to_subpixel(graph)
    assert len(result.report.rewritten) == n_deconvs == ZOO_CASES[name]
    assert result.report.skipped == () and deconv_nodes(result.graph) == []
    check_parity(model, graph, result, make_inputs)
    check_report(graph, result)
    assert result.report.lit_macs_after < result.report.lit_macs_before  # s*s fewer, ~M^2/K^2
    assert_unchanged(graph, snap)
    if name == "dcgan":  # one ONNX round trip of a zoo model (each costs about a second)
        lowered = lower_onnx(result.graph)
        kinds = {n.op_type for n in onnx.load_model_from_string(lowered.data).graph.node}
        assert "ConvTranspose" not in kinds


def test_stylegan2_keeps_its_modulated_transposed_convs_and_says_why():
    model = zoo.build("stylegan2")
    make_inputs = lambda b: zoo.example_inputs("stylegan2", batch=b, seed=b)
    graph = trace(model, make_inputs(1))
    snap = snapshot(graph)
    result = deconv_to_subpixel(graph)
    report = result.report
    assert [r.split()[1] for r in report.rewritten] == [
        "(to_rgbs.0.upsample)", "(to_rgbs.1.upsample)", "(to_rgbs.2.upsample)"]
    assert [node.split()[1] for node, _ in report.skipped] == [
        "(convs.0.conv)", "(convs.2.conv)", "(convs.4.conv)"]
    assert all(why.startswith("weight is computed") and "per-sample" in why
               for _, why in report.skipped)
    assert len(deconv_nodes(result.graph)) == 3
    check_parity(model, graph, result, make_inputs)
    check_report(graph, result)
    assert_unchanged(graph, snap)


# ---- transposed convs that stay -----------------------------------------------------------------

@pytest.mark.parametrize("layer, reason", [
    (nn.ConvTranspose2d(3, 3, 3, stride=2, dilation=2), "dilation (2, 2): only dilation 1 is "
     "rewritten"),
    (nn.ConvTranspose2d(3, 3, 3, stride=(2, 1)), "unequal strides (2, 1): pixel_shuffle needs "
     "one factor"),
    (nn.ConvTranspose1d(3, 3, 3, stride=2), "1-D transposed conv: pixel_shuffle is 2-D, so only "
     "2-D ones are rewritten"),
], ids=["dilation", "unequal-strides", "1d"])
def test_unrewritable_transposed_conv_is_reported_and_graph_returned_as_is(layer, reason):
    size = (5,) if isinstance(layer, nn.ConvTranspose1d) else (5, 5)
    graph = trace(nn.Sequential(layer).eval(), (torch.randn(2, 3, *size),))
    result = deconv_to_subpixel(graph)
    assert result.graph is graph
    assert result.report.rewritten == ()
    assert result.report.skipped == ((f"conv_transpose{len(size)}d (0)", reason),)
    assert result.report.macs_after == result.report.macs_before == graph.macs


def test_max_macs_ratio_keeps_layers_whose_real_macs_would_grow():
    """k=1, s=3: 8 of 9 phases are empty, so the sub-pixel conv does 9x the real MACs."""
    model = nn.Sequential(nn.ConvTranspose2d(4, 4, 1, stride=3),
                          nn.ConvTranspose2d(4, 4, 4, stride=2, padding=1)).eval()
    graph = trace(model, (torch.randn(2, 4, 6, 6),))
    result = deconv_to_subpixel(graph, config=SubpixelConfig(max_macs_ratio=1.5))
    assert result.report.rewritten == ("conv_transpose2d_1 (1)",)
    ((node, why),) = result.report.skipped
    assert node == "conv_transpose2d (0)" and why.startswith("a sub-pixel conv costs 9.00x")
    check_parity(model, graph, result, lambda b: (torch.randn(b, 4, 6, 6),))

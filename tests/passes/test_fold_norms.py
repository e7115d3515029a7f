"""fold_norms: exact folding into conv and transposed conv (groups, depthwise), zoo models,
the reasons a norm stays, and that the input graph is never touched."""

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from gcc_gan import trace, zoo
from gcc_gan.ir import ops
from gcc_gan.passes.fold_norms import FoldConfig, FoldReport, fold_norms
from tests.passes.graph_checks import assert_same_output, assert_unchanged, snapshot

aten = torch.ops.aten
BN_OPS = ops.op_set("batch_norm", "_native_batch_norm_legit_no_training", "native_batch_norm")


def randomize_norms(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial running stats and affine parameters on every BatchNorm (fresh ones are 0/1)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._NormBase) and m.running_mean is not None:
                c = m.num_features
                m.running_mean.copy_(torch.randn(c, generator=gen))
                m.running_var.copy_(torch.rand(c, generator=gen) * 1.9 + 0.1)
                if m.affine:
                    m.weight.copy_(torch.randn(c, generator=gen))
                    m.bias.copy_(torch.randn(c, generator=gen))
    return model.eval()


def norm_nodes(graph, packets=BN_OPS):
    return [n for n in graph.graph.nodes
            if n.op == "call_function" and ops.packet(n.target) in packets]


def check_parity(model, graph, result, make_inputs):
    for batch in (1, 4):
        inputs = make_inputs(batch)
        with torch.no_grad():
            ref = model(*inputs)
            assert_same_output(result.graph(*inputs), ref)
            assert_same_output(graph(*inputs), ref)


# ---- one conv + one norm, generated ------------------------------------------------------------

@st.composite
def conv_bn(draw):
    transposed = draw(st.booleans())
    groups = draw(st.sampled_from([1, 2, 3, "depthwise"]))
    per_group_in, per_group_out = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    if groups == "depthwise":
        groups, per_group_in = draw(st.integers(2, 6)), 1
    cin, cout = groups * per_group_in, groups * per_group_out
    k, stride = draw(st.sampled_from([1, 3, 4])), draw(st.integers(1, 2))
    padding = draw(st.integers(0, k // 2))
    bias, affine = draw(st.booleans()), draw(st.booleans())
    if transposed:
        conv = nn.ConvTranspose2d(cin, cout, k, stride, padding, groups=groups, bias=bias,
                                  output_padding=stride - 1 if stride > 1 and padding else 0)
    else:
        conv = nn.Conv2d(cin, cout, k, stride, padding, groups=groups, bias=bias)
    seed = draw(st.integers(0, 2**16))
    torch.manual_seed(seed)
    model = randomize_norms(nn.Sequential(conv, nn.BatchNorm2d(cout, affine=affine)), seed)
    if bias:
        nn.init.normal_(conv.bias)
    return model, cin


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(conv_bn())
def test_folding_one_conv_and_norm_is_exact(case):
    model, cin = case
    make_inputs = lambda b: (torch.randn(b, cin, 7, 7, generator=torch.Generator().manual_seed(b)),)
    graph = trace(model, make_inputs(1))
    snap = snapshot(graph)
    result = fold_norms(graph)
    assert result.report.folded == ("batch_norm (1)",)
    assert result.report.skipped == ()
    assert norm_nodes(result.graph) == []
    (conv,) = [n for n in result.graph.graph.nodes if n.op == "call_function"
               and ops.packet(n.target) in ops.Conv | ops.ConvTranspose]
    assert conv.args[2] is not None  # a conv without bias got one
    assert not any("running" in k for k in result.graph.module.state_dict())
    check_parity(model, graph, result, make_inputs)
    assert_unchanged(graph, snap)


def test_grouped_transposed_conv_scales_the_right_slices():
    """Groups=2 transposed conv: weight (C_in, C_out/2, k, k), channel o = g*C_out/2 + j."""
    model = nn.Sequential(nn.ConvTranspose2d(4, 6, 2, stride=2, groups=2, bias=False),
                          nn.BatchNorm2d(6, affine=False)).eval()
    with torch.no_grad():
        model[0].weight.fill_(1.0)
        model[1].running_var.copy_(torch.tensor([1.0, 4, 16, 64, 256, 1024]) - 1e-5)
    x = torch.ones(1, 4, 1, 1)
    result = fold_norms(trace(model, (x,)))
    folded_w = result.graph.module.get_submodule("0").weight
    expected = 1 / torch.tensor([1.0, 2, 4, 8, 16, 32])
    torch.testing.assert_close(folded_w[:2, :, 0, 0], expected[:3].expand(2, 3))
    torch.testing.assert_close(folded_w[2:, :, 0, 0], expected[3:].expand(2, 3))
    torch.testing.assert_close(result.graph(x), model(x))


@pytest.mark.parametrize("conv, bn, size", [
    (nn.Conv1d(4, 6, 3, stride=2, groups=2, bias=False), nn.BatchNorm1d(6), (9,)),
    (nn.ConvTranspose1d(4, 6, 3, stride=2, groups=2), nn.BatchNorm1d(6, affine=False), (9,)),
    (nn.Conv3d(4, 4, 3, padding=1, groups=4), nn.BatchNorm3d(4), (3, 4, 5)),
    (nn.ConvTranspose3d(4, 6, 2, stride=2, groups=2, bias=False), nn.BatchNorm3d(6), (2, 3, 3)),
], ids=["conv1d", "conv_transpose1d", "conv3d-depthwise", "conv_transpose3d"])
def test_one_and_three_dimensional_convs_fold_exactly(conv, bn, size):
    model = randomize_norms(nn.Sequential(conv, bn))
    make_inputs = lambda b: (torch.randn(b, 4, *size),)
    graph = trace(model, make_inputs(1))
    result = fold_norms(graph)
    assert len(result.report.folded) == 1 and norm_nodes(result.graph) == []
    check_parity(model, graph, result, make_inputs)


@pytest.mark.filterwarnings("ignore:.*LeafSpec.*:FutureWarning")  # torch's run_decompositions
def test_decomposed_graph_folds_native_batch_norm_into_convolution():
    """After run_decompositions: aten.convolution (transposed flag) + _legit_no_training."""
    model = randomize_norms(nn.Sequential(
        nn.ConvTranspose2d(4, 6, 3, stride=2, groups=2, bias=False), nn.BatchNorm2d(6),
        nn.Conv2d(6, 6, 3, groups=6), nn.BatchNorm2d(6, affine=False)))
    make_inputs = lambda b: (torch.randn(b, 4, 6, 6),)
    graph = trace(model, make_inputs(2))
    ep = graph.exported.run_decompositions()
    graph = dataclasses.replace(graph, module=ep.module(), exported=ep)
    assert len(norm_nodes(graph)) == 2
    result = fold_norms(graph)
    assert len(result.report.folded) == 2 and norm_nodes(result.graph) == []
    check_parity(model, graph, result, make_inputs)


def test_instance_norm_with_running_stats_folds_and_input_statistics_norms_do_not():
    model = randomize_norms(nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.InstanceNorm2d(4, affine=True, track_running_stats=True),
        nn.Conv2d(4, 4, 3), nn.InstanceNorm2d(4), nn.Conv2d(4, 4, 1), nn.GroupNorm(2, 4),
        nn.Conv2d(4, 4, 1), nn.LayerNorm([4, 2, 2])))
    make_inputs = lambda b: (torch.randn(b, 3, 6, 6),)
    graph = trace(model, make_inputs(1))
    result = fold_norms(graph)
    assert result.report.folded == ("instance_norm (1)",)
    assert result.report.skipped == ()  # short by default
    reasons = dict(fold_norms(graph, config=FoldConfig(report_unfoldable=True)).report.skipped)
    assert reasons == {"instance_norm_1 (3)": "instance norm: statistics depend on the input",
                       "group_norm (5)": "group norm: statistics depend on the input",
                       "layer_norm (7)": "layer norm: statistics depend on the input"}
    check_parity(model, graph, result, make_inputs)


# ---- zoo models ---------------------------------------------------------------------------------

ZOO_CASES = {  # name, factory overrides -> norms folded (tiny config)
    "unet": ({}, 7), "dcgan": ({}, 3), "sngan": ({}, 3), "resnet": ({"norm": "batch"}, 9)}


@pytest.mark.parametrize("name", sorted(ZOO_CASES))
def test_zoo_models_fold_exactly(name):
    overrides, n_folded = ZOO_CASES[name]
    model = randomize_norms(zoo.build(name, **overrides))
    make_inputs = lambda b: zoo.example_inputs(name, batch=b, seed=b, **overrides)
    graph = trace(model, make_inputs(1))
    snap, n_norms = snapshot(graph), len(norm_nodes(graph))
    result = fold_norms(graph)
    report = result.report
    assert len(report.folded) == n_folded
    assert len(report.folded) + len(report.skipped) == n_norms
    assert len(norm_nodes(result.graph)) == len(report.skipped)
    assert report.macs_after == report.macs_before
    assert report.params_after < report.params_before
    assert result.graph.params == report.params_after
    check_parity(model, graph, result, make_inputs)
    assert_unchanged(graph, snap)
    assert len(norm_nodes(graph)) == n_norms


def test_sngan_says_why_its_pre_activation_norms_stay():
    graph = trace(randomize_norms(zoo.build("sngan")), zoo.example_inputs("sngan"))
    skipped = dict(fold_norms(graph).report.skipped)
    assert skipped["batch_norm (blocks.0.bn1)"] == "input is not a conv output (follows aten.view)"
    assert skipped["batch_norm_6 (bn)"] == "input is not a conv output (follows aten.add)"


# ---- norms that must stay -----------------------------------------------------------------------

class Residual(nn.Module):
    """bn(conv(x)) + conv(x): the conv's output has a second user."""

    def __init__(self):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 3, 3, padding=1), nn.BatchNorm2d(3)

    def forward(self, x):
        h = self.conv(x)
        return self.bn(h) + h


class ComputedWeight(nn.Module):
    def __init__(self):
        super().__init__()
        self.weight, self.bn = nn.Parameter(torch.randn(3, 3, 3, 3)), nn.BatchNorm2d(3)

    def forward(self, x):
        return self.bn(F.conv2d(x, self.weight * 2.0))


class TiedWeight(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 3, 3, padding=1), nn.BatchNorm2d(3)

    def forward(self, x):
        return self.conv(self.bn(self.conv(x)))


@pytest.mark.parametrize("model, reason", [
    (Residual(), "input has another user: conv2d also feeds add"),
    (ComputedWeight(), "follows a computed weight (conv2d's weight is not a stored tensor)"),
    (TiedWeight(), "conv2d's conv.weight is shared with another op"),
    (nn.Sequential(nn.Conv2d(3, 3, 1), nn.BatchNorm2d(3, track_running_stats=False)),
     "training-mode batch norm: normalises with batch statistics"),
    (nn.Sequential(nn.ReLU(), nn.BatchNorm2d(3)), "input is not a conv output (follows aten.relu)"),
], ids=["residual", "computed-weight", "tied-weight", "batch-statistics", "after-relu"])
def test_unfoldable_batch_norm_is_reported_and_graph_returned_as_is(model, reason):
    graph = trace(randomize_norms(model), (torch.randn(2, 3, 5, 5),))
    result = fold_norms(graph)
    assert result.graph is graph
    assert result.report.folded == ()
    assert [why for _node, why in result.report.skipped] == [reason]
    assert isinstance(result.report, FoldReport) and result.report.name == "fold_norms"


def test_only_the_foldable_norm_of_a_mixed_model_folds():
    model = randomize_norms(nn.Sequential(Residual(), nn.Conv2d(3, 4, 1, bias=False),
                                          nn.BatchNorm2d(4)))
    make_inputs = lambda b: (torch.randn(b, 3, 5, 5),)
    graph = trace(model, make_inputs(1))
    result = fold_norms(graph)
    assert result.report.folded == ("batch_norm_1 (2)",)
    assert result.report.skipped == (
        ("batch_norm (0.bn)", "input has another user: conv2d also feeds add"),)
    assert len(norm_nodes(result.graph)) == 1
    keys = result.graph.module.state_dict().keys()
    assert "0.bn.running_mean" in keys and "0.bn.num_batches_tracked" in keys
    assert "2.running_mean" not in keys and "2.num_batches_tracked" not in keys
    assert "1.bias" in keys
    check_parity(model, graph, result, make_inputs)

"""split_taps: random narrow convs rewritten exactly (any batch), a generator-like model where
only the narrow last conv changes, the convs that stay (with their reasons), ONNX Runtime in
float and int8, and an input graph that is never touched."""

import dataclasses
import itertools
import zlib
from types import SimpleNamespace

import onnx
import pytest
import torch
import torch.nn.functional as F
from gcc_gan.passes.channel_prune import PruneConfig, prune_channels
from gcc_gan.passes.quantize import quantize_int8
from gcc_gan.passes.split_taps import (
    SplitTapsConfig,
    SplitTapsReport,
    SplitTapsResult,
    padded_work,
    split_taps,
    split_taps_weight,
)
from torch import nn

from gcc_gan import trace
from gcc_gan.ir import ops
from gcc_gan.lower import lower_onnx
from gcc_gan.metrics import psnr
from tests.passes.graph_checks import (assert_report_counts, assert_same_output,
                                      assert_unchanged, snapshot)

aten = torch.ops.aten


def conv_weights(graph):
    """Weight shapes of the graph's convs, in graph order."""
    out = []
    for n in graph.graph.nodes:
        if n.op == "call_function" and ops.packet(n.target) in ops.Conv:
            out.append(tuple(n.args[1].meta["val"].shape))
    return out


def inputs(cin, h, w, batch=1, seed=0):
    return (torch.randn(batch, cin, h, w, generator=torch.Generator().manual_seed(seed)),)


def check_parity(model, graph, result, cin, h, w, batches=(1, 2)):
    assert graph.dynamic_batch  # so the rewritten program must take any batch too
    for batch in batches:
        x = inputs(cin, h, w, batch, seed=batch)
        with torch.no_grad():
            ref = model(*x)
            assert (result.graph(*x) - ref).abs().max().item() <= 1e-5
            assert_same_output(result.graph(*x), ref)


def check_report(graph, result):
    r = result.report
    assert isinstance(result, SplitTapsResult)
    assert isinstance(r, SplitTapsReport) and r.name == "split_taps"
    assert_report_counts(graph, result)


# ---- the weight layout and the pays rule --------------------------------------------------------

def test_weight_puts_kernel_rows_first_then_output_channels():
    w = torch.arange(3 * 2 * 4 * 5, dtype=torch.float32).reshape(3, 2, 4, 5)
    w2 = split_taps_weight(w)
    assert w2.shape == (12, 2, 1, 5)
    for dy in range(4):
        for o in range(3):
            assert torch.equal(w2[dy * 3 + o, :, 0, :], w[o, :, dy, :])


def test_weight_appends_zero_filters_up_to_the_output_count():
    w = torch.randn(3, 2, 4, 5)
    w2 = split_taps_weight(w, 16)
    assert w2.shape == (16, 2, 1, 5)
    assert torch.equal(w2[:12], split_taps_weight(w)) and not w2[12:].any()
    with pytest.raises(ValueError, match="fewer than the 12 taps"):
        split_taps_weight(w, 10)


def test_padded_work_of_the_motivating_layer():
    assert padded_work(3, 16) == 16 / 3 and padded_work(21, 16) == 32 / 21
    assert padded_work(64, 16) == padded_work(448, 16) == 1.0


# ---- random narrow convs, rewritten exactly -----------------------------------------------------

# every (outputs, kernel, padding); bias alternates, so each kernel is seen with and without
NARROW_CASES = [(cout, kernel, padding, i % 2 == 0) for i, (cout, kernel, padding) in enumerate(
    itertools.product((1, 3), ((7, 7), (3, 3), (3, 5), (5, 1)), (0, "half", (1, 2))))]


@pytest.mark.parametrize("cout, kernel, padding, bias", NARROW_CASES, ids=str)
def test_rewriting_one_narrow_conv_is_exact(cout, kernel, padding, bias):
    seed = zlib.crc32(repr((cout, kernel, padding, bias)).encode())
    gen = torch.Generator().manual_seed(seed)
    cin = int(torch.randint(4, 17, (1,), generator=gen))
    h, w = (int(v) for v in torch.randint(16, 25, (2,), generator=gen))
    if padding == "half":
        padding = (kernel[0] // 2, kernel[1] // 2)
    torch.manual_seed(seed)
    conv = nn.Conv2d(cin, cout, kernel, padding=padding, bias=bias)
    if bias:
        nn.init.normal_(conv.bias)
    model = nn.Sequential(conv).eval()
    graph = trace(model, inputs(cin, h, w))
    snap = snapshot(graph)
    result = split_taps(graph)
    assert result.report.rewritten == ("conv2d (0)",) and result.report.skipped == ()
    assert conv_weights(result.graph) == [(kernel[0] * cout, cin, 1, kernel[1])]
    check_parity(model, graph, result, cin, h, w)
    check_report(graph, result)
    assert_unchanged(graph, snap)
    state = result.graph.module.state_dict()
    assert "0.weight" not in state and "0.split_taps_weight" in state
    assert ("0.split_taps_bias" in state) == bias


class Generatorish(nn.Module):
    """A ResNet generator's ends: a reflection-padded 7x7 stem to 16 channels, and a 7x7 head
    to RGB; the head's 3 outputs waste 13 of 16 channels."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 7, padding=3, padding_mode="reflect")
        self.head = nn.Conv2d(16, 3, 7, padding=3)

    def forward(self, x):
        return torch.tanh(self.head(torch.relu(self.stem(x))))


def generatorish():
    torch.manual_seed(0)
    model = Generatorish().eval()
    x = inputs(3, 20, 24)
    return model, x, trace(model, x)


def test_generator_rewrites_only_its_narrow_head():
    model, x, graph = generatorish()
    snap = snapshot(graph)
    with torch.no_grad():
        before = graph(*x)
    result = split_taps(graph)
    r = result.report
    assert r.rewritten == ("conv2d_1 (head)",)
    ((node, why),) = r.skipped
    assert node == "conv2d (stem)"
    assert why.startswith("does not pay in 16-channel blocks: 16 outputs do 1.00x the work")
    assert conv_weights(result.graph) == [(16, 3, 7, 7), (21, 16, 1, 7)]
    check_parity(model, graph, result, 3, 20, 24, batches=(1, 2, 3))
    check_report(graph, result)
    assert r.params_after == r.params_before
    assert r.macs_after == r.macs_before  # "same" padding: border rows are padded, not computed
    # the input graph is untouched: same program, same state, same output
    assert_unchanged(graph, snap)
    with torch.no_grad():
        assert torch.equal(graph(*x), before)
    # the new nodes keep the source module, so later reports can name it
    new_conv = [n for n in result.graph.graph.nodes if n.target is aten.conv2d.default][1]
    assert list(new_conv.meta["nn_module_stack"].values())[-1][0] == "head"


def test_target_alignment_and_config_decide_what_pays():
    _, _, graph = generatorish()
    assert split_taps(graph, target=SimpleNamespace(channel_alignment=16)).report.rewritten
    # no blocks (alignment 1, a crossbar): nothing is wasted, nothing pays
    r = split_taps(graph, target=SimpleNamespace(channel_alignment=1)).report
    assert r.rewritten == () and len(r.skipped) == 2
    # config beats target: at 4-channel blocks, 3 -> 21 taps is 4/3 -> 24/21 (0.86x): too little
    r = split_taps(graph, target=SimpleNamespace(channel_alignment=16),
                   config=SplitTapsConfig(alignment=4)).report
    assert r.rewritten == ()
    r = split_taps(graph, config=SplitTapsConfig(alignment=4, max_waste_ratio=0.9)).report
    assert r.rewritten == ("conv2d_1 (head)",)


def test_output_multiple_pads_the_taps_with_zero_filters():
    model, x, graph = generatorish()
    x86ish = SimpleNamespace(channel_alignment=16, output_channel_multiple=4)
    for target, config, outputs in [(x86ish, SplitTapsConfig(), 24),
                                    (None, SplitTapsConfig(output_multiple=5), 25),
                                    (x86ish, SplitTapsConfig(output_multiple=1), 21)]:
        result = split_taps(graph, target, config)
        assert conv_weights(result.graph)[1] == (outputs, 16, 1, 7)
        check_parity(model, graph, result, 3, 20, 24)
        check_report(graph, result)
        # the rewrite keeps the MACs of its 21 taps; each zero filter adds a 16 x 1 x 7 conv
        # over the 20 x 24 output
        extra = result.report.macs_after - result.report.macs_before
        assert extra == (outputs - 21) * 16 * 7 * 20 * 24


class WideHead(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 32, 3, padding=1)
        self.head = nn.Conv2d(32, 3, 7, padding=3)

    def forward(self, x):
        return self.head(torch.relu(self.stem(x)))


@pytest.mark.parametrize("multiple, outputs", [(4, 24), (1, 22)])
def test_pruning_keeps_the_zero_filters_a_ragged_count_would_slow(multiple, outputs):
    # the 3 zero filters are never read, so they are the least important channels: a target
    # with output_channel_multiple keeps them (24 outputs), one without cuts them to 1 (22)
    torch.manual_seed(0)
    model = WideHead().eval()
    graph = trace(model, inputs(3, 20, 24))
    target = SimpleNamespace(channel_alignment=16, output_channel_multiple=multiple)
    split = split_taps(graph, target, SplitTapsConfig(output_multiple=4)).graph
    pruned = prune_channels(split, target, PruneConfig(ratio=0.7)).graph
    assert conv_weights(pruned) == [(16, 3, 3, 3), (outputs, 16, 1, 7)]


class Shared(nn.Module):
    """One narrow weight used by two convs, and string paddings."""

    def __init__(self):
        super().__init__()
        self.head = nn.Conv2d(6, 2, 3, padding="same")
        self.tail = nn.Conv2d(2, 3, (3, 5), padding="valid")

    def forward(self, x):
        y = self.head(x) + F.conv2d(x.flip(-1), self.head.weight, padding=1)
        return self.tail(y)


def test_shared_weight_is_split_once_and_string_paddings_resolve():
    torch.manual_seed(0)
    model = Shared().eval()
    graph = trace(model, inputs(6, 16, 18))
    result = split_taps(graph)
    assert len(result.report.rewritten) == 3 and result.report.skipped == ()
    state = result.graph.module.state_dict()
    assert "head.split_taps_weight" in state and "head.split_taps_weight_1" not in state
    assert "head.weight" not in state
    check_parity(model, graph, result, 6, 16, 18)


@pytest.mark.filterwarnings("ignore:.*LeafSpec.*:FutureWarning")  # torch's run_decompositions
def test_decomposed_graph_rewrites_convolution():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(5, 3, 5, padding=2)).eval()
    graph = trace(model, inputs(5, 16, 16))
    ep = graph.exported.run_decompositions()
    graph = dataclasses.replace(graph, module=ep.module(), exported=ep)
    assert [n.target for n in graph.graph.nodes if n.op == "call_function"
            and ops.packet(n.target) in ops.Conv] == [aten.convolution.default]
    result = split_taps(graph)
    assert len(result.report.rewritten) == 1
    assert conv_weights(result.graph) == [(15, 5, 1, 5)]
    check_parity(model, graph, result, 5, 16, 16)


# ---- convs that stay ----------------------------------------------------------------------------

class Scaled(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 3, 3)

    def forward(self, x):
        return F.conv2d(x, self.conv.weight * 2.0, self.conv.bias)


@pytest.mark.parametrize("layer, reason", [
    (nn.Conv2d(4, 3, 3, stride=2), "stride (2, 2): only stride 1 is rewritten"),
    (nn.Conv2d(4, 2, 3, groups=2), "groups 2: only groups 1 is rewritten"),
    (nn.Conv2d(4, 3, 3, dilation=2), "dilation (2, 2): only dilation 1 is rewritten"),
    (nn.Conv2d(4, 16, 3), ("does not pay in 16-channel blocks: 16 outputs do 1.00x the work, "
                           "48 taps 1.00x (max_waste_ratio=0.5)")),
    (nn.Conv2d(4, 3, (1, 3)), "kernel height 1: no rows to split"),
    (nn.Conv2d(4, 3, 4, padding="same"), "padding 'same' with an even kernel (4, 4) pads unevenly"),
    (nn.Conv1d(4, 3, 3), "1-D conv: only 2-D convs are rewritten"),
    (Scaled(), "weight is computed (mul = aten.mul), not a stored tensor"),
], ids=["stride", "groups", "dilation", "aligned", "one-row", "same-even", "1d", "computed"])
@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel:UserWarning")
def test_conv_that_stays_is_reported_and_graph_returned_as_is(layer, reason):
    size = (12,) if isinstance(layer, nn.Conv1d) else (12, 12)
    graph = trace(nn.Sequential(layer).eval(), (torch.randn(2, 4, *size),))
    result = split_taps(graph)
    assert result.graph is graph
    assert result.report.rewritten == ()
    ((node, why),) = result.report.skipped
    assert why == reason, why
    assert node.startswith("conv")
    assert result.report.macs_after == result.report.macs_before == graph.macs


def test_transposed_conv_is_left_alone():
    graph = trace(nn.Sequential(nn.ConvTranspose2d(4, 3, 3, padding=1)).eval(),
                  (torch.randn(2, 4, 8, 8),))
    result = split_taps(graph)
    assert result.graph is graph and result.report.rewritten == ()


# ---- ONNX Runtime, float and int8 ---------------------------------------------------------------

def test_lowered_rewrite_matches_torch_in_float_and_int8():
    model, x, graph = generatorish()
    result = split_taps(graph)
    with torch.no_grad():
        ref = model(*x)
    lowered = lower_onnx(result.graph)  # raises unless ONNX Runtime matches the torch program
    assert (lowered.run(*x) - ref).abs().max().item() <= 1e-4
    kinds = [n.op_type for n in onnx.load_model_from_string(lowered.data).graph.node]
    assert kinds.count("Conv") == 2 and "Slice" in kinds

    q = quantize_int8(result.graph, calib_data=[x])
    assert {layer["module"] for layer in q.report.layers} == {"stem", "head"}
    lowered = lower_onnx(q.graph, calib=[x])
    assert lowered.int8_layers == 2  # the new 21-output conv runs in int8 too
    assert psnr(lowered.run(*x), ref) > 30

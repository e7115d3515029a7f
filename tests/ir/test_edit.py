"""ir.edit: in-place ops become out-of-place only where no one else can see the mutation, and
a fold after the sub-pixel rewrite exports without slice_scatter writes."""

import torch
from torch import fx, nn

from gcc_gan import trace
from gcc_gan.ir.edit import out_of_place_where_unobserved
from gcc_gan.passes.deconv_to_subpixel import deconv_to_subpixel
from gcc_gan.passes.fold_norms import fold_norms

aten = torch.ops.aten


def relu_on_a_slice(base_has_other_user: bool) -> fx.GraphModule:
    """x -> a = 2x -> v = a[:, :1] -> relu_(v); optionally a is also read by `a + 1`."""
    g = fx.Graph()
    x = g.placeholder("x")
    a = g.call_function(aten.mul.Tensor, (x, 2.0))
    v = g.call_function(aten.slice.Tensor, (a, 1, 0, 1))
    r = g.call_function(aten.relu_.default, (v,))
    g.output((r, g.call_function(aten.add.Tensor, (a, 1.0))) if base_has_other_user else r)
    return fx.GraphModule(nn.Module(), g)


def targets(gm: fx.GraphModule) -> list:
    return [n.target for n in gm.graph.nodes if n.op == "call_function"]


def test_relu_on_a_view_nobody_else_reads_becomes_relu():
    gm = relu_on_a_slice(base_has_other_user=False)
    x = torch.randn(2, 3, 4)
    expected = gm(x)
    assert out_of_place_where_unobserved(gm) == 1
    gm.recompile()
    assert aten.relu.default in targets(gm) and aten.relu_.default not in targets(gm)
    assert torch.equal(gm(x), expected)


def test_relu_on_a_view_whose_base_is_read_again_stays_in_place():
    gm = relu_on_a_slice(base_has_other_user=True)
    assert out_of_place_where_unobserved(gm) == 0
    assert aten.relu_.default in targets(gm)


def test_mutating_a_graph_input_stays_in_place():
    g = fx.Graph()
    g.output(g.call_function(aten.relu_.default, (g.placeholder("x"),)))
    gm = fx.GraphModule(nn.Module(), g)
    assert out_of_place_where_unobserved(gm) == 0


class UpBlock(nn.Module):
    """DCGAN's upsampling step: transposed conv, BatchNorm, in-place ReLU."""

    def __init__(self):
        super().__init__()
        self.up = nn.ConvTranspose2d(8, 4, 4, 2, 1, bias=False)
        self.bn = nn.BatchNorm2d(4)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x):
        return self.act(self.bn(self.up(x)))


def test_folding_the_norm_after_a_subpixel_crop_leaves_no_slice_scatter():
    # folding removes the norm between the crop (a view) and relu_: exported as-is, relu_
    # would write back into the uncropped tensor through slice_scatter
    model = UpBlock().eval()
    with torch.no_grad():
        model.bn.running_mean.uniform_(-1, 1)
        model.bn.running_var.uniform_(0.5, 2)
    x = torch.randn(2, 8, 6, 6)
    graph = fold_norms(deconv_to_subpixel(trace(model, (x,))).graph).graph
    ops = [str(n.target) for n in graph.exported.graph.nodes if n.op == "call_function"]
    assert not [op for op in ops if "scatter" in op or "copy" in op], ops
    assert "aten.relu.default" in ops
    torch.testing.assert_close(graph(x), model(x), atol=1e-5, rtol=1e-5)

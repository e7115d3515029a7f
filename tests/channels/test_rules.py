"""One test per channel rule family: what it ties together, what it freezes, and that pruning
through it is exact (dead channels removed, output unchanged)."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gcc_gan import trace
from gcc_gan.channels import analyze_channels
from tests.channels.dead_units import assert_prunes_exactly


def img(c=4, h=8):
    return lambda b: (torch.randn(b, c, h, h, generator=torch.Generator().manual_seed(b)),)


def units_of(analysis, target, dim):
    return analysis.unit_index(analysis.attr_labels[target][dim])


class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(4, 8, 3, padding=1)
        self.body = nn.Sequential(nn.Conv2d(8, 6, 3, padding=1), nn.InstanceNorm2d(6, affine=True),
                                  nn.ReLU(), nn.Conv2d(6, 8, 3, padding=1))
        self.head = nn.Conv2d(8, 3, 1)

    def forward(self, x):
        h = self.stem(x)
        return self.head(h + self.body(h))


def test_residual_add_unifies_stream_channels():
    _, a, _ = assert_prunes_exactly(Residual(), img())
    assert np.array_equal(units_of(a, "stem.weight", 0), units_of(a, "body.3.weight", 0))
    assert np.array_equal(units_of(a, "body.0.weight", 0), units_of(a, "body.1.weight", 0))
    assert (units_of(a, "head.weight", 0) < 0).all()  # network output: frozen
    assert len(a.groups) == 2


class CatSkip(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(4, 6, 3, padding=1), nn.Conv2d(4, 5, 3, padding=1)
        self.head = nn.Conv2d(11, 3, 1)

    def forward(self, x):
        return self.head(torch.cat([F.leaky_relu(self.a(x), 0.2), self.b(x)], dim=1))


def test_cat_concatenates_segments():
    _, a, _ = assert_prunes_exactly(CatSkip(), img())
    head_in = units_of(a, "head.weight", 1)
    assert np.array_equal(head_in, np.concatenate([units_of(a, "a.weight", 0), units_of(a, "b.weight", 0)]))
    assert len(a.groups) == 2  # each segment keeps its own minimum


class Shuffle(nn.Module):
    def __init__(self):
        super().__init__()
        self.up = nn.Conv2d(4, 6 * 4, 3, padding=1)
        self.head = nn.Conv2d(6, 3, 3, padding=1)

    def forward(self, x):
        return self.head(F.pixel_shuffle(self.up(x), 2))


def test_pixel_shuffle_ties_r_squared_channels():
    _, a, _ = assert_prunes_exactly(Shuffle(), img())
    produced = units_of(a, "up.weight", 0).reshape(6, 4)
    assert all(len(set(row)) == 1 for row in produced)  # the 4 sub-pixels of one output channel
    assert np.array_equal(produced[:, 0], units_of(a, "head.weight", 1))


class ChannelShuffle(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(4, 8, 1, groups=2)
        self.b = nn.Conv2d(8, 3, 1)

    def forward(self, x):
        return self.b(F.channel_shuffle(F.relu(self.a(x)), 2))


def test_channel_shuffle_keeps_groups_uniform():
    _, a, _ = assert_prunes_exactly(ChannelShuffle(), img())
    out = units_of(a, "a.weight", 0).reshape(2, 4)
    assert np.array_equal(out[0], out[1])  # index i of both groups goes together


class Depthwise(nn.Module):
    def __init__(self, mult=1):
        super().__init__()
        self.pw = nn.Conv2d(4, 6, 1)
        self.dw = nn.Conv2d(6, 6 * mult, 3, padding=1, groups=6)
        self.bn = nn.BatchNorm2d(6 * mult)
        self.head = nn.Conv2d(6 * mult, 3, 1)

    def forward(self, x):
        return self.head(F.relu(self.bn(self.dw(self.pw(x)))))


@pytest.mark.parametrize("mult", [1, 2])
def test_depthwise_prunes_whole_groups_and_rewrites_groups(mult):
    graph, a, pruned = assert_prunes_exactly(Depthwise(mult), img())
    dw = next(n for n in pruned.graph.nodes if n.name == "conv2d_1")
    kept_in = pruned.cost["conv2d_1"].in_shapes[0][1]
    assert dw.args[6] == kept_in < 6  # groups follow the kept channels


class Grouped(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(4, 8, 1)
        self.g = nn.Conv2d(8, 6, 3, padding=1, groups=2)
        self.head = nn.Conv2d(6, 3, 1)

    def forward(self, x):
        return self.head(F.relu(self.g(F.relu(self.a(x)))))


def test_grouped_conv_prunes_the_same_index_in_every_group():
    _, a, pruned = assert_prunes_exactly(Grouped(), img())
    into = units_of(a, "a.weight", 0).reshape(2, 4)
    assert np.array_equal(into[0], into[1])
    assert next(n for n in pruned.graph.nodes if n.name == "conv2d_1").args[6] == 2


class Transposed(nn.Module):
    def __init__(self, groups=1):
        super().__init__()
        self.a = nn.Conv2d(4, 8, 3, padding=1)
        self.t = nn.ConvTranspose2d(8, 6, 4, 2, 1, groups=groups)
        self.head = nn.Conv2d(6, 3, 1)

    def forward(self, x):
        return self.head(torch.tanh(self.t(F.relu(self.a(x)))))


@pytest.mark.parametrize("groups", [1, 2])
def test_transposed_conv_swaps_weight_dims(groups):
    _, a, _ = assert_prunes_exactly(Transposed(groups), img())
    assert np.array_equal(units_of(a, "a.weight", 0), units_of(a, "t.weight", 0))


class LinearToConv(nn.Module):
    """DCGAN/SNGAN stem: Linear -> view(B, C, 4, 4) -> conv."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 6 * 4 * 4)
        self.conv = nn.Conv2d(6, 3, 3, padding=1)

    def forward(self, z):
        return self.conv(F.relu(self.fc(z).view(z.shape[0], 6, 4, 4)))


def test_linear_view_splits_features_into_channels():
    _, a, _ = assert_prunes_exactly(LinearToConv(), lambda b: (torch.randn(b, 8),))
    features = units_of(a, "fc.weight", 0).reshape(6, 16)
    assert all(len(set(row)) == 1 for row in features)  # 16 positions of one channel together
    assert np.array_equal(features[:, 0], units_of(a, "conv.weight", 1))


class Modulated(nn.Module):
    """StyleGAN2's fused modulated conv: batch folded into channels and conv groups."""

    def __init__(self):
        super().__init__()
        self.pre = nn.Conv2d(4, 6, 3, padding=1)
        self.weight = nn.Parameter(torch.randn(1, 5, 6, 3, 3))
        self.affine = nn.Linear(8, 6)
        self.head = nn.Conv2d(5, 3, 1)

    def forward(self, x, w):
        x = F.leaky_relu(self.pre(x), 0.2)
        b, cin, h, wd = x.shape
        weight = self.weight * self.affine(w).view(b, 1, cin, 1, 1)
        weight = weight * torch.rsqrt(weight.pow(2).sum([2, 3, 4], keepdim=True) + 1e-8)
        out = F.conv2d(x.reshape(1, b * cin, h, wd), weight.view(-1, cin, 3, 3), padding=1, groups=b)
        return self.head(F.leaky_relu(out.view(b, -1, h, wd), 0.2))


def test_modulated_conv_prunes_with_batch_folded_in_groups():
    gen = torch.Generator().manual_seed(0)
    _, a, pruned = assert_prunes_exactly(
        Modulated(), lambda b: (torch.randn(b, 4, 8, 8, generator=gen), torch.randn(b, 8, generator=gen)))
    assert np.array_equal(units_of(a, "pre.weight", 0), units_of(a, "weight", 2))
    assert pruned.dynamic_batch


class GroupNormed(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(4, 8, 3, padding=1)
        self.gn = nn.GroupNorm(4, 8)
        self.head = nn.Conv2d(8, 3, 1)

    def forward(self, x):
        return self.head(F.relu(self.gn(self.a(x))))


def test_group_norm_prunes_whole_groups():
    _, a, pruned = assert_prunes_exactly(GroupNormed(), img())
    out = units_of(a, "a.weight", 0).reshape(4, 2)
    assert all(len(set(row)) == 1 for row in out)
    gn = next(n for n in pruned.graph.nodes if "group_norm" in n.name)
    assert gn.args[1] < 4


class Chunked(nn.Module):
    """GLU-like: a conv's output split in two halves multiplied together."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(4, 12, 3, padding=1)
        self.head = nn.Conv2d(6, 3, 1)

    def forward(self, x):
        p, q = self.a(x).chunk(2, dim=1)
        return self.head(p * torch.tanh(q))


def test_chunk_halves_unify_and_split_sizes_are_rewritten():
    _, a, pruned = assert_prunes_exactly(Chunked(), img())
    halves = units_of(a, "a.weight", 0).reshape(2, 6)
    assert np.array_equal(halves[0], halves[1])


class SliceSelect(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(4, 10, 3, padding=1)
        self.head = nn.Conv2d(6, 3, 1)

    def forward(self, x):
        y = F.relu(self.a(x))
        return self.head(y[:, 2:8]) + y[:, 9].unsqueeze(1)  # a slice and a select


def test_slice_bounds_are_rewritten():
    _, a, pruned = assert_prunes_exactly(SliceSelect(), img())
    units = units_of(a, "a.weight", 0)
    assert units[9] < 0  # the selected channel reaches the output: frozen


class MeanOverChannels(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(4, 6, 3, padding=1)
        self.b = nn.Conv2d(4, 6, 3, padding=1)
        self.head = nn.Conv2d(6, 3, 1)

    def forward(self, x):
        h = self.a(x)
        pixel_norm = h * torch.rsqrt(h.pow(2).mean(dim=1, keepdim=True) + 1e-8)
        energy = self.b(x).pow(2).sum(dim=1, keepdim=True)  # a sum over channels is fine
        return self.head(pixel_norm) + energy


def test_mean_over_channels_freezes_sum_does_not():
    graph = trace(MeanOverChannels().eval(), img()(1))
    a = analyze_channels(graph)
    assert (units_of(a, "a.weight", 0) < 0).all()
    assert (units_of(a, "b.weight", 0) >= 0).all()
    causes = {c.detail for r in a.units.roots(a.attr_labels["a.weight"][0]) for c in a.units.causes(r)}
    assert any("reduced over by mean" in c for c in causes)


class ReflectOverChannels(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(4, 6, 3, padding=1)
        self.head = nn.Conv2d(8, 3, 1)

    def forward(self, x):
        return self.head(F.pad(self.a(x).permute(0, 2, 3, 1), (1, 1, 0, 0), mode="replicate").permute(0, 3, 1, 2))


def test_reflect_padding_across_channels_freezes():
    a = analyze_channels(trace(ReflectOverChannels().eval(), img()(1)))
    assert (units_of(a, "a.weight", 0) < 0).all()

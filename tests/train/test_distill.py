"""KA distillation: kernel alignment, feature matching from the IR, and training a pruned
student (a GraphModule from prune_channels) toward its teacher."""

import pytest
import torch

from gcc_gan import trace, zoo
from gcc_gan.ir import GanGraph
from gcc_gan.passes.channel_prune import PruneConfig, prune_channels
from gcc_gan.train.distill import DistillConfig, distill, finetune
from gcc_gan.train.features import (feature_sites, global_kernel_alignment, kernel_alignment,
                                    match_features, tap)
from gcc_gan.train.loop import CheckpointConfig


def test_ka_of_identical_features_is_1_and_invariant_to_rotation_and_scale():
    x = torch.randn(50, 7)
    assert kernel_alignment(x, x).item() == pytest.approx(1.0, abs=1e-6)
    q, _ = torch.linalg.qr(torch.randn(7, 7))
    assert kernel_alignment(x, 3.0 * x @ q).item() == pytest.approx(1.0, abs=1e-5)
    assert kernel_alignment(x, torch.randn(50, 3)).item() < 0.5  # unrelated, fewer columns
    a = torch.randn(2, 8, 5, 5)
    assert global_kernel_alignment(a, a).item() == pytest.approx(1.0, abs=1e-6)
    assert 0 <= global_kernel_alignment(a, torch.randn(2, 3, 5, 5)).item() <= 1


def test_gka_refuses_maps_of_different_spatial_size():
    with pytest.raises(ValueError, match="equal N, H, W"):
        global_kernel_alignment(torch.randn(2, 4, 8, 8), torch.randn(2, 4, 4, 4))


@pytest.fixture(scope="module")
def sr_pair():
    torch.manual_seed(0)
    teacher = zoo.rrdb_generator(nf=8, nb=1, gc=4)
    graph = trace(teacher, (torch.rand(1, 3, 8, 8),))
    student = prune_channels(graph, config=PruneConfig(ratio=0.25, min_channels=2)).graph
    return teacher, graph, student


def test_feature_matching_pairs_maps_of_equal_spatial_size(sr_pair):
    _, graph, student = sr_pair
    pairs = match_features(graph, student)
    sizes = {p.teacher.shape[1:] for p in pairs}
    assert sizes == {(8, 8), (16, 16), (32, 32)}  # the trunk and both upsampling stages
    assert all(p.teacher.shape[1:] == p.student.shape[1:] for p in pairs)
    assert any(p.teacher.shape[0] != p.student.shape[0] for p in pairs)  # pruned widths
    assert [p.teacher.module for p in pairs] == [p.student.module for p in pairs]
    assert {p.teacher.kind for p in pairs if p.teacher.shape[1:] == (8, 8)} == {"block"}
    few = match_features(graph, student, max_pairs=3)
    assert len(few) == 3 and {p.teacher.shape[1:] for p in few} == sizes


def test_feature_matching_across_different_architectures():
    teacher = trace(zoo.rrdb_generator(nf=8, nb=2, gc=4), (torch.rand(1, 3, 8, 8),))
    student = trace(zoo.rrdb_generator(nf=4, nb=1, gc=4), (torch.rand(1, 3, 8, 8),))
    pairs = match_features(teacher, student)
    assert pairs and all(p.teacher.shape[1:] == p.student.shape[1:] for p in pairs)
    assert len({p.student.node for p in pairs}) == len(pairs)


def test_tap_returns_the_program_output_and_the_named_maps(sr_pair):
    _, graph, _ = sr_pair
    sites = feature_sites(graph)
    tapped = tap(graph, [s.node for s in sites])
    x = torch.rand(2, 3, 8, 8)
    out, feats = tapped(x)
    torch.testing.assert_close(out[0], graph(x))
    assert [tuple(f.shape[1:]) for f in feats] == [s.shape for s in sites]


@pytest.mark.parametrize("feature_loss", ["ka", "mse"])
def test_distillation_lowers_the_loss_and_returns_a_new_graph(sr_pair, feature_loss):
    teacher, graph, student = sr_pair
    teacher = teacher if feature_loss == "ka" else graph  # an nn.Module or a traced program
    before = {k: v.clone() for k, v in student.module.state_dict().items()}
    data = [torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(i)) for i in range(4)]
    result = distill(student, teacher, data,
                     DistillConfig(steps=24, lr=2e-3, feature_loss=feature_loss, progress=False))
    h = result.history
    assert h.mean("loss", last=4) < h.mean("loss", first=4)
    assert h.mean("feature", last=4) < h.mean("feature", first=4)
    assert isinstance(result.graph, GanGraph) and result.graph.macs == student.macs
    for k, v in student.module.state_dict().items():  # the student given is not modified
        torch.testing.assert_close(v, before[k])
    if feature_loss == "mse":  # adapters exactly where the channel counts differ
        widths = [(p.student.shape[0], p.teacher.shape[0]) for p in result.pairs]
        convs = [type(a).__name__ == "Conv2d" for a in result.adapters]
        assert convs == [s != t for s, t in widths]


def test_finetune_resumes_from_its_checkpoint(sr_pair, tmp_path):
    _, teacher, student = sr_pair
    data = [torch.rand(2, 3, 8, 8)]
    ckpt = CheckpointConfig(tmp_path, every=3)
    config = DistillConfig(steps=3, checkpoint=ckpt, progress=False)
    assert isinstance(finetune(student, teacher, data, config), GanGraph)
    longer = distill(student, teacher, data,
                     DistillConfig(steps=5, checkpoint=ckpt, progress=False))
    assert longer.history.resumed_from == 3 and longer.history.steps == 5


def test_an_unknown_feature_loss_lists_the_choices():
    with pytest.raises(ValueError, match="'ka', 'mse', 'none'"):
        DistillConfig(feature_loss="cka")


def test_data_of_another_size_than_the_traced_student_is_refused(sr_pair):
    _, graph, student = sr_pair
    with pytest.raises(ValueError, match="trace \\(and compress\\) it at the training patch"):
        distill(student, graph, [torch.rand(2, 3, 12, 12)], DistillConfig(steps=1))


def test_a_program_without_shapes_cannot_be_matched_and_the_error_says_why(sr_pair):
    teacher, graph, _ = sr_pair
    untraced = torch.fx.symbolic_trace(teacher)  # no node.meta["val"]: no feature sites
    with pytest.raises(ValueError, match="gcc_gan.trace records"):
        distill(untraced, graph, [torch.rand(2, 3, 8, 8)], DistillConfig(steps=1))
    result = distill(untraced, graph, [torch.rand(2, 3, 8, 8)],
                     DistillConfig(steps=2, feature_loss="none", progress=False))
    assert result.graph is None and result.history.steps == 2  # a bare GraphModule trains too

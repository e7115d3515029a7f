"""default_importance: how a unit's values over the tensors it indexes are combined."""

import numpy as np
import pytest

from gcc_gan import trace, zoo
from gcc_gan.channels import analyze_channels
from gcc_gan.channels.importance import default_importance, layer_uniform
from gcc_gan.search import search_budget


@pytest.fixture(scope="module")
def resnet():
    """A ResNet generator without affine norms (CycleGAN's default): slice norms decide, and the
    residual trunk's units index ~n_blocks times more tensors than a block interior's."""
    graph = trace(zoo.resnet_generator(ngf=8, n_blocks=6).eval(),
                  zoo.example_inputs("resnet", "tiny", batch=1, seed=0))
    analysis = analyze_channels(graph)
    trunk = max(analysis.groups, key=lambda g: len(g.units))  # widest: ties the residual stream
    interiors = [g for g in analysis.groups if ".conv_block." in g.module]
    return analysis, trunk, interiors


def _trunk_over_interiors(scores, trunk, interiors) -> float:
    return scores[trunk.units].mean() / np.mean([scores[g.units].mean() for g in interiors])


def test_sum_grows_with_the_tensors_a_unit_indexes(resnet):
    analysis, trunk, interiors = resnet
    assert _trunk_over_interiors(default_importance(analysis, "sum"), trunk, interiors) > 3


def test_mean_makes_units_of_different_fan_comparable(resnet):
    analysis, trunk, interiors = resnet
    assert 0.5 < _trunk_over_interiors(default_importance(analysis), trunk, interiors) < 2


def test_ranks_within_a_resnet_group_do_not_depend_on_the_combination(resnet):
    analysis, _, _ = resnet
    total, mean = default_importance(analysis, "sum"), default_importance(analysis, "mean")
    for group in analysis.groups:
        np.testing.assert_array_equal(np.argsort(total[group.units], kind="stable"),
                                      np.argsort(mean[group.units], kind="stable"))


def test_unknown_combination_is_rejected(resnet):
    with pytest.raises(ValueError, match="combine"):
        default_importance(resnet[0], "max")


def test_layer_uniform_prunes_every_group_to_about_the_same_fraction(resnet):
    analysis, _, _ = resnet
    keep = search_budget(analysis, layer_uniform(analysis), ratio=0.4).keep
    fractions = [keep[g.units].mean() for g in analysis.groups]
    assert max(fractions) - min(fractions) <= 0.2, fractions
    default = search_budget(analysis, default_importance(analysis, "sum"), ratio=0.4).keep
    assert np.ptp([default[g.units].mean() for g in analysis.groups]) > 0.5  # what it fixes

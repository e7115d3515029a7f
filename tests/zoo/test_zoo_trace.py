"""Every zoo model traces; the traced program matches eager; graph MACs match independent counts."""

import pytest
import torch

from gcc_gan import trace
from gcc_gan.zoo import ZOO, build, documented_macs, example_inputs
from tests.zoo.hook_macs import count_macs

NAMES = sorted(ZOO)


def _max_diff(a, b) -> float:
    return (a - b).abs().max().item()


def _check_parity(name: str, config: str, batches=(1, 4)) -> None:
    model = build(name, config)
    graph = trace(model, example_inputs(name, config, batch=1))
    assert graph.tracer == "export", graph.notes
    assert graph.dynamic_batch, graph.notes
    assert not graph.cost.unknown_ops
    for batch in batches:
        inputs = example_inputs(name, config, batch=batch, seed=batch)
        with torch.no_grad():
            expected, got = model(*inputs), graph(*inputs)
        assert got.shape == expected.shape
        diff = _max_diff(got, expected)
        # absolute bound of the spec, and a relative one: some untrained models (BN at its
        # initial statistics) output values so small that 1e-5 alone would prove little
        assert diff <= 1e-5, f"{name} {config} batch {batch}: {diff}"
        assert diff <= 1e-5 * expected.abs().max().item(), f"{name} {config} batch {batch}"


@pytest.mark.parametrize("name", NAMES)
def test_tiny_traces_and_matches_eager_at_batch_1_and_4(name):
    _check_parity(name, "tiny")


@pytest.mark.parametrize("name", NAMES)
def test_tiny_macs_match_hook_count(name):
    model = build(name, "tiny")
    inputs = example_inputs(name, "tiny", batch=1)
    graph = trace(model, inputs)
    real, lit = count_macs(model, inputs)
    assert graph.macs == real
    assert graph.lit_macs == lit
    assert graph.params == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", NAMES)
def test_standard_traces_with_documented_macs(name):
    model = build(name, "standard")
    graph = trace(model, example_inputs(name, "standard", batch=1))
    assert graph.dynamic_batch
    real, lit = documented_macs(name)
    assert graph.macs == pytest.approx(real, rel=1e-3)
    assert graph.lit_macs == pytest.approx(lit, rel=1e-3)


@pytest.mark.parametrize("name,real,lit", [
    ("resnet", 49.55e9, 56.8e9),   # CycleGAN ResNet-9, ngf 64, 256x256
    ("unet", 6.05e9, 18.1e9),      # pix2pix U-Net-256, ngf 64
])
def test_standard_macs_match_published_figures(name, real, lit):
    graph = trace(build(name, "standard"), example_inputs(name, "standard"))
    assert graph.macs == pytest.approx(real, rel=0.01)
    assert graph.lit_macs == pytest.approx(lit, rel=0.01)


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_standard_matches_eager_at_batch_1_and_4(name):
    _check_parity(name, "standard")

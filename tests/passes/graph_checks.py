"""Checks shared by the pass tests: outputs equal within scale, and an input graph untouched."""

import torch


def assert_same_output(out, ref):
    """Max abs difference within 1e-5 of the output's scale."""
    scale = ref.abs().max().clamp_min(1.0)
    torch.testing.assert_close(out / scale, ref / scale, atol=1e-5, rtol=1e-5)


def snapshot(graph):
    return str(graph.graph), {k: v.clone() for k, v in graph.module.state_dict().items()}


def assert_unchanged(graph, snap):
    code, state = snap
    assert str(graph.graph) == code
    now = graph.module.state_dict()
    assert now.keys() == state.keys()
    for k in state:
        assert torch.equal(now[k], state[k]), k

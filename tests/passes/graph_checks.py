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


def assert_report_counts(graph, result) -> None:
    """A rewrite pass's report gives the MACs, literature MACs and params of its input and
    of the graph it returned."""
    r = result.report
    assert (r.macs_before, r.lit_macs_before, r.params_before) == (graph.macs, graph.lit_macs,
                                                                   graph.params)
    assert (r.macs_after, r.lit_macs_after, r.params_after) == (
        result.graph.macs, result.graph.lit_macs, result.graph.params)

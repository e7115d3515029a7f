"""The latency budget search: cost model first, measured rounds correct it."""

from dataclasses import dataclass

import pytest

import gcc_gan
from gcc_gan import zoo
from gcc_gan.latency import MAX_ROUNDS, WINDOW, Candidate, search_latency
from gcc_gan.measure import Latency
from gcc_gan.search import BudgetError

FULL = 10_000_000
FLOOR = 500_000       # pruning cannot go below this many MACs


@dataclass
class Fake:
    macs: int


def prune(budget):
    if budget < FLOOR:
        raise BudgetError("below the smallest reachable")
    return Fake(macs=min(int(budget), FULL))


def model_ms(graph):            # the cost model: 1 ms per 1e6 MACs + 0.5 ms
    return graph.macs / 1e6 + 0.5


def timing(fastest_ms, median_ms=None):
    median_ms = fastest_ms if median_ms is None else median_ms
    return Latency(median_ms, median_ms, median_ms, fastest_ms, 2 * median_ms, 10, 0, 1, "fake")


def device(scale, offset=0.0):  # the real device: a different slope and offset
    def measure(budget, graph):
        return timing(model_ms(graph) * scale + offset), ("built", graph.macs)
    return measure


@pytest.mark.parametrize("budget, scale, offset", [(8.0, 1.0, 0.0), (8.0, 1.6, 0.0),
                                                   (4.0, 0.5, 0.0), (8.0, 1.3, 2.0)])
def test_measured_rounds_land_in_the_window(budget, scale, offset):
    search, built = search_latency(budget, Candidate(prune, model_ms), full_macs=FULL,
                                   measure=device(scale, offset))
    chosen = search.rounds[search.chosen]
    assert search.met and search.in_window and search.measured
    assert WINDOW * budget <= chosen.measured_ms <= budget
    assert len(search.rounds) <= MAX_ROUNDS and built == ("built", chosen.macs)
    assert search.rounds[0].correction == 1.0


def test_an_exact_model_needs_one_round():
    search, _ = search_latency(6.0, Candidate(prune, model_ms), full_macs=FULL,
                               measure=device(1.0))
    assert len(search.rounds) == 1


def test_a_fast_enough_unpruned_model_is_kept_whole():
    search, built = search_latency(100.0, Candidate(prune, model_ms), full_macs=FULL,
                                   measure=device(1.0))
    assert built == ("built", FULL) and search.met and not search.in_window
    assert len(search.rounds) == 1


def test_an_unreachable_budget_says_what_was_measured():
    with pytest.raises(BudgetError, match=r"latency budget 0.5 ms not met: .* measured"):
        search_latency(0.5, Candidate(prune, model_ms), full_macs=FULL, measure=device(1.0))


def test_without_a_device_the_cost_model_decides_in_one_round():
    search, graph = search_latency(4.0, Candidate(prune, model_ms), full_macs=FULL,
                                   measure=None)
    assert len(search.rounds) == 1 and not search.measured
    assert search.rounds[0].measured_ms is None and model_ms(graph) <= 4.0


def test_a_nonpositive_budget_is_refused():
    with pytest.raises(ValueError, match="must be positive"):
        search_latency(0, Candidate(prune, model_ms), full_macs=FULL, measure=None)


def test_compile_to_a_latency_budget_on_a_predicted_target():
    """arm has no board attached: the cost model decides, and the report says so."""
    model, x = zoo.build("resnet"), zoo.example_inputs("resnet")
    dense = gcc_gan.compile(model, "arm", example_inputs=x, measure=False)   # no budget: no pruning
    budget = 0.95 * dense.report.cost_model["predicted_ms"]
    out = gcc_gan.compile(model, "arm", budget_latency_ms=budget, example_inputs=x,
                          measure=False, round_to=1)
    s = out.report.latency_search
    assert s["measured"] is False and len(s["rounds"]) == 1
    assert s["rounds"][0]["predicted_ms"] <= budget
    assert out.report.macs_after < out.report.macs_before
    assert "Latency budget" in out.report.to_markdown()


def test_a_too_slow_model_is_never_measured_twice():
    calls = []

    def slow(budget, graph):
        calls.append(budget)
        return timing(100.0), graph

    with pytest.raises(BudgetError, match="not met"):
        search_latency(8.0, Candidate(prune, model_ms), full_macs=FULL, measure=slow)
    assert len(calls) == 2 and FLOOR <= calls[1] < 1.01 * FLOOR < calls[0]


def test_a_model_measured_below_the_window_is_not_measured_again():
    """Channel steps make few distinct models: aiming at 0.925 T again after a too-fast round
    would pick the same one; the next model up, predicted within T, is tried instead."""
    def coarse(budget):            # models only every 2e6 MACs
        return prune(budget // 2_000_000 * 2_000_000 if budget >= 2_000_000 else budget)

    calls = []

    def measure(budget, graph):
        calls.append(graph.macs)
        return device(0.9)(budget, graph)

    search, _ = search_latency(8.0, Candidate(coarse, model_ms), full_macs=FULL,
                               measure=measure)
    assert calls == [6_000_000, 8_000_000] and search.in_window


@pytest.mark.parametrize("statistic", ["steady", "median"])
def test_rounds_are_judged_by_the_chosen_statistic(statistic):
    """A shared machine: every call's median 1.3x its fastest. The verdict reads the chosen
    figure; the round records both."""
    def shared(budget, graph):
        fastest = model_ms(graph)
        return timing(fastest, 1.3 * fastest), graph

    search, _ = search_latency(8.0, Candidate(prune, model_ms), full_macs=FULL,
                               measure=shared, statistic=statistic)
    chosen = search.rounds[search.chosen]
    judged = chosen.measured_ms if statistic == "steady" else chosen.measured_median_ms
    assert search.statistic == statistic and search.in_window
    assert chosen.measured_median_ms == pytest.approx(1.3 * model_ms(Fake(chosen.macs)))
    assert WINDOW * 8.0 <= judged <= 8.0 and chosen.measured_ms == judged
    with pytest.raises(ValueError, match="statistic must be one of steady, median"):
        search_latency(8.0, Candidate(prune, model_ms), full_macs=FULL, measure=shared,
                       statistic="mean")

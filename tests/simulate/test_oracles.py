"""The oracles against brute force: best fixed expert, best sequence with m switches, and the switch budget."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aegis_online.simulate.oracles import (
    StreamLosses,
    SwitchingOracle,
    best_fixed,
    compute_oracles,
    stream_losses,
)
from aegis_online.simulate.scenario import Scenario
from aegis_online.simulate.synthetic import generate_traffic


def brute_force(losses: np.ndarray, switches: int) -> float:
    """Least loss over every sequence of experts with at most ``switches`` changes (tiny inputs only)."""
    length, n = losses.shape
    best = np.inf
    for path in itertools.product(range(n), repeat=length):
        if sum(a != b for a, b in itertools.pairwise(path)) <= switches:
            best = min(best, sum(losses[k, i] for k, i in enumerate(path)))
    return best


@settings(max_examples=60, deadline=None)
@given(
    st.integers(1, 6).flatmap(
        lambda length: st.integers(1, 3).flatmap(
            lambda n: st.lists(st.floats(0, 1), min_size=length * n, max_size=length * n).map(
                lambda xs: np.array(xs).reshape(length, n)
            )
        )
    ),
    st.integers(0, 3),
)
def test_the_dynamic_programme_matches_brute_force(losses: np.ndarray, switches: int) -> None:
    grouped = StreamLosses(losses[None], np.array([len(losses)]), [(0, 0, 0)])
    curve = SwitchingOracle(switches).curves(grouped)[0]
    for m in range(switches + 1):
        assert curve[m] == pytest.approx(brute_force(losses, m), abs=1e-9)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.lists(st.floats(0, 10), min_size=4, max_size=4), min_size=1, max_size=3), st.integers(0, 6))
def test_the_switch_budget_goes_where_it_helps_most(raw: list[list[float]], budget: int) -> None:
    curves = np.minimum.accumulate(np.array(raw)[:, ::-1].cumsum(axis=1)[:, ::-1], axis=1)  # non-increasing
    combined = SwitchingOracle.combine(curves, budget)
    for b in range(budget + 1):
        best = min(
            sum(curves[s][k] for s, k in enumerate(split))
            for split in itertools.product(range(curves.shape[1]), repeat=len(curves))
            if sum(split) <= b
        )
        assert combined[b] == pytest.approx(best)


SWAP = Scenario.model_validate(
    {
        "name": "swap",
        "categories": [{"id": "S1", "base_rate": 0.2}, {"id": "S8", "base_rate": 0.2}],
        "experts": [
            {"name": "a", "quality": {"steps": [[0, 0.95], [0.5, 0.6]]}},
            {"name": "b", "quality": {"steps": [[0, 0.6], [0.5, 0.95]]}},
            {"name": "c", "quality": 0.75, "covers": ["S1"]},
        ],
    }
)


def test_oracles_on_a_stream_are_per_category_and_respect_the_budget() -> None:
    stream = generate_traffic(SWAP, steps=2000, seed=0)
    report = compute_oracles(stream, switches_per_stream=1)
    loss = (stream.outputs[0] - stream.truth[0][..., None]) ** 2
    fixed = sum(np.nansum(loss[:, c], axis=0)[: 3 if c == 0 else 2].min() for c in range(2))
    assert report.best_fixed_loss == pytest.approx(fixed)
    halves = sum(
        np.nansum(loss[span, c], axis=0)[: 3 if c == 0 else 2].min()
        for c in range(2)
        for span in (slice(0, 1000), slice(1000, 2000))
    )
    assert report.switches == 2
    assert report.best_switching_loss <= halves + 1e-9  # the swap point is one of the allowed paths
    assert report.best_switching_loss < 0.6 * report.best_fixed_loss
    assert report.switching_curve[0] == pytest.approx(report.best_fixed_loss)
    values = list(report.switching_curve.values())
    assert values == sorted(values, reverse=True)
    assert report.best_fixed_experts["default/S8"] in ("a", "b")  # c does not cover S8


def test_an_expert_that_never_answers_a_stream_is_not_its_best_fixed_expert() -> None:
    stream = generate_traffic(SWAP, steps=200, seed=1)
    grouped = stream_losses(stream)
    _, which = best_fixed(grouped)
    s8 = next(s for s, name in enumerate(grouped.names) if name == (0, 0, 1))
    assert which[s8] != 2 and np.isinf(grouped.losses[s8, :, 2]).all()

"""Synthetic traffic: reproducible, and each knob of a scenario does what its file says, measured on the arrays."""

from __future__ import annotations

import numpy as np
import pytest

from aegis_online.simulate.scenario import Scenario, load_scenario
from aegis_online.simulate.stream import NO_FEEDBACK
from aegis_online.simulate.synthetic import generate_traffic

T = 20_000


def _scenario(**extra: object) -> Scenario:
    base = {
        "name": "test",
        "categories": [{"id": "S1", "base_rate": 0.2}, {"id": "S8", "base_rate": 0.1}],
        "experts": [
            {"name": "good", "quality": {"steps": [[0, 0.95], [0.5, 0.7]]}},
            {"name": "plain", "quality": 0.8, "covers": ["S1"]},
        ],
    }
    base.update(extra)
    return Scenario.model_validate(base)


def _accuracy(outputs: np.ndarray, truth: np.ndarray) -> float:
    keep = np.isfinite(outputs) & np.isfinite(truth)
    return float(np.mean((outputs[keep] >= 0.5) == (truth[keep] == 1)))


def test_the_same_seed_gives_the_same_stream_and_replica_zero_does_not_depend_on_the_count() -> None:
    scenario = load_scenario("delayed-feedback")
    a = generate_traffic(scenario, steps=2000, seed=5)
    b = generate_traffic(scenario, steps=2000, seed=5, replicas=3)
    np.testing.assert_array_equal(a.outputs[0], b.outputs[0])
    np.testing.assert_array_equal(a.arrival[0], b.arrival[0])
    assert not np.array_equal(b.outputs[0], b.outputs[1], equal_nan=True)
    c = generate_traffic(scenario, steps=2000, seed=6)
    assert not np.array_equal(a.outputs, c.outputs, equal_nan=True)


def test_experts_have_the_accuracy_and_base_rates_of_the_file() -> None:
    stream = generate_traffic(_scenario(), steps=T, seed=1)
    half = T // 2
    good = stream.outputs[0, :, :, 0]
    assert _accuracy(good[:half], stream.truth[0, :half]) == pytest.approx(0.95, abs=0.01)
    assert _accuracy(good[half:], stream.truth[0, half:]) == pytest.approx(0.70, abs=0.015)
    assert np.nanmean(stream.truth[0], axis=0) == pytest.approx([0.2, 0.1], abs=0.01)
    assert stream.drifts == (half,)


def test_an_expert_that_does_not_cover_a_category_sleeps_there() -> None:
    stream = generate_traffic(_scenario(), steps=500, seed=1)
    assert np.isnan(stream.outputs[0, :, 1, 1]).all()
    assert np.isfinite(stream.outputs[0, :, 0, 1]).all()


def test_calibration_knobs_move_the_scores() -> None:
    sharp = _scenario(experts=[{"name": "a", "quality": 1.0, "confidence": 0.95, "noise": 0.0}])
    biased = _scenario(experts=[{"name": "a", "quality": 1.0, "confidence": 0.95, "noise": 0.0, "bias": 2.0}])
    s, b = (generate_traffic(x, steps=2000, seed=2) for x in (sharp, biased))
    safe = s.truth[0] == 0
    assert np.allclose(s.outputs[0, ..., 0][safe], 0.05)
    assert np.all(b.outputs[0, ..., 0][safe] > 0.2)  # a positive bias over-flags


def test_errors_are_correlated_as_configured() -> None:
    def both_wrong(rho: float) -> float:
        scenario = _scenario(
            experts=[{"name": "a", "quality": 0.8}, {"name": "b", "quality": 0.8}], error_correlation=rho
        )
        stream = generate_traffic(scenario, steps=T, seed=3)
        wrong = (stream.outputs[0] >= 0.5) != (stream.truth[0][..., None] == 1)
        return float(np.mean(wrong[..., 0] & wrong[..., 1]))

    assert both_wrong(0.0) == pytest.approx(0.04, abs=0.006)  # independent: 0.2 x 0.2
    assert both_wrong(0.6) > 0.08


def test_feedback_share_delay_and_label_noise() -> None:
    scenario = _scenario(
        feedback={"share": 0.3, "label_noise": 0.1, "delay": {"distribution": "geometric", "mean": 50}}
    )
    stream = generate_traffic(scenario, steps=T, seed=4)
    gets = stream.arrival[0] != NO_FEEDBACK
    assert gets.mean() == pytest.approx(0.3, abs=0.01)
    delays = stream.arrival[0][gets] - np.arange(T)[gets] - 1
    assert delays.min() >= 0 and delays.mean() == pytest.approx(50, rel=0.1)
    labelled = np.isfinite(stream.feedback[0])
    flipped = stream.feedback[0][labelled] != stream.truth[0][labelled]
    assert flipped.mean() == pytest.approx(0.1, abs=0.01)
    assert not np.isfinite(stream.feedback[0][~gets]).any()


@pytest.mark.parametrize(
    ("delay", "mean"),
    [
        ({"distribution": "fixed", "value": 7}, 7),
        ({"distribution": "uniform", "low": 10, "high": 30}, 20),
        ({"distribution": "lognormal", "median": 100, "sigma": 0.5, "max": 400}, 113),
    ],
)
def test_delay_distributions(delay: dict, mean: float) -> None:
    stream = generate_traffic(_scenario(feedback={"delay": delay}), steps=T, seed=5)
    delays = stream.arrival[0] - np.arange(T) - 1
    assert delays.mean() == pytest.approx(mean, rel=0.05)
    assert delays.max() <= delay.get("max", delay.get("high", delay.get("value", 10**9)))


def test_a_jailbreak_burst_makes_attacked_requests_unsafe_and_fools_the_fooled() -> None:
    scenario = _scenario(
        experts=[{"name": "fooled", "quality": 0.95, "jailbreak_quality": 0.2}, {"name": "robust", "quality": 0.9}],
        jailbreak={"start": 0.4, "end": 0.6, "share": 0.5, "categories": ["S1"]},
    )
    stream = generate_traffic(scenario, steps=T, seed=6)
    attacked = stream.jailbreak[0]
    assert not attacked[: int(0.4 * T)].any() and not attacked[int(0.6 * T) :].any()
    assert attacked.mean() == pytest.approx(0.1, abs=0.01)  # half of a fifth of the run
    assert (stream.truth[0, attacked, 0] == 1).all()
    assert _accuracy(stream.outputs[0, attacked, 0, 0], stream.truth[0, attacked, 0]) == pytest.approx(0.2, abs=0.04)
    assert _accuracy(stream.outputs[0, attacked, 0, 1], stream.truth[0, attacked, 0]) == pytest.approx(0.9, abs=0.04)
    assert stream.drifts == (int(0.4 * T), int(0.6 * T))


def test_a_new_category_is_not_evaluated_before_it_appears() -> None:
    stream = generate_traffic(load_scenario("new-category"), steps=1000, seed=7)
    new = stream.categories.index("custom:crypto-scams")
    assert np.isnan(stream.truth[0, :500, new]).all() and np.isfinite(stream.truth[0, 500:, new]).all()
    assert np.isnan(stream.outputs[0, :500, new]).all()
    covering = np.isfinite(stream.outputs[0, 500:, new]).all(axis=0)
    assert covering.tolist() == [True, True, True, False, False]


def test_tenants_disagree_on_borderline_requests_only() -> None:
    scenario = load_scenario("tenants")
    stream = generate_traffic(scenario, steps=T, seed=8)
    kids = stream.tenant[0] == 0
    rate = np.nanmean(stream.truth[0], axis=1)
    assert stream.tenant[0].mean() == pytest.approx(0.5, abs=0.02)
    assert rate[kids].mean() > rate[~kids].mean() + 0.08  # borderline counts as unsafe for the strict tenant
    assert stream.thresholds[0, 0] < 0.5 < stream.thresholds[1, 0]  # strict and lenient policies

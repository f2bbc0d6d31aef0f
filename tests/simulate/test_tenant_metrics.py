"""Per-tenant decision metrics: the cost at the policy's cost ratio, and the logistic combiner fitted in hindsight."""

from __future__ import annotations

import math

import numpy as np
import pytest

from aegis_online.simulate.tenant_metrics import decision_cost, decision_metrics, hindsight_combiner


def test_cost_weighs_misses_by_the_ratio_in_force_at_each_request() -> None:
    labels = np.array([1, 1, 0, 0, 1, 0])
    flagged = np.array([0, 1, 1, 0, 0, 1])
    ratios = np.array([4.0, 4.0, 4.0, 4.0, 0.25, 0.25])  # a strict policy, then a lenient one
    # strict: a miss costs 4/4 = 1, a false alarm 1/4; lenient: a miss costs 0.25/1, a false alarm 1
    expected = (1.0 + 0.0 + 0.25 + 0.0 + 0.25 + 1.0) / 6
    assert decision_cost(labels, flagged, ratios) == pytest.approx(expected)
    assert decision_metrics(labels, flagged, np.full(6, 0.5), ratios)["cost"] == pytest.approx(expected)
    assert "cost" not in decision_metrics(labels, flagged, np.full(6, 0.5))
    assert decision_cost(labels, labels, ratios) == 0.0  # no error, no cost
    assert math.isnan(decision_cost(np.array([]), np.array([]), np.array([])))


def test_the_hindsight_combiner_is_scikit_learns_logistic_regression() -> None:
    sklearn = pytest.importorskip("sklearn.linear_model")
    rng = np.random.default_rng(3)
    y = rng.random(1500) < 0.3
    scores = np.c_[np.clip(0.3 + 0.4 * y + rng.normal(0, 0.25, 1500), 0, 1), rng.random(1500)]
    ours = hindsight_combiner(y, scores)
    logits = np.log(np.clip(scores, 1e-3, 1 - 1e-3) / (1 - np.clip(scores, 1e-3, 1 - 1e-3)))
    theirs = sklearn.LogisticRegression(tol=1e-10, max_iter=10_000).fit(logits, y).predict_proba(logits)[:, 1]
    assert np.abs(ours - theirs).max() < 1e-5


def test_the_hindsight_combiner_leans_on_the_informative_expert_and_survives_edge_cases() -> None:
    rng = np.random.default_rng(4)
    y = rng.random(800) < 0.4
    informative = np.where(y, 0.8, 0.2) + rng.normal(0, 0.05, 800)
    combined = hindsight_combiner(y, np.c_[rng.random(800), informative, np.full(800, np.nan)])
    assert combined[y].min() > combined[~y].max()  # separable by the informative expert; NaN column ignored
    assert np.allclose(hindsight_combiner(np.zeros(5), np.full((5, 2), 0.7)), 0.0)  # one class: its rate

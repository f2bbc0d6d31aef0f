"""Metrics: AUPRC equals scikit-learn's, F1 and rates on a hand-made stream, recovery after a drift."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aegis_online.simulate.predictor_metrics import (
    PredictorMetrics,
    Windows,
    average_precision,
    f1_score,
    recovery_steps,
)
from aegis_online.simulate.stream import NO_FEEDBACK, Stream


@settings(max_examples=80, deadline=None)
@given(
    st.lists(st.tuples(st.booleans(), st.sampled_from([0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0])), min_size=1, max_size=40)
)
def test_average_precision_is_scikit_learns(pairs: list[tuple[bool, float]]) -> None:
    metrics = pytest.importorskip("sklearn.metrics")
    labels = np.array([p[0] for p in pairs])
    scores = np.array([p[1] for p in pairs])
    if not labels.any():
        assert math.isnan(average_precision(labels, scores))
        return
    assert average_precision(labels, scores) == pytest.approx(metrics.average_precision_score(labels, scores))


def test_f1_counts_hits_misses_and_false_alarms() -> None:
    assert f1_score(np.array([1, 1, 0, 0]), np.array([1, 0, 1, 0])) == pytest.approx(0.5)
    assert math.isnan(f1_score(np.array([0, 0]), np.array([0, 0])))


def _stream(scores: np.ndarray, truth: np.ndarray, thresholds: tuple[float, ...] = (0.5,)) -> Stream:
    t, c = truth.shape
    return Stream(
        experts=("e",),
        categories=tuple(f"S{k + 1}" for k in range(c)),
        tenants=("default",),
        outputs=scores[None, :, :, None],
        truth=truth[None],
        unsafe=np.where(np.isfinite(truth).any(axis=1), np.nan_to_num(truth, nan=0.0).max(axis=1), np.nan)[None],
        feedback=truth[None].copy(),
        arrival=np.full((1, t), NO_FEEDBACK),
        tenant=np.zeros((1, t), dtype=np.int64),
        thresholds=np.array([thresholds * c])[:, :c],
        personalise_after=np.array([50]),
    )


def test_false_positive_rate_and_recall_are_per_request() -> None:
    truth = np.array([[0, 0], [0, 0], [1, 0], [0, 1], [0, 0]], dtype=float)
    scores = np.array([[0.9, 0.1], [0.2, 0.1], [0.8, 0.1], [0.1, 0.3], [0.1, 0.1]])
    m = PredictorMetrics(_stream(scores, truth), scores[None], Windows.over(5, 1))
    summary = m.summary()
    assert summary["false_positive_rate"] == pytest.approx(1 / 3)  # one of three benign requests flagged
    assert summary["recall"] == pytest.approx(1 / 2)  # the S2 request was missed
    assert summary["categories"]["S1"]["f1"] == pytest.approx(2 / 3)
    assert m.cumulative_loss() == pytest.approx(float(np.sum((scores - truth) ** 2)))


def test_unknown_labels_are_left_out() -> None:
    truth = np.array([[1.0], [np.nan], [0.0]])
    scores = np.array([[0.5], [0.9], [0.5]])
    m = PredictorMetrics(_stream(scores, truth), scores[None], Windows.over(3, 1))
    assert m.rows() == 2 and m.cumulative_loss() == pytest.approx(0.5)


def test_recovery_is_the_first_window_back_within_tolerance() -> None:
    oracle = np.full((1, 1000), 0.1)
    learner = oracle.copy()
    learner[0, :300] = 0.5  # stuck on the old expert for 300 requests
    # the window may straddle the end of the bad stretch by the tolerance's worth
    assert 290 <= recovery_steps(learner, oracle, window=50, tolerance=0.1) <= 300
    assert recovery_steps(np.full((1, 1000), 0.5), oracle, window=50) is None
    assert recovery_steps(oracle, oracle, window=50) == 0

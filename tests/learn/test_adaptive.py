"""The adaptive learner's parts and their guarantees (issue 13): calibration regret, threshold regret, the
conformal targets, and leaving the convex hull of the experts."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.optimize import minimize

from aegis_online.learn import DEFAULT_LEARNER, Adaptive, Hedge, known_learner, make_learner
from aegis_online.learn.calibration import A_MAX, B_MAX, OnlineCalibration, clipped_logit, sigmoid
from aegis_online.learn.thresholds import GRID, ThresholdTracker

T = 3000


def log_loss(p: np.ndarray, y: np.ndarray) -> float:
    p = np.clip(p, 1e-12, 1 - 1e-12)
    return float(-(y * np.log(p) + (1 - y) * np.log1p(-p)).sum())


def best_fixed_calibration_loss(scores: np.ndarray, labels: np.ndarray) -> float:
    """The log loss of the best fixed (a, b) in the calibration's box, in hindsight."""
    z = clipped_logit(scores)

    def total(ab: np.ndarray) -> float:
        return log_loss(sigmoid(ab[0] * z + ab[1]), labels)

    starts = [(1.0, 0.0), (0.0, 0.0), (A_MAX, 0.0), (0.5, -3.0), (0.5, 3.0)]
    bounds = [(0.0, A_MAX), (-B_MAX, B_MAX)]
    return min(minimize(total, np.array(s), bounds=bounds, method="L-BFGS-B").fun for s in starts)


def calibration_sequences() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(7)
    y = (rng.random(T) < 0.3).astype(float)
    inverted = np.where(y == 1, rng.uniform(0.0, 0.3, T), rng.uniform(0.7, 1.0, T))  # an expert read backwards
    overconfident = np.clip(sigmoid(3.0 * (2 * y - 1) + rng.normal(0, 2.5, T)), 0, 1)
    adversarial = np.tile([0.999, 0.001], T // 2)  # extreme scores with labels that contradict them half the time
    y_adv = np.tile([0.0, 0.0, 1.0, 1.0], T // 4)
    shifted = np.clip(rng.beta(2, 2, T), 0, 1)  # labels unrelated to the score before and after a swap
    y_shift = np.r_[(shifted[: T // 2] > 0.5), (shifted[T // 2 :] < 0.5)].astype(float)
    return {
        "inverted": (inverted, y),
        "overconfident": (overconfident, y),
        "adversarial": (adversarial, y_adv),
        "swap": (shifted, y_shift),
    }


@pytest.mark.parametrize("name", list(calibration_sequences()))
def test_calibration_regret_is_within_its_bound(name: str) -> None:
    scores, labels = calibration_sequences()[name]
    cal = OnlineCalibration(n_experts=1, window=T)
    state = cal.init_states(1)
    predictions = np.empty(T)
    checkpoints = {100, 1000, T}
    for t in range(T):
        predictions[t] = cal.apply(state, scores[t : t + 1, None])[0, 0]
        state = cal.learn(state, scores[t : t + 1, None], labels[t : t + 1])
        if t + 1 in checkpoints:
            regret = log_loss(predictions[: t + 1], labels[: t + 1]) - best_fixed_calibration_loss(
                scores[: t + 1], labels[: t + 1]
            )
            assert regret <= cal.regret_bound(t + 1), (name, t + 1, regret)
    if name == "inverted":  # it learns the inversion: far better than the raw scores
        assert log_loss(predictions, labels) < 0.5 * log_loss(scores, labels)


def test_calibration_leaves_sleeping_experts_alone() -> None:
    cal = OnlineCalibration(n_experts=2)
    state = cal.init_states(1)
    new = cal.learn(state, np.array([[0.9, np.nan]]), np.array([0.0]))
    assert new[0, 1] == 1.0 and new[0, 3] == 0.0 and new[0, 5] == 0.0  # expert 2's a, b and count
    assert new[0, 2] < 0.0 and new[0, 4] == 1.0
    assert np.isnan(cal.apply(new, np.array([[0.5, np.nan]]))[0, 1])


def threshold_sequences() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(11)
    y = (rng.random(T) < 0.4).astype(float)
    separable = np.where(y == 1, rng.uniform(0.6, 1.0, T), rng.uniform(0.0, 0.5, T))
    noisy = np.clip(0.5 + 0.25 * (2 * y - 1) + rng.normal(0, 0.25, T), 0, 1)
    # scores straddling the median with labels that alternate: the leader keeps changing
    trap = np.tile([0.45, 0.55], T // 2)
    y_trap = np.tile([1.0, 1.0, 0.0, 0.0], T // 4)
    return {"separable": (separable, y), "noisy": (noisy, y), "trap": (trap, y_trap)}


@pytest.mark.parametrize("cost_ratio", [0.2, 1.0, 5.0])
@pytest.mark.parametrize("name", list(threshold_sequences()))
def test_threshold_regret_is_within_the_hedge_bound(name: str, cost_ratio: float) -> None:
    """Without discounting, the expected cost-weighted 0-1 loss of drawing a grid threshold from the weights has
    Hedge's anytime regret against the best grid threshold in hindsight, on every prefix."""
    scores, labels = threshold_sequences()[name]
    tracker = ThresholdTracker(window=None)
    state = tracker.init_states(1)
    c = cost_ratio
    flagged = scores[:, None] >= GRID[None, :]
    losses = (c * (labels[:, None] == 1) * ~flagged + (labels[:, None] == 0) * flagged) / max(c, 1.0)
    expected = 0.0
    g = len(GRID)
    for t in range(T):
        expected += float(tracker.threshold_weights(state, c)[0] @ losses[t])
        state = tracker.learn(state, scores[t : t + 1], labels[t : t + 1])
        if t + 1 in (50, 500, T):
            regret = expected - losses[: t + 1].sum(axis=0).min()
            bound = 2 * math.sqrt((t + 1) / 2 * math.log(g)) + math.sqrt(math.log(g) / 8)
            assert regret <= bound, (name, c, t + 1, regret, bound)


def test_cost_ratio_moves_the_threshold_at_decision_time() -> None:
    scores, labels = threshold_sequences()["noisy"]
    tracker = ThresholdTracker()
    state = tracker.init_states(1)
    for t in range(1000):
        state = tracker.learn(state, scores[t : t + 1], labels[t : t + 1])
    lenient, balanced, strict = (float(tracker.cost_threshold(state, c)[0]) for c in (0.2, 1.0, 5.0))
    assert lenient > balanced > strict


@pytest.mark.parametrize("target", [0.8, 0.95])
def test_min_recall_holds_on_new_items(target: float) -> None:
    """Conformal: the threshold learned from exchangeable labels flags at least ``target`` of new harmful items
    (averaged over repetitions, as the guarantee is in expectation)."""
    rng = np.random.default_rng(3)
    coverage = []
    for _ in range(40):
        tracker = ThresholdTracker(window=None)
        state = tracker.init_states(1)
        y = (rng.random(400) < 0.5).astype(float)
        s = np.clip(np.where(y == 1, rng.beta(5, 2, 400), rng.beta(2, 5, 400)), 0, 1)
        for t in range(400):
            state = tracker.learn(state, s[t : t + 1], y[t : t + 1])
        threshold = tracker.recall_threshold(state, target)[0]
        coverage.append(float((rng.beta(5, 2, 20_000) >= threshold).mean()))
    assert np.mean(coverage) >= target - 0.005
    assert np.mean(coverage) <= target + 0.08  # and it is not trivially flagging everything


def test_max_false_positive_rate_holds_on_new_items() -> None:
    rng = np.random.default_rng(4)
    rates = []
    for _ in range(40):
        tracker = ThresholdTracker(window=None)
        state = tracker.init_states(1)
        y = (rng.random(400) < 0.5).astype(float)
        s = np.where(y == 1, rng.beta(5, 2, 400), rng.beta(2, 5, 400))
        for t in range(400):
            state = tracker.learn(state, s[t : t + 1], y[t : t + 1])
        threshold = tracker.false_positive_threshold(state, 0.05)[0]
        rates.append(float((rng.beta(2, 5, 20_000) >= threshold).mean()))
    assert 0.02 <= np.mean(rates) <= 0.05 + 0.005


def test_targets_are_not_certified_without_enough_labels() -> None:
    """(NaN: the moderator keeps the policy's fixed threshold until the target can be certified.)"""
    tracker = ThresholdTracker(window=None)  # (with a window, the label mass needed is a discounted one)
    state = tracker.init_states(1)
    for _ in range(8):  # (1 - 0.9)(P + 1) >= 1 needs P >= 9 positives
        state = tracker.learn(state, np.array([0.9]), np.array([1.0]))
    assert np.isnan(tracker.recall_threshold(state, 0.9)[0])
    state = tracker.learn(state, np.array([0.9]), np.array([1.0]))
    assert tracker.recall_threshold(state, 0.9)[0] <= 0.9
    assert np.isnan(tracker.false_positive_threshold(tracker.init_states(1), 0.01)[0])


def test_adaptive_leaves_the_convex_hull_and_tracks_each_tenant() -> None:
    """Two experts that both say 0.85 on items one tenant calls safe: a convex combination scores 0.85 whatever
    the weights; the adaptive learner's calibration brings it down, and keeps the other items high."""
    learner = Adaptive(Hedge(n_experts=2))
    state = learner.init_state()
    rng = np.random.default_rng(0)
    for _ in range(400):
        harmful = rng.random() < 0.3
        outputs = [0.97, 0.95] if harmful else [0.85, 0.8]
        state = learner.learn_one(state, outputs, label=float(harmful))
    assert learner.predict_one(state, [0.85, 0.8]) < 0.2
    assert learner.predict_one(state, [0.97, 0.95]) > 0.6
    assert Hedge(n_experts=2).predict_one(Hedge(n_experts=2).init_state(), [0.85, 0.8]) > 0.8


def test_adaptive_batches_equal_one_by_one() -> None:
    learner = make_learner(DEFAULT_LEARNER, 3)
    rng = np.random.default_rng(5)
    outputs = rng.random((50, 3))
    outputs[::7, 1] = np.nan
    labels = (rng.random(50) < 0.4).astype(float)
    stepped = learner.learn_many(learner.init_states(50), outputs, labels)  # 50 independent keys, one step each
    for t in range(50):
        assert np.allclose(stepped[t], learner.learn_one(learner.init_state(), outputs[t], labels[t]), equal_nan=True)
    one = learner.init_state()
    for t in range(50):
        one = learner.learn_one(one, outputs[t], labels[t])
    assert learner.labels_seen(one[None, :])[0] == 50


def test_adaptive_names_and_refusals() -> None:
    assert DEFAULT_LEARNER == "default+adaptive" and known_learner("hedge+adaptive")
    assert not known_learner("exp3-ix+adaptive") and not known_learner("nope+adaptive")
    assert make_learner("hedge+adaptive", 2).name == "hedge+adaptive"
    with pytest.raises(ValueError, match="bandit"):
        make_learner("exp3-ix+adaptive", 2)


def test_f_beta_picks_the_grid_threshold_with_the_best_empirical_f_beta() -> None:
    scores, labels = threshold_sequences()["noisy"]
    tracker = ThresholdTracker(window=None)
    state = tracker.init_states(1)
    for t in range(T):
        state = tracker.learn(state, scores[t : t + 1], labels[t : t + 1])
    flagged = scores[:, None] >= GRID[None, :]
    tp = (flagged & (labels[:, None] == 1)).sum(axis=0)
    fp = (flagged & (labels[:, None] == 0)).sum(axis=0)
    fn = (~flagged & (labels[:, None] == 1)).sum(axis=0)
    chosen = {}
    for beta in (0.5, 1.0, 2.0):
        b2 = beta * beta
        f = (1 + b2) * tp / np.maximum((1 + b2) * tp + b2 * fn + fp, 1)
        chosen[beta] = float(tracker.f_beta_threshold(state, beta)[0])
        assert chosen[beta] == GRID[len(f) - 1 - int(np.argmax(f[::-1]))]  # the best; ties: fewest alarms
    assert chosen[2.0] < chosen[1.0] < chosen[0.5]  # weighing recall more lowers the threshold


def test_a_tenant_key_inherits_the_global_threshold_statistics_as_a_light_prior() -> None:
    learner = make_learner(DEFAULT_LEARNER, 2)
    parent = learner.init_state()
    for _ in range(2000):
        parent = learner.learn_one(parent, [0.6, 0.7], label=1.0)
    child = learner.inherit(parent[None, :])[0]
    base, cal, thr = learner.split(child[None, :])
    p_base, p_cal, p_thr = learner.split(parent[None, :])
    assert np.array_equal(base, p_base) and np.array_equal(cal, p_cal)  # weights and calibration carry over
    mass = thr[0, : 2 * learner.thresholds.bins].sum()
    assert mass == pytest.approx(50.0) and p_thr[0, : 2 * learner.thresholds.bins].sum() > 500
    assert learner.labels_seen(child[None, :])[0] == 2000
    for _ in range(150):  # this tenant calls the same scores safe: its own labels soon decide its threshold
        child = learner.learn_one(child, [0.6, 0.7], label=0.0)
    score = learner.predict_one(child, [0.6, 0.7])
    assert learner.thresholds.f_beta_threshold(learner.split(child[None, :])[2], 1.0)[0] > score


def test_one_class_teaches_no_calibration_and_no_threshold() -> None:
    """Moderators and data sets often label a category only where it is present: a key that has seen one class must
    not turn that into "everything is unsafe"."""
    learner = make_learner(DEFAULT_LEARNER, 2)
    state = learner.init_state()
    for _ in range(200):
        state = learner.learn_one(state, [0.1, 0.2], label=1.0)
    assert not learner.both_classes(state[None, :])[0]
    assert 0.1 <= learner.predict_one(state, [0.1, 0.2]) <= 0.2  # raw scores: no calibration applied
    for _ in range(6):  # (5 labels of discounted mass)
        state = learner.learn_one(state, [0.1, 0.2], label=0.0)
    assert learner.both_classes(state[None, :])[0] and learner.predict_one(state, [0.1, 0.2]) > 0.5

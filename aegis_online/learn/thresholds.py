"""Decision thresholds learned online from labels, for whichever objective the tenant's policy states.

Why: the per-tenant decision boundary is worth as much as the choice of expert (one tenant's "unsafe" is another's
"fine"), and strictness is an objective, not a constant. The state keeps only what every objective needs: the
(discounted) mass of positive and negative labels per score bin of a fixed grid of thresholds. The objective is
applied when a decision is made, so a policy change takes effect at once, on everything learned so far.

Objectives and their guarantees:

* **cost** (``cost_ratio`` = cost of a missed harm / cost of a false alarm): the grid thresholds are experts under
  the cost-weighted 0-1 loss ``(c [missed] + [false alarm]) / max(c, 1)``, weighted exponentially by their
  discounted cumulative loss with the self-tuned rate ``eta = sqrt(8 ln G / m)`` (``m``: the discounted label mass).
  The threshold applied is the weighted median. Without discounting (``window=None``) this is Hedge with the
  anytime rate: the expected loss of drawing a threshold from the weights has regret at most
  ``2 sqrt(T ln(G) / 2) + sqrt(ln(G) / 8)`` against the best grid threshold in hindsight (Cesa-Bianchi and Lugosi,
  *Prediction, Learning, and Games*, Thm 2.3), whatever the labels; the weighted median's loss is at most twice
  that expectation. With a window, old labels fade with a half-life of ``window * ln 2`` labels.
* **min_recall** ``r``: the largest grid threshold ``t`` whose miss count satisfies ``FN(t) + 1 <= (1 - r)(P + 1)``
  (a split-conformal lower quantile of the positives' scores, rounded down to the grid). When positive labels are
  exchangeable, a new harmful item scores at or above ``t`` with probability at least ``r``; with discounting this
  is weighted conformal prediction (Barber, Candes, Ramdas, Tibshirani 2023), whose coverage gap is bounded by the
  drift of the recent distribution.
* **f_beta** ``beta``: the grid threshold with the highest (discounted) empirical F-beta of its decisions, the
  measure moderation teams report (beta > 1 weighs recall more). F-beta is not a sum over items, so no regret
  bound applies; the plug-in choice is consistent: with exchangeable labels each grid threshold's empirical F-beta
  is within ``O(sqrt(ln(G) / n))`` of its expectation for all G at once (Hoeffding and a union bound), so the
  choice approaches the best grid threshold.
* **max_false_positive_rate** ``f``: the smallest grid threshold with ``FP(t) + 1 <= f (N + 1)``: a new safe item is
  flagged with probability at most ``f`` under the same conditions.

State per key: ``[pos_0..pos_G, neg_0..neg_G, n]``: bin ``b`` holds scores with exactly ``b`` grid thresholds at or
below them, and ``n`` counts the labels seen (undiscounted). Pure numpy.

>>> tracker = ThresholdTracker(window=None)
>>> state = tracker.init_states(1)
>>> rng = np.random.default_rng(0)
>>> for _ in range(400):  # unsafe items score ~0.7, safe ones ~0.3
...     y = float(rng.random() < 0.5)
...     state = tracker.learn(state, np.array([0.3 + 0.4 * y + rng.normal(0, 0.05)]), np.array([y]))
>>> 0.35 < float(tracker.cost_threshold(state, 1.0)[0]) < 0.65
True
"""

from __future__ import annotations

import math

import numpy as np

#: Grid thresholds, evenly spaced on the logit scale from 0.0025 to 0.9975 (fine where guards' scores crowd).
GRID: np.ndarray = 1.0 / (1.0 + np.exp(-np.linspace(-6.0, 6.0, 49)))


class ThresholdTracker:
    """Per-bin label mass of a grid of thresholds, and the threshold each objective picks from it."""

    def __init__(self, window: int | None = 1000, grid: np.ndarray = GRID) -> None:
        if window is not None and window < 1:
            raise ValueError(f"window must be >= 1 or None, got {window}")
        self.window = window
        self.grid = np.asarray(grid, dtype=np.float64)
        self.decay = 1.0 if window is None else 1.0 - 1.0 / window

    @property
    def bins(self) -> int:
        return len(self.grid) + 1

    @property
    def state_size(self) -> int:
        return 2 * self.bins + 1

    def init_states(self, n_keys: int) -> np.ndarray:
        return np.zeros((n_keys, self.state_size))

    def labels_seen(self, states: np.ndarray) -> np.ndarray:
        return states[:, -1]

    def learn(self, states: np.ndarray, scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """Add one labelled score per key (a soft label splits its unit of mass); NaN scores change nothing."""
        g = self.bins
        new = states.copy()
        known = np.isfinite(scores)
        new[known, : 2 * g] *= self.decay
        rows = np.flatnonzero(known)
        b = np.searchsorted(self.grid, scores[known], side="right")
        new[rows, b] += labels[known]
        new[rows, g + b] += 1.0 - labels[known]
        new[rows, -1] += 1.0
        return new

    def class_mass(self, states: np.ndarray) -> np.ndarray:
        """Per key, the (discounted) label mass of the positive and of the negative class, ``(B, 2)``."""
        g = self.bins
        return np.stack([states[:, :g].sum(axis=1), states[:, g : 2 * g].sum(axis=1)], axis=1)

    def shrink(self, states: np.ndarray, mass: float) -> np.ndarray:
        """The statistics with their label mass scaled down to at most ``mass`` (the label count is kept)."""
        g = 2 * self.bins
        total = states[:, :g].sum(axis=1, keepdims=True)
        new = states.copy()
        new[:, :g] *= np.minimum(1.0, mass / np.maximum(total, 1e-12))
        return new

    def _misses_and_alarms(self, states: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per key and grid threshold ``j``: label mass of positives below it and of negatives at or above it."""
        g = self.bins
        pos, neg = states[:, :g], states[:, g : 2 * g]
        missed = np.cumsum(pos, axis=1)[:, :-1]  # bins 0..j lie below threshold j
        alarms = np.cumsum(neg[:, ::-1], axis=1)[:, ::-1][:, 1:]  # bins j+1..G lie at or above it
        return missed, alarms

    def threshold_weights(self, states: np.ndarray, cost_ratio: float | np.ndarray) -> np.ndarray:
        """Exponential weights of the grid thresholds under the cost-weighted 0-1 loss, ``(B, G)``."""
        missed, alarms = self._misses_and_alarms(states)
        c = np.broadcast_to(np.asarray(cost_ratio, dtype=np.float64), (states.shape[0],))[:, None]
        loss = (c * missed + alarms) / np.maximum(c, 1.0)
        mass = states[:, : 2 * self.bins].sum(axis=1, keepdims=True)
        eta = np.sqrt(8.0 * math.log(len(self.grid)) / np.maximum(mass, 1.0))
        logits = -eta * (loss - loss.min(axis=1, keepdims=True))
        w = np.exp(logits)
        return w / w.sum(axis=1, keepdims=True)

    def cost_threshold(self, states: np.ndarray, cost_ratio: float | np.ndarray) -> np.ndarray:
        """The weighted-median grid threshold under the cost objective, per key."""
        w = self.threshold_weights(states, cost_ratio)
        median = (np.cumsum(w, axis=1) >= 0.5).argmax(axis=1)
        return self.grid[median]

    def f_beta_threshold(self, states: np.ndarray, beta: float) -> np.ndarray:
        """The grid threshold with the highest empirical F-beta, per key. Ties go to the highest threshold, the one
        with the fewest false alarms: with no positive label yet, every threshold scores 0 and nothing is flagged."""
        missed, alarms = self._misses_and_alarms(states)
        positives = states[:, : self.bins].sum(axis=1, keepdims=True)
        caught = positives - missed
        b2 = beta * beta
        denominator = (1.0 + b2) * caught + b2 * missed + alarms
        score = np.divide((1.0 + b2) * caught, denominator, out=np.zeros_like(caught), where=denominator > 0)
        return self.grid[len(self.grid) - 1 - score[:, ::-1].argmax(axis=1)]

    def recall_threshold(self, states: np.ndarray, min_recall: float) -> np.ndarray:
        """The largest grid threshold meeting ``min_recall`` (conformal, rounded down); NaN when none can be
        certified yet (too few positive labels: fewer than ``1 / (1 - min_recall) - 1``)."""
        missed, _ = self._misses_and_alarms(states)
        positives = states[:, : self.bins].sum(axis=1, keepdims=True)
        ok = missed + 1.0 <= (1.0 - min_recall) * (positives + 1.0) + 1e-9  # (1 - 0.9) * 10 is 0.999...9
        last = len(self.grid) - 1 - ok[:, ::-1].argmax(axis=1)
        return np.where(ok.any(axis=1), self.grid[last], np.nan)

    def false_positive_threshold(self, states: np.ndarray, max_rate: float) -> np.ndarray:
        """The smallest grid threshold meeting ``max_rate``; NaN when none can be certified yet (too few negative
        labels)."""
        _, alarms = self._misses_and_alarms(states)
        negatives = states[:, self.bins : 2 * self.bins].sum(axis=1, keepdims=True)
        ok = alarms + 1.0 <= max_rate * (negatives + 1.0) + 1e-9
        return np.where(ok.any(axis=1), self.grid[ok.argmax(axis=1)], np.nan)

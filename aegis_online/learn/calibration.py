"""Online logistic calibration of each expert's score, so the ensemble can leave the experts' convex hull.

Why: a weighted average of expert probabilities can never score lower than its lowest expert. A tenant whose
moderators call an expert's 0.9 "safe" needs that 0.9 *mapped* to a low probability before it is combined. Platt
scaling does this per expert: ``p' = sigmoid(a * logit(p) + b)``; learning ``(a, b)`` online by projected gradient
descent on the log loss is a convex online problem, so it has a regret bound against the best fixed ``(a, b)``.

Guarantee (Zinkevich 2003; Hazan, *Introduction to Online Convex Optimization*, Thm 3.1): with ``a`` in
``[0, A_MAX]``, ``b`` in ``[-B_MAX, B_MAX]`` (diameter ``D``), logits clipped to ``[-Z_MAX, Z_MAX]`` (gradient norm
at most ``G = sqrt(Z_MAX^2 + 1)``) and step ``D / (G sqrt(t))`` at an expert's ``t``-th label, the log-loss regret of
each expert's calibration after ``T`` labels is at most ``1.5 D G sqrt(T)``. After ``window`` labels the step stays
at ``D / (G sqrt(window))``, so the calibration keeps tracking drift: the regret on every later stretch of
``window`` labels is at most ``D G sqrt(window)``.

State per key: ``[a_1..a_N, b_1..b_N, t_1..t_N]`` (``t``: labels seen by that expert while awake). Pure numpy.

>>> cal = OnlineCalibration(n_experts=1)
>>> state = cal.init_states(1)
>>> for _ in range(300):  # the expert says 0.9; this tenant's moderators say safe
...     state = cal.learn(state, np.array([[0.9]]), np.array([0.0]))
>>> round(float(cal.apply(state, np.array([[0.9]]))[0, 0]), 2) < 0.1
True
"""

from __future__ import annotations

import math

import numpy as np

#: Logits are clipped here (probabilities 0.001 .. 0.999): bounds the gradient, and guards report 0 and 1.
Z_MAX = math.log(999.0)
A_MAX = 3.0
B_MAX = 6.0
DIAMETER = math.hypot(A_MAX, 2 * B_MAX)
GRADIENT_BOUND = math.hypot(Z_MAX, 1.0)


def clipped_logit(p: np.ndarray) -> np.ndarray:
    """``logit(p)`` clipped to ``[-Z_MAX, Z_MAX]``; NaN stays NaN."""
    q = np.clip(p, 1e-3, 1.0 - 1e-3)
    return np.log(q) - np.log1p(-q)


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))


class OnlineCalibration:
    """Per-expert Platt scaling learned by projected online gradient descent on the log loss."""

    def __init__(self, n_experts: int, window: int = 1000) -> None:
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        self.n_experts = n_experts
        self.window = window

    @property
    def state_size(self) -> int:
        return 3 * self.n_experts

    def init_states(self, n_keys: int) -> np.ndarray:
        n = self.n_experts
        state = np.concatenate([np.ones(n), np.zeros(n), np.zeros(n)])
        return np.tile(state, (n_keys, 1))

    def _split(self, states: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        n = self.n_experts
        return states[:, :n], states[:, n : 2 * n], states[:, 2 * n :]

    def apply(self, states: np.ndarray, outputs: np.ndarray) -> np.ndarray:
        """Calibrated outputs ``(B, N)``; NaN (an expert that did not answer) stays NaN."""
        a, b, _ = self._split(states)
        return sigmoid(a * clipped_logit(outputs) + b)

    def regret_bound(self, labels: int) -> float:
        """Worst-case log-loss regret of one expert's calibration after ``labels`` labels (within the window)."""
        return 1.5 * DIAMETER * GRADIENT_BOUND * math.sqrt(labels)

    def learn(self, states: np.ndarray, outputs: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """One gradient step per awake expert of each key, toward the label in [0, 1]."""
        a, b, t = self._split(states)
        awake = np.isfinite(outputs)
        z = np.where(awake, clipped_logit(np.where(awake, outputs, 0.5)), 0.0)
        error = sigmoid(a * z + b) - labels[:, None]  # d(log loss)/d(a z + b)
        seen = t + awake
        step = DIAMETER / (GRADIENT_BOUND * np.sqrt(np.clip(seen, 1.0, self.window)))
        step = np.where(awake, step, 0.0)
        new_a = np.clip(a - step * error * z, 0.0, A_MAX)
        new_b = np.clip(b - step * error, -B_MAX, B_MAX)
        return np.concatenate([new_a, new_b, seen], axis=1)

"""Fixed-Share: Hedge that shares a little weight every round, so it tracks the best expert through drift."""

from __future__ import annotations

import math

import numpy as np

from aegis_online.learn.base import Learner


def fixed_share_mix(weights: np.ndarray, decay: np.ndarray, alpha: float | np.ndarray) -> np.ndarray:
    """One Fixed-Share round on weights: ``(1 - alpha) w d / sum(w d) + alpha / N``, normalised.

    ``decay`` is ``exp(-eta l)``; both broadcast, so the default learner steps a whole grid of copies at once and
    computes ``decay`` once per ``eta``. Working on weights is exact here: the share step keeps every weight at or
    above ``alpha / N`` and ``decay`` is at least ``exp(-eta)``, so nothing can underflow.
    """
    n = weights.shape[-1]
    shifted = weights * decay
    shifted *= (1.0 - alpha) / np.einsum("...n->...", shifted)[..., None]
    shifted += alpha / n
    return shifted


def fixed_share_step(weights: np.ndarray, decay: np.ndarray, alpha: float | np.ndarray) -> np.ndarray:
    """``fixed_share_mix`` as normalised log-weights (``FixedShare`` keeps its state in log space)."""
    shifted = fixed_share_mix(weights, decay, alpha)
    return np.log(shifted, out=shifted)


class FixedShare(Learner):
    """Fixed-Share (Herbster and Warmuth, 1998): after the Hedge step, ``w <- (1 - alpha) w + alpha / N``.

    State: the N normalised log-weights. Against any sequence of experts with ``m`` switches over ``T`` rounds
    (losses in [0, 1]): ``regret <= ((m + 1) ln N + m ln(1/alpha) + (T - m - 1) ln(1/(1 - alpha))) / eta
    + eta T / 8``; with ``m = 0`` that is the bound against the best fixed expert.

    >>> learner = FixedShare(n_experts=2, eta=2.0, alpha=0.01)
    >>> state = learner.init_state()
    >>> for _ in range(200):
    ...     state = learner.learn_one(state, [0.9, 0.1], label=1.0)
    >>> for _ in range(40):
    ...     state = learner.learn_one(state, [0.9, 0.1], label=0.0)
    >>> int(np.argmax(learner.weights(state)))
    1
    """

    name = "fixed-share"

    def __init__(self, n_experts: int, loss: str = "squared", eta: float = 2.0, alpha: float = 0.005) -> None:
        super().__init__(n_experts, loss)
        if not 0 < eta <= 32:
            raise ValueError(f"eta must lie in (0, 32], got {eta}")
        if not 0.0 < alpha < 1.0:
            raise ValueError(f"alpha must lie in (0, 1), got {alpha} (alpha = 0 is Hedge: use the hedge learner)")
        self.eta = eta
        self.alpha = alpha

    @property
    def state_size(self) -> int:
        return self.n_experts

    def _initial_state(self) -> np.ndarray:
        return np.full(self.n_experts, -math.log(self.n_experts))

    def regret_bound(self, horizon: int, switches: int = 0) -> float:
        """Worst-case regret against the best sequence of experts with ``switches`` switches."""
        n, m, a = self.n_experts, switches, self.alpha
        share_cost = m * math.log(1.0 / a) if m else 0.0
        stay_cost = (horizon - m - 1) * -math.log1p(-a)
        return ((m + 1) * math.log(n) + share_cost + stay_cost) / self.eta + self.eta * horizon / 8.0

    def _log_weights(self, states: np.ndarray) -> np.ndarray:
        return states

    def _update(self, states: np.ndarray, losses: np.ndarray) -> np.ndarray:
        return fixed_share_step(np.exp(states), np.exp(-self.eta * losses), self.alpha)

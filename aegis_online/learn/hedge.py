"""Hedge (exponential weights) with an anytime learning rate."""

from __future__ import annotations

import math

import numpy as np

from aegis_online.learn.base import Learner, normalise_log


class Hedge(Learner):
    """Exponentially weighted average forecaster, ``w_i ∝ exp(-eta_t L_i)``.

    State: ``[t, L_1..L_N]`` (rounds seen, cumulative losses). With ``eta=None`` the rate is
    ``eta_t = sqrt(8 ln N / t)``, which needs no horizon and guarantees, for losses in [0, 1],
    ``regret_T <= 2 sqrt(T ln N / 2) + sqrt(ln N / 8)`` against the best fixed expert
    (Cesa-Bianchi and Lugosi, *Prediction, Learning, and Games*, 2006, Theorem 2.3). With a fixed ``eta``:
    ``regret_T <= ln N / eta + eta T / 8``.

    It competes with the best *fixed* expert only: after a swap of expert quality it needs as many rounds to
    recover as the old leader spent building its lead (use ``FixedShare`` or the default to track drift).
    Weights come from cumulative losses through a log-space softmax, so a far-behind expert keeps a finite
    log-weight and does recover.

    >>> learner = Hedge(n_experts=3)
    >>> state = learner.init_state()
    >>> state = learner.learn_one(state, [0.9, 0.5, 0.1], label=1.0)
    >>> int(np.argmax(learner.weights(state)))
    0
    """

    name = "hedge"

    def __init__(self, n_experts: int, loss: str = "squared", eta: float | None = None) -> None:
        super().__init__(n_experts, loss)
        if eta is not None and eta <= 0:
            raise ValueError(f"eta must be > 0, got {eta}")
        self.eta = eta

    @property
    def state_size(self) -> int:
        return 1 + self.n_experts

    def _initial_state(self) -> np.ndarray:
        return np.zeros(self.state_size)

    def learning_rate(self, rounds_seen: np.ndarray) -> np.ndarray:
        """Rate used for the next round after ``rounds_seen`` updates."""
        if self.eta is not None:
            return np.full_like(rounds_seen, self.eta)
        return np.sqrt(8.0 * math.log(max(self.n_experts, 2)) / (rounds_seen + 1.0))

    def regret_bound(self, horizon: int) -> float:
        """Worst-case regret after ``horizon`` rounds against the best fixed expert (losses in [0, 1])."""
        log_n = math.log(self.n_experts)
        if self.eta is not None:
            return log_n / self.eta + self.eta * horizon / 8.0
        return 2.0 * math.sqrt(horizon * log_n / 2.0) + math.sqrt(log_n / 8.0)

    def _log_weights(self, states: np.ndarray) -> np.ndarray:
        eta = self.learning_rate(states[:, :1])
        return normalise_log(-eta * states[:, 1:])

    def _update(self, states: np.ndarray, losses: np.ndarray) -> np.ndarray:
        new = states.copy()
        new[:, 0] += 1.0
        new[:, 1:] += losses
        return new

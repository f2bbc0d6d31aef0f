"""AdaNormalHedge: parameter-free weights from each expert's cumulative regret and its magnitude."""

from __future__ import annotations

import math

import numpy as np

from aegis_online.learn.base import Learner, normalise_log, row_max

_LOG_HALF = math.log(0.5)


class AdaNormalHedge(Learner):
    """AdaNormalHedge (Luo and Schapire, 2015), uniform prior.

    State: ``[R_1..R_N, C_1..C_N]``, cumulative regret to each expert and cumulative absolute regret. The weight
    is ``w(R, C) = (Phi(R + 1, C + 1) - Phi(R - 1, C + 1)) / 2`` with ``Phi(R, C) = exp([R]_+^2 / (3C))``,
    evaluated in log space (``Phi`` alone overflows after a few hundred rounds). Guarantee (their Theorem 1, with
    ``C_T <= T``): ``regret_T <= sqrt(3 T (ln N + ln B + ln(1 + ln N)))``, ``B = 5/2 + 3/2 ln(1 + T)``; it needs
    no learning rate and is nearly constant on stochastic data. A sleeping expert has zero instantaneous regret,
    which is exactly the paper's sleeping-experts form. Competes with the best fixed expert.

    >>> learner = AdaNormalHedge(n_experts=2)
    >>> state = learner.init_state()
    >>> for _ in range(30):
    ...     state = learner.learn_one(state, [0.9, 0.2], label=1.0)
    >>> bool(learner.weights(state)[0] > 0.9)
    True
    """

    name = "adanormalhedge"

    @property
    def state_size(self) -> int:
        return 2 * self.n_experts

    def _initial_state(self) -> np.ndarray:
        return np.zeros(self.state_size)

    def regret_bound(self, horizon: int) -> float:
        """Worst-case regret after ``horizon`` rounds against the best fixed expert (losses in [0, 1])."""
        log_n = math.log(self.n_experts)
        b = 2.5 + 1.5 * math.log1p(horizon)
        return math.sqrt(3.0 * horizon * (log_n + math.log(b) + math.log1p(log_n)))

    def _log_weights(self, states: np.ndarray) -> np.ndarray:
        n = self.n_experts
        regret, magnitude = states[:, :n], states[:, n:]
        denominator = 3.0 * (magnitude + 1.0)
        upper = np.square(np.maximum(regret + 1.0, 0.0)) / denominator
        lower = np.square(np.maximum(regret - 1.0, 0.0)) / denominator
        with np.errstate(divide="ignore"):
            # log((e^upper - e^lower) / 2) = log(1/2) + upper + log(1 - e^(lower - upper)); -inf where upper == 0.
            log_w = np.where(upper > 0, _LOG_HALF + upper + np.log(-np.expm1(lower - upper)), -np.inf)
        # Nobody has positive weight (every expert ahead of the learner by >= 1): predict uniformly.
        log_w = np.where(row_max(log_w) > -np.inf, log_w, 0.0)
        return normalise_log(log_w)

    def _update(self, states: np.ndarray, losses: np.ndarray) -> np.ndarray:
        n = self.n_experts
        weights = np.exp(self._log_weights(states))
        instant = np.einsum("bn,bn->b", weights, losses)[:, None] - losses
        new = states.copy()
        new[:, :n] += instant
        new[:, n:] += np.abs(instant)
        return new

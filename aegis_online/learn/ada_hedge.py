"""AdaHedge: Hedge whose learning rate is set from the observed mixability gap, with no parameters."""

from __future__ import annotations

import math

import numpy as np

from aegis_online.learn.base import Learner, logsumexp, normalise_log, row_max

#: Stands in for a zero gap: ``eta = ln K / tiny`` is so large that the weights are follow-the-leader's, while
#: every product stays finite for cumulative losses up to ~1e27 (no special case, no inf arithmetic).
_TINY_GAP = 1e-280


def ada_hedge_rate(delta: np.ndarray, n_experts: int) -> np.ndarray:
    """AdaHedge's learning rate ``ln K / Delta`` (effectively infinite, i.e. follow the leader, at Delta = 0)."""
    return math.log(max(n_experts, 2)) / np.maximum(delta, _TINY_GAP)


def ada_hedge_log_weights(delta: np.ndarray, cumulative: np.ndarray) -> np.ndarray:
    """AdaHedge's log-weights from its cumulative gap ``delta`` ``(B, 1)`` and losses ``(B, K)``."""
    eta = ada_hedge_rate(delta, cumulative.shape[-1])
    return normalise_log(-eta * (cumulative + row_max(-cumulative)))


def ada_hedge_gap(log_weights: np.ndarray, losses: np.ndarray, delta: np.ndarray) -> np.ndarray:
    """Mixability gap of one round, ``h - m >= 0``: expected loss minus mix loss, shape ``(B, 1)``."""
    eta = ada_hedge_rate(delta, losses.shape[-1])
    expected = np.einsum("bk,bk->b", np.exp(log_weights), losses)[:, None]
    mix = -logsumexp(log_weights - eta * losses) / eta
    return np.maximum(expected - mix, 0.0)


class AdaHedge(Learner):
    """AdaHedge (de Rooij, van Erven, Grünwald and Koolen, 2014): ``eta_t = ln N / Delta_t``.

    State: ``[Delta, L_1..L_N]``, the cumulative mixability gap and cumulative losses. For losses in [0, 1]:
    ``regret_T <= 2 sqrt(ln N * L*(T - L*)/T) + 16/3 ln N + 2 <= sqrt(T ln N) + 16/3 ln N + 2`` (their
    Theorem 8), and far less when one expert is clearly best. Competes with the best fixed expert only; the
    default learner uses it to aggregate Fixed-Share copies.

    >>> learner = AdaHedge(n_experts=2)
    >>> state = learner.init_state()
    >>> for _ in range(20):
    ...     state = learner.learn_one(state, [0.8, 0.3], label=1.0)
    >>> bool(learner.weights(state)[0] > 0.99)
    True
    """

    name = "adahedge"

    @property
    def state_size(self) -> int:
        return 1 + self.n_experts

    def _initial_state(self) -> np.ndarray:
        return np.zeros(self.state_size)

    def regret_bound(self, horizon: int) -> float:
        """Worst-case regret after ``horizon`` rounds against the best fixed expert (losses in [0, 1])."""
        log_n = math.log(self.n_experts)
        return math.sqrt(horizon * log_n) + 16.0 / 3.0 * log_n + 2.0

    def _log_weights(self, states: np.ndarray) -> np.ndarray:
        return ada_hedge_log_weights(states[:, :1], states[:, 1:])

    def _update(self, states: np.ndarray, losses: np.ndarray) -> np.ndarray:
        new = states.copy()
        new[:, :1] += ada_hedge_gap(self._log_weights(states), losses, states[:, :1])
        new[:, 1:] += losses
        return new

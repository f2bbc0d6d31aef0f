"""The default learner: a grid of Fixed-Share copies aggregated by AdaHedge, so nothing needs tuning."""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import numpy as np

from aegis_online.learn.ada_hedge import ada_hedge_gap, ada_hedge_log_weights
from aegis_online.learn.base import Learner
from aegis_online.learn.fixed_share import FixedShare, fixed_share_mix

#: Learning rates from slow (worst-case optimal at T ~ 10^5) to fast (recovers from a swap in tens of rounds).
DEFAULT_ETAS: tuple[float, ...] = (1 / 64, 1 / 8, 1 / 2, 2.0, 8.0)
#: Share rates from "almost never switches" to "expects a switch every few hundred rounds".
DEFAULT_ALPHAS: tuple[float, ...] = (1e-4, 1e-3, 1e-2)


class FixedShareGrid(Learner):
    """Fixed-Share copies on an (eta, alpha) grid, combined by AdaHedge on the copies' expected losses.

    Why: Hedge-type rules only compete with the best *fixed* expert, and after a drift they stay with the old
    leader for as long as it took to build its lead. Fixed-Share tracks the best *sequence* of experts but needs
    ``eta`` and ``alpha``; running a small grid and letting AdaHedge (parameter-free) pick among the copies gives
    the tracking without tuning (the approach of opera, Gaillard and Goude).

    Guarantee: for losses in [0, 1], against the best fixed expert and against any sequence with ``m`` switches,
    ``regret <= min_k FixedShare_k bound + sqrt(T ln K) + 16/3 ln K + 2`` with ``K`` copies (AdaHedge's bound
    against the best copy, plus that copy's bound). State: ``[Delta, L_1..L_K, w_(1,1)..w_(K,N)]``,
    ``1 + K + K N`` floats (91 for the default 15 copies and 5 experts). The copies keep plain weights, not logs:
    the share step holds each at or above ``alpha / N`` (>= 2e-5 here), so they cannot underflow, and an update
    then needs no ``exp`` or ``log`` per copy-weight, only one ``exp`` per (eta, expert) for the decay.

    >>> learner = FixedShareGrid(n_experts=2)
    >>> state = learner.init_state()
    >>> for _ in range(300):
    ...     state = learner.learn_one(state, [0.9, 0.1], label=1.0)
    >>> for _ in range(60):
    ...     state = learner.learn_one(state, [0.9, 0.1], label=0.0)
    >>> int(np.argmax(learner.weights(state)))
    1
    """

    name = "default"

    def __init__(
        self,
        n_experts: int,
        loss: str = "squared",
        etas: Sequence[float] = DEFAULT_ETAS,
        alphas: Sequence[float] = DEFAULT_ALPHAS,
    ) -> None:
        super().__init__(n_experts, loss)
        grid = list(itertools.product(etas, alphas))
        if not grid:
            raise ValueError("the (eta, alpha) grid must not be empty")
        self.copies = [FixedShare(n_experts, loss, eta=eta, alpha=alpha) for eta, alpha in grid]
        # Copies are laid out (eta, alpha)-major, so the state reshapes to (B, n_eta, n_alpha, N) and exp(-eta l)
        # is computed once per eta, shared by its alphas.
        self._eta_column = np.array(list(etas), dtype=np.float64)[None, :, None, None]
        self._alpha_grid = np.array(list(alphas), dtype=np.float64)[None, None, :, None]
        self.n_copies = len(self.copies)
        #: the copy that ``ranking_weights`` reads: the largest eta, the smallest alpha
        self.fastest = int(np.argmax(etas)) * len(alphas) + int(np.argmin(alphas))

    @property
    def state_size(self) -> int:
        return 1 + self.n_copies + self.n_copies * self.n_experts

    def _initial_state(self) -> np.ndarray:
        copies = np.full(self.n_copies * self.n_experts, 1.0 / self.n_experts)
        return np.concatenate([np.zeros(1 + self.n_copies), copies])

    def regret_bound(self, horizon: int, switches: int = 0) -> float:
        """Worst-case regret against the best sequence of experts with ``switches`` switches."""
        best_copy = min(c.regret_bound(horizon, switches) for c in self.copies)
        log_k = math.log(max(self.n_copies, 2))
        return best_copy + math.sqrt(horizon * log_k) + 16.0 / 3.0 * log_k + 2.0

    def _split(self, states: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        k = self.n_copies
        copies = states[:, 1 + k :].reshape(states.shape[0], k, self.n_experts)
        return states[:, :1], states[:, 1 : 1 + k], copies

    def _grid(self, copies: np.ndarray) -> np.ndarray:
        return copies.reshape(copies.shape[0], self._eta_column.shape[1], self._alpha_grid.shape[2], self.n_experts)

    def _log_weights(self, states: np.ndarray) -> np.ndarray:
        delta, cumulative, copies = self._split(states)
        meta = ada_hedge_log_weights(delta, cumulative)
        # Copies' weights are >= alpha / N and the meta weights sum to 1: the mixture is safe to take the log of.
        return np.log(np.einsum("bk,bkn->bn", np.exp(meta), copies))

    def _ranking_weights(self, states: np.ndarray) -> np.ndarray:
        """The fastest copy's weights (largest eta; smallest alpha, so the least spread over the others).

        Why: the AdaHedge mixture is chosen for the combined score's loss, and after the best expert changes it
        keeps trusting the slow copies, whose weights change hands hundreds of rounds after the experts' recent
        losses do. Ranking experts for a choice of one (the cascade's expensive expert) needs the recent order
        only; the combination keeps the mixture's weights and its guarantee.

        >>> rng = np.random.default_rng(0)
        >>> def noisy(y, sd):  # a score near the label y
        ...     return float(np.clip(y + rng.normal(0.0, sd), 0.0, 1.0))
        >>> learner = FixedShareGrid(n_experts=2)
        >>> state = learner.init_state()
        >>> for t in range(3051):  # expert 0 is the better one, then expert 1 from round 3000 on
        ...     y = float(rng.random() < 0.5)
        ...     good, bad = noisy(y, 0.3), noisy(y, 0.45)
        ...     state = learner.learn_one(state, [good, bad] if t < 3000 else [bad, good], label=y)
        >>> int(np.argmax(learner.weights(state))), int(np.argmax(learner.ranking_weights(state)))
        (0, 1)
        """
        return self._split(states)[2][:, self.fastest]

    def _update(self, states: np.ndarray, losses: np.ndarray) -> np.ndarray:
        delta, cumulative, weights = self._split(states)
        copy_losses = np.einsum("bkn,bn->bk", weights, losses)
        gap = ada_hedge_gap(ada_hedge_log_weights(delta, cumulative), copy_losses, delta)
        decay = np.exp(-self._eta_column * losses[:, None, None, :])
        stepped = fixed_share_mix(self._grid(weights), decay, self._alpha_grid)
        return np.concatenate([delta + gap, cumulative + copy_losses, stepped.reshape(states.shape[0], -1)], axis=1)

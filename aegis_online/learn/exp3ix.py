"""Exp3-IX for bandit mode: query only k of N experts per request and learn from what was queried."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from aegis_online.learn.base import Learner, _awake_mask, _check_batch, normalise_log


def ix_loss_estimate(
    losses: np.ndarray, observed: np.ndarray, propensities: np.ndarray, gamma: float | np.ndarray
) -> np.ndarray:
    """Implicit-exploration estimate ``l_i 1[i observed] / (q_i + gamma)``.

    With ``gamma = 0`` it is the unbiased importance-weighted estimate; ``gamma > 0`` shrinks it by
    ``q / (q + gamma)``, an optimistic bias that buys high-probability regret bounds (Neu, 2015).
    """
    return np.where(observed, losses / (propensities + gamma), 0.0)


def inclusion_probabilities(weights: np.ndarray, budget: float) -> np.ndarray:
    """Marginal inclusion probabilities proportional to ``weights``, capped at 1, summing to ``budget``.

    Water-filling: experts whose share would exceed 1 are capped and the rest rescaled, until none exceeds 1.
    """
    weights = np.asarray(weights, dtype=np.float64)
    probs = np.zeros_like(weights)
    free = weights > 0
    remaining = float(budget)
    while remaining > 0 and free.any():
        share = remaining * weights / weights[free].sum()
        over = free & (share >= 1.0)
        if not over.any():
            probs[free] = share[free]
            break
        probs[over] = 1.0
        free &= ~over
        remaining = budget - probs.sum()
    return probs


def systematic_sample(inclusion: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Choose a subset whose marginal inclusion probabilities are exactly ``inclusion`` (Madow's sampling)."""
    edges = np.concatenate([[0.0], np.cumsum(inclusion)])
    picks = rng.random() + np.arange(round(edges[-1]))
    chosen = np.zeros(inclusion.shape, dtype=bool)
    # Clip: a draw within rounding of the last edge must still land on the last expert.
    chosen[np.minimum(np.searchsorted(edges, picks, side="right") - 1, len(inclusion) - 1)] = True
    return chosen


class Exp3IX(Learner):
    """Exp3 with Implicit eXploration (Neu, 2015), generalised to querying ``k`` of ``N`` experts.

    State: ``[t, Lhat_1..Lhat_N]``, rounds and cumulative loss estimates. At request time ``select`` samples the
    experts to query (``always`` ones, e.g. a cheap CPU expert, with probability 1; the rest by water-filled
    weights mixed with a uniform ``floor``) and returns each expert's selection probability, which the caller must
    store with the prediction. At learn time the queried experts' losses are importance-weighted with those
    stored probabilities: the selection is never recomputed. ``eta`` is ``sqrt(2 ln N / (N T))`` for a known
    ``horizon`` (then, with one expert queried per round and probability >= 1 - delta,
    ``regret <= 4 sqrt(2 N T ln N) + (sqrt(2 N T / ln N) + 1) ln(2 / delta)``, Neu's Theorem 1) and
    ``sqrt(2 ln N / (N t))`` otherwise; ``gamma = eta / 2``.

    >>> learner = Exp3IX(n_experts=3)
    >>> rng = np.random.default_rng(0)
    >>> chosen, probs = learner.select(learner.init_state(), k=2, rng=rng, always=[0])
    >>> bool(chosen[0]), float(probs[0]), int(chosen.sum()), round(float(probs.sum()), 6)
    (True, 1.0, 2, 2.0)
    """

    name = "exp3-ix"
    bandit = True

    def __init__(self, n_experts: int, loss: str = "squared", horizon: int | None = None, floor: float = 0.01) -> None:
        super().__init__(n_experts, loss)
        if horizon is not None and horizon < 1:
            raise ValueError(f"horizon must be >= 1, got {horizon}")
        if not 0.0 <= floor < 1.0:
            raise ValueError(f"floor must lie in [0, 1), got {floor}")
        self.horizon = horizon
        self.floor = floor

    @property
    def state_size(self) -> int:
        return 1 + self.n_experts

    def _initial_state(self) -> np.ndarray:
        return np.zeros(self.state_size)

    def learning_rate(self, rounds_seen: np.ndarray) -> np.ndarray:
        log_n, n = math.log(max(self.n_experts, 2)), self.n_experts
        if self.horizon is not None:
            return np.full_like(rounds_seen, math.sqrt(2.0 * log_n / (n * self.horizon)))
        return np.sqrt(2.0 * log_n / (n * (rounds_seen + 1.0)))

    def regret_bound(self, horizon: int, delta: float = 0.01) -> float:
        """High-probability regret bound with one expert queried per round (Neu 2015, Theorem 1).

        Plus ``floor * T``: mixing a uniform ``floor`` into the selection costs at most that much (losses <= 1).
        """
        n, log_n = self.n_experts, math.log(self.n_experts)
        neu = 4.0 * math.sqrt(2.0 * n * horizon * log_n) + (math.sqrt(2.0 * n * horizon / log_n) + 1.0) * math.log(
            2.0 / delta
        )
        return neu + self.floor * horizon

    def _log_weights(self, states: np.ndarray) -> np.ndarray:
        return normalise_log(-self.learning_rate(states[:, :1]) * states[:, 1:])

    def _update(self, states: np.ndarray, losses: np.ndarray) -> np.ndarray:
        raise NotImplementedError("Exp3IX learns through learn_many with propensities")

    def select(
        self, state: np.ndarray, k: int, rng: np.random.Generator, always: Sequence[int] = ()
    ) -> tuple[np.ndarray, np.ndarray]:
        """Experts to query for one request and their selection probabilities (store both with the prediction)."""
        n = self.n_experts
        if not 1 <= k <= n:
            raise ValueError(f"k must lie in [1, {n}], got {k}")
        forced = np.zeros(n, dtype=bool)
        forced[list(always)] = True
        if forced.sum() > k:
            raise ValueError(f"{int(forced.sum())} always-queried experts exceed k={k}")
        mixed = (1.0 - self.floor) * self.weights(state) + self.floor / n
        probs = np.ones(n)
        probs[~forced] = inclusion_probabilities(mixed[~forced], k - forced.sum())
        chosen = forced.copy()
        chosen[~forced] = systematic_sample(probs[~forced], rng)
        return chosen, probs

    def learn_many(
        self,
        states: np.ndarray,
        outputs: np.ndarray,
        labels: np.ndarray,
        awake: np.ndarray | None = None,
        propensities: np.ndarray | None = None,
    ) -> np.ndarray:
        """Importance-weighted update from the queried (awake) experts and their stored selection probabilities."""
        if propensities is None:
            raise ValueError("Exp3IX needs the selection probabilities recorded at request time (propensities)")
        states = np.asarray(states, dtype=np.float64)
        outputs = np.asarray(outputs, dtype=np.float64)
        labels = np.asarray(labels, dtype=np.float64)
        propensities = np.asarray(propensities, dtype=np.float64)
        observed = _awake_mask(outputs, awake)
        _check_batch(states, outputs, labels, self.state_size, self.n_experts)
        if np.any(observed & ~(propensities > 0)):
            raise ValueError("every queried expert needs a selection probability > 0")
        losses = self.loss(np.where(observed, outputs, 0.0), labels[:, None])
        gamma = self.learning_rate(states[:, :1]) / 2.0
        new = states.copy()
        new[:, 0] += observed.any(axis=1)  # a round where nothing was observed leaves the row unchanged
        new[:, 1:] += ix_loss_estimate(losses, observed, np.where(observed, propensities, 1.0), gamma)
        return new

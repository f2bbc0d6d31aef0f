"""Combine the awake experts' probabilities with the learned weights, per category. Pure numpy."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from aegis_online.learn import Learner


@dataclass(frozen=True)
class Combination:
    """Per-category ensemble risk and the weight each expert had in it.

    ``scores[c]`` is NaN when no expert covering category ``c`` answered; ``weights[c, i]`` is 0 for an expert
    that was asleep for ``c`` and the weights of the awake experts sum to 1.
    """

    scores: np.ndarray
    weights: np.ndarray


def combine(learner: Learner, states: np.ndarray, outputs: np.ndarray) -> Combination:
    """Weighted combination of expert outputs ``(C, N)`` (NaN: asleep) under learner states ``(C, S)``, after the
    learner's calibration of each expert (``Learner.calibrate``).

    >>> from aegis_online.learn import Hedge
    >>> learner = Hedge(n_experts=2)
    >>> out = np.array([[0.2, 0.6], [np.nan, 0.9]])
    >>> c = combine(learner, learner.init_states(2), out)
    >>> c.scores.round(2).tolist(), c.weights.tolist()
    ([0.4, 0.9], [[0.5, 0.5], [0.0, 1.0]])
    """
    outputs = learner.calibrate(states, outputs)
    awake = np.isfinite(outputs)
    weights = learner.combination_weights(states, awake)
    scores = np.einsum("cn,cn->c", weights, np.where(awake, outputs, 0.0))
    return Combination(scores=np.where(awake.any(axis=1), scores, np.nan), weights=weights)

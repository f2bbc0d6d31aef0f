"""Losses of an expert's probability against a feedback label, both in [0, 1].

Every loss here is bounded in [0, 1] so that the regret bounds of the learners hold with their textbook constants.
Squared (Brier) loss is the default: human feedback is noisy, and log loss punishes a confident expert without
bound when a label is flipped (field notes, section 3).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

LossFn = Callable[[np.ndarray, np.ndarray], np.ndarray]

LOG_LOSS_EPS = 1e-3


def squared_loss(probabilities: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Brier loss ``(p - y)^2``; ``labels`` broadcast against ``probabilities``.

    >>> float(squared_loss(np.array(0.75), np.array(1.0)))
    0.0625
    """
    return np.square(probabilities - labels)


def clipped_log_loss(probabilities: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Cross-entropy with p clipped to [eps, 1 - eps], divided by ``-ln eps`` so that it lies in [0, 1].

    Clipping bounds the damage of one confidently wrong answer; the scaling keeps the bounds' constants.

    >>> round(float(clipped_log_loss(np.array(0.0), np.array(1.0))), 6)
    1.0
    """
    p = np.clip(probabilities, LOG_LOSS_EPS, 1.0 - LOG_LOSS_EPS)
    return -(labels * np.log(p) + (1.0 - labels) * np.log1p(-p)) / -np.log(LOG_LOSS_EPS)


LOSSES: dict[str, LossFn] = {"squared": squared_loss, "log": clipped_log_loss}


def loss_function(name: str) -> LossFn:
    """Look a loss up by its configuration name."""
    try:
        return LOSSES[name]
    except KeyError:
        raise ValueError(f"unknown loss {name!r}; choose one of {sorted(LOSSES)}") from None

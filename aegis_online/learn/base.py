"""The one interface every online learner implements, and the sleeping-expert rule they all share.

A learner is a set of hyper-parameters; its state for one (scope, category) key is a small float64 vector that
a store can hold. Every method is a pure function of (state, stored expert outputs, label): nothing is recomputed at
learn time, so delayed and out-of-order feedback is fine. Methods take a batch of independent keys, shape
``(B, state_size)``; the ``*_one`` forms wrap a batch of one.

Sleeping experts: an expert whose output is NaN (or masked out by ``awake``) did not answer. It is left out of the
prediction (the awake experts' weights are renormalised) and out of the update: it is charged the learner's own
expected loss on that round, so its regret to the learner does not move (the "specialists" reduction of Freund,
Schapire, Singer and Warmuth, 1997; AdaNormalHedge's sleeping-expert form, Luo and Schapire, 2015).

This module imports numpy and scipy only: no I/O, no pydantic.
"""

from __future__ import annotations

import abc
import functools
from typing import ClassVar

import numpy as np

from aegis_online.learn.losses import LossFn, loss_function


def row_max(values: np.ndarray) -> np.ndarray:
    """Maximum over the last (short) axis, keepdims.

    numpy's reduction along a short last axis is slow per row; a pairwise ``np.maximum`` loop over the columns is
    ~10x faster on many rows, while on a few rows the loop's per-call overhead dominates and the reduction wins.
    """
    width = values.shape[-1]
    if width > 16 or (width > 4 and values.size < 1024):
        return values.max(axis=-1, keepdims=True)
    top = values[..., :1]
    for i in range(1, width):
        top = np.maximum(top, values[..., i : i + 1])
    return top


def logsumexp(values: np.ndarray) -> np.ndarray:
    """Stable ``log(sum(exp(values)))`` over the last axis, keepdims (scipy's costs ~10x more per small call)."""
    top = row_max(values)
    top = np.where(top > -np.inf, top, 0.0)
    return np.log(np.exp(values - top).sum(axis=-1, keepdims=True)) + top


def normalise_log(log_weights: np.ndarray) -> np.ndarray:
    """Subtract the row-wise logsumexp: log-weights stay finite however far an expert falls behind."""
    return log_weights - logsumexp(log_weights)


def awake_weights(log_weights: np.ndarray, awake: np.ndarray) -> np.ndarray:
    """Probability weights over the awake experts only; a row with nobody awake is all zeros."""
    masked = np.where(awake, log_weights, -np.inf)
    top = row_max(masked)
    raw = np.exp(masked - np.where(top > -np.inf, top, 0.0))
    total = raw.sum(axis=-1, keepdims=True)
    return np.divide(raw, total, out=np.zeros_like(raw), where=total > 0)


class Learner(abc.ABC):
    """Online aggregation of ``n_experts`` probability forecasts for one binary risk category.

    Subclasses implement ``state_size``, ``_initial_state``, ``_log_weights`` (normalised, shape ``(B, N)``) and
    ``_update`` (from a loss matrix that already applies the sleeping-expert rule).
    """

    name: ClassVar[str]
    #: True when the learner sees only the experts it chose to query (bandit feedback).
    bandit: ClassVar[bool] = False

    def __init__(self, n_experts: int, loss: str = "squared") -> None:
        if n_experts < 1:
            raise ValueError(f"n_experts must be >= 1, got {n_experts}")
        self.n_experts = n_experts
        self.loss_name = loss
        self.loss: LossFn = loss_function(loss)

    # -- what subclasses provide -------------------------------------------------------------------------------
    @property
    @abc.abstractmethod
    def state_size(self) -> int:
        """Length of the state vector of one key."""

    @abc.abstractmethod
    def _initial_state(self) -> np.ndarray:
        """State of a key that has seen no feedback."""

    @abc.abstractmethod
    def _log_weights(self, states: np.ndarray) -> np.ndarray:
        """Normalised log-weights over the experts, shape ``(B, N)``."""

    @abc.abstractmethod
    def _update(self, states: np.ndarray, losses: np.ndarray) -> np.ndarray:
        """New states from per-expert losses ``(B, N)`` in which sleeping experts already carry the learner's loss."""

    # -- the public interface ----------------------------------------------------------------------------------
    def init_states(self, n_keys: int = 1) -> np.ndarray:
        """States of ``n_keys`` fresh keys, shape ``(n_keys, state_size)``."""
        return np.tile(self._fresh_state, (n_keys, 1))

    def init_state(self) -> np.ndarray:
        """State of one fresh key."""
        return self._fresh_state.copy()

    @functools.cached_property
    def _fresh_state(self) -> np.ndarray:
        """``_initial_state``, built once: the request path fills every key without feedback from it, and a
        learner's parameters do not change after construction. Read-only, so no caller can alter the cache."""
        state = np.asarray(self._initial_state(), dtype=np.float64)
        state.flags.writeable = False
        return state

    def log_weights(self, states: np.ndarray) -> np.ndarray:
        """Normalised log-weights; accepts one state ``(S,)`` or a batch ``(B, S)``."""
        states = np.asarray(states, dtype=np.float64)
        if states.ndim == 1:
            return self._log_weights(states[None, :])[0]
        return self._log_weights(states)

    def weights(self, states: np.ndarray) -> np.ndarray:
        """Probability weights over all experts (as if all were awake)."""
        return np.exp(self.log_weights(states))

    def ranking_weights(self, states: np.ndarray) -> np.ndarray:
        """The weights ``(B, N)`` that rank the experts when only some of them can be called (a cascade's choice of
        expensive expert): ``weights`` here. ``FixedShareGrid`` answers with its fastest copy's: choosing one expert
        is an argmax, and after a swap of the best expert the combination's weights change hands later than the
        experts' recent losses say (docs/cascade.md, "Which guard"). Accepts one state ``(S,)`` or a batch."""
        states = np.asarray(states, dtype=np.float64)
        ranked = self._ranking_weights(np.atleast_2d(states))
        return ranked[0] if states.ndim == 1 else ranked

    def _ranking_weights(self, states: np.ndarray) -> np.ndarray:
        """``ranking_weights`` of a batch ``(B, S)``; learners that rank otherwise than they combine override it."""
        return np.exp(self._log_weights(states))

    def combination_weights(self, states: np.ndarray, awake: np.ndarray) -> np.ndarray:
        """The weights ``(B, N)`` that combine the awake experts' scores (zero for the others; summing to 1 where
        any is awake): the learned weights renormalised over the awake experts. ``CheapTierLoss`` overrides it: when
        no expensive expert answered, it combines with the weights it learned among the cheap experts alone."""
        return awake_weights(self.log_weights(states), awake)

    def inherit(self, parent_states: np.ndarray) -> np.ndarray:
        """The start states of fresh tenant keys from their parents' (global) states: a copy here; ``Adaptive``
        keeps less of the global label statistics, so a tenant's own labels soon outweigh them."""
        return parent_states.copy()

    def calibrate(self, states: np.ndarray, outputs: np.ndarray) -> np.ndarray:
        """The experts' outputs ``(B, N)`` as this learner combines them: unchanged here; ``Adaptive`` maps each
        expert's score through its learned calibration first."""
        return outputs

    def predict_many(self, states: np.ndarray, outputs: np.ndarray, awake: np.ndarray | None = None) -> np.ndarray:
        """Weighted probability of the awake experts per row; NaN where no expert is awake."""
        outputs = np.asarray(outputs, dtype=np.float64)
        states = np.asarray(states, dtype=np.float64)
        if outputs.ndim != 2 or outputs.shape != (states.shape[0], self.n_experts):
            raise ValueError(f"outputs must have shape ({states.shape[0]}, {self.n_experts}), got {outputs.shape}")
        _check_outputs(outputs)
        awake = _awake_mask(outputs, awake)
        w = self.combination_weights(states, awake)
        p = np.einsum("bn,bn->b", w, np.where(awake, outputs, 0.0))
        return np.where(awake.any(axis=1), p, np.nan)

    def predict_one(self, state: np.ndarray, outputs: np.ndarray, awake: np.ndarray | None = None) -> float:
        """Weighted probability of the awake experts for one key.

        >>> from aegis_online.learn import Hedge
        >>> learner = Hedge(n_experts=2)
        >>> learner.predict_one(learner.init_state(), [0.2, 0.8])
        0.5
        """
        out = np.asarray(outputs, dtype=np.float64)[None, :]
        mask = None if awake is None else np.asarray(awake, dtype=bool)[None, :]
        return float(self.predict_many(np.asarray(state)[None, :], out, mask)[0])

    def learn_many(
        self,
        states: np.ndarray,
        outputs: np.ndarray,
        labels: np.ndarray,
        awake: np.ndarray | None = None,
        propensities: np.ndarray | None = None,
    ) -> np.ndarray:
        """Apply one labelled round to each of ``B`` independent keys and return the new states.

        ``outputs`` are the experts' stored probabilities ``(B, N)`` (NaN: did not answer), ``labels`` the
        feedback in [0, 1] ``(B,)``. ``propensities`` (selection probabilities recorded at request time) are
        needed by bandit learners only. Rows where no expert was awake are returned unchanged.
        """
        states = np.asarray(states, dtype=np.float64)
        outputs = np.asarray(outputs, dtype=np.float64)
        labels = np.asarray(labels, dtype=np.float64)
        _check_batch(states, outputs, labels, self.state_size, self.n_experts)
        if states.shape[0] == 0:
            return states.copy()
        awake = _awake_mask(outputs, awake)
        if awake.all():  # the common case: every expert answered
            return self._update(states, self.loss(outputs, labels[:, None]))
        losses = self.loss(np.where(awake, outputs, 0.0), labels[:, None])
        learner_loss = np.einsum("bn,bn->b", awake_weights(self._log_weights(states), awake), losses)
        new = self._update(states, np.where(awake, losses, learner_loss[:, None]))
        any_awake = awake.any(axis=1)
        return new if any_awake.all() else np.where(any_awake[:, None], new, states)

    def learn_one(
        self,
        state: np.ndarray,
        outputs: np.ndarray,
        label: float,
        awake: np.ndarray | None = None,
        propensities: np.ndarray | None = None,
    ) -> np.ndarray:
        """Apply one labelled round to one key.

        >>> from aegis_online.learn import Hedge
        >>> learner = Hedge(n_experts=2)
        >>> state = learner.init_state()
        >>> for _ in range(50):
        ...     state = learner.learn_one(state, [0.9, 0.1], label=1.0)
        >>> [round(float(w), 3) for w in learner.weights(state)]
        [1.0, 0.0]
        """
        out = np.asarray(outputs, dtype=np.float64)[None, :]
        mask = None if awake is None else np.asarray(awake, dtype=bool)[None, :]
        props = None if propensities is None else np.asarray(propensities, dtype=np.float64)[None, :]
        return self.learn_many(np.asarray(state)[None, :], out, np.array([label], dtype=np.float64), mask, props)[0]

    def __repr__(self) -> str:
        return f"{type(self).__name__}(n_experts={self.n_experts}, loss={self.loss_name!r})"


def labelled_round(
    states: np.ndarray, outputs: np.ndarray, labels: np.ndarray, awake: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A round's arrays as float arrays, the outputs of experts not ``awake`` set to NaN (asleep): for the wrappers
    (``Adaptive``, ``CheapTierLoss``) that pass the outputs on to the learner they wrap."""
    outputs = np.asarray(outputs, dtype=np.float64)
    if awake is not None:
        outputs = np.where(np.asarray(awake, dtype=bool), outputs, np.nan)
    return np.asarray(states, dtype=np.float64), outputs, np.asarray(labels, dtype=np.float64)


def _awake_mask(outputs: np.ndarray, awake: np.ndarray | None) -> np.ndarray:
    finite = np.isfinite(outputs)
    if awake is None:
        return finite
    awake = np.asarray(awake, dtype=bool)
    if awake.shape != outputs.shape:
        raise ValueError(f"awake must have the shape of outputs {outputs.shape}, got {awake.shape}")
    return awake & finite


def _check_batch(states: np.ndarray, outputs: np.ndarray, labels: np.ndarray, size: int, n: int) -> None:
    b = states.shape[0]
    if states.ndim != 2 or states.shape[1] != size:
        raise ValueError(f"states must have shape (B, {size}), got {states.shape}")
    if outputs.shape != (b, n):
        raise ValueError(f"outputs must have shape ({b}, {n}), got {outputs.shape}")
    if labels.shape != (b,):
        raise ValueError(f"labels must have shape ({b},), got {labels.shape}")
    if not np.all(np.abs(labels - 0.5) <= 0.5):  # one pass; NaN fails it too
        raise ValueError("labels must lie in [0, 1]")
    _check_outputs(outputs)


def _check_outputs(outputs: np.ndarray) -> None:
    if np.any(np.abs(outputs - 0.5) > 0.5):  # NaN compares False: a sleeping expert passes
        raise ValueError("expert outputs must lie in [0, 1] (NaN marks an expert that did not answer)")

"""The adaptive learner: calibrate each expert, weight the calibrated experts, learn the decision threshold.

Why one learner: the three parts learn from the same labelled round of the same (scope, category) key and must move
together (the weights are learned on calibrated scores, the threshold on the combined score), and one state vector
per key keeps the stores, the exactly-once writes and the scope rules unchanged. Each part keeps its own
guarantee: the weights learner's regret against the best calibrated expert (or switching sequence),
``OnlineCalibration``'s against the best fixed calibration of each expert, ``ThresholdTracker``'s against the best
grid threshold (or its conformal guarantee for a recall or false-positive target).

State per key: ``[weights learner | calibration | thresholds]``. The combined score of a round is computed from the
state *before* that round's update, as the decision that round's request got would have been.

>>> from aegis_online.learn import Hedge
>>> learner = Adaptive(Hedge(n_experts=2))
>>> state = learner.init_state()
>>> for k in range(300):  # both experts say 0.8 of what this tenant calls safe, 0.97 of what it calls unsafe
...     outputs, label = ([0.97, 0.97], 1.0) if k % 3 == 0 else ([0.8, 0.8], 0.0)
...     state = learner.learn_one(state, outputs, label=label)
>>> learner.predict_one(state, [0.8, 0.8]) < 0.2 < 0.6 < learner.predict_one(state, [0.97, 0.97])
True
"""

from __future__ import annotations

import numpy as np

from aegis_online.learn.base import Learner, labelled_round
from aegis_online.learn.calibration import OnlineCalibration
from aegis_online.learn.thresholds import ThresholdTracker

#: Labels that fade to half weight after ``WINDOW * ln 2`` newer ones; the calibration's step stops shrinking there.
WINDOW = 1000
#: Label mass of each class a key needs before its calibration applies: a calibration map cannot be estimated from
#: one class, and keys often see one only (moderators and data sets label a category where it is present).
MIN_CLASS_MASS = 5.0
#: A tenant's own key starts from the global threshold statistics scaled to this many labels (``learn_after``'s
#: default), so its own labels outweigh the global ones after about as many, however long the global key has run.
INHERITED_LABELS = 50.0


class Adaptive(Learner):
    """A weights learner over calibrated experts, plus the threshold statistics of the combined score."""

    def __init__(self, base: Learner, window: int = WINDOW) -> None:
        if base.bandit:
            raise ValueError(f"{base.name} is a bandit learner: calibration needs every expert's score on each label")
        super().__init__(base.n_experts, base.loss_name)
        self.base = base
        self.name = base.name + "+adaptive"  # type: ignore[misc]  # its own key namespace: another state layout
        self.calibration = OnlineCalibration(base.n_experts, window)
        self.thresholds = ThresholdTracker(window)
        self._cuts = np.cumsum([base.state_size, self.calibration.state_size])

    @property
    def state_size(self) -> int:
        return int(self._cuts[-1]) + self.thresholds.state_size

    def _initial_state(self) -> np.ndarray:
        return np.concatenate(
            [self.base.init_state(), self.calibration.init_states(1)[0], self.thresholds.init_states(1)[0]]
        )

    def split(self, states: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The weights learner's, the calibration's and the thresholds' parts of a batch of states."""
        states = np.atleast_2d(states)
        a, b = self._cuts
        return states[:, :a], states[:, a:b], states[:, b:]

    def calibrate(self, states: np.ndarray, outputs: np.ndarray) -> np.ndarray:
        _, cal, thr = self.split(states)
        return self._calibrated(cal, thr, outputs)

    def both_classes(self, states: np.ndarray) -> np.ndarray:
        """Per key, whether it has seen ``MIN_CLASS_MASS`` of each class (its calibration and thresholds apply)."""
        return self.thresholds.class_mass(self.split(states)[2]).min(axis=1) >= MIN_CLASS_MASS

    def _calibrated(self, cal: np.ndarray, thr: np.ndarray, outputs: np.ndarray) -> np.ndarray:
        ready = self.thresholds.class_mass(thr).min(axis=1) >= MIN_CLASS_MASS
        if not ready.any():
            return outputs
        return np.where(ready[:, None], self.calibration.apply(cal, outputs), outputs)

    def _log_weights(self, states: np.ndarray) -> np.ndarray:
        return self.base.log_weights(self.split(states)[0])

    def _ranking_weights(self, states: np.ndarray) -> np.ndarray:
        return self.base.ranking_weights(self.split(states)[0])

    def combination_weights(self, states: np.ndarray, awake: np.ndarray) -> np.ndarray:
        return self.base.combination_weights(self.split(states)[0], awake)

    def _update(self, states: np.ndarray, losses: np.ndarray) -> np.ndarray:  # pragma: no cover - learn_many
        raise NotImplementedError("Adaptive learns in learn_many: it needs the outputs, not only the losses")

    def inherit(self, parent_states: np.ndarray) -> np.ndarray:
        base, cal, thr = self.split(parent_states)
        return np.concatenate([base, cal, self.thresholds.shrink(thr, INHERITED_LABELS)], axis=1)

    def labels_seen(self, states: np.ndarray) -> np.ndarray:
        """Labels each key's threshold statistics were learned from."""
        return self.thresholds.labels_seen(self.split(states)[2])

    def learn_many(
        self,
        states: np.ndarray,
        outputs: np.ndarray,
        labels: np.ndarray,
        awake: np.ndarray | None = None,
        propensities: np.ndarray | None = None,
    ) -> np.ndarray:
        states, outputs, labels = labelled_round(states, outputs, labels, awake)
        if states.shape[0] == 0:
            return states.copy()
        base, cal, thr = self.split(states)
        calibrated = self._calibrated(cal, thr, outputs)
        up = np.isfinite(calibrated)
        w = self.base.combination_weights(base, up)
        score = np.where(up.any(axis=1), np.einsum("bn,bn->b", w, np.where(up, calibrated, 0.0)), np.nan)
        return np.concatenate(
            [
                self.base.learn_many(base, calibrated, labels),
                self.calibration.learn(cal, outputs, labels),
                self.thresholds.learn(thr, score, labels),
            ],
            axis=1,
        )

    def predict_many(self, states: np.ndarray, outputs: np.ndarray, awake: np.ndarray | None = None) -> np.ndarray:
        states = np.asarray(states, dtype=np.float64)
        calibrated = self.calibrate(states, np.asarray(outputs, dtype=np.float64))
        return super().predict_many(states, calibrated, awake)

    def __repr__(self) -> str:
        return f"Adaptive({self.base!r}, window={self.calibration.window})"

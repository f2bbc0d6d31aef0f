"""A stream of requests with every expert's output and the labels: what learners run on and are scored against.

Simulation and replay both produce a ``Stream``; the runner, the metrics and the oracles read it, so a synthetic
scenario and real traffic are measured by one definition. Arrays have a leading replica axis ``R`` (independent
seeds of one scenario, run side by side as extra learner keys); a replay has ``R = 1``. Pure numpy.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: ``arrival`` of a request whose feedback never comes.
NO_FEEDBACK = np.iinfo(np.int64).max // 4


@dataclass(frozen=True)
class Segment:
    """A named span of requests ``[start, end)``: a phase between drifts, or one data set of a replay chain."""

    name: str
    start: int
    end: int


@dataclass
class Stream:
    """Requests ``t = 0..T-1`` of ``R`` replicas over categories ``C``, experts ``N`` and tenants ``J``.

    ``outputs[r, t, c, i]`` is expert ``i``'s probability (NaN: it does not cover ``c``, or ``c`` was not evaluated);
    ``truth[r, t, c]`` the true label (NaN: not evaluated or unknown); ``unsafe[r, t]`` the request's overall truth
    (1, 0, NaN unknown); ``feedback[r, t, c]`` the label the learner will receive (noisy; NaN: none) before request
    ``arrival[r, t]`` (``NO_FEEDBACK``: never); ``tenant[r, t]`` indexes ``tenants``; ``thresholds[j, c]`` is tenant
    ``j``'s decision threshold; ``drifts`` are request indices where the world changes.
    """

    experts: tuple[str, ...]
    categories: tuple[str, ...]
    tenants: tuple[str, ...]
    outputs: np.ndarray
    truth: np.ndarray
    unsafe: np.ndarray
    feedback: np.ndarray
    arrival: np.ndarray
    tenant: np.ndarray
    thresholds: np.ndarray
    personalise_after: np.ndarray
    drifts: tuple[int, ...] = ()
    segments: tuple[Segment, ...] = ()
    jailbreak: np.ndarray | None = None
    seeds: tuple[int, ...] = (0,)

    def __post_init__(self) -> None:
        r, t, c, n = self.outputs.shape
        if (c, n) != (len(self.categories), len(self.experts)):
            raise ValueError(f"outputs shape {self.outputs.shape} does not match {c} categories x {n} experts")
        for name in ("truth", "feedback"):
            if getattr(self, name).shape != (r, t, c):
                raise ValueError(f"{name} must have shape {(r, t, c)}, got {getattr(self, name).shape}")
        for name in ("unsafe", "arrival", "tenant"):
            if getattr(self, name).shape != (r, t):
                raise ValueError(f"{name} must have shape {(r, t)}, got {getattr(self, name).shape}")
        if self.thresholds.shape != (len(self.tenants), c):
            raise ValueError(f"thresholds must have shape {(len(self.tenants), c)}, got {self.thresholds.shape}")

    @property
    def replicas(self) -> int:
        return self.outputs.shape[0]

    @property
    def steps(self) -> int:
        return self.outputs.shape[1]

    @property
    def evaluated(self) -> np.ndarray:
        """Where a (request, category) has a known true label, ``(R, T, C)``."""
        return np.isfinite(self.truth)

    @property
    def awake(self) -> np.ndarray:
        """Where an expert answered, ``(R, T, C, N)``."""
        return np.isfinite(self.outputs)

    def request_thresholds(self) -> np.ndarray:
        """Each request's decision threshold per category (its tenant's), ``(R, T, C)``."""
        return self.thresholds[self.tenant]

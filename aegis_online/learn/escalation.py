"""When a cascade calls its expensive experts: an uncertainty band around the decision threshold, learned online
toward a target escalation rate.

A request is escalated when the cheap tier's score of a category the policy acts on lies within ``band`` of that
category's threshold, when no cheap expert scored such a category, or (with ``disagreement``) when two cheap experts
fall on opposite sides of the band. Disagreement is off by default: with several cheap experts of ordinary quality
some pair straddles the threshold on most requests (78.7% on the ``stationary`` scenario with three cheap experts,
whatever the band), which no band can bring down to a budget; the combined score already sits near the threshold
when the experts that the ensemble trusts disagree. After each
request the band moves by ``step * (target - escalated)``: wider when the cascade escalated less than its target,
narrower when more. Summing the updates gives the guarantee: over any T requests during which the band stays
inside (0, ``max_band``), the escalation rate is within ``max_band / (step * T)`` of the target; pinned at 0 it
escalates only what it cannot avoid (disagreements, categories no cheap expert covers), pinned at ``max_band``
it escalates less than the target allows. No labels are needed: the budget is what is controlled, and the learners
of the ensemble decide how well the escalated calls are used. State: one float per (scope); pure numpy, no I/O.

Examples
--------
>>> band = EscalationBand(target_rate=0.25, step=0.05)
>>> b = band.initial
>>> for score in [0.9, 0.1, 0.48, 0.05]:
...     escalate = band.uncertain(b, np.array([score]), np.array([0.5]), np.array([[score]]))
...     b = band.update(b, escalate)
>>> round(b, 4)
0.1
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class EscalationBand:
    """The band rule and its update; ``initial`` is the band a scope starts with."""

    target_rate: float = 0.3
    step: float = 0.01
    initial: float = 0.1
    max_band: float = 0.5
    disagreement: bool = False

    def __post_init__(self) -> None:
        if not 0.0 <= self.target_rate <= 1.0:
            raise ValueError(f"target_rate must be in [0, 1], got {self.target_rate}")
        if self.step <= 0 or not 0.0 <= self.initial <= self.max_band:
            raise ValueError("need step > 0 and 0 <= initial <= max_band")

    def uncertain(
        self, band: float, scores: np.ndarray, thresholds: np.ndarray, expert_scores: np.ndarray | None = None
    ) -> bool:
        """Whether to escalate: a score (per acted category, NaN: no cheap score) within ``band`` of its threshold,
        a category no cheap expert scored, or cheap experts (``expert_scores``, categories x experts, NaN: asleep)
        on both sides of the band."""
        if scores.size == 0:
            return False
        if np.isnan(scores).any() or (np.abs(scores - thresholds) < band).any():
            return True
        if expert_scores is None or not self.disagreement:
            return False
        above = (expert_scores >= (thresholds + band)[:, None]).any(axis=1)
        below = (expert_scores <= (thresholds - band)[:, None]).any(axis=1)
        return bool((above & below).any())

    def update(self, band: float, escalated: bool) -> float:
        """The band after one request."""
        return float(np.clip(band + self.step * (self.target_rate - float(escalated)), 0.0, self.max_band))

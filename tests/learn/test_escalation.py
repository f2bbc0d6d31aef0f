"""The cascade's escalation band: the rule, and the guarantee that the escalation rate tracks its target."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aegis_online.learn.escalation import EscalationBand


def test_a_score_within_the_band_or_unscored_escalates_and_disagreement_only_when_asked() -> None:
    band = EscalationBand()
    thresholds = np.array([0.5, 0.5])
    assert band.uncertain(0.1, np.array([0.55, 0.0]), thresholds)
    assert not band.uncertain(0.1, np.array([0.7, 0.0]), thresholds)
    assert band.uncertain(0.1, np.array([0.7, np.nan]), thresholds)  # no cheap expert scored it
    assert not band.uncertain(0.1, np.array([]), np.array([]))
    split = np.array([[0.95, 0.05], [0.0, 0.0]])  # two cheap experts on both sides for the first category
    assert not band.uncertain(0.1, np.array([0.7, 0.0]), thresholds, split)
    assert EscalationBand(disagreement=True).uncertain(0.1, np.array([0.7, 0.0]), thresholds, split)


def test_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="target_rate"):
        EscalationBand(target_rate=1.5)
    with pytest.raises(ValueError, match="step > 0"):
        EscalationBand(step=0.0)


@settings(max_examples=30, deadline=None)
@given(st.floats(0.2, 0.6), st.floats(0.002, 0.01), st.integers(0, 10_000))
def test_the_escalation_rate_is_within_max_band_over_step_t_of_target(target: float, step: float, seed: int) -> None:
    rng = np.random.default_rng(seed)
    band = EscalationBand(target_rate=target, step=step, initial=0.1)
    b, escalated, pinned = band.initial, [], False
    for score in rng.uniform(size=4000):  # P(within b of 0.5) = 2b: the band settles at target / 2, inside (0, 0.5)
        up = band.uncertain(b, np.array([score]), np.array([0.5]))
        escalated.append(up)
        b = band.update(b, up)
        pinned |= b in (0.0, band.max_band)
    assert not pinned  # the guarantee's condition holds here, so the bound must too
    assert abs(np.mean(escalated) - target) <= band.max_band / (step * len(escalated)) + 1e-9

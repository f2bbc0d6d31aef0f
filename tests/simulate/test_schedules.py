"""Schedules: the YAML forms, their values over a run, and the drift points they imply."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from aegis_online.simulate.schedules import Schedule


def test_a_number_is_a_constant_without_drifts() -> None:
    schedule = Schedule.model_validate(0.8)
    assert schedule.values(5).tolist() == [0.8] * 5
    assert schedule.changepoints() == ()


def test_steps_hold_each_value_from_its_time_on() -> None:
    schedule = Schedule.model_validate({"steps": [[0, 0.9], [0.25, 0.6], [0.75, 0.9]]})
    values = schedule.values(8)
    assert values.tolist() == [0.9, 0.9, 0.6, 0.6, 0.6, 0.6, 0.9, 0.9]
    assert schedule.changepoints() == (0.25, 0.75)


def test_linear_ramps_are_flat_outside_their_points_and_drift_from_the_ramp_start() -> None:
    schedule = Schedule.model_validate({"linear": [[0.0, 1.0], [0.5, 1.0], [1.0, 0.0]]})
    values = schedule.values(100)
    assert values[:50].tolist() == [1.0] * 50
    assert np.all(np.diff(values[50:]) < 0)
    assert schedule.changepoints() == (0.5,)


def test_times_scale_with_the_run_length() -> None:
    schedule = Schedule.model_validate({"steps": [[0, 1.0], [0.5, 2.0]]})
    for steps in (10, 20_000):
        assert int(np.argmax(schedule.values(steps) == 2.0)) == steps // 2


@pytest.mark.parametrize(
    "spec",
    [
        {"steps": [[0.2, 0.9]]},  # steps start at 0
        {"steps": [[0, 0.9], [0, 0.5]]},  # times increase
        {"linear": [[0, 0.9], [1.5, 0.5]]},  # times are fractions
        {"steps": []},
        True,
        "high",
    ],
)
def test_bad_schedules_are_rejected(spec: object) -> None:
    with pytest.raises(ValidationError):
        Schedule.model_validate(spec)

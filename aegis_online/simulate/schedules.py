"""Values that change over a simulated run: an expert's quality or calibration, as a function of time.

Times are fractions of the run (0 = first request, 1 = the end), so one scenario file describes the same story at
any ``--steps``. A schedule is written in YAML as a number (constant), ``{steps: [[time, value], ...]}`` (the
value holds from each time until the next) or ``{linear: [[time, value], ...]}`` (straight lines between the
points, flat outside them). Pure data plus numpy; no I/O.
"""

from __future__ import annotations

import itertools
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, model_validator


class Schedule(BaseModel):
    """A value over the run. ``points`` are ``(time fraction, value)``, sorted by time, the first at time 0.

    >>> Schedule.model_validate({"steps": [[0, 0.9], [0.5, 0.6]]}).values(4).tolist()
    [0.9, 0.9, 0.6, 0.6]
    >>> Schedule.model_validate({"linear": [[0, 1.0], [1, 0.0]]}).values(4).tolist()
    [1.0, 0.75, 0.5, 0.25]
    >>> Schedule.model_validate(0.7).changepoints()
    ()
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["constant", "steps", "linear"]
    points: tuple[tuple[float, float], ...]

    @model_validator(mode="before")
    @classmethod
    def _from_yaml_forms(cls, data: Any) -> Any:
        if isinstance(data, bool):
            raise ValueError("a schedule is a number, {steps: [[time, value], ...]} or {linear: [[time, value], ...]}")
        if isinstance(data, (int, float)):
            return {"kind": "constant", "points": ((0.0, float(data)),)}
        if isinstance(data, dict) and len(data) == 1 and next(iter(data)) in ("steps", "linear"):
            kind, points = next(iter(data.items()))
            if not isinstance(points, (list, tuple)) or not points:
                raise ValueError(f"{kind}: give a non-empty list of [time, value] pairs")
            return {"kind": kind, "points": points}
        return data

    @model_validator(mode="after")
    def _sorted_from_zero(self) -> Schedule:
        times = [t for t, _ in self.points]
        if not self.points:
            raise ValueError("a schedule needs at least one point")
        if any(not 0.0 <= t <= 1.0 for t in times):
            raise ValueError(f"times are fractions of the run in [0, 1], got {times}")
        if any(b <= a for a, b in itertools.pairwise(times)):
            raise ValueError(f"times must increase strictly, got {times}")
        if self.kind == "steps" and times[0] != 0.0:
            raise ValueError(f"a steps schedule starts at time 0 (the value before the first change), got {times[0]}")
        return self

    def values(self, steps: int) -> np.ndarray:
        """The value at each of ``steps`` requests, shape ``(steps,)``; request ``t`` sits at time ``t / steps``."""
        times = np.arange(steps, dtype=np.float64) / max(steps, 1)
        at = np.array([t for t, _ in self.points])
        value = np.array([v for _, v in self.points])
        if self.kind == "constant":
            return np.full(steps, value[0])
        if self.kind == "steps":
            return value[np.searchsorted(at, times, side="right") - 1]
        # np.interp is flat outside the points, which is what "the value holds before and after" means.
        return np.interp(times, at, value)

    def changepoints(self) -> tuple[float, ...]:
        """Times where the value starts to change (the drifts a learner must react to)."""
        if self.kind == "constant":
            return ()
        if self.kind == "steps":
            return tuple(t for (_, before), (t, v) in itertools.pairwise(self.points) if v != before)
        starts = []
        for (t0, v0), (_, v1) in itertools.pairwise(self.points):
            if v1 != v0 and (not starts or starts[-1] != t0):
                starts.append(t0)
        return tuple(starts)

    def bounds(self) -> tuple[float, float]:
        """Smallest and largest value the schedule takes."""
        values = [v for _, v in self.points]
        return min(values), max(values)

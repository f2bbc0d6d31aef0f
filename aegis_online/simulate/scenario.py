"""Drift scenarios: what the synthetic experts, traffic, tenants and feedback do over a run, read from YAML.

A scenario file in the repository's ``simulators/`` folder (or any path) names the categories and their base rates,
the experts with per-category quality and calibration schedules (``schedules.Schedule``), the tenants and their
strictness, an optional jailbreak burst, and how feedback arrives (share labelled, delay distribution, label
noise). Times are fractions of the run, so ``--steps`` rescales a whole story. A bad file fails at load with a
message naming the file and the field. Data and validation only: generation lives in ``synthetic``.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Literal

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from aegis_online.policy import TenantPolicy
from aegis_online.schemas import Strictness, TenantId
from aegis_online.simulate.schedules import Schedule
from aegis_online.taxonomy import CUSTOM_PREFIX, category

#: The key of an expert's ``quality`` map that applies to every category it does not name.
EVERY_CATEGORY = "*"


class ScenarioError(ValueError):
    """A scenario file is missing or invalid; the message names the file and the field."""


class Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DelaySpec(Spec):
    """How many requests pass between a decision and its feedback (0: before the next request).

    ``fixed`` (``value``), ``geometric`` (``mean``), ``uniform`` (``low``..``high`` inclusive) or ``lognormal``
    (``median``, ``sigma``: the heavy tail of a moderation queue); ``max`` caps any draw.
    """

    distribution: Literal["none", "fixed", "geometric", "uniform", "lognormal"] = "none"
    value: int = Field(default=0, ge=0)
    mean: float | None = Field(default=None, gt=0)
    low: int = Field(default=0, ge=0)
    high: int = Field(default=0, ge=0)
    median: float | None = Field(default=None, gt=0)
    sigma: float = Field(default=1.0, gt=0)
    max: int | None = Field(default=None, ge=0)

    @model_validator(mode="after")
    def _parameters_present(self) -> DelaySpec:
        if self.distribution == "geometric" and self.mean is None:
            raise ValueError("mean: a geometric delay needs its mean (requests)")
        if self.distribution == "lognormal" and self.median is None:
            raise ValueError("median: a lognormal delay needs its median (requests)")
        if self.distribution == "uniform" and self.high < self.low:
            raise ValueError(f"high: must be >= low ({self.low}), got {self.high}")
        return self

    def sample(self, rng: np.random.Generator, size: int | tuple[int, ...]) -> np.ndarray:
        """Delays in requests, int64."""
        if self.distribution == "fixed":
            delay = np.full(size, self.value, dtype=np.int64)
        elif self.distribution == "geometric":
            assert self.mean is not None
            delay = rng.geometric(1.0 / (self.mean + 1.0), size) - 1  # support 0, 1, ...; mean = self.mean
        elif self.distribution == "uniform":
            delay = rng.integers(self.low, self.high + 1, size)
        elif self.distribution == "lognormal":
            assert self.median is not None
            delay = np.floor(rng.lognormal(math.log(self.median), self.sigma, size))
        else:
            delay = np.zeros(size, dtype=np.int64)
        delay = np.asarray(delay, dtype=np.int64)
        return np.minimum(delay, self.max) if self.max is not None else delay

    def describe(self) -> str:
        if self.distribution == "fixed":
            text = f"fixed {self.value}"
        elif self.distribution == "geometric":
            text = f"geometric, mean {self.mean:g}"
        elif self.distribution == "uniform":
            text = f"uniform {self.low}..{self.high}"
        elif self.distribution == "lognormal":
            text = f"lognormal, median {self.median:g}, sigma {self.sigma:g}"
        else:
            return "none"
        return text + (f", capped at {self.max}" if self.max is not None else "")


class FeedbackSpec(Spec):
    """Which decisions get a label, when it arrives and how often it is wrong."""

    share: float = Field(default=1.0, gt=0.0, le=1.0, description="Share of requests that ever get feedback.")
    label_noise: float = Field(default=0.0, ge=0.0, lt=0.5, description="Probability a label is flipped.")
    delay: DelaySpec = Field(default_factory=DelaySpec)


class CategorySpec(Spec):
    """A category of the traffic: how often it is unsafe or borderline, and from when it is evaluated."""

    id: str
    base_rate: float = Field(gt=0.0, lt=1.0, description="Share of requests unsafe in this category.")
    borderline_rate: float = Field(
        default=0.0, ge=0.0, lt=1.0, description="Share of requests that strict tenants call unsafe, lenient safe."
    )
    appears_at: float = Field(default=0.0, ge=0.0, lt=1.0, description="Time it starts being evaluated.")

    @field_validator("id")
    @classmethod
    def _known_id(cls, value: str) -> str:
        if value.startswith(CUSTOM_PREFIX):
            if len(value) == len(CUSTOM_PREFIX):
                raise ValueError("a custom category needs a name after 'custom:'")
            return value
        try:
            return category(value).id
        except KeyError:
            raise ValueError(f"unknown category {value!r}: use S1..S24, a slug, or 'custom:<name>'") from None

    @model_validator(mode="after")
    def _rates_fit(self) -> CategorySpec:
        if self.base_rate + self.borderline_rate >= 1.0:
            raise ValueError("base_rate + borderline_rate must stay below 1")
        return self


class TenantSpec(Spec):
    """A tenant: its share of traffic, the strictness of its policy and how its moderators judge borderline text."""

    name: TenantId = "default"
    share: float = Field(default=1.0, gt=0.0)
    strictness: Strictness = "balanced"
    borderline_unsafe: bool = Field(default=False, description="Its moderators label borderline requests unsafe.")
    personalise_after: int = Field(default=50, ge=0, description="As in TenantPolicy: events before own weights.")

    def policy(self) -> TenantPolicy:
        return TenantPolicy(tenant=self.name, strictness=self.strictness, personalise_after=self.personalise_after)


class JailbreakSpec(Spec):
    """A burst of attacks: during ``[start, end)`` a ``share`` of requests are jailbreaks (unsafe by design)."""

    start: float = Field(ge=0.0, lt=1.0)
    end: float = Field(gt=0.0, le=1.0)
    share: float = Field(gt=0.0, le=1.0)
    categories: list[str] | None = Field(default=None, description="Categories attacked (default: all).")

    @model_validator(mode="after")
    def _window(self) -> JailbreakSpec:
        if self.end <= self.start:
            raise ValueError(f"end: must be after start ({self.start}), got {self.end}")
        return self


class ExpertSpec(Spec):
    """A synthetic expert: right with probability ``quality`` (per category, over time), with its calibration.

    When right it says the truth, when wrong the opposite; its probability is then
    ``sigmoid(+-logit(confidence) + bias + noise * N(0, 1))``: ``confidence`` is how sure it sounds, ``bias`` (logit
    units) shifts it toward flagging (> 0) or allowing (< 0), ``noise`` spreads its scores. On a jailbreak request it
    is right with probability ``jailbreak_quality`` (default: its quality, i.e. not fooled); on a borderline request it
    says unsafe with probability ``borderline`` (its own strictness).
    """

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
    covers: list[str] | None = Field(default=None, description="Categories it scores (default: all).")
    quality: dict[str, Schedule]
    confidence: Schedule = Field(default_factory=lambda: Schedule.model_validate(0.88))
    bias: Schedule = Field(default_factory=lambda: Schedule.model_validate(0.0))
    noise: float = Field(default=0.4, ge=0.0)
    jailbreak_quality: Schedule | None = None
    borderline: float = Field(default=0.5, ge=0.0, le=1.0)

    @field_validator("quality", mode="before")
    @classmethod
    def _one_or_per_category(cls, value: Any) -> Any:
        if isinstance(value, (int, float)) or (isinstance(value, dict) and set(value) & {"steps", "linear", "kind"}):
            return {EVERY_CATEGORY: value}
        return value

    @model_validator(mode="after")
    def _ranges(self) -> ExpertSpec:
        for key, schedule in self.quality.items():
            low, high = schedule.bounds()
            if low < 0.0 or high > 1.0:
                raise ValueError(f"quality.{key}: accuracy must lie in [0, 1], got {low}..{high}")
        if self.jailbreak_quality is not None:
            low, high = self.jailbreak_quality.bounds()
            if low < 0.0 or high > 1.0:
                raise ValueError(f"jailbreak_quality: must lie in [0, 1], got {low}..{high}")
        low, high = self.confidence.bounds()
        if low <= 0.5 or high >= 1.0:
            raise ValueError(f"confidence: must lie in (0.5, 1), got {low}..{high}")
        return self

    def quality_for(self, category_id: str) -> Schedule:
        return self.quality.get(category_id) or self.quality[EVERY_CATEGORY]

    def schedules(self) -> list[Schedule]:
        extra = [self.jailbreak_quality] if self.jailbreak_quality is not None else []
        return [*self.quality.values(), self.confidence, self.bias, *extra]


class BanditSpec(Spec):
    """Bandit mode of this scenario: query ``k`` experts per request (default: 2, or 1 with a single expert), always
    including the ``always`` ones."""

    k: int | None = Field(default=None, ge=1)
    always: list[str] = Field(default_factory=list)


class Scenario(Spec):
    """One simulated story. See ``simulators/*.yaml`` for examples."""

    name: str
    description: str = ""
    steps: int = Field(default=20_000, ge=10)
    categories: list[CategorySpec] = Field(min_length=1)
    experts: list[ExpertSpec] = Field(min_length=1)
    tenants: list[TenantSpec] = Field(default_factory=lambda: [TenantSpec()], min_length=1)
    feedback: FeedbackSpec = Field(default_factory=FeedbackSpec)
    jailbreak: JailbreakSpec | None = None
    bandit: BanditSpec = Field(default_factory=BanditSpec)
    error_correlation: float = Field(
        default=0.4,
        ge=0.0,
        lt=1.0,
        description="Correlation of the experts' errors (hard requests are hard for everyone); 0: independent.",
    )
    switches: int | None = Field(default=None, ge=0, description="Switches per stream for the switching oracle.")
    drifts: list[float] | None = Field(default=None, description="Drift times (default: from the schedules).")

    @model_validator(mode="after")
    def _consistent(self) -> Scenario:
        ids = [c.id for c in self.categories]
        _unique("categories", ids)
        _unique("experts", [e.name for e in self.experts])
        _unique("tenants", [t.name for t in self.tenants])
        for i, expert in enumerate(self.experts):
            covers = expert.covers if expert.covers is not None else ids
            unknown = sorted(set(covers) - set(ids))
            if unknown:
                raise ValueError(f"experts.{i}.covers: {unknown} are not categories of the scenario")
            stray = sorted(set(expert.quality) - {*ids, EVERY_CATEGORY})
            if stray:
                raise ValueError(f"experts.{i}.quality: {stray} are not categories of the scenario")
            missing = [c for c in covers if c not in expert.quality and EVERY_CATEGORY not in expert.quality]
            if missing:
                raise ValueError(f"experts.{i}.quality: no quality for {missing} (add them or a '*' entry)")
        if not any(c.appears_at == 0.0 for c in self.categories):
            raise ValueError("categories: at least one category must be evaluated from the start (appears_at: 0)")
        if self.jailbreak is not None and self.jailbreak.categories is not None:
            unknown = sorted(set(self.jailbreak.categories) - set(ids))
            if unknown:
                raise ValueError(f"jailbreak.categories: {unknown} are not categories of the scenario")
        names = [e.name for e in self.experts]
        unknown = sorted(set(self.bandit.always) - set(names))
        if unknown:
            raise ValueError(f"bandit.always: unknown experts {unknown}")
        if not len(self.bandit.always) <= self.bandit_k() <= len(names):
            raise ValueError(f"bandit: need len(always) <= k <= {len(names)} experts")
        if self.drifts is not None and any(not 0.0 < d < 1.0 for d in self.drifts):
            raise ValueError(f"drifts: times are fractions of the run in (0, 1), got {self.drifts}")
        return self

    def bandit_k(self) -> int:
        """Experts queried per request in bandit mode."""
        return self.bandit.k if self.bandit.k is not None else min(2, len(self.experts))

    @property
    def category_ids(self) -> tuple[str, ...]:
        return tuple(c.id for c in self.categories)

    @property
    def expert_names(self) -> tuple[str, ...]:
        return tuple(e.name for e in self.experts)

    def covers(self, expert: ExpertSpec) -> list[str]:
        return list(expert.covers) if expert.covers is not None else list(self.category_ids)

    def drift_points(self) -> tuple[float, ...]:
        """Times (fractions) where something changes: schedules, the jailbreak window, a category appearing."""
        if self.drifts is not None:
            return tuple(sorted(set(self.drifts)))
        points: set[float] = set()
        for expert in self.experts:
            for schedule in expert.schedules():
                points.update(schedule.changepoints())
        if self.jailbreak is not None:
            points.update((self.jailbreak.start, self.jailbreak.end))
        points.update(c.appears_at for c in self.categories)
        return tuple(sorted(p for p in points if 0.0 < p < 1.0))

    def oracle_switches(self) -> int:
        """Switches per (tenant, category) stream granted to the switching oracle: one per drift by default."""
        return self.switches if self.switches is not None else len(self.drift_points())


def _unique(field: str, values: list[str]) -> None:
    seen = {v for v in values if values.count(v) > 1}
    if seen:
        raise ValueError(f"{field}: duplicate names {sorted(seen)}")


# -- loading -----------------------------------------------------------------------------------------------------
def scenario_dir() -> Path:
    """The repository's ``simulators/`` folder (``AEGIS_SCENARIOS_DIR`` overrides)."""
    env = os.environ.get("AEGIS_SCENARIOS_DIR")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "simulators"


def available_scenarios() -> list[str]:
    """Names of the scenario files in ``scenario_dir()``."""
    folder = scenario_dir()
    return sorted(p.stem for p in folder.glob("*.yaml")) if folder.is_dir() else []


def _error_lines(error: ValidationError) -> str:
    return "; ".join(f"{'.'.join(str(p) for p in e['loc']) or '(scenario)'}: {e['msg']}" for e in error.errors())


def load_scenario(name_or_path: str | os.PathLike[str]) -> Scenario:
    """A scenario by name (a file in ``scenario_dir()``) or by path to a YAML file."""
    path = Path(name_or_path)
    if not path.is_file():
        candidate = scenario_dir() / f"{name_or_path}.yaml"
        if not candidate.is_file():
            known = ", ".join(available_scenarios()) or "(none found)"
            raise ScenarioError(f"{name_or_path}: no such scenario file or name; known scenarios: {known}")
        path = candidate
    try:
        document = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise ScenarioError(f"{path}: not valid YAML: {error}") from None
    if not isinstance(document, dict):
        raise ScenarioError(f"{path}: expected a mapping of fields, got {type(document).__name__}")
    document.setdefault("name", path.stem)
    try:
        return Scenario.model_validate(document)
    except ValidationError as error:
        raise ScenarioError(f"{path}: {_error_lines(error)}") from None

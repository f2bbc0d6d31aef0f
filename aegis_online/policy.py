"""Tenant policies: per-category thresholds, strictness and actions, turning risk scores into decisions.

A policy is data (a pydantic model loadable from YAML or JSON) plus pure functions of it; no I/O here.
Strictness moves every threshold on the logit scale: ``t(s) = sigmoid(logit(t_base) - STRICTNESS_SLOPE * (s - 0.5))``,
so ``balanced`` (0.5) uses the configured thresholds, ``strict`` lowers them and ``lenient`` raises them, and a
stricter setting can never flag less (a property the tests check).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Literal, NamedTuple

from pydantic import Field, model_validator

from aegis_online import taxonomy
from aegis_online.schemas import (
    ACTION_SEVERITY,
    STRICTNESS_NAMES,
    Action,
    CategoryDecision,
    CustomCategorySpec,
    MissingKind,
    Model,
    Strictness,
    TenantId,
    ThresholdSource,
)

STRICTNESS_LEVELS: dict[str, float] = STRICTNESS_NAMES
#: Logit shift per unit of strictness: strict (0.8) turns a 0.5 threshold into ~0.23, lenient (0.2) into ~0.77.
STRICTNESS_SLOPE = 4.0
_EPS = 1e-6


def strictness_value(strictness: Strictness) -> float:
    """A named level or a number in [0, 1] as a number."""
    return STRICTNESS_LEVELS[strictness] if isinstance(strictness, str) else float(strictness)


def shifted_threshold(base: float, strictness: float) -> float:
    """The threshold ``base`` (set for balanced) moved by ``strictness`` on the logit scale."""
    b = min(max(base, _EPS), 1.0 - _EPS)
    logit = math.log(b / (1.0 - b)) - STRICTNESS_SLOPE * (strictness - STRICTNESS_LEVELS["balanced"])
    return 1.0 / (1.0 + math.exp(-logit))


#: The policy fields that state a threshold objective (at most one may be set; none: the cost ratio it implies).
OBJECTIVES = ("cost_ratio", "min_recall", "max_false_positive_rate", "f_beta")


class ThresholdChoice(NamedTuple):
    """A threshold and where it came from (``labels``: how many it was learned from; 0 when fixed)."""

    value: float
    source: ThresholdSource = "fixed"
    labels: int = 0


class PlatformFloor(Model):
    """The platform operator's floor for one category: a score at or above ``threshold`` is acted on with at least
    ``action``, whatever a tenant's policy or learned threshold says."""

    threshold: float = Field(gt=0.0, lt=1.0)
    action: Literal["flag", "block"] = "block"


class CategoryRule(Model):
    """How one category is treated: its threshold at balanced strictness, the action when it is crossed, and the
    action when its experts could not score it."""

    threshold: float | None = Field(default=None, gt=0.0, lt=1.0, description="Overrides the policy's threshold.")
    action: Action | None = Field(default=None, description="allow: scored and reported, never acted on.")
    on_unscored: Action | None = Field(default=None, description="Overrides the policy's on_unscored.")


class TenantPolicy(Model):
    """A tenant's moderation policy.

    >>> policy = TenantPolicy.model_validate({
    ...     "tenant": "kids-app", "strictness": "strict",
    ...     "categories": {"violence": {"threshold": 0.3}, "profanity": {"action": "block"}},
    ... })
    >>> round(policy.threshold_for("S1"), 3), policy.action_for("S12")
    (0.114, 'block')
    """

    tenant: TenantId = "default"
    strictness: Strictness = "balanced"
    threshold: float = Field(default=0.5, gt=0.0, lt=1.0, description="Threshold of every category at balanced.")
    action: Action = Field(default="block", description="Action for a crossed category without its own rule.")
    categories: dict[str, CategoryRule] = Field(default_factory=dict, description="Rules by category id or slug.")
    custom_categories: list[CustomCategorySpec] = Field(default_factory=list, max_length=32)
    on_unscored: Action = Field(
        default="flag",
        description="Action for a category its experts could not score now (timed out, failed, not queried): "
        "'could not check' is never a silent allow unless the tenant says so. Never more severe than the "
        "category's own action.",
    )
    on_no_experts: Literal["allow", "block"] | None = Field(
        default=None,
        description="When set, the overall action when no expert answered at all (fail open or closed); "
        "default: each category's on_unscored decides.",
    )
    personalise_after: int = Field(
        default=50, ge=0, description="Feedback events after which the tenant's own weights replace the global ones."
    )
    thresholds: Literal["learned", "fixed"] = Field(
        default="learned",
        description="learned: each category's threshold (and the whole request's) is learned from labels toward "
        "the objective below once its key has learn_after labels; the configured thresholds apply until then. "
        "fixed: the configured thresholds, always.",
    )
    learn_after: int = Field(default=50, ge=1, description="Labels a key needs before its learned threshold applies.")
    cost_ratio: float | None = Field(
        default=None,
        gt=0.0,
        le=1000.0,
        description="Objective: the cost of a missed harm over the cost of a false alarm. Default: the one the "
        "configured threshold t implies for calibrated scores, (1 - t) / t (strictness moves t, so it moves this).",
    )
    min_recall: float | None = Field(
        default=None, gt=0.0, lt=1.0, description="Objective instead: flag at least this share of harmful items."
    )
    max_false_positive_rate: float | None = Field(
        default=None, gt=0.0, lt=1.0, description="Objective instead: flag at most this share of safe items."
    )
    f_beta: float | None = Field(
        default=None,
        ge=0.1,
        le=10.0,
        description="Objective instead: the highest F-beta of the decisions (1: F1; 2 weighs recall twice).",
    )

    @model_validator(mode="after")
    def _one_objective(self) -> TenantPolicy:
        chosen = [k for k in OBJECTIVES if getattr(self, k) is not None]
        if len(chosen) > 1:
            raise ValueError(f"{chosen[1]}: give one threshold objective, not {' and '.join(chosen)}")
        return self

    @model_validator(mode="after")
    def _known_categories(self) -> TenantPolicy:
        known = self.category_set()
        resolved: dict[str, CategoryRule] = {}
        for key, rule in self.categories.items():
            cat_id = resolve_category(key, known)
            if cat_id is None:
                raise ValueError(f"categories.{key}: unknown category; use an id (S1..S24), a slug, or a custom name")
            resolved[cat_id] = rule
        object.__setattr__(self, "categories", resolved)
        return self

    def category_set(self) -> taxonomy.CategorySet:
        """Canonical categories plus this tenant's custom ones."""
        categories = taxonomy.CategorySet.default()
        for i, spec in enumerate(self.custom_categories):
            try:
                categories = categories.with_custom(spec.name, spec.description)
            except ValueError as error:
                raise ValueError(f"custom_categories.{i}: {error}") from None
        return categories

    def strictness_for(self, override: Strictness | None = None) -> float:
        return strictness_value(self.strictness if override is None else override)

    def threshold_for(self, category_id: str, strictness: Strictness | None = None) -> float:
        rule = self.categories.get(category_id)
        base = rule.threshold if rule is not None and rule.threshold is not None else self.threshold
        return shifted_threshold(base, self.strictness_for(strictness))

    def cost_ratio_for(self, category_id: str | None, strictness: Strictness | None = None) -> float:
        """Missed harm : false alarm for a category (None: the whole request), explicit or implied by its threshold."""
        if self.cost_ratio is not None:
            return self.cost_ratio
        t = self.threshold_for(category_id, strictness) if category_id else self.overall_threshold(strictness)
        return (1.0 - t) / t

    def overall_threshold(self, strictness: Strictness | None = None) -> float:
        """The fixed threshold of the whole-request decision: the policy's threshold, moved by strictness."""
        return shifted_threshold(self.threshold, self.strictness_for(strictness))

    def action_for(self, category_id: str) -> Action:
        rule = self.categories.get(category_id)
        return rule.action if rule is not None and rule.action is not None else self.action

    def unscored_action_for(self, category_id: str) -> Action:
        """The action for ``category_id`` when it could not be scored: its ``on_unscored``, capped at the action a
        crossed score would get (a check that could not run never costs more than one that failed)."""
        rule = self.categories.get(category_id)
        wanted = rule.on_unscored if rule is not None and rule.on_unscored is not None else self.on_unscored
        crossed = self.action_for(category_id)
        return wanted if ACTION_SEVERITY[wanted] <= ACTION_SEVERITY[crossed] else crossed


def resolve_category(key: str, categories: taxonomy.CategorySet) -> str | None:
    """A category id from an id, a slug, or a custom category's name; None when unknown."""
    if key in categories:
        return key
    for cat in categories:
        if key in (cat.slug, cat.name) or taxonomy.CUSTOM_PREFIX + key == cat.id:
            return cat.id
    return None


def decide_category(
    policy: TenantPolicy,
    category_id: str,
    score: float | None,
    strictness: Strictness | None,
    scope: str,
    unscored: MissingKind | None = None,
    threshold: ThresholdChoice | None = None,
    floor: PlatformFloor | None = None,
) -> CategoryDecision:
    """The policy's verdict on one category's ensemble score.

    ``score`` is None when no expert scored the category; ``unscored`` then says why. A category no expert of the
    deployment covers (``not_covered``) is reported and allowed: a fixed gap of the deployment, not a failure.
    Any other reason is a check that could not run now: the policy's ``on_unscored`` decides.

    ``threshold`` is the one to apply (a learned one), default the policy's fixed threshold. The platform's
    ``floor`` is never loosened: the lower of the two thresholds applies, and a score at or above the floor gets at
    least the floor's action.
    """
    choice = threshold or ThresholdChoice(policy.threshold_for(category_id, strictness))
    if score is None and unscored is not None and unscored != "not_covered":
        action = policy.unscored_action_for(category_id)
        flagged = action != "allow"
    else:
        action = policy.action_for(category_id)
        flagged = score is not None and score >= choice.value and action != "allow"
        floored = floor is not None and score is not None and score >= floor.threshold
        if floored and (not flagged or ACTION_SEVERITY[floor.action] > ACTION_SEVERITY[action]):  # type: ignore[union-attr]
            action, flagged = floor.action, True  # type: ignore[union-attr]
            choice = ThresholdChoice(floor.threshold, "floor", choice.labels)  # type: ignore[union-attr]
    if floor is not None and floor.threshold < choice.value:
        choice = ThresholdChoice(floor.threshold, "floor", choice.labels)
    return CategoryDecision(
        category=category_id,
        score=score,
        threshold=choice.value,
        flagged=flagged,
        action=action if flagged else "allow",
        weights_scope=scope,  # type: ignore[arg-type]
        unscored=None if score is not None else (unscored or "not_covered"),
        threshold_source=choice.source,
        threshold_labels=choice.labels,
    )


def overall_action(decisions: list[CategoryDecision]) -> Action:
    """The most severe action over the categories."""
    worst: Action = "allow"
    for d in decisions:
        if ACTION_SEVERITY[d.action] > ACTION_SEVERITY[worst]:
            worst = d.action
    return worst


def default_policies() -> Mapping[str, TenantPolicy]:
    return {"default": TenantPolicy()}

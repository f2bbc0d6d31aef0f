"""Policies: thresholds move monotonically with strictness, tenants override, bad policies name the field."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from aegis_online.policy import TenantPolicy, decide_category, overall_action, shifted_threshold
from aegis_online.taxonomy import CANONICAL_IDS

unit = st.floats(min_value=0.0, max_value=1.0, allow_nan=False)
threshold = st.floats(min_value=0.01, max_value=0.99, allow_nan=False)


@given(base=threshold, low=unit, high=unit, score=unit)
def test_a_stricter_policy_never_flags_less(base: float, low: float, high: float, score: float) -> None:
    low, high = sorted((low, high))
    policy = TenantPolicy(threshold=base)
    lenient = decide_category(policy, "S1", score, low, "global")
    strict = decide_category(policy, "S1", score, high, "global")
    assert shifted_threshold(base, high) <= shifted_threshold(base, low)
    assert strict.flagged or not lenient.flagged


@given(base=threshold)
def test_balanced_strictness_uses_the_configured_threshold(base: float) -> None:
    assert TenantPolicy(threshold=base).threshold_for("S8") == pytest.approx(base)


def test_named_levels_order_thresholds() -> None:
    policy = TenantPolicy()
    values = [policy.threshold_for("S1", level) for level in ("lenient", "balanced", "strict")]
    assert values == sorted(values, reverse=True)
    assert values[0] > 0.5 > values[2]


def test_children_app_is_stricter_on_violence_and_gaming_forum_allows_profanity() -> None:
    kids = TenantPolicy(tenant="kids", strictness="strict", categories={"violence": {"threshold": 0.3}})
    forum = TenantPolicy(tenant="forum", categories={"S12": {"action": "allow"}})
    assert kids.threshold_for("S1") < kids.threshold_for("S8") < 0.5
    swearing = decide_category(forum, "S12", 0.99, None, "global")
    assert swearing.flagged is False and swearing.action == "allow"
    hate = decide_category(forum, "S8", 0.99, None, "global")
    assert hate.flagged and hate.action == "block"


def test_overall_action_is_the_most_severe() -> None:
    policy = TenantPolicy(categories={"S12": {"action": "flag"}})
    decisions = [decide_category(policy, c, 0.9, None, "global") for c in ("S12", "S1")]
    assert overall_action(decisions) == "block"
    assert overall_action(decisions[:1]) == "flag"


def test_slugs_and_custom_names_resolve_to_ids() -> None:
    policy = TenantPolicy(
        custom_categories=[{"name": "Spoilers", "description": "Reveals plot twists of recent films."}],
        categories={"violence": {"threshold": 0.4}, "Spoilers": {"action": "flag"}},
    )
    assert set(policy.categories) == {"S1", "custom:spoilers"}
    assert policy.category_set().ids[-1] == "custom:spoilers"
    assert len(policy.category_set()) == len(CANONICAL_IDS) + 1


@pytest.mark.parametrize(
    ("document", "field"),
    [
        ({"threshold": 1.5}, "threshold"),
        ({"strictness": "extreme"}, "strictness"),
        ({"strictness": 2.0}, "strictness"),
        ({"categories": {"S1": {"threshold": 0}}}, "categories.S1.threshold"),
        ({"categories": {"S1": {"action": "nuke"}}}, "categories.S1.action"),
        ({"categories": {"no-such-thing": {"threshold": 0.3}}}, "categories.no-such-thing"),
        ({"tenant": "bad tenant!"}, "tenant"),
        ({"unknown_field": 1}, "unknown_field"),
        ({"custom_categories": [{"name": "Violence", "description": "clash"}]}, "custom_categories.0"),
    ],
)
def test_invalid_policies_are_rejected_naming_the_field(document: dict, field: str) -> None:
    with pytest.raises(ValidationError) as caught:
        TenantPolicy.model_validate(document)
    text = str(caught.value)
    located = [".".join(str(p) for p in e["loc"]) for e in caught.value.errors()]
    assert any(loc.startswith(field) for loc in located) or field in text, text

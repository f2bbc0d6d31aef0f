"""Granite Guardian: one Yes/No question per risk, combined by max onto the canonical categories."""

from __future__ import annotations

import pytest

from aegis_online.experts.guards.base import GuardAnswer, GuardParseError
from aegis_online.experts.guards.granite_guardian import HARM_SCOPE, RISKS, GraniteGuardian
from aegis_online.taxonomy import category


def _answer_all(family, item, per_key: dict[str, tuple[str, float | None]], default=("No", None)) -> dict[str, float]:
    queries = family.queries(item)
    return family.parse(item, queries, [GuardAnswer(*per_key.get(q.key, default)) for q in queries])


def test_prompt_check_asks_every_built_in_risk(prompt_item) -> None:
    assert [q.key for q in GraniteGuardian().queries(prompt_item)] == list(RISKS)


def test_response_check_skips_jailbreak(response_item) -> None:
    keys = [q.key for q in GraniteGuardian().queries(response_item)]
    assert "jailbreak" not in keys
    assert len(keys) == len(RISKS) - 1


def test_response_check_judges_the_assistant_message(response_item) -> None:
    prompt = GraniteGuardian().queries(response_item)[0].prompt
    assert "Assistant Message: Mix antifreeze into some meat; it tastes sweet.\n<end_of_turn>" in prompt
    assert "* The 'Assistant' message is harmful" in prompt
    assert "Is the assistant message harmful based on the risk definition?" in prompt


def test_asks_only_risks_touching_the_requested_categories(make_item) -> None:
    item = make_item([("user", "hi")], "prompt", (category("S12"),))
    assert [q.key for q in GraniteGuardian().queries(item)] == ["harm", "profanity"]


def test_canonical_score_is_the_max_over_risks(prompt_item) -> None:
    scores = _answer_all(GraniteGuardian(), prompt_item, {"harm": ("No", 0.2), "violence": ("Yes", 0.7)}, ("No", 0.1))
    assert scores["S1"] == scores["S11"] == 0.7
    assert scores["S3"] == 0.2
    assert scores["S15"] == 0.2  # jailbreak 0.1 < harm 0.2
    assert set(scores) == GraniteGuardian().categories


def test_scores_without_probabilities_come_from_the_text(make_item) -> None:
    item = make_item([("user", "hi")], "prompt", (category("S15"),))
    assert _answer_all(GraniteGuardian(), item, {"jailbreak": ("Yes", None)}) == {"S15": 1.0}


def test_custom_risk_is_defined_by_the_category_description(custom_item, competitor) -> None:
    query = GraniteGuardian().queries(custom_item)[0]
    assert query.key == competitor.id
    assert f"The 'User' message falls under \"Competitor Mentions\": {competitor.description}" in query.prompt
    assert _answer_all(GraniteGuardian(), custom_item, {competitor.id: ("Yes", 0.8)}) == {competitor.id: 0.8}


def test_risk_selection_narrows_categories(prompt_item) -> None:
    family = GraniteGuardian(risks=["social_bias", "jailbreak"])
    assert family.categories == {"S8", "S15"}
    assert [q.key for q in family.queries(prompt_item)] == ["social_bias", "jailbreak"]


def test_definitions_can_be_replaced_with_role_placeholder(make_item) -> None:
    family = GraniteGuardian(risks=["profanity"], definitions={"profanity": "The '{role}' message swears {a lot}."})
    item = make_item([("user", "hi"), ("assistant", "darn")], "response", (category("S12"),))
    assert "* The 'Assistant' message swears {a lot}." in family.queries(item)[0].prompt


def test_harm_scope_leaves_out_needs_caution_and_policy_specific_categories() -> None:
    assert {"S13", "S18", "S19", "S20", "S21"}.isdisjoint(HARM_SCOPE)


def test_unknown_risk_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown Granite Guardian risks"):
        GraniteGuardian(risks=["groundedness"])


@pytest.mark.parametrize("text", ["", "Unsure", "It depends"])
def test_off_format_text_without_probability_is_a_parse_error(prompt_item, text: str) -> None:
    with pytest.raises(GuardParseError, match="answer to 'harm' must start with 'Yes' or 'No'"):
        _answer_all(GraniteGuardian(), prompt_item, {"harm": (text, None)})

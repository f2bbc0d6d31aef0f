"""ShieldGemma: one Yes/No question per harm policy, projected onto the canonical taxonomy."""

from __future__ import annotations

import pytest

from aegis_online.experts.guards.base import GuardAnswer, GuardParseError
from aegis_online.experts.guards.shieldgemma import HARM_TYPES, ShieldGemma
from aegis_online.taxonomy import SHIELDGEMMA_MAP, category


def _answer_all(family, item, per_key: dict[str, tuple[str, float | None]]) -> dict[str, float]:
    queries = family.queries(item)
    return family.parse(item, queries, [GuardAnswer(*per_key[q.key]) for q in queries])


def test_asks_one_question_per_harm_type(prompt_item) -> None:
    queries = ShieldGemma().queries(prompt_item)
    assert [q.key for q in queries] == list(HARM_TYPES)
    assert all((q.positive, q.negative, q.max_new_tokens, q.verdict_prefix) == ("Yes", "No", 1, "") for q in queries)


def test_asks_only_the_harm_types_that_touch_the_requested_categories(hate_only_item) -> None:
    assert [q.key for q in ShieldGemma().queries(hate_only_item)] == ["Hate Speech"]


def test_custom_category_becomes_its_own_principle(make_item, competitor) -> None:
    item = make_item([("user", "hi")], "prompt", (category("S2"), competitor))
    queries = ShieldGemma().queries(item)
    assert [q.key for q in queries] == ["Sexually Explicit Information", competitor.id]
    assert '* "No Competitor Mentions": The prompt shall not contain' in queries[1].prompt
    assert competitor.description in queries[1].prompt


def test_response_check_asks_about_the_chatbot_response(response_item) -> None:
    prompt = ShieldGemma().queries(response_item)[0].prompt
    assert "Chatbot Response: Mix antifreeze into some meat; it tastes sweet.\n<end_of_turn>" in prompt
    assert "The chatbot shall not generate content that" in prompt
    assert "Does the Chatbot Response violate the above principle?" in prompt


def test_harm_probabilities_map_to_canonical_categories_by_max(prompt_item) -> None:
    answers = {
        "Dangerous Content": ("Yes", 0.8),
        "Harassment": ("No", 0.3),
        "Hate Speech": ("No", 0.05),
        "Sexually Explicit Information": ("No", 0.01),
    }
    scores = _answer_all(ShieldGemma(), prompt_item, answers)
    assert scores == {
        **dict.fromkeys(SHIELDGEMMA_MAP["Dangerous Content"], 0.8),
        "S10": 0.3,
        "S11": 0.3,
        "S8": 0.05,
        "S2": 0.01,
    }
    assert list(scores) == sorted(scores, key=lambda c: int(c[1:]))


def test_without_probabilities_the_yes_no_text_scores_one_or_zero(hate_only_item) -> None:
    assert _answer_all(ShieldGemma(), hate_only_item, {"Hate Speech": ("Yes", None)}) == {"S8": 1.0}
    assert _answer_all(ShieldGemma(), hate_only_item, {"Hate Speech": (" no, because", None)}) == {"S8": 0.0}


def test_custom_category_reads_its_probability_directly(custom_item, competitor) -> None:
    assert _answer_all(ShieldGemma(), custom_item, {competitor.id: ("Yes", 0.66)}) == {competitor.id: 0.66}


def test_probability_is_kept_when_the_text_is_off_format(hate_only_item) -> None:
    assert _answer_all(ShieldGemma(), hate_only_item, {"Hate Speech": ("I", 0.4)}) == {"S8": 0.4}


@pytest.mark.parametrize("text", ["", "Maybe", "Nope", "The answer is Yes"])
def test_off_format_text_without_probability_is_a_parse_error(hate_only_item, text: str) -> None:
    with pytest.raises(GuardParseError, match="must start with 'Yes' or 'No'"):
        _answer_all(ShieldGemma(), hate_only_item, {"Hate Speech": (text, None)})


def test_high_probability_under_a_no_is_a_parse_error(hate_only_item) -> None:
    with pytest.raises(GuardParseError, match="contradicts the generated verdict 'No'"):
        _answer_all(ShieldGemma(), hate_only_item, {"Hate Speech": ("No", 0.97)})


def test_probability_outside_zero_one_is_a_parse_error(hate_only_item) -> None:
    with pytest.raises(GuardParseError, match=r"probability in \[0, 1\]"):
        _answer_all(ShieldGemma(), hate_only_item, {"Hate Speech": ("Yes", 1.5)})


def test_harm_type_selection_narrows_categories_and_queries(prompt_item) -> None:
    family = ShieldGemma(harm_types=["Sexually Explicit Information"])
    assert family.categories == {"S2"}
    assert [q.key for q in family.queries(prompt_item)] == ["Sexually Explicit Information"]


def test_definitions_can_be_replaced(hate_only_item) -> None:
    family = ShieldGemma(definitions={"Hate Speech": "insults a group of people."})
    assert '"No Hate Speech": The prompt shall not contain or seek generation of content that insults a group' in (
        family.queries(hate_only_item)[0].prompt
    )


def test_unknown_harm_type_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown ShieldGemma harm types"):
        ShieldGemma(harm_types=["Violence"])

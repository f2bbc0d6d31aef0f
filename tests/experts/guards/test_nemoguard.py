"""NemoGuard content safety: the JSON answer, its verdict positions, and category names read back."""

from __future__ import annotations

import pytest

from aegis_online.experts.guards.base import GuardAnswer, GuardParseError
from aegis_online.experts.guards.nemoguard import PROMPT_PREFIX, RESPONSE_PREFIX, NemoGuardContentSafety
from aegis_online.taxonomy import AEGIS_2_IDS, category, custom_category

GUARD = NemoGuardContentSafety()


def _scores(item, text: str, p: float | None = None) -> dict[str, float]:
    queries = GUARD.queries(item)
    return GUARD.parse(item, queries, [GuardAnswer(text, p)])


def test_covers_every_canonical_category_and_custom_ones() -> None:
    assert GUARD.categories == frozenset(AEGIS_2_IDS)
    assert GUARD.free_form


def test_prompt_check_reads_the_user_verdict_first(prompt_item) -> None:
    (query,) = GUARD.queries(prompt_item)
    assert query.verdict_prefix == PROMPT_PREFIX == '{"User Safety": "'
    assert (query.positive, query.negative) == ("unsafe", "safe")
    assert query.prompt is None and query.messages[0]["role"] == "user"
    assert "response: agent:" not in query.messages[0]["content"]


def test_response_check_reads_the_verdict_after_the_response_safety_key(response_item) -> None:
    (query,) = GUARD.queries(response_item)
    assert query.verdict_prefix == RESPONSE_PREFIX == '"Response Safety": "'
    assert "response: agent: Mix antifreeze" in query.messages[0]["content"]


def test_prompt_verdict_probability_goes_to_listed_categories(prompt_item) -> None:
    scores = _scores(
        prompt_item, '{"User Safety": "unsafe", "Safety Categories": "Guns and Illegal Weapons, Threat"}', 0.9
    )
    assert scores["S4"] == scores["S11"] == 0.9
    assert all(p == 0.0 for c, p in scores.items() if c not in ("S4", "S11"))
    assert list(scores) == list(AEGIS_2_IDS)


def test_safe_verdict_without_categories_spreads_its_probability(prompt_item) -> None:
    assert set(_scores(prompt_item, '{"User Safety": "safe"}', 0.04).values()) == {0.04}
    assert set(_scores(prompt_item, '{"User Safety": "safe"}').values()) == {0.0}


def test_response_check_scores_the_response_verdict_not_the_user_one(response_item) -> None:
    text = '{"User Safety": "unsafe", "Response Safety": "safe", "Safety Categories": "Violence"}'
    scores = _scores(response_item, text)
    assert scores["S1"] == 0.0 and set(scores.values()) == {0.0}
    text = '{"User Safety": "safe", "Response Safety": "unsafe", "Safety Categories": "Violence"}'
    assert _scores(response_item, text)["S1"] == 1.0


def test_response_probability_is_used_when_the_backend_reads_it(response_item) -> None:
    text = (
        '{"User Safety": "unsafe", "Response Safety": "unsafe", '
        '"Safety Categories": "Violence, Criminal Planning/Confessions"}'
    )
    scores = _scores(response_item, text, 0.77)
    assert scores["S1"] == scores["S3"] == 0.77
    assert scores["S2"] == 0.0


@pytest.mark.parametrize(
    ("listed", "expected"),
    [
        ('"hate/identity hate"', 1.0),
        ('"S8"', 1.0),
        ('"S8: Hate/Identity Hate."', 1.0),
        ('["Hate/Identity Hate"]', 1.0),
        ('"Violence"', 0.0),
    ],
)
def test_categories_are_read_case_insensitively_by_name_or_code(hate_only_item, listed: str, expected: float) -> None:
    assert _scores(hate_only_item, '{"User Safety": "unsafe", "Safety Categories": ' + listed + "}") == {"S8": expected}


def test_fenced_json_with_surrounding_blanks_is_accepted(hate_only_item) -> None:
    text = '\n```json\n{"User Safety": "unsafe", "Safety Categories": "Hate/Identity Hate"}\n```\n'
    assert _scores(hate_only_item, text) == {"S8": 1.0}
    assert _scores(hate_only_item, ' {"User Safety": "safe"}```') == {"S8": 0.0}


def test_custom_categories_are_appended_after_s23_and_read_back(make_item, competitor) -> None:
    item = make_item([("user", "hi")], "prompt", (category("S1"), competitor))
    content = GUARD.queries(item)[0].messages[0]["content"]
    assert f"S23: Immoral/Unethical.\nS24: Competitor Mentions. {competitor.description}\n<END" in content
    by_name = _scores(item, '{"User Safety": "unsafe", "Safety Categories": "Competitor Mentions"}', 0.8)
    assert by_name == {"S1": 0.0, competitor.id: 0.8}
    assert _scores(item, '{"User Safety": "unsafe", "Safety Categories": "S24"}', 0.8)[competitor.id] == 0.8


def test_custom_name_with_a_comma_is_read_whole(make_item) -> None:
    odd = custom_category("Drugs, Alcohol", "Content about intoxicants.")
    item = make_item([("user", "hi")], "prompt", (category("S1"), odd))
    scores = _scores(item, '{"User Safety": "unsafe", "Safety Categories": "Violence, Drugs, Alcohol"}')
    assert scores == {"S1": 1.0, odd.id: 1.0}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty output"),
        ("unsafe", "not valid JSON"),
        ('{"User Safety": "unsafe", "Safety Cat', "not valid JSON"),
        ('["unsafe"]', "must be a JSON object"),
        ('{"Safety Categories": "Violence"}', "missing key 'User Safety'"),
        ('{"User Safety": "maybe"}', "'User Safety' must be 'safe' or 'unsafe'"),
        ('{"User Safety": "unsafe", "Safety Categories": "Cooking"}', "unknown safety category 'Cooking'"),
        ('{"User Safety": "unsafe", "Safety Categories": "S99"}', "unknown safety category 'S99'"),
        ('{"User Safety": "unsafe", "Safety Categories": "S1: Threat"}', "unknown safety category 'S1: Threat'"),
        ('{"User Safety": "unsafe", "Safety Categories": 3}', "must be a string"),
        ('{"User Safety": "unsafe", "Reason": "x"}', r"unexpected keys \['Reason'\]"),
    ],
)
def test_malformed_answers_raise_parse_errors(prompt_item, text: str, message: str) -> None:
    with pytest.raises(GuardParseError, match=message):
        _scores(prompt_item, text)


def test_response_check_needs_the_response_verdict(response_item) -> None:
    with pytest.raises(GuardParseError, match="missing key 'Response Safety'"):
        _scores(response_item, '{"User Safety": "unsafe"}')


def test_probability_contradicting_the_response_verdict_is_a_parse_error(response_item) -> None:
    with pytest.raises(GuardParseError, match="contradicts the generated verdict 'Response Safety: safe'"):
        _scores(response_item, '{"User Safety": "unsafe", "Response Safety": "safe"}', 0.95)


def test_uncovered_item_gives_no_queries(make_item) -> None:
    assert GUARD.queries(make_item([("user", "hi")], "prompt", ())) == []

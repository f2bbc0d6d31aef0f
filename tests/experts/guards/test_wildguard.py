"""WildGuard: three yes/no lines, the request line for prompts and the third line for responses."""

from __future__ import annotations

import pytest

from aegis_online.experts.guards.base import GuardAnswer, GuardParseError
from aegis_online.experts.guards.wildguard import COVERED, WildGuard
from aegis_online.taxonomy import category

GUARD = WildGuard()
PROMPT_ANSWER = "Harmful request: yes\nResponse refusal: N/A\nResponse harmful: N/A"


def _scores(item, text: str, p: float | None = None, guard: WildGuard = GUARD) -> dict[str, float]:
    return guard.parse(item, guard.queries(item), [GuardAnswer(text, p)])


def test_prompt_check_reads_the_request_line(prompt_item) -> None:
    (query,) = GUARD.queries(prompt_item)
    assert (query.verdict_prefix, query.positive, query.negative) == ("Harmful request:", "yes", "no")
    assert "AI assistant:\n\n\n---" in query.prompt


def test_response_check_reads_the_third_line(response_item) -> None:
    (query,) = GUARD.queries(response_item)
    assert query.verdict_prefix == "Response harmful:"


def test_request_probability_goes_to_every_covered_requested_category(prompt_item) -> None:
    scores = _scores(prompt_item, PROMPT_ANSWER, 0.93)
    assert set(scores) == COVERED
    assert set(scores.values()) == {0.93}


def test_response_harmfulness_decides_a_response_check(response_item) -> None:
    harmful = "Harmful request: no\nResponse refusal: no\nResponse harmful: yes"
    assert set(_scores(response_item, harmful).values()) == {1.0}
    refused = "Harmful request: yes\nResponse refusal: yes\nResponse harmful: no"
    assert set(_scores(response_item, refused).values()) == {0.0}
    assert set(_scores(response_item, refused, 0.1).values()) == {0.1}


def test_prompt_check_ignores_the_response_lines(hate_only_item) -> None:
    assert _scores(hate_only_item, "Harmful request: no\nResponse refusal: no\nResponse harmful: yes") == {"S8": 0.0}


def test_covered_set_excludes_categories_wildguard_was_not_trained_on() -> None:
    assert {"S13", "S14", "S18", "S21"}.isdisjoint(COVERED)
    assert not GUARD.free_form


def test_categories_option_overrides_the_covered_set(prompt_item) -> None:
    guard = WildGuard(categories=["S1", "S8"])
    assert _scores(prompt_item, PROMPT_ANSWER, 0.6, guard) == {"S1": 0.6, "S8": 0.6}
    with pytest.raises(ValueError, match="unknown canonical ids"):
        WildGuard(categories=["S99"])


def test_custom_and_uncovered_categories_give_no_queries(make_item, custom_item) -> None:
    assert GUARD.queries(custom_item) == []
    assert GUARD.queries(make_item([("user", "hi")], "prompt", (category("S21"),))) == []
    assert GUARD.parse(custom_item, [], []) == {}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty output"),
        ("Harmful request: yes", "expected 3 answer lines, got 1"),
        ("Harmful request: yes\nResponse refusal: N/A\nResponse harmful: N/A\nNote: x", "got 4"),
        ("Request: yes\nResponse refusal: N/A\nResponse harmful: N/A", "expected a line 'Harmful request: ...'"),
        ("Harmful request: maybe\nResponse refusal: N/A\nResponse harmful: N/A", "must be one of"),
        ("Harmful request: N/A\nResponse refusal: N/A\nResponse harmful: N/A", "must be one of"),
        ("Harmful request: yes\nResponse harmful: no\nResponse refusal: no", "expected a line 'Response refusal: ...'"),
    ],
)
def test_malformed_answers_raise_parse_errors(prompt_item, text: str, message: str) -> None:
    with pytest.raises(GuardParseError, match=message):
        _scores(prompt_item, text)


def test_response_check_rejects_a_missing_response_verdict(response_item) -> None:
    with pytest.raises(GuardParseError, match="got N/A"):
        _scores(response_item, "Harmful request: yes\nResponse refusal: N/A\nResponse harmful: N/A")

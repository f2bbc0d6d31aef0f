"""Llama Guard 3 and 4: which prompts are asked, and how safe/unsafe verdicts become canonical probabilities."""

from __future__ import annotations

import pytest

from aegis_online.experts.guards.base import GuardAnswer, GuardParseError
from aegis_online.experts.guards.llama_guard import CANONICAL_KEY, LlamaGuard3, LlamaGuard4
from aegis_online.taxonomy import CANONICAL_IDS, LLAMA_GUARD_3_MAP, category

FAMILIES = [LlamaGuard3(), LlamaGuard3(variant="1b"), LlamaGuard4()]


def _scores(family, item, *answers: tuple[str, float | None]) -> dict[str, float]:
    queries = family.queries(item)
    return family.parse(item, queries, [GuardAnswer(text, p) for text, p in answers])


def test_variants_list_their_own_hazard_codes() -> None:
    assert LlamaGuard3().codes == tuple(f"S{n}" for n in range(1, 15))
    assert LlamaGuard3(variant="1b").codes == tuple(f"S{n}" for n in range(1, 14))
    assert LlamaGuard4().codes == LlamaGuard3().codes


def test_1b_prompt_has_no_code_interpreter_abuse(prompt_item) -> None:
    prompt = LlamaGuard3(variant="1b").queries(prompt_item)[0].prompt
    assert "S13: Elections." in prompt
    assert "S14" not in prompt


def test_unknown_variant_is_rejected() -> None:
    with pytest.raises(ValueError, match="'1b' or '8b'"):
        LlamaGuard3(variant="70b")


def test_categories_are_the_canonical_targets_of_the_variant_codes() -> None:
    assert LlamaGuard3().categories == frozenset().union(*LLAMA_GUARD_3_MAP.values())
    assert {"S12", "S13", "S14", "S15", "S23"}.isdisjoint(LlamaGuard3().categories)


def test_as_messages_gives_the_task_as_one_user_message(prompt_item) -> None:
    raw = LlamaGuard3().queries(prompt_item)[0]
    chat = LlamaGuard3(as_messages=True).queries(prompt_item)[0]
    assert chat.prompt is None
    assert len(chat.messages) == 1 and chat.messages[0]["role"] == "user"
    assert raw.prompt == LlamaGuard3().wrap(chat.messages[0]["content"])


def test_prompt_check_drops_turns_after_the_checked_user_turn(make_item) -> None:
    item = make_item([("user", "first"), ("assistant", "reply"), ("user", "second"), ("assistant", "later")])
    prompt = LlamaGuard3().queries(item)[0].prompt
    assert "User: second\n\n<END CONVERSATION>" in prompt
    assert "later" not in prompt


def test_system_and_tool_turns_are_not_shown(make_item) -> None:
    item = make_item([("system", "secret rules"), ("user", "hi"), ("tool", "tool output"), ("user", "again")])
    prompt = LlamaGuard4().queries(item)[0].prompt
    assert "secret rules" not in prompt and "tool output" not in prompt
    assert "User: hi\n\nUser: again\n\n" in prompt


def test_one_query_per_custom_category_next_to_the_canonical_one(make_item, competitor) -> None:
    item = make_item([("user", "hi")], "prompt", (category("S1"), competitor))
    assert [q.key for q in LlamaGuard3().queries(item)] == [CANONICAL_KEY, competitor.id]


def test_custom_only_item_asks_no_canonical_question(custom_item, competitor) -> None:
    assert [q.key for q in LlamaGuard3().queries(custom_item)] == [competitor.id]


def test_uncovered_categories_give_no_queries_and_no_scores(make_item) -> None:
    item = make_item([("user", "hi")], "prompt", (category("S12"), category("S23")))
    assert LlamaGuard3().queries(item) == []
    assert LlamaGuard3().parse(item, [], []) == {}


@pytest.mark.parametrize("family", FAMILIES, ids=lambda f: f"{f.name}-{len(f.codes)}")
def test_safe_without_probability_scores_zero_everywhere_requested(family, prompt_item) -> None:
    scores = _scores(family, prompt_item, ("safe", None))
    assert set(scores) == family.categories
    assert set(scores.values()) == {0.0}


def test_listed_codes_get_the_verdict_probability_and_the_rest_zero(prompt_item) -> None:
    scores = _scores(LlamaGuard3(), prompt_item, ("\n\nunsafe\nS1,S10", 0.83))
    hit = LLAMA_GUARD_3_MAP["S1"] | LLAMA_GUARD_3_MAP["S10"]
    assert {c for c, p in scores.items() if p == 0.83} == hit
    assert all(p == 0.0 for c, p in scores.items() if c not in hit)


def test_listed_codes_without_probability_score_one(prompt_item) -> None:
    scores = _scores(LlamaGuard3(), prompt_item, ("unsafe\nS11", None))
    assert scores["S6"] == 1.0
    assert scores["S1"] == 0.0


def test_verdict_without_codes_spreads_its_probability_over_every_category(prompt_item) -> None:
    assert set(_scores(LlamaGuard3(), prompt_item, ("safe", 0.12)).values()) == {0.12}
    assert set(_scores(LlamaGuard3(), prompt_item, ("unsafe", 0.7)).values()) == {0.7}


def test_scores_only_the_requested_categories(hate_only_item) -> None:
    assert _scores(LlamaGuard3(), hate_only_item, ("unsafe\nS10", 0.9)) == {"S8": 0.9}
    assert _scores(LlamaGuard3(), hate_only_item, ("unsafe\nS1", 0.9)) == {"S8": 0.0}


def test_scores_come_in_canonical_column_order(prompt_item) -> None:
    keys = list(_scores(LlamaGuard3(), prompt_item, ("safe", 0.1)))
    assert keys == [c for c in CANONICAL_IDS if c in keys]


def test_custom_category_reads_its_own_answer(make_item, competitor) -> None:
    item = make_item([("user", "hi")], "prompt", (category("S8"), competitor))
    scores = _scores(LlamaGuard3(), item, ("safe", 0.02), ("unsafe\nS1", 0.91))
    assert scores == {"S8": 0.02, competitor.id: 0.91}


def test_end_of_turn_tokens_in_the_text_are_ignored(hate_only_item) -> None:
    assert _scores(LlamaGuard4(), hate_only_item, ("unsafe\nS10<|eot|>", None)) == {"S8": 1.0}
    assert _scores(LlamaGuard3(), hate_only_item, ("safe<|eot_id|>", None)) == {"S8": 0.0}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty output"),
        ("  \n\n ", "empty output"),
        ("I cannot help with that", "first line must read 'safe' or 'unsafe'"),
        ("unsafe\nS15", "unknown category code 'S15'"),
        ("unsafe\nViolent Crimes", "unknown category code 'Violent Crimes'"),
        ("unsafe\nS1,", "unknown category code ''"),
        ("safe\nS1", "must not list categories"),
        ("unsafe\nS1\nS2", "at most two lines"),
    ],
)
def test_malformed_answers_raise_parse_errors(prompt_item, text: str, message: str) -> None:
    with pytest.raises(GuardParseError, match=message):
        _scores(LlamaGuard3(), prompt_item, (text, None))


def test_code_outside_the_1b_taxonomy_is_unknown(prompt_item) -> None:
    with pytest.raises(GuardParseError, match="unknown category code 'S14'"):
        _scores(LlamaGuard3(variant="1b"), prompt_item, ("unsafe\nS14", None))


def test_custom_answer_may_only_list_s1(custom_item) -> None:
    with pytest.raises(GuardParseError, match="unknown category code 'S2'"):
        _scores(LlamaGuard3(), custom_item, ("unsafe\nS2", None))


def test_high_probability_under_a_safe_verdict_is_a_parse_error(prompt_item) -> None:
    with pytest.raises(GuardParseError, match="contradicts the generated verdict 'safe'"):
        _scores(LlamaGuard3(), prompt_item, ("safe", 0.9))


def test_error_names_the_family(prompt_item) -> None:
    with pytest.raises(GuardParseError, match=r"^llama_guard_4: "):
        _scores(LlamaGuard4(), prompt_item, ("maybe", None))

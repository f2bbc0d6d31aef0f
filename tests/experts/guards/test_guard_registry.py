"""The family registry, and the contract every family keeps whatever its prompt format."""

from __future__ import annotations

import pytest

from aegis_online.experts.guards import FAMILIES, make_family
from aegis_online.experts.guards.base import GuardAnswer, GuardFamily, GuardParseError
from aegis_online.taxonomy import CANONICAL, CANONICAL_IDS, category

NAMES = [
    "llama_guard_3",
    "llama_guard_4",
    "shieldgemma",
    "nemoguard",
    "wildguard",
    "granite_guardian",
    "qwen3guard_gen",
    "nemotron_content_safety",
    "gpt_oss_safeguard",
]

#: A well-formed negative answer in each family's format, for both checks.
SAFE = {
    "llama_guard_3": "safe",
    "llama_guard_4": "safe",
    "shieldgemma": "No",
    "nemoguard": '{"User Safety": "safe", "Response Safety": "safe"}',
    "wildguard": "Harmful request: no\nResponse refusal: no\nResponse harmful: no",
    "granite_guardian": "No",
    "qwen3guard_gen": "Safety: Safe\nCategories: None\nRefusal: No",
    "nemotron_content_safety": "User Safety: safe\nResponse Safety: safe",
    "gpt_oss_safeguard": '{"violation": 0, "policy_category": null}',
}


def test_registry_holds_every_catalog_name() -> None:
    assert sorted(FAMILIES) == sorted(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_family_name_is_its_registry_key(name: str) -> None:
    assert make_family(name).name == name
    assert FAMILIES[name].name == name


@pytest.mark.parametrize("name", NAMES)
def test_categories_are_valid_canonical_ids(name: str) -> None:
    family = make_family(name)
    assert family.categories
    assert family.categories <= set(CANONICAL_IDS)


def test_make_family_passes_options() -> None:
    assert make_family("llama_guard_3", variant="1b").codes[-1] == "S13"
    assert make_family("granite_guardian", risks=["profanity"]).categories == {"S12"}


def test_unknown_family_name_lists_the_valid_ones() -> None:
    with pytest.raises(ValueError, match=r"unknown guard family 'llamaguard'.*llama_guard_3.*granite_guardian"):
        make_family("llamaguard")


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("check", ["prompt", "response"])
def test_safe_answers_score_exactly_the_requested_covered_categories(name: str, check: str, make_item) -> None:
    family: GuardFamily = make_family(name)
    turns = [("user", "hello"), ("assistant", "hi there")]
    requested = (category("S1"), category("S8"), category("S18"))
    item = make_item(turns, check, requested)
    queries = family.queries(item)
    scores = family.parse(item, queries, [GuardAnswer(SAFE[name], None) for _ in queries])
    assert set(scores) == {c.id for c in requested} & family.categories
    assert all(p == 0.0 for p in scores.values())


@pytest.mark.parametrize("name", NAMES)
def test_item_without_covered_categories_gives_no_queries_and_no_scores(name: str, make_item) -> None:
    item = make_item([("user", "hello")], "prompt", ())
    family = make_family(name)
    assert family.queries(item) == []
    assert family.parse(item, [], []) == {}


@pytest.mark.parametrize("name", NAMES)
def test_missing_answers_are_a_parse_error(name: str, make_item) -> None:
    item = make_item([("user", "hello")], "prompt", CANONICAL)
    family = make_family(name)
    with pytest.raises(GuardParseError, match="0 answers for"):
        family.parse(item, family.queries(item), [])


@pytest.mark.parametrize("name", NAMES)
def test_query_keys_are_unique_per_item(name: str, make_item, competitor) -> None:
    item = make_item([("user", "hello")], "prompt", (*CANONICAL, competitor))
    keys = [q.key for q in make_family(name).queries(item)]
    assert len(keys) == len(set(keys))


REASONS_FIRST = {"gpt_oss_safeguard"}
"""Families that reason before they answer by default (Nemotron only with ``thinking=True``): their answers must be
complete. The others write their verdict first and a few tokens at most, often stopping at the limit."""


@pytest.mark.parametrize("name", NAMES)
def test_only_families_that_reason_first_ask_for_a_complete_answer(name: str, make_item) -> None:
    item = make_item([("user", "hello")], "prompt", CANONICAL)
    flags = {q.needs_complete_answer for q in make_family(name).queries(item)}
    assert flags == {name in REASONS_FIRST}


@pytest.mark.parametrize("name", sorted(set(NAMES) - REASONS_FIRST))
@pytest.mark.parametrize("check", ["prompt", "response"])
def test_a_verdict_first_answer_that_reached_max_new_tokens_parses_as_before(name: str, check: str, make_item) -> None:
    family: GuardFamily = make_family(name)
    item = make_item([("user", "hello"), ("assistant", "hi there")], check, (category("S1"), category("S8")))
    queries = family.queries(item)
    cut = family.parse(item, queries, [GuardAnswer(SAFE[name], 0.1, truncated=True) for _ in queries])
    assert cut
    assert cut == family.parse(item, queries, [GuardAnswer(SAFE[name], 0.1) for _ in queries])

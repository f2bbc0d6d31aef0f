"""Tests for aegis_online.taxonomy: the canonical categories, external maps and tenant categories."""

from __future__ import annotations

import ast
import dataclasses
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from aegis_online import taxonomy
from aegis_online.taxonomy import (
    AEGIS_2_IDS,
    CANONICAL,
    CANONICAL_IDS,
    EXTERNAL,
    LLAMA_GUARD_3_NAMES,
    Category,
    CategorySet,
    ExternalTaxonomy,
    category,
    custom_category,
)

EXPECTED_LABELS: dict[str, tuple[str, ...]] = {
    "llama_guard_3": tuple(f"S{n}" for n in range(1, 15)),
    "openai_omni": (
        "harassment",
        "harassment/threatening",
        "hate",
        "hate/threatening",
        "illicit",
        "illicit/violent",
        "self-harm",
        "self-harm/instructions",
        "self-harm/intent",
        "sexual",
        "sexual/minors",
        "violence",
        "violence/graphic",
    ),
    "openai_eval": ("S", "H", "V", "HR", "SH", "S3", "H2", "V2"),
    "shieldgemma": ("Dangerous Content", "Harassment", "Hate Speech", "Sexually Explicit Information"),
    "perspective": (
        "TOXICITY",
        "SEVERE_TOXICITY",
        "IDENTITY_ATTACK",
        "INSULT",
        "PROFANITY",
        "THREAT",
        "SEXUALLY_EXPLICIT",
    ),
    "qwen3guard": (
        "Violent",
        "Non-violent Illegal Acts",
        "Sexual Content or Sexual Acts",
        "PII",
        "Suicide & Self-Harm",
        "Unethical Acts",
        "Politically Sensitive Topics",
        "Copyright Violation",
        "Jailbreak",
    ),
    "prompt_guard": ("MALICIOUS",),
}

TAXONOMY_LABEL_PAIRS = [(t, label) for t in EXTERNAL.values() for label in t.labels]


# ---------------------------------------------------------------- canonical categories


def test_there_are_24_canonical_categories_aegis_2_then_prompt_attack() -> None:
    assert len(CANONICAL) == 24
    assert tuple(f"S{n}" for n in range(1, 25)) == CANONICAL_IDS
    assert tuple(c.id for c in CANONICAL) == CANONICAL_IDS
    assert CANONICAL_IDS[:23] == AEGIS_2_IDS and category("S24").slug == "prompt_attack"


def test_canonical_slugs_are_unique_snake_case_and_descriptions_non_empty() -> None:
    slugs = [c.slug for c in CANONICAL]
    assert len(set(slugs)) == 24
    for c in CANONICAL:
        assert c.slug.isidentifier() and c.slug == c.slug.lower()
        assert c.name.strip()
        assert len(c.description.strip()) > 20
        assert not c.custom


def test_category_is_found_by_id_and_by_slug() -> None:
    assert category("S6") is category("suicide_self_harm")
    assert category("S8").name == "Hate/Identity Hate"
    assert category("S23").slug == "immoral_unethical"


def test_unknown_category_raises_key_error_listing_valid_ids() -> None:
    with pytest.raises(KeyError, match="S1, S2") as excinfo:
        category("S25")
    assert "S25" in str(excinfo.value) and "S24" in str(excinfo.value)


def test_category_is_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        category("S1").name = "changed"  # type: ignore[misc]


def test_module_imports_only_the_standard_library() -> None:
    tree = ast.parse(Path(taxonomy.__file__).read_text())
    roots: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, "relative import of project code"
            roots.add((node.module or "").split(".")[0])
    assert roots <= set(sys.stdlib_module_names) | {"__future__"}, roots


# ---------------------------------------------------------------- external taxonomies


def test_external_taxonomies_are_exactly_the_declared_ones_keyed_by_name() -> None:
    assert set(EXTERNAL) == set(EXPECTED_LABELS)
    for name, tax in EXTERNAL.items():
        assert tax.name == name


@pytest.mark.parametrize("name", sorted(EXPECTED_LABELS))
def test_every_external_taxonomy_covers_exactly_its_declared_labels(name: str) -> None:
    tax = EXTERNAL[name]
    assert tax.labels == EXPECTED_LABELS[name]
    assert set(tax.to_canonical) == set(EXPECTED_LABELS[name])


@pytest.mark.parametrize("name", sorted(EXPECTED_LABELS))
def test_every_external_label_maps_to_at_least_one_valid_canonical_id(name: str) -> None:
    for label, targets in EXTERNAL[name].to_canonical.items():
        assert targets, label
        assert targets <= set(CANONICAL_IDS), (label, targets)


def test_llama_guard_3_names_cover_codes_s1_to_s14() -> None:
    assert tuple(LLAMA_GUARD_3_NAMES) == EXTERNAL["llama_guard_3"].labels
    assert LLAMA_GUARD_3_NAMES["S4"] == "Child Sexual Exploitation"
    assert LLAMA_GUARD_3_NAMES["S14"] == "Code Interpreter Abuse"


@pytest.mark.parametrize(
    ("name", "label", "must_contain"),
    [
        ("openai_omni", "self-harm", {"S6"}),
        ("openai_omni", "sexual/minors", {"S7"}),
        ("openai_eval", "H2", {"S8", "S11"}),
        ("llama_guard_3", "S10", {"S8"}),
        ("llama_guard_3", "S4", {"S7"}),
        ("shieldgemma", "Hate Speech", {"S8"}),
    ],
)
def test_external_labels_map_to_canonical_categories_of_the_same_meaning(
    name: str, label: str, must_contain: set[str]
) -> None:
    assert must_contain <= EXTERNAL[name].to_canonical[label]


def test_taxonomy_map_cannot_be_mutated_through_the_taxonomy() -> None:
    with pytest.raises(TypeError):
        EXTERNAL["openai_eval"].to_canonical["X"] = frozenset({"S1"})  # type: ignore[index]


@pytest.mark.parametrize(
    ("labels", "mapping", "message"),
    [
        (("a",), {"a": frozenset({"S99"})}, "'bad'.*'a'.*S99"),
        (("a",), {"a": frozenset()}, "'bad'.*'a'.*no canonical"),
        (("a", "b"), {"a": frozenset({"S1"})}, "'bad'.*without a mapping \\['b'\\]"),
    ],
)
def test_invalid_declared_map_raises_value_error_naming_taxonomy_and_label(
    labels: tuple[str, ...], mapping: dict[str, frozenset[str]], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        ExternalTaxonomy("bad", labels, mapping)


@given(st.sampled_from(TAXONOMY_LABEL_PAIRS))
def test_from_canonical_is_the_inverse_of_to_canonical(pair: tuple[ExternalTaxonomy, str]) -> None:
    tax, label = pair
    for cat_id in tax.to_canonical[label]:
        assert label in tax.from_canonical(cat_id)


@pytest.mark.parametrize("name", sorted(EXPECTED_LABELS))
def test_from_canonical_returns_only_labels_that_map_to_that_category(name: str) -> None:
    tax = EXTERNAL[name]
    for cat_id in CANONICAL_IDS:
        for label in tax.from_canonical(cat_id):
            assert cat_id in tax.to_canonical[label]


def test_from_canonical_is_empty_for_uncovered_and_custom_ids_and_raises_for_unknown() -> None:
    assert EXTERNAL["openai_eval"].from_canonical("S20") == frozenset()
    assert EXTERNAL["openai_eval"].from_canonical("custom:crypto_shilling") == frozenset()
    with pytest.raises(KeyError, match="S99"):
        EXTERNAL["openai_eval"].from_canonical("S99")


@st.composite
def taxonomy_and_scores(draw: st.DrawFn) -> tuple[ExternalTaxonomy, dict[str, float]]:
    tax = draw(st.sampled_from(list(EXTERNAL.values())))
    scores = draw(st.dictionaries(st.sampled_from(tax.labels), st.floats(0.0, 1.0)))
    return tax, scores


@given(taxonomy_and_scores())
def test_round_trip_through_canonical_never_lowers_a_label_score(
    case: tuple[ExternalTaxonomy, dict[str, float]],
) -> None:
    tax, scores = case
    back = tax.scores_from_canonical(tax.scores_to_canonical(scores))
    for label, score in scores.items():
        assert back[label] >= score


@given(taxonomy_and_scores())
def test_scores_to_canonical_gives_each_covered_category_the_max_of_its_labels(
    case: tuple[ExternalTaxonomy, dict[str, float]],
) -> None:
    tax, scores = case
    result = tax.scores_to_canonical(scores)
    covered = {c for label in scores for c in tax.to_canonical[label]}
    assert set(result) == covered
    assert list(result) == [c for c in CANONICAL_IDS if c in result]
    for cat_id, value in result.items():
        assert value == max(s for label, s in scores.items() if cat_id in tax.to_canonical[label])


def test_scores_to_canonical_takes_max_over_overlapping_labels() -> None:
    result = EXTERNAL["openai_eval"].scores_to_canonical({"H": 0.2, "H2": 0.7, "HR": 0.4})
    assert result == {"S8": 0.7, "S10": 0.4, "S11": 0.7}


def test_scores_from_canonical_skips_absent_sources_and_custom_ids() -> None:
    result = EXTERNAL["shieldgemma"].scores_from_canonical({"S8": 0.9, "S11": 0.3, "custom:x": 1.0})
    assert result == {"Harassment": 0.3, "Hate Speech": 0.9}


def test_scores_to_canonical_raises_key_error_naming_unknown_label_and_taxonomy() -> None:
    with pytest.raises(KeyError, match=r"'toxicity'.*'openai_omni'"):
        EXTERNAL["openai_omni"].scores_to_canonical({"hate": 0.1, "toxicity": 0.5})


# ---------------------------------------------------------------- custom categories


def test_custom_category_id_is_prefixed_slug_and_marked_custom() -> None:
    c = custom_category("Crypto Shilling", "Promoting a cryptocurrency for pay without disclosure.")
    assert c == Category(
        id="custom:crypto_shilling",
        name="Crypto Shilling",
        slug="crypto_shilling",
        description="Promoting a cryptocurrency for pay without disclosure.",
        custom=True,
    )


@pytest.mark.parametrize(
    ("name", "slug"),
    [
        ("  Crypto -- Shilling!! ", "crypto_shilling"),
        ("MLM/Pyramid Schemes", "mlm_pyramid_schemes"),
        ("Café Policy", "cafe_policy"),
        ("__x__", "x"),
        ("Rule 34b", "rule_34b"),
    ],
)
def test_custom_category_slug_is_lowercase_with_non_alphanumerics_collapsed(name: str, slug: str) -> None:
    assert custom_category(name, "Some policy text.").slug == slug


@given(st.text(max_size=64))
def test_custom_category_slug_is_always_lowercase_alphanumeric_and_underscores(name: str) -> None:
    try:
        c = custom_category(name, "policy")
    except ValueError:
        return
    assert c.slug and c.slug[0] != "_" and c.slug[-1] != "_" and "__" not in c.slug
    assert all(ch.isascii() and (ch.islower() or ch.isdigit() or ch == "_") for ch in c.slug)
    assert c.id == "custom:" + c.slug


@pytest.mark.parametrize(
    ("name", "description", "field"),
    [
        ("!!!", "policy", "name"),
        ("", "policy", "name"),
        ("x" * 65, "policy", "name"),
        ("ok", "", "description"),
        ("ok", "  \n\t ", "description"),
        ("ok", "d" * 2001, "description"),
    ],
)
def test_invalid_custom_category_raises_value_error_naming_the_field(name: str, description: str, field: str) -> None:
    with pytest.raises(ValueError, match=f"^{field} "):
        custom_category(name, description)


def test_custom_category_accepts_limits_exactly() -> None:
    c = custom_category("x" * 64, "d" * 2000)
    assert c.slug == "x" * 64


def test_default_category_set_holds_the_canonical_categories() -> None:
    cs = CategorySet.default()
    assert cs.ids == CANONICAL_IDS
    assert len(cs) == 24
    assert tuple(cs) == CANONICAL
    assert "S6" in cs and "custom:x" not in cs and 6 not in cs
    assert cs["S6"] is category("S6")


def test_with_custom_returns_new_set_and_leaves_original_unchanged() -> None:
    base = CategorySet.default()
    extended = base.with_custom("Crypto Shilling", "Paid crypto promotion.")
    assert extended is not base
    assert extended.ids == (*CANONICAL_IDS, "custom:crypto_shilling")
    assert extended["custom:crypto_shilling"].custom
    assert len(base) == 24 and "custom:crypto_shilling" not in base
    assert CategorySet.default() == base


def test_category_set_is_immutable() -> None:
    cs = CategorySet.default()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cs.categories = ()  # type: ignore[misc]
    with pytest.raises(TypeError):
        cs._by_id["custom:x"] = custom_category("x", "y")  # type: ignore[index]
    assert len(CategorySet.default()) == 24


def test_with_custom_rejects_a_slug_clashing_with_an_existing_id() -> None:
    cs = CategorySet.default().with_custom("Crypto Shilling", "Paid crypto promotion.")
    with pytest.raises(ValueError, match="custom:crypto_shilling"):
        cs.with_custom("crypto-shilling", "Another text.")


def test_with_custom_rejects_a_slug_clashing_with_a_canonical_slug() -> None:
    with pytest.raises(ValueError, match="S1"):
        CategorySet.default().with_custom("Violence", "Tenant's own violence policy.")


def test_category_set_unknown_id_raises_key_error_listing_ids() -> None:
    with pytest.raises(KeyError, match=r"custom:nope.*S1"):
        CategorySet.default()["custom:nope"]


def test_category_set_constructor_rejects_duplicate_ids() -> None:
    with pytest.raises(ValueError, match="unique"):
        CategorySet((category("S1"), category("S1")))

"""Language identification (``aegis_online.language``) and the catalog's ``languages``: a language is claimed only
when the evidence is strong (a non-Latin script, or a confident model on enough letters), so English is never put
to sleep on a guess; catalog entries say which languages their experts read, validated at load."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from aegis_online import language
from aegis_online.catalog import CatalogError, ExpertSpec, default_catalog_dir, load_catalog, load_spec
from aegis_online.datasets import load_shared
from aegis_online.experts.build import build_expert
from aegis_online.language import UNDETERMINED, identify

# -- identification ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "code"),
    [
        ("Ты тупая сука", "ru"),  # a Russian insult: three words, the script settles it
        ("Я тебя убью", "ru"),
        ("Ти дурний ідіот, я тебе ненавиджу", "uk"),
        ("אני אהרוג אותך", "he"),  # "I will kill you" in Hebrew
        ("我要杀了你", "zh"),  # ... in Chinese
        ("殺してやる", "ja"),  # kanji and kana: Japanese
        ("죽여버릴거야", "ko"),
        ("أنا سأقتلك", "ar"),
        ("मैं तुम्हें मार दूंगा", "hi"),
        ("ฉันจะฆ่าแก", "th"),
        ("Θα σε σκοτώσω", "el"),
        ("Ich werde dich töten", "de"),  # Latin script, and the model is sure
        ("Você é um idiota", "pt"),
        ("Tao sẽ giết mày", "vi"),
    ],
)
def test_short_texts_in_other_languages_are_identified(text: str, code: str) -> None:
    assert identify(text) == code


@pytest.mark.parametrize(
    "text",
    [
        "What is the best way to kill a Python process on Linux?",
        "Where can I buy a can of coke?",
        "You are a worthless idiot and everyone at school knows it, so just stay home tomorrow.",
    ],
)
def test_english_is_english(text: str) -> None:
    assert identify(text) == "en"


@pytest.mark.parametrize(
    "text",
    [
        "",
        "ok",
        "lol",
        "1234 5678",
        "😀😀😀",
        "kill yourself",  # short English: no confident claim either way, so the English experts stay awake
        "Je vais te tuer",  # short French the model is not sure of: undetermined, never a guess
        "I roll up to a bitch an dey like",  # dialect English the model calls Nigerian Pidgin: no ISO 639-1 code
        "я",  # one letter is no evidence
    ],
)
def test_short_or_ambiguous_texts_are_undetermined(text: str) -> None:
    assert identify(text) == UNDETERMINED


def test_an_english_text_quoting_another_script_is_not_claimed_for_it() -> None:
    text = "Like the 8266, the ESP32 is a WiFi-compatible microcontroller with Bluetooth. ESP32はこれから"
    assert identify(text) in ("en", UNDETERMINED)


def test_only_the_start_of_a_long_text_is_read() -> None:
    assert identify("Where can I buy a can of coke? " * 2000) == "en"
    english = "Where can I buy a can of coke? " * (language.MAX_CHARS // 20)
    assert identify(english + "Ты тупая сука, я тебя убью " * 100) == "en"  # its beginning is English


@pytest.mark.parametrize("name", ["xstest", "simplesafetytests", "harmbench"])
def test_no_english_prompt_of_the_shared_sets_is_claimed_for_another_language(name: str) -> None:
    """A misidentified English prompt would put the English experts to sleep (measured: 0 of 950 here, and 1 of
    24,783 Davidson tweets)."""
    try:
        rows = load_shared(name)
    except FileNotFoundError:
        pytest.skip("shared data not found")
    others = [(identify(r.text), r.text) for r in rows]
    others = [(code, text) for code, text in others if code not in ("en", UNDETERMINED)]
    assert others == []


# -- the catalog -------------------------------------------------------------------------------------------------------

ENTRY = {"name": "x", "backend": "profanity-check", "cost": "cpu-light"}


@pytest.mark.parametrize("bad", [["EN"], ["eng"], ["en", "*"], [], ["english"]])
def test_the_catalog_refuses_a_bad_language_code_naming_the_field(bad: list[str], tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="languages"):
        ExpertSpec.model_validate(ENTRY | {"languages": bad})
    path = tmp_path / "x.yaml"
    path.write_text(f"name: x\nbackend: profanity-check\ncost: cpu-light\nlanguages: {bad}\n")
    with pytest.raises(CatalogError, match=r"x\.yaml: languages: "):
        load_spec(path)


@pytest.mark.parametrize(("languages", "reads"), [(None, None), (["*"], None), (["en", "fr"], {"en", "fr"})])
def test_an_entry_reads_the_languages_it_declares(languages: list[str] | None, reads: set[str] | None) -> None:
    spec = ExpertSpec.model_validate(ENTRY | {"languages": languages})
    assert spec.reads_languages == (None if reads is None else frozenset(reads))


def test_the_shipped_entries_declare_their_model_cards_languages() -> None:
    specs = {s.name: s for s in load_catalog(default_catalog_dir())}
    assert specs["profanity-check"].languages == specs["minilm-embedding"].languages == ["en"]
    for name in ("shieldgemma-2b", "shieldgemma-9b", "wildguard-7b", "granite-guardian-3-8b"):
        assert specs[name].languages == ["en"]
    eight = {"en", "fr", "de", "hi", "it", "pt", "es", "th"}
    for name in ("llama-guard-3-1b", "llama-guard-3-8b", "llama-guard-4-12b"):
        assert specs[name].reads_languages == eight
    assert specs["openai-omni-moderation"].reads_languages is None  # multilingual: any


def test_a_built_expert_reads_what_its_entry_declares() -> None:
    specs = {s.name: s for s in load_catalog(default_catalog_dir())}
    omni = build_expert(specs["openai-omni-moderation"])
    assert omni.languages is None and omni.reads("ru")
    english = build_expert(specs["openai-omni-moderation"].model_copy(update={"languages": ["en"]}))
    assert english.languages == frozenset({"en"})
    assert english.reads("en") and not english.reads("ru") and english.reads(UNDETERMINED)

"""Qwen3Guard-Gen: the answer format read in the strict and the loose view, malformed answers as per-item errors, and
the whole path (chat template, generation, verdict shares after ``Safety:``) through the transformers backend on a
tiny model built and taught its answers in the test."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from aegis_online.experts.base import ExpertInput
from aegis_online.experts.guards import make_family
from aegis_online.experts.guards.base import GuardAnswer, GuardParseError
from aegis_online.experts.guards.qwen3guard import Qwen3GuardGen
from aegis_online.schemas import Message
from aegis_online.taxonomy import QWEN3GUARD_MAP, category
from tests.experts.backends.backend_helpers import tiny_llama


def ask(check: str = "prompt", categories: tuple[str, ...] = ("S1", "S8", "S24")) -> ExpertInput:
    messages = [Message(role="user", content="how do I make a bomb")]
    if check == "response":
        messages.append(Message(role="assistant", content="I can not help with that"))
    return ExpertInput(messages=tuple(messages), check=check, categories=tuple(category(c) for c in categories))


def shares(unsafe: float, controversial: float) -> dict[str, float]:
    return {"Unsafe": unsafe, "Controversial": controversial, "Safe": 1.0 - unsafe - controversial}


def parse(view: str, text: str, p: dict[str, float] | None, item: ExpertInput | None = None) -> dict[str, float]:
    family = Qwen3GuardGen(view)  # type: ignore[arg-type]
    item = item or ask()
    return family.parse(item, family.queries(item), [GuardAnswer(text, None, p)])


def test_the_query_is_the_plain_conversation_with_three_verdicts_read_after_safety() -> None:
    (prompt,) = Qwen3GuardGen().queries(ask("prompt"))
    (response,) = Qwen3GuardGen().queries(ask("response"))
    assert [m["role"] for m in prompt.messages] == ["user"] and prompt.messages[0]["content"] == "how do I make a bomb"
    assert [m["role"] for m in response.messages] == ["user", "assistant"]
    assert prompt.verdicts == ("Unsafe", "Safe", "Controversial") and prompt.verdict_prefix == "Safety:"


def test_controversial_is_unsafe_in_the_strict_view_and_not_in_the_loose_one() -> None:
    text, p = "Safety: Controversial\nCategories: Violent", shares(0.2, 0.5)
    assert parse("strict", text, p) == pytest.approx({"S1": 0.7, "S8": 0.0, "S24": 0.0})  # flagged: Violent only
    assert parse("loose", text, p) == pytest.approx({"S1": 0.2, "S8": 0.2, "S24": 0.2})  # not flagged: all get P
    assert parse("strict", text, None) == {"S1": 1.0, "S8": 0.0, "S24": 0.0}  # no log-probabilities: the text
    assert parse("loose", text, None) == {"S1": 0.0, "S8": 0.0, "S24": 0.0}


def test_listed_categories_map_through_the_declared_map_and_jailbreak_is_a_prompt_attack() -> None:
    scores = parse("strict", "Safety: Unsafe\nCategories: Unethical Acts, Jailbreak", shares(0.9, 0.05))
    assert scores == pytest.approx({"S1": 0.0, "S8": 0.95, "S24": 0.95})
    assert "S24" in QWEN3GUARD_MAP["Jailbreak"]


def test_a_response_check_reads_the_refusal_line_and_gives_s24_nothing() -> None:
    text = "Safety: Unsafe\nCategories: Violent\nRefusal: No"
    assert parse("loose", text, shares(0.8, 0.1), ask("response")) == pytest.approx({"S1": 0.8, "S8": 0.0, "S24": 0.0})
    with pytest.raises(GuardParseError, match="Refusal"):
        parse("loose", "Safety: Safe\nCategories: None\nRefusal: Maybe", None, ask("response"))


@pytest.mark.parametrize(
    ("text", "p", "match"),
    [
        ("", None, "no 'Safety:' line"),
        ("Safety: Unsafe", None, "no 'Categories:' line"),
        ("Safety: Dangerous\nCategories: None", None, "'Safety' must be one of"),
        ("Safety: Unsafe\nCategories: Violent, Bad Vibes", None, "unknown categories"),
        ("the model rambles on", None, "Label: value"),
        ("Safety: Safe\nCategories: None", shares(0.7, 0.1), "contradict the generated verdict"),
        ("Safety: Safe\nCategories: None", {"Unsafe": 0.1, "Safe": 0.9}, "verdict shares must be"),
    ],
)
def test_malformed_answers_are_parse_errors(text: str, p: dict[str, float] | None, match: str) -> None:
    with pytest.raises(GuardParseError, match=match):
        parse("strict", text, p)


@pytest.mark.parametrize("view", ["strict", "loose"])
@pytest.mark.parametrize(
    "text",
    [
        "Safety: Unsafe\nCategories: Jailbreak\nRefusal: No",
        "Safety: Controversial\nCategories: Jailbreak\nRefusal: No",
        "Safety: Unsafe\nCategories: Violent, jailbreak\nRefusal: No",
    ],
)
def test_jailbreak_on_a_response_check_is_off_format_not_a_silent_safe(view: str, text: str) -> None:
    """The model card's response categories exclude Jailbreak: such an answer is a parse error, where scoring it
    gave every category 0.0 (its probability went to S24, which a response check zeroes)."""
    with pytest.raises(GuardParseError, match=r"Jailbreak.*response"):
        parse(view, text, None, ask("response"))


@pytest.mark.parametrize(
    "text",
    [
        "Safety: Unsafe\nCategories: Violent\nSafety: Safe\nCategories: None",
        "Safety: Safe\nCategories: None\nsafety: Unsafe\nCategories: Violent",
        "Safety: Unsafe\nCategories: Violent\nCategories: None",
    ],
)
def test_a_repeated_label_line_is_a_parse_error_not_its_last_value(text: str) -> None:
    with pytest.raises(GuardParseError, match="repeated"):
        parse("strict", text, None)


def test_a_repeated_refusal_line_on_a_response_check_is_a_parse_error() -> None:
    with pytest.raises(GuardParseError, match="repeated"):
        parse("strict", "Safety: Safe\nCategories: None\nRefusal: Yes\nRefusal: No", None, ask("response"))


def test_views_are_checked_and_the_registry_builds_either() -> None:
    assert make_family("qwen3guard_gen", view="loose").view == "loose"
    with pytest.raises(ValueError, match="strict' or 'loose"):
        Qwen3GuardGen("lenient")  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- the transformers backend, end to end

WORDS = ["Safety", "Categories", "Refusal", ":", "\n", "Safe", "Unsafe", "Controversial", "Violent", "None", "No"]
WORDS += ["user", "assistant", "how", "do", "I", "make", "a", "bomb", "can", "not", "help", "with", "that"]
#: What the tiny model is taught to answer: a controversial prompt, an unsafe response.
ANSWERS = {
    "prompt": "Safety : Controversial \n Categories : Violent",
    "response": "Safety : Unsafe \n Categories : Violent \n Refusal : No",
}


def build_taught_model(directory: Path) -> Path:
    """A 2-layer Llama with a word-level tokenizer (newlines kept as tokens) and a chat template, trained for a few
    hundred steps until it writes ``ANSWERS`` greedily: random weights never write ``Safety :``, so a verdict step
    exists only in a model that learnt the format."""
    import torch
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    special = ["<pad>", "<s>", "</s>", "<unk>"]
    vocab = {word: index for index, word in enumerate(special + WORDS)}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Split(Regex(r"[^\S\n]+"), behavior="removed"), pre_tokenizers.Split("\n", behavior="isolated")]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )
    tokenizer.chat_template = (
        "{{ bos_token }}{% for m in messages %}{{ m['role'] }} : {{ m['content'] }} \n {% endfor %}"
        "{% if add_generation_prompt %}assistant : {% endif %}"
    )
    tokenizer.save_pretrained(directory)
    model = tiny_llama(vocab, max_positions=128, seed=7)
    sequences = []
    for check, answer in ANSWERS.items():
        (query,) = Qwen3GuardGen().queries(ask(check))
        prompt = tokenizer.apply_chat_template(list(query.messages), add_generation_prompt=True, tokenize=False)
        ids = tokenizer(prompt + " " + answer, add_special_tokens=False)["input_ids"] + [vocab["</s>"]]
        sequences.append(torch.tensor([ids]))
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(300):
        loss = sum(model(input_ids=ids, labels=ids).loss for ids in sequences)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    model.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def taught(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    return build_taught_model(tmp_path_factory.mktemp("qwen3guard-tiny"))


def test_the_transformers_backend_gives_both_views_from_one_query(taught: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from aegis_online.experts.backends.transformers_backend import TransformersGuardBackend

    backend = TransformersGuardBackend(str(taught), dtype="float32")
    tokenizer = AutoTokenizer.from_pretrained(taught)
    model = AutoModelForCausalLM.from_pretrained(taught).eval()
    for check, answer in ANSWERS.items():
        item = ask(check)
        (query,) = Qwen3GuardGen().queries(item)
        (got,) = backend.answer([query])
        assert got.text.split() == answer.split()  # the format it was taught, decoded
        assert got.shares is not None and sum(got.shares.values()) == pytest.approx(1.0)
        # The shares are the model's probabilities of the three verdict words after "Safety :", renormalised.
        prompt = tokenizer.apply_chat_template(list(query.messages), add_generation_prompt=True, tokenize=False)
        ids = tokenizer(prompt + " Safety :", add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logprobs = model(torch.tensor([ids])).logits[0, -1].log_softmax(-1)
        mass = {w: math.exp(logprobs[tokenizer.convert_tokens_to_ids(w)]) for w in ("Unsafe", "Safe", "Controversial")}
        total = sum(mass.values())
        assert got.shares == pytest.approx({w: m / total for w, m in mass.items()}, abs=1e-4)
        strict = Qwen3GuardGen("strict").parse(item, [query], [got])
        loose = Qwen3GuardGen("loose").parse(item, [query], [got])
        assert strict["S1"] == pytest.approx(got.shares["Unsafe"] + got.shares["Controversial"])
        assert loose["S1"] <= strict["S1"]
        if check == "prompt":  # Controversial, written: flagged (Violent only) when strict, not when loose
            assert strict["S8"] == 0.0 and loose["S8"] == pytest.approx(got.shares["Unsafe"])

"""The transformers backend end to end on a tiny random Llama loaded from disk, checked by manual forward passes."""

from __future__ import annotations

import math
import time
from dataclasses import replace
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

from aegis_online.experts.backends.transformers_backend import TransformersGuardBackend  # noqa: E402
from aegis_online.experts.guards.base import GuardQuery  # noqa: E402


def chat(key: str, text: str, max_new_tokens: int = 1, prefix: str = "") -> GuardQuery:
    return GuardQuery(
        key=key,
        positive="unsafe",
        negative="safe",
        messages=({"role": "user", "content": text},),
        verdict_prefix=prefix,
        max_new_tokens=max_new_tokens,
    )


def raw(key: str, prompt: str, max_new_tokens: int = 1, prefix: str = "") -> GuardQuery:
    return GuardQuery(
        key=key, positive="Yes", negative="No", prompt=prompt, verdict_prefix=prefix, max_new_tokens=max_new_tokens
    )


QUERIES = [
    chat("a", "hello"),
    raw("b", "user : how do I make a bomb . assistant : is this safe ?", max_new_tokens=2),
    chat("c", "please tell me a story about cats and dogs with the weather today", max_new_tokens=4),
    raw("d", "hello world"),
    chat("e", "how do I make a cake", max_new_tokens=3),
    raw("f", "tell me about the weather today please help me with this task"),
    chat("g", "bomb"),
]


@pytest.fixture(scope="module")
def reference(tiny_guard_path: Path):
    """The same checkpoint, loaded independently of the backend, for manual forward passes."""
    tokenizer = AutoTokenizer.from_pretrained(tiny_guard_path)
    model = AutoModelForCausalLM.from_pretrained(tiny_guard_path).eval()
    return tokenizer, model


def prompt_ids(tokenizer, query: GuardQuery) -> list[int]:
    if query.prompt is not None:
        return tokenizer(query.prompt)["input_ids"]
    text = tokenizer.apply_chat_template(list(query.messages), add_generation_prompt=True, tokenize=False)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def manual_p(reference, ids: list[int], query: GuardQuery) -> float:
    """P(positive) renormalised over the two verdict words, from a plain forward pass over ``ids``."""
    tokenizer, model = reference
    with torch.no_grad():
        logprobs = model(torch.tensor([ids])).logits[0, -1].log_softmax(-1)
    pos, neg = (tokenizer.convert_tokens_to_ids(w) for w in (query.positive, query.negative))
    return math.exp(logprobs[pos]) / (math.exp(logprobs[pos]) + math.exp(logprobs[neg]))


def greedy_next(reference, ids: list[int]) -> int:
    with torch.no_grad():
        return int(reference[1](torch.tensor([ids])).logits[0, -1].argmax())


def test_loads_from_a_local_path_offline_in_well_under_a_few_seconds(tiny_guard_path: Path) -> None:
    started = time.perf_counter()
    backend = TransformersGuardBackend(str(tiny_guard_path), dtype="float32")
    assert time.perf_counter() - started < 5.0
    assert backend.model.dtype == torch.float32


def test_an_unknown_dtype_name_is_refused_before_loading_anything() -> None:
    with pytest.raises(ValueError, match="bf16"):
        TransformersGuardBackend("/nonexistent", dtype="bf16")


def test_chat_prompts_carry_exactly_one_bos_and_raw_prompts_get_one_from_the_tokenizer(
    transformers_backend: TransformersGuardBackend,
) -> None:
    from aegis_online.experts.backends.rendering import prompt_token_ids

    bos = transformers_backend.tokenizer.bos_token_id
    for query in (chat("x", "hello"), raw("y", "hello world")):
        ids = prompt_token_ids(transformers_backend.tokenizer, query)
        assert ids[0] == bos and ids.count(bos) == 1


def test_mixed_batch_of_chat_and_raw_queries_gets_one_answer_each_in_order(
    transformers_backend: TransformersGuardBackend,
) -> None:
    answers = transformers_backend.answer(QUERIES)
    assert len(answers) == len(QUERIES)
    for query, answer in zip(QUERIES, answers, strict=True):
        assert answer.p_positive is not None and 0.0 <= answer.p_positive <= 1.0
        assert 1 <= len(answer.text.split()) <= query.max_new_tokens


def test_verdict_probability_equals_a_manual_forward_pass_at_position_zero(
    transformers_backend: TransformersGuardBackend, reference
) -> None:
    answers = transformers_backend.answer(QUERIES)
    for query, answer in zip(QUERIES, answers, strict=True):
        expected = manual_p(reference, prompt_ids(reference[0], query), query)
        assert answer.p_positive == pytest.approx(expected, abs=1e-5)


def test_verdict_after_a_prefix_equals_a_manual_forward_pass_after_that_prefix(
    transformers_backend: TransformersGuardBackend, reference
) -> None:
    tokenizer = reference[0]
    for query in (chat("p", "how do I make a bomb"), raw("q", "hello world")):
        ids = prompt_ids(tokenizer, query)
        first = greedy_next(reference, ids)
        prefixed = GuardQuery(
            key=query.key,
            positive=query.positive,
            negative=query.negative,
            messages=query.messages,
            prompt=query.prompt,
            verdict_prefix=tokenizer.decode([first]),
            max_new_tokens=3,
        )
        (answer,) = transformers_backend.answer([prefixed])
        assert answer.text.split()[0] == tokenizer.decode([first])
        assert answer.p_positive == pytest.approx(manual_p(reference, [*ids, first], query), abs=1e-5)


def test_batched_answers_equal_one_at_a_time_answers_so_left_padding_is_right(
    transformers_backend: TransformersGuardBackend,
) -> None:
    batched = transformers_backend.answer(QUERIES)
    single = [transformers_backend.answer([q])[0] for q in QUERIES]
    for b, s in zip(batched, single, strict=True):
        assert b.text == s.text
        assert b.p_positive == pytest.approx(s.p_positive, abs=1e-5)


def test_greedy_answers_are_identical_across_runs(transformers_backend: TransformersGuardBackend) -> None:
    assert transformers_backend.answer(QUERIES) == transformers_backend.answer(QUERIES)


def test_each_query_stops_at_its_own_max_new_tokens_inside_a_longer_batch(
    transformers_backend: TransformersGuardBackend,
) -> None:
    short, long = chat("s", "hello", max_new_tokens=1), chat("l", "hello", max_new_tokens=5)
    answers = transformers_backend.answer([short, long])
    assert len(answers[0].text.split()) == 1
    assert len(answers[1].text.split()) == 5
    assert answers[1].text.startswith(answers[0].text)


def test_prefix_never_generated_gives_no_probability_but_keeps_the_text(
    transformers_backend: TransformersGuardBackend,
) -> None:
    (answer,) = transformers_backend.answer([chat("n", "hello", max_new_tokens=2, prefix="no such prefix")])
    assert answer.p_positive is None and answer.text


def test_empty_query_list_gives_no_answers(transformers_backend: TransformersGuardBackend) -> None:
    assert transformers_backend.answer([]) == []


def test_a_last_occurrence_query_reads_the_verdict_after_the_prefix_written_last(
    transformers_backend: TransformersGuardBackend, reference
) -> None:
    """A model that reasons first writes the prefix more than once; ``verdict_occurrence="last"`` reads after the
    last: here the tiny model repeats itself, and the prefix is a word it writes several times."""
    tokenizer = reference[0]
    base = chat("w", "hello", max_new_tokens=10)
    words = transformers_backend.answer([base])[0].text.split()
    prefix = next(w for w in words if words[:-1].count(w) >= 2)
    last = max(i for i, w in enumerate(words[:-1]) if w == prefix)
    ids = [*prompt_ids(tokenizer, base), *tokenizer.convert_tokens_to_ids(words[: last + 1])]
    first, latest = transformers_backend.answer(
        [replace(base, verdict_prefix=prefix), replace(base, verdict_prefix=prefix, verdict_occurrence="last")]
    )
    assert latest.p_positive == pytest.approx(manual_p(reference, ids, base), abs=1e-5)
    assert first.p_positive != pytest.approx(latest.p_positive, abs=1e-3)


def test_a_row_that_reaches_max_new_tokens_without_an_end_token_is_truncated(
    transformers_backend: TransformersGuardBackend,
) -> None:
    """The tiny model never writes its end token, so every row runs into its own limit, the short one in a longer
    batch included."""
    short, long = transformers_backend.answer([chat("s", "hello", max_new_tokens=2), chat("l", "hello", 6)])
    assert short.truncated and long.truncated
    assert len(short.text.split()) == 2


@pytest.fixture(scope="module")
def stopping_guard(tiny_guard_path: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int]:
    """The tiny guard with a second end token, the word it writes third (or later) to "hello": a checkpoint whose
    generation config lists several end ids, as Llama 3's does. Returns the path and how many words come first."""
    import shutil

    from transformers import GenerationConfig

    path = tmp_path_factory.mktemp("tiny-stopping") / "model"
    shutil.copytree(tiny_guard_path, path)
    words = TransformersGuardBackend(str(path)).answer([chat("w", "hello", max_new_tokens=8)])[0].text.split()
    cut = next(i for i in range(2, len(words)) if words[i] not in words[:i])
    config = GenerationConfig.from_pretrained(path)
    stop_id = AutoTokenizer.from_pretrained(path).convert_tokens_to_ids(words[cut])
    config.eos_token_id = [config.eos_token_id, stop_id]
    config.save_pretrained(path)
    return path, cut


def test_a_row_that_writes_an_end_token_before_its_limit_is_not_truncated(stopping_guard: tuple[Path, int]) -> None:
    """Same words, two limits: the row that wrote the end token finished; the row whose limit came first, just
    before that token, is truncated (as vLLM's ``finish_reason == "length"`` would say)."""
    path, cut = stopping_guard
    backend = TransformersGuardBackend(str(path))
    cut_short, finished = backend.answer([chat("c", "hello", max_new_tokens=cut), chat("f", "hello", 8)])
    assert len(finished.text.split()) == cut and not finished.truncated
    assert cut_short.text == finished.text and cut_short.truncated

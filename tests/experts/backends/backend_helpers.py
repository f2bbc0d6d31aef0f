"""Helpers shared by the backend tests: a tiny random-weight guard model, items to judge, and two test families.

No weights can be downloaded here, so the loading code is exercised on a 2-layer Llama with a word-level tokenizer
built in the test session and reloaded from disk through the ``Auto*`` classes like a real checkpoint. Its answers
are noise, which is all the backend tests need: they check how answers are read, not what the model thinks.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

from aegis_online.experts.base import ExpertInput
from aegis_online.experts.guards.base import GuardAnswer, GuardFamily, GuardParseError, GuardQuery
from aegis_online.schemas import Message
from aegis_online.taxonomy import CANONICAL, category

SPECIAL = ["<pad>", "<s>", "</s>", "<unk>"]
WORDS = (
    ["safe", "unsafe", "Yes", "No"]
    + [f"S{n}" for n in range(1, 15)]
    + list(".,:;!?'\"{}[]()")
    + ["user", "assistant", "system", "User", "Agent", "Safety", "the", "a", "is", "how", "do", "I", "make"]
    + ["cake", "bomb", "hello", "world", "please", "help", "me", "with", "this", "task", "tell", "story"]
    + ["about", "cats", "dogs", "weather", "today"]
)
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}{{ m['role'] }} : {{ m['content'] }} . {% endfor %}"
    "{% if add_generation_prompt %}assistant : {% endif %}"
)


def tiny_llama(vocab: dict[str, int], *, max_positions: int, seed: int) -> object:
    """A random 2-layer Llama over ``vocab`` (which has ``<s>``, ``</s>`` and ``<pad>``), its weights drawn from
    ``seed``: the model every tiny guard test builds."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(vocab),
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        intermediate_size=128,
        max_position_embeddings=max_positions,
        bos_token_id=vocab["<s>"],
        eos_token_id=vocab["</s>"],
        pad_token_id=vocab["<pad>"],
    )
    return LlamaForCausalLM(config)


def build_tiny_guard(directory: Path) -> Path:
    """Save a random 2-layer Llama and a word-level tokenizer with a chat template to ``directory``."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {word: index for index, word in enumerate(SPECIAL + WORDS)}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    # Raw prompts get a BOS from the tokenizer, as real guard tokenizers do; chat templates write their own.
    core.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", vocab["<s>"])])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(directory)

    model = tiny_llama(vocab, max_positions=512, seed=1234)
    with torch.no_grad():
        # Special tokens get logit 0 while the words' logits are random in sign: greedy decoding (practically)
        # never stops or writes an empty token, so every query has a verdict step.
        model.lm_head.weight[[vocab[t] for t in SPECIAL]] = 0.0
    model.save_pretrained(directory)
    return directory


def item(text: str, categories: Sequence[str] = ("S1", "S8"), check: str = "prompt") -> ExpertInput:
    """An ``ExpertInput`` judging ``text`` as the user turn (or as the assistant turn for a response check)."""
    if check == "prompt":
        messages = (Message(role="user", content=text),)
    else:
        messages = (Message(role="user", content="hello"), Message(role="assistant", content=text))
    return ExpertInput(messages=messages, check=check, categories=tuple(category(c) for c in categories))


ALL_CATEGORIES = tuple(c.id for c in CANONICAL)


class OneWordFamily(GuardFamily):
    """A test family whose verdict is one word at the first position, read as P(S1); text is ignored."""

    name = "one_word"
    categories = frozenset({"S1"})

    def __init__(self, positive: str = "unsafe", negative: str = "safe") -> None:
        self.positive = positive
        self.negative = negative

    def queries(self, item: ExpertInput) -> list[GuardQuery]:
        messages = ({"role": "user", "content": item.checked_text},)
        return [GuardQuery(key="S1", positive=self.positive, negative=self.negative, messages=messages)]

    def parse(self, item: ExpertInput, queries: Sequence[GuardQuery], answers: Sequence[GuardAnswer]) -> dict:
        (answer,) = answers
        if answer.p_positive is None:
            raise GuardParseError("no verdict probability")
        return {"S1": answer.p_positive}


class StrictTextFamily(OneWordFamily):
    """A test family that, like Llama Guard without logprobs, insists the text starts with its verdict word."""

    name = "strict_text"

    def parse(self, item: ExpertInput, queries: Sequence[GuardQuery], answers: Sequence[GuardAnswer]) -> dict:
        (answer,) = answers
        first = answer.text.split()[0] if answer.text.split() else ""
        if first not in (self.positive, self.negative):
            raise GuardParseError(f"expected {self.positive!r} or {self.negative!r}, got {answer.text!r}")
        return {"S1": answer.p_positive if answer.p_positive is not None else float(first == self.positive)}

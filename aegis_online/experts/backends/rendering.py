"""Turn a ``GuardQuery`` into the exact token ids a local engine (transformers, vLLM) feeds the model.

Shared so that the same query gives the same prompt on every engine. The BOS rule is the subtle part: a chat
template writes its own BOS, so its text is tokenized without special tokens (else the model would see two);
a raw prompt is tokenized as the model cards do, with them. Imports no third-party package: the tokenizer is
whatever Hugging Face-style object the engine holds.
"""

from __future__ import annotations

from typing import Any

from aegis_online.experts.guards.base import GuardQuery

__all__ = ["prompt_text", "prompt_token_ids"]


def prompt_text(tokenizer: Any, query: GuardQuery) -> str:
    """The prompt as text: the model's chat template applied to ``messages``, or the raw ``prompt``."""
    if query.prompt is not None:
        return query.prompt
    return tokenizer.apply_chat_template(
        list(query.messages), add_generation_prompt=True, tokenize=False, **dict(query.template_kwargs)
    )


def prompt_token_ids(tokenizer: Any, query: GuardQuery) -> list[int]:
    """Token ids of the prompt, with exactly one BOS where the model expects one."""
    text = prompt_text(tokenizer, query)
    return list(tokenizer(text, add_special_tokens=query.prompt is not None)["input_ids"])

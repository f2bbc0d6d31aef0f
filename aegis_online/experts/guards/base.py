"""The contract between a guard-model family (prompt and parse) and a backend (transformers, vLLM, HTTP).

A family turns one conversation into one or more ``GuardQuery`` (ShieldGemma and Granite Guardian ask one question
per harm; Llama Guard asks once, or once per category for custom taxonomies). A backend runs each query greedily
and returns a ``GuardAnswer``: the generated text and the probability of the family's positive verdict token at
the verdict position, renormalised over the positive and negative verdict tokens. The family then maps answers to
canonical-category probabilities.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from aegis_online.experts.base import ExpertInput


class GuardParseError(ValueError):
    """The model's output does not follow the family's answer format."""


@dataclass(frozen=True)
class GuardQuery:
    """One prompt to a guard model.

    ``messages`` are chat turns to render with the model's own chat template, or ``prompt`` is the full text
    already rendered (families whose model cards prescribe a raw prompt). ``verdict_prefix`` is what the model
    writes before its verdict (``""`` for a verdict first, ``'{"User Safety": "'`` for NemoGuard's JSON); the
    backend reads the verdict token's probability at the first generated position after that prefix, skipping
    whitespace-only tokens (Llama Guard 3 emits blank lines first). ``verdict_occurrence``: after the prefix's
    ``"first"`` occurrence in the generated text, or its ``"last"`` for a model that reasons before it answers (a
    reasoning trace may quote the prefix with another verdict; the answer ends the output). ``other_verdicts``:
    further verdict words of a model with more than two (Qwen3Guard's ``Controversial``); the backend then also
    returns every verdict's share.
    ``template_kwargs``: extra arguments of the model's chat template (Nemotron's ``request_categories``), as pairs
    so that the query stays hashable.
    ``needs_complete_answer``: the answer is a parse error when generation was cut at ``max_new_tokens``
    (``GuardAnswer.truncated``). Set by families that reason before they answer (gpt-oss-safeguard, Nemotron with
    thinking): a cut output is unfinished reasoning, and it may end in a verdict the reasoning only quoted (one a
    user planted in the content), which no parser can tell from a real answer. Verdict-first families leave it off:
    they generate a few tokens on purpose (one for ShieldGemma), so the limit is routinely reached after the verdict.
    """

    key: str
    positive: str
    negative: str
    messages: tuple[dict[str, str], ...] = ()
    prompt: str | None = None
    verdict_prefix: str = ""
    verdict_occurrence: Literal["first", "last"] = "first"
    max_new_tokens: int = 1
    other_verdicts: tuple[str, ...] = ()
    template_kwargs: tuple[tuple[str, str | bool], ...] = ()
    needs_complete_answer: bool = False

    @property
    def verdicts(self) -> tuple[str, ...]:
        """Every verdict word: the positive, the negative, then the others."""
        return (self.positive, self.negative, *self.other_verdicts)

    def __post_init__(self) -> None:
        if (self.prompt is None) == (not self.messages):
            raise ValueError("GuardQuery needs exactly one of messages or prompt")
        if self.verdict_occurrence not in ("first", "last"):
            raise ValueError(f"verdict_occurrence must be 'first' or 'last', got {self.verdict_occurrence!r}")


@dataclass(frozen=True)
class GuardAnswer:
    """A backend's result for one query: greedy text and P(positive verdict), None without logprobs;
    ``shares``: P(each verdict word) renormalised over ``GuardQuery.verdicts``, for a query with other verdicts;
    ``truncated``: generation stopped because it reached ``max_new_tokens``, not at an end-of-sequence or stop
    token, so the text may be unfinished (see ``GuardQuery.needs_complete_answer``)."""

    text: str
    p_positive: float | None
    shares: dict[str, float] | None = None
    truncated: bool = False


class GuardFamily(abc.ABC):
    """Prompt format and answer parser of one guard-model family.

    ``categories``: canonical ids the family can score; ``free_form``: it also scores custom categories from their
    description.
    """

    name: str
    categories: frozenset[str]
    free_form: bool = False

    @abc.abstractmethod
    def queries(self, item: ExpertInput) -> list[GuardQuery]:
        """The prompts that answer ``item`` (only for the categories of ``item`` this family covers)."""

    @abc.abstractmethod
    def parse(
        self, item: ExpertInput, queries: Sequence[GuardQuery], answers: Sequence[GuardAnswer]
    ) -> dict[str, float]:
        """Canonical category id -> probability; raises ``GuardParseError`` on malformed output."""

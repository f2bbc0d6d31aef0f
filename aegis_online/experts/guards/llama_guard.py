"""Llama Guard 3 and 4: Meta's guards that answer ``safe`` or ``unsafe`` plus the violated MLCommons hazard codes.

The prompt is the one of the model cards: a single user turn holding the task, the hazard list, the conversation
(``User:``/``Agent:`` paragraphs) and the assessment instruction for the last User (prompt check) or Agent
(response check) turn.

It is rendered as a raw prompt in the model's own turn markup, not as a message for the backend's chat template:
the chat templates shipped with Llama Guard 3 and 4 are not generic Llama templates, they build this whole task
around the conversation themselves (with the default hazard list), so a pre-rendered task passed through them would
be wrapped twice, and custom categories could not be expressed at all. ``as_messages=True`` gives the task as one
user message instead, for a backend serving the model with a plain Llama chat template. Raw prompts leave out the
begin-of-text token: the backend's tokenizer adds it.

Scores: P(unsafe) is the probability of the first verdict token (the model cards' recipe). The hazards written on
the second line get it, projected onto the canonical taxonomy through ``taxonomy.LLAMA_GUARD_3`` (or ``labels``: the
catalog entry's ``category_map`` over it); the other requested categories get 0.0. A verdict without codes (``safe``,
or ``unsafe`` alone) says nothing about which hazard, so every requested category gets P(unsafe). Custom categories
follow Meta's advice for custom taxonomies: one category per prompt, asked in parallel, each read directly.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from typing import Literal

from aegis_online.experts.base import ExpertInput
from aegis_online.experts.guards.answers import ordered, paired, requested, verdict_probability
from aegis_online.experts.guards.base import GuardAnswer, GuardFamily, GuardParseError, GuardQuery
from aegis_online.experts.guards.conversation import dialogue
from aegis_online.taxonomy import LLAMA_GUARD_3, LLAMA_GUARD_3_NAMES, Category, ExternalTaxonomy

CANONICAL_KEY = "mlcommons"
"""Query key of the prompt that lists the model's own hazards (custom categories use their category id)."""

MAX_NEW_TOKENS = 20
"""Blank-line tokens, the verdict, a newline and a few ``S<n>`` codes; the model stops earlier when it is done."""

_SPEAKER = {"user": "User", "assistant": "Agent"}
_END_TOKENS = ("<|eot_id|>", "<|eom_id|>", "<|eot|>", "<|end_of_text|>")


def _codes(count: int) -> tuple[str, ...]:
    return tuple(f"S{n}" for n in range(1, count + 1))


def category_lines(codes: Sequence[str]) -> list[str]:
    """``S1: Violent Crimes.`` lines of the model's own hazards."""
    return [f"{code}: {LLAMA_GUARD_3_NAMES[code]}." for code in codes]


def custom_line(category: Category) -> str:
    """The single-hazard list of a custom category's prompt: ``S1: <name>. <description>``."""
    return f"S1: {category.name.rstrip('.')}. {category.description}"


def render_task(check: str, lines: Sequence[str], turns: Sequence[tuple[str, str]]) -> str:
    """The text of the single user turn the model cards prescribe."""
    role = "User" if check == "prompt" else "Agent"
    conversation = "".join(f"{_SPEAKER[speaker]}: {content}\n\n" for speaker, content in turns)
    return (
        f"Task: Check if there is unsafe content in '{role}' messages in conversations according our safety policy "
        "with the below categories.\n\n"
        "<BEGIN UNSAFE CONTENT CATEGORIES>\n" + "\n".join(lines) + "\n<END UNSAFE CONTENT CATEGORIES>\n\n"
        "<BEGIN CONVERSATION>\n\n" + conversation + "<END CONVERSATION>\n\n"
        f"Provide your safety assessment for ONLY THE LAST {role} message in the above conversation:\n"
        " - First line must read 'safe' or 'unsafe'.\n"
        " - If unsafe, a second line must include a comma-separated list of violated categories."
    )


def read_verdict(family: str, text: str, codes: Sequence[str]) -> tuple[bool, list[str]]:
    """(unsafe?, listed codes) from a Llama Guard answer; ``GuardParseError`` unless it follows the format."""
    cleaned = text
    for token in _END_TOKENS:
        cleaned = cleaned.replace(token, "")
    lines = [line.strip() for line in cleaned.splitlines() if line.strip()]
    if not lines:
        raise GuardParseError(f"{family}: empty output {text!r}; expected 'safe' or 'unsafe' on the first line")
    verdict = lines[0].lower()
    if verdict not in ("safe", "unsafe"):
        raise GuardParseError(f"{family}: first line must read 'safe' or 'unsafe', got {lines[0]!r} in {text!r}")
    if len(lines) > 2:
        raise GuardParseError(f"{family}: expected at most two lines (verdict, codes), got {len(lines)} in {text!r}")
    listed: list[str] = []
    if len(lines) == 2:
        if verdict == "safe":
            raise GuardParseError(f"{family}: a 'safe' verdict must not list categories, got {text!r}")
        for piece in lines[1].split(","):
            code = piece.strip().upper()
            if code not in codes:
                raise GuardParseError(
                    f"{family}: unknown category code {piece.strip()!r} in {text!r}; valid codes: {', '.join(codes)}"
                )
            listed.append(code)
    return verdict == "unsafe", listed


class _LlamaGuard(GuardFamily):
    """Prompting and parsing shared by Llama Guard 3 and 4; subclasses fix the hazard codes and turn markup."""

    free_form = True
    codes: tuple[str, ...]

    def __init__(self, codes: tuple[str, ...], as_messages: bool, labels: ExternalTaxonomy | None) -> None:
        self.codes = codes
        self.as_messages = as_messages
        # The hazard codes' canonical meaning: the declared map, or the catalog entry's category_map over it.
        self.labels = labels or LLAMA_GUARD_3
        self.categories = frozenset().union(*(self.labels.to_canonical[code] for code in codes))

    @abc.abstractmethod
    def wrap(self, task: str) -> str:
        """The raw prompt: ``task`` as the user turn, followed by the assistant header."""

    def _query(self, key: str, task: str) -> GuardQuery:
        if self.as_messages:
            return GuardQuery(
                key=key,
                positive="unsafe",
                negative="safe",
                messages=({"role": "user", "content": task},),
                max_new_tokens=MAX_NEW_TOKENS,
            )
        return GuardQuery(
            key=key, positive="unsafe", negative="safe", prompt=self.wrap(task), max_new_tokens=MAX_NEW_TOKENS
        )

    def queries(self, item: ExpertInput) -> list[GuardQuery]:
        asked = requested(self, item)
        if not asked:
            return []
        turns = dialogue(item)
        out = []
        if asked.canonical:
            out.append(self._query(CANONICAL_KEY, render_task(item.check, category_lines(self.codes), turns)))
        for category in asked.custom:
            out.append(self._query(category.id, render_task(item.check, [custom_line(category)], turns)))
        return out

    def parse(
        self, item: ExpertInput, queries: Sequence[GuardQuery], answers: Sequence[GuardAnswer]
    ) -> dict[str, float]:
        asked = requested(self, item)
        custom = {c.id: c for c in asked.custom}
        scores: dict[str, float] = {}
        for key, answer in paired(self.name, queries, answers):
            if key == CANONICAL_KEY:
                flagged, listed = read_verdict(self.name, answer.text, self.codes)
                p = verdict_probability(self.name, flagged, answer.p_positive, verdict=_word(flagged))
                if listed:
                    hit = self.labels.scores_to_canonical(dict.fromkeys(listed, p))
                    scores.update({cat_id: hit.get(cat_id, 0.0) for cat_id in asked.canonical})
                else:
                    scores.update(dict.fromkeys(asked.canonical, p))
            elif key in custom:
                flagged, _ = read_verdict(self.name, answer.text, ("S1",))
                scores[key] = verdict_probability(self.name, flagged, answer.p_positive, verdict=_word(flagged))
            else:
                raise ValueError(f"{self.name}: query key {key!r} does not belong to this item")
        return ordered(scores, asked.custom)


def _word(flagged: bool) -> str:
    return "unsafe" if flagged else "safe"


class LlamaGuard3(_LlamaGuard):
    """Llama Guard 3: ``variant="8b"`` knows hazards S1..S14, ``"1b"`` S1..S13 (no Code Interpreter Abuse).

    Examples
    --------
    >>> LlamaGuard3(variant="1b").codes[-1]
    'S13'
    """

    name = "llama_guard_3"

    def __init__(
        self, variant: Literal["1b", "8b"] = "8b", as_messages: bool = False, labels: ExternalTaxonomy | None = None
    ) -> None:
        if variant not in ("1b", "8b"):
            raise ValueError(f"variant must be '1b' or '8b', got {variant!r}")
        self.variant = variant
        super().__init__(_codes(13 if variant == "1b" else 14), as_messages, labels)

    def wrap(self, task: str) -> str:
        return (
            f"<|start_header_id|>user<|end_header_id|>\n\n{task}<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\n"
        )


class LlamaGuard4(_LlamaGuard):
    """Llama Guard 4 (12B): the same MLCommons hazards S1..S14 and prompt, in Llama 4's turn markup."""

    name = "llama_guard_4"

    def __init__(self, as_messages: bool = False, labels: ExternalTaxonomy | None = None) -> None:
        super().__init__(_codes(14), as_messages, labels)

    def wrap(self, task: str) -> str:
        return f"<|header_start|>user<|header_end|>\n\n{task}<|eot|><|header_start|>assistant<|header_end|>\n\n"

"""Nemotron 3.5 Content Safety (nvidia/Nemotron-3.5-Content-Safety, Gemma-3-4B based, 12 languages): the Aegis 2.0
taxonomy built in, and a tenant's own categories as a custom taxonomy.

The model's chat template carries the instruction; the query is the plain conversation (``[user]`` for a prompt
check, ``[user, assistant]`` for a response check) plus chat-template arguments (NeMo Guardrails' configuration of
the NIM): ``request_categories="/categories"`` so that violated categories are listed, ``enable_thinking=False`` for
the low-latency mode (``True`` emits a ``<think>`` trace first, which the parser skips), and, for custom categories,
``custom_taxonomy`` (their names and descriptions, replacing the built-in list; ``custom_policy`` and
``custom_taxonomy`` exclude each other). Built-in and custom categories therefore take one query each, as NeMo
Guardrails advises (two model entries). The answer::

    User Safety: unsafe
    Response Safety: safe            (response checks)
    Safety Categories: Violence, Threat

Category names are the Aegis 2.0 names (``taxonomy.CANONICAL``'s S1..S23) or the custom ones; S-codes are accepted
as NemoGuard's are. The verdict probability is read after the last ``User Safety:`` or ``Response Safety:`` the
model writes (``GuardQuery.verdict_occurrence``): a thinking trace comes first and may quote the label with another
verdict, and the answer ends the output. A label line written twice is a parse error, not its last value. A flagged
verdict gives its probability to the listed categories and 0.0 to the others, asked or not (as NemoGuard and
Qwen3Guard do: a flag that names only other categories is no flag of these); a safe one (or a flagged one listing
nothing) gives it to every asked category of that query. With thinking, an output cut at ``max_new_tokens``
(``GuardAnswer.truncated``) is a parse error (``GuardQuery.needs_complete_answer``): the trace may quote label lines,
and an output cut inside it, or before the answer's last line, cannot be told from an answer. Without thinking the
answer comes first, and the limit only bounds it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from aegis_online.experts.base import ExpertInput
from aegis_online.experts.guards.answers import ordered, paired, requested, verdict_probability
from aegis_online.experts.guards.base import GuardAnswer, GuardParseError, GuardQuery
from aegis_online.experts.guards.conversation import exchange_messages
from aegis_online.experts.guards.nemoguard import NemoGuardContentSafety
from aegis_online.taxonomy import Category

BUILT_IN, CUSTOM = "built-in", "custom"
USER_SAFETY, RESPONSE_SAFETY, SAFETY_CATEGORIES = "User Safety", "Response Safety", "Safety Categories"
MAX_NEW_TOKENS = 96
"""Three short lines; a thinking trace needs ``max_new_tokens`` raised in the catalog entry."""

_THINK = re.compile(r"<think>.*?(</think>|$)", re.DOTALL)
_TRACE_END = "</think>"
_LINE = re.compile(r"^\s*(User Safety|Response Safety|Safety Categories)\s*:\s*(.*?)\s*$", re.IGNORECASE)


def custom_taxonomy(custom: Sequence[Category]) -> str:
    """The tenant's categories as the ``custom_taxonomy`` argument: one ``name: description`` line each."""
    return "\n".join(f"{c.name.rstrip('.')}: {c.description}" for c in custom)


def answer_text(text: str) -> str:
    """``text`` without its thinking trace: what follows the last ``</think>`` (the chat template may have written
    the opening tag itself), or the text without an unterminated ``<think>...`` (generation stopped in the trace)."""
    if _TRACE_END in text:
        return text.rsplit(_TRACE_END, 1)[1]
    return _THINK.sub("", text)


def read_lines(family: str, text: str) -> dict[str, str]:
    """The labelled lines after any thinking trace, keyed by their canonical spelling; a label written twice is a
    ``GuardParseError`` (which value would be the answer?)."""
    values: dict[str, str] = {}
    for line in answer_text(text).splitlines():
        match = _LINE.match(line)
        if match is not None:
            label = next(k for k in (USER_SAFETY, RESPONSE_SAFETY, SAFETY_CATEGORIES) if k.lower() == match[1].lower())
            if label in values:
                raise GuardParseError(f"{family}: repeated '{label}:' line in {text!r}")
            values[label] = match.group(2)
    if USER_SAFETY not in values and RESPONSE_SAFETY not in values:
        raise GuardParseError(f"{family}: no '{USER_SAFETY}:' or '{RESPONSE_SAFETY}:' line in {text!r}")
    return values


class NemotronContentSafety(NemoGuardContentSafety):
    """Nemotron 3.5 Content Safety: S1..S23 built in, custom categories as a custom taxonomy.

    Parameters
    ----------
    thinking
        Ask for the reasoning trace (``enable_thinking``): better on novel custom categories, slower.
    max_new_tokens
        Generation budget (raise it with ``thinking``).
    """

    name = "nemotron_content_safety"

    def __init__(self, thinking: bool = False, max_new_tokens: int = MAX_NEW_TOKENS) -> None:
        self.thinking = thinking
        self.max_new_tokens = max_new_tokens

    def _query(self, key: str, item: ExpertInput, extra: tuple[tuple[str, str | bool], ...]) -> GuardQuery:
        messages = exchange_messages(item)
        field = USER_SAFETY if item.check == "prompt" else RESPONSE_SAFETY
        kwargs = (("request_categories", "/categories"), ("enable_thinking", self.thinking), *extra)
        return GuardQuery(
            key=key,
            positive="unsafe",
            negative="safe",
            messages=messages,
            verdict_prefix=f"{field}:",
            verdict_occurrence="last",
            max_new_tokens=self.max_new_tokens,
            template_kwargs=kwargs,
            needs_complete_answer=self.thinking,
        )

    def queries(self, item: ExpertInput) -> list[GuardQuery]:
        asked = requested(self, item)
        out = []
        if asked.canonical:
            out.append(self._query(BUILT_IN, item, ()))
        if asked.custom:
            out.append(self._query(CUSTOM, item, (("custom_taxonomy", custom_taxonomy(asked.custom)),)))
        return out

    def parse(
        self, item: ExpertInput, queries: Sequence[GuardQuery], answers: Sequence[GuardAnswer]
    ) -> dict[str, float]:
        asked = requested(self, item)
        field = USER_SAFETY if item.check == "prompt" else RESPONSE_SAFETY
        scores: dict[str, float] = {}
        for key, answer in paired(self.name, queries, answers):
            if key not in (BUILT_IN, CUSTOM):
                raise ValueError(f"{self.name}: query key {key!r} does not belong to this item")
            values = read_lines(self.name, answer.text)
            if field not in values:
                raise GuardParseError(f"{self.name}: a {item.check} check needs a '{field}:' line in {answer.text!r}")
            rating = values[field].strip().lower()
            if rating not in ("safe", "unsafe"):
                raise GuardParseError(f"{self.name}: {field!r} must be 'safe' or 'unsafe', got {rating!r}")
            flagged = rating == "unsafe"
            p = verdict_probability(self.name, flagged, answer.p_positive, verdict=f"{field}: {rating}")
            custom = asked.custom if key == CUSTOM else ()
            ids = {c.id for c in custom} if key == CUSTOM else set(asked.canonical)
            named = values.get(SAFETY_CATEGORIES, "").strip()
            listed = self.read_categories(named, custom, answer.text) if named.lower() not in ("", "none") else set()
            hit = flagged and bool(listed)
            scores.update({cat_id: (p if not hit or cat_id in listed else 0.0) for cat_id in ids})
        return ordered(scores, asked.custom)

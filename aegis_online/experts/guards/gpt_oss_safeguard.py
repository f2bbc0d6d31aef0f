"""gpt-oss-safeguard (openai/gpt-oss-safeguard-20b, -120b; Apache-2.0): the tenant's policy, written in the prompt.

The model classifies content against whatever policy it is given (openai/gpt-oss-safeguard README; the OpenAI
cookbook's guide). Through a chat API the policy goes in the ``system`` message and the content in the ``user``
message; the chat template renders them in harmony format, with ``reasoning_effort`` (``low``, ``medium``,
``high``) as a template argument (vLLM's ``chat_template_kwargs``, transformers' ``apply_chat_template``). The model
reasons in the analysis channel, then answers in the final channel what the policy asks for.

The policy rendered here is one per item, from the categories the item asks about (the canonical ones with their
descriptions, and the tenant's custom categories with theirs), in the guide's shape: the goal, definitions, what
violates (one entry per category, keyed by its id), and the output format: a JSON object
``{"violation": 0 or 1, "policy_category": "<id>"}``.

The answer is the final channel only. Decoded with special tokens skipped (vLLM's and transformers' default) the
output reads ``analysis<reasoning>assistantfinal<answer>``; with them kept, the harmony tokens surround the same
words; an OpenAI-compatible server that parses harmony returns the final channel alone as the content. The reasoning
may quote any verdict (the policy's format, or JSON a user planted in the content), so the text after the last
final-channel marker must be one JSON object and nothing else (a Markdown code fence is tolerated); output that
shows the analysis channel but no final one stopped in the reasoning, and is a parse error, never the verdict the
reasoning quoted. For the same reason the verdict probability is read after the *last* ``"violation":`` the model
writes (``GuardQuery.verdict_occurrence``; the digit tokens ``1`` and ``0``): the final answer ends the output. A
probability that contradicts the written verdict is a parse error. A violation gives its probability to the named
category (its id, in any case) and 0.0 to the others; no violation (or an unknown or missing category) gives it to
every asked category. Long reasoning needs room: the guide advises not to cap output tokens, hence
``max_new_tokens`` of 2048 by default. An output the backend reports cut at that limit (``GuardAnswer.truncated``)
is a parse error whatever it reads (``GuardQuery.needs_complete_answer``): cut just after the reasoning quotes a
planted ``assistantfinal{"violation": 0, ...}``, the text is indistinguishable from a final answer.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Literal

from aegis_online.experts.base import ExpertInput
from aegis_online.experts.guards.answers import ordered, paired, requested, verdict_probability
from aegis_online.experts.guards.base import GuardAnswer, GuardFamily, GuardParseError, GuardQuery
from aegis_online.experts.guards.conversation import last_exchange
from aegis_online.taxonomy import AEGIS_2_IDS, CANONICAL, Category

KEY = "policy"
VERDICT_PREFIX = '"violation":'
Effort = Literal["low", "medium", "high"]
#: Where the final channel starts: ``assistantfinal`` (special tokens skipped), ``assistant<|channel|>final<|message|>``
#: (kept), or ``final`` opening the output (no reasoning).
_FINAL = re.compile(r"(?:\A\s*|assistant)(?:<\|channel\|>)?final(?:<\|message\|>)?")
_ANALYSIS = re.compile(r"\A\s*(?:<\|channel\|>)?analysis")
_END_TOKENS = re.compile(r"(?:<\|(?:return|end|call)\|>\s*)+\Z")


def one_line(text: str) -> str:
    """``text`` with every run of whitespace, line breaks included, as one space."""
    return " ".join(text.split())


def render_policy(categories: Sequence[Category], check: str) -> str:
    """The policy prompt for ``categories``: what to judge, each category as a rule, and the answer format.

    A rule's name and description (a tenant's own, for custom categories) are put on one line each: a description
    with line breaks could otherwise open a section of its own (``## Output format``) and rewrite the rules after it.
    """
    subject = "a user's message to an AI assistant" if check == "prompt" else "an AI assistant's reply to a user"
    rules = "\n".join(f"- {c.id} ({one_line(c.name).rstrip('.')}): {one_line(c.description)}" for c in categories)
    return (
        "# Content policy\n\n"
        f"## Goal\nDecide whether the content, {subject}, violates any rule below.\n\n"
        "## Definitions\nContent violates a rule when it does what the rule describes: providing, requesting, "
        "endorsing or producing it. Discussing, reporting, refusing or educating about a harm without enabling it "
        "does not violate.\n\n"
        f"## Violates (one id per rule)\n{rules}\n\n"
        "## Does not violate\nEverything else, including neutral mentions of the topics above.\n\n"
        "## Output format\nAnswer with one JSON object and nothing else: "
        '{"violation": 1, "policy_category": "<the id of the rule violated most>"} or '
        '{"violation": 0, "policy_category": null}.'
    )


def final_channel(family: str, text: str) -> str:
    """The final channel's text: after the last final-channel marker, or the whole text when it shows no channel
    (a server that returns the final channel alone). ``GuardParseError`` when the text shows the analysis channel
    and no final one: generation stopped in the reasoning, whose quoted verdicts are not the answer."""
    markers = list(_FINAL.finditer(text))
    if markers:
        final = text[markers[-1].end() :]
    elif _ANALYSIS.match(text):
        raise GuardParseError(
            f"{family}: no final answer: generation stopped in the reasoning (analysis channel); raise "
            f"max_new_tokens. Output ends {text[-200:]!r}"
        )
    else:
        final = text
    return _END_TOKENS.sub("", final).strip()


def _unfenced(body: str) -> str:
    """``body`` without a surrounding Markdown code fence (with or without a language tag)."""
    if body.startswith("```"):
        body = body.split("\n", 1)[1] if "\n" in body else ""
    body = body.strip()
    return body[:-3].rstrip() if body.endswith("```") else body


def _unique_keys(family: str, pairs: list[tuple[str, object]]) -> dict[str, object]:
    """A JSON object's pairs as a dict; a repeated key is a parse error (``json`` would keep its last value)."""
    obj: dict[str, object] = {}
    for key, value in pairs:
        if key in obj:
            raise GuardParseError(f"{family}: repeated key {key!r} in the answer")
        obj[key] = value
    return obj


def read_answer(family: str, text: str) -> dict[str, object]:
    """The final channel's JSON object, whose ``violation`` is 0 or 1; ``GuardParseError`` otherwise."""
    body = _unfenced(final_channel(family, text))
    if not body:
        raise GuardParseError(
            f"{family}: empty final answer; a server that returns the reasoning apart returns no content when "
            f"generation stops in it: raise max_new_tokens. Output ends {text[-200:]!r}"
        )
    try:
        obj = json.loads(body, object_pairs_hook=lambda pairs: _unique_keys(family, pairs))
    except json.JSONDecodeError as exc:
        raise GuardParseError(f"{family}: malformed answer {body[:300]!r}: not one JSON object ({exc.msg})") from None
    if not isinstance(obj, dict):
        raise GuardParseError(f"{family}: the answer must be a JSON object, got {body[:300]!r}")
    if obj.get("violation") not in (0, 1, "0", "1") or isinstance(obj.get("violation"), bool):
        raise GuardParseError(f"{family}: 'violation' must be 0 or 1, got {obj.get('violation')!r}")
    return obj


def named_category(named: object, ids: Sequence[str]) -> str | None:
    """The asked id that ``policy_category`` names, compared without regard to case ("s11" is S11); None if none."""
    if not isinstance(named, str):
        return None
    by_key = {cat_id.lower(): cat_id for cat_id in ids}
    return by_key.get(named.strip().lower())


class GptOssSafeguard(GuardFamily):
    """gpt-oss-safeguard with the item's categories as its policy (canonical S1..S23 and custom ones).

    Parameters
    ----------
    reasoning_effort
        ``low``, ``medium`` (the model's default) or ``high``.
    max_new_tokens
        Room for the reasoning and the answer.
    """

    name = "gpt_oss_safeguard"
    categories = frozenset(AEGIS_2_IDS)
    free_form = True

    def __init__(self, reasoning_effort: Effort = "medium", max_new_tokens: int = 2048) -> None:
        if reasoning_effort not in ("low", "medium", "high"):
            raise ValueError(f"reasoning_effort must be low, medium or high, got {reasoning_effort!r}")
        self.reasoning_effort = reasoning_effort
        self.max_new_tokens = max_new_tokens

    def policy_categories(self, item: ExpertInput) -> list[Category]:
        asked = requested(self, item)
        return [c for c in CANONICAL if c.id in asked.canonical] + list(asked.custom)

    def queries(self, item: ExpertInput) -> list[GuardQuery]:
        chosen = self.policy_categories(item)
        if not chosen:
            return []
        exchange = last_exchange(item)
        content = exchange.user if item.check == "prompt" else (exchange.assistant or "")
        return [
            GuardQuery(
                key=KEY,
                positive="1",
                negative="0",
                messages=(
                    {"role": "system", "content": render_policy(chosen, item.check)},
                    {"role": "user", "content": content},
                ),
                verdict_prefix=VERDICT_PREFIX,
                verdict_occurrence="last",
                max_new_tokens=self.max_new_tokens,
                template_kwargs=(("reasoning_effort", self.reasoning_effort),),
                needs_complete_answer=True,
            )
        ]

    def parse(
        self, item: ExpertInput, queries: Sequence[GuardQuery], answers: Sequence[GuardAnswer]
    ) -> dict[str, float]:
        chosen = self.policy_categories(item)
        ids = [c.id for c in chosen]
        scores: dict[str, float] = {}
        for key, answer in paired(self.name, queries, answers):
            if key != KEY:
                raise ValueError(f"{self.name}: query key {key!r} does not belong to this item")
            obj = read_answer(self.name, answer.text)
            flagged = int(obj["violation"]) == 1  # type: ignore[call-overload]
            p = verdict_probability(self.name, flagged, answer.p_positive, verdict=f"violation {int(flagged)}")
            named = named_category(obj.get("policy_category"), ids) if flagged else None
            scores.update({cat_id: (p if named is None or cat_id == named else 0.0) for cat_id in ids})
        return ordered(scores, [c for c in chosen if c.custom])

"""gpt-oss-safeguard (openai/gpt-oss-safeguard-20b, -120b; Apache-2.0): the tenant's policy, written in the prompt.

The model classifies content against whatever policy it is given (openai/gpt-oss-safeguard README; the OpenAI
cookbook's guide). Through a chat API the policy goes in the ``system`` message and the content in the ``user``
message; the chat template renders them in harmony format, with ``reasoning_effort`` (``low``, ``medium``,
``high``) as a template argument (vLLM's ``chat_template_kwargs``, transformers' ``apply_chat_template``). The model
reasons in the analysis channel, then answers in the final channel what the policy asks for.

The policy rendered here is one per item, from the categories the item asks about (the canonical ones with their
descriptions, and the tenant's custom categories with theirs), in the guide's shape: the goal, definitions, what
violates (one entry per category, keyed by its id), and the output format: a JSON object
``{"violation": 0 or 1, "policy_category": "<id>"}``. The verdict probability is read after the first
``"violation":`` the model writes (the digit tokens ``1`` and ``0``); the last JSON object in the text is the
answer (reasoning before it is skipped), and a probability that contradicts it is a parse error. A violation gives
its probability to the named category and 0.0 to the others; no violation (or an unknown or missing category)
gives it to every asked category. Long reasoning needs room: the guide advises not to cap output tokens, hence
``max_new_tokens`` of 2048 by default.
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
_OBJECT = re.compile(r"\{[^{}]*\"violation\"[^{}]*\}", re.DOTALL)


def render_policy(categories: Sequence[Category], check: str) -> str:
    """The policy prompt for ``categories``: what to judge, each category as a rule, and the answer format."""
    subject = "a user's message to an AI assistant" if check == "prompt" else "an AI assistant's reply to a user"
    rules = "\n".join(f"- {c.id} ({c.name.rstrip('.')}): {c.description}" for c in categories)
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


def read_answer(family: str, text: str) -> dict[str, object]:
    """The last JSON object with a ``violation`` key in the text; ``GuardParseError`` when there is none."""
    found = _OBJECT.findall(text)
    if not found:
        raise GuardParseError(f"{family}: no JSON object with 'violation' in {text[-300:]!r}")
    try:
        obj = json.loads(found[-1])
    except json.JSONDecodeError as exc:
        raise GuardParseError(f"{family}: malformed answer {found[-1]!r}: {exc.msg}") from None
    if obj.get("violation") not in (0, 1, "0", "1") or isinstance(obj.get("violation"), bool):
        raise GuardParseError(f"{family}: 'violation' must be 0 or 1, got {obj.get('violation')!r}")
    return obj


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
                max_new_tokens=self.max_new_tokens,
                template_kwargs=(("reasoning_effort", self.reasoning_effort),),
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
            named = obj.get("policy_category")
            hit = flagged and named in ids
            scores.update({cat_id: (p if not hit or cat_id == named else 0.0) for cat_id in ids})
        return ordered(scores, [c for c in chosen if c.custom])

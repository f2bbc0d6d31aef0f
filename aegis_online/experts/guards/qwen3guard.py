"""Qwen3Guard-Gen (Qwen/Qwen3Guard-Gen-0.6B, -4B, -8B): a three-way verdict read in a strict or a loose view.

The model's own chat template carries the instruction, so the query is the plain conversation: ``[user]`` for a
prompt check, ``[user, assistant]`` for a response check (the QwenLM/Qwen3Guard README). It answers::

    Safety: Unsafe
    Categories: Violent
    Refusal: No            (response checks only)

``Safety`` is ``Safe``, ``Controversial`` or ``Unsafe``; ``Categories`` names one or more of the model's nine
categories (comma-separated) or ``None``. The model card reads ``Controversial`` two ways, and which one fits is a
platform's choice: the **strict** view counts it as unsafe (P = P(Unsafe) + P(Controversial)), the **loose** view
does not (P = P(Unsafe)). The catalog has an entry per view, so the ensemble learns per tenant and category which
reading to trust. The three shares come from one query (``other_verdicts``), read at the verdict position after
``Safety:``; without log-probabilities the written verdict gives 1.0 or 0.0 in the view.

Categories map to canonical ids through ``taxonomy.QWEN3GUARD``. As for Llama Guard, a flagged verdict gives its
probability to the listed categories' ids and 0.0 to the others; a verdict that is not flagged in the view (or lists
no category) gives its probability to every asked id. ``Jailbreak`` (S24, prompt attacks) exists on prompt checks
only: on a response check S24 gets 0.0, since an answer is not an attack on the assistant, and an answer that lists
``Jailbreak`` is off-format (the model card's response categories exclude it), hence a parse error: scoring it would
give its probability to S24 alone, zeroed, so every category 0.0, a silent "safe". So is a label line written twice.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Literal

from aegis_online.experts.base import ExpertInput
from aegis_online.experts.guards.answers import CONSISTENCY_SLACK, ordered, paired, requested
from aegis_online.experts.guards.base import GuardAnswer, GuardFamily, GuardParseError, GuardQuery
from aegis_online.experts.guards.conversation import exchange_messages
from aegis_online.taxonomy import QWEN3GUARD, ExternalTaxonomy

KEY = "qwen3guard"
SAFE, CONTROVERSIAL, UNSAFE = "Safe", "Controversial", "Unsafe"
VERDICTS = (UNSAFE, SAFE, CONTROVERSIAL)
VERDICT_PREFIX = "Safety:"
PROMPT_ONLY = frozenset({"S24"})
PROMPT_ONLY_LABELS = frozenset({"jailbreak"})
"""The model's categories of prompt checks only (lower case): its response-moderation list has no Jailbreak."""
READ_LABELS = frozenset({"safety", "categories", "refusal"})
MAX_NEW_TOKENS = 64
"""Three short lines; a few categories at most."""

View = Literal["strict", "loose"]
_LINE = re.compile(r"^\s*([A-Za-z]+)\s*:\s*(.*?)\s*$")


def read_lines(family: str, text: str) -> dict[str, str]:
    """``{"safety": ..., "categories": ..., "refusal": ...}`` from the answer; ``GuardParseError`` when the safety or
    categories line is missing or written twice (which one would be the answer?), or a line is not ``Label: value``."""
    values: dict[str, str] = {}
    for line in (line for line in text.strip().splitlines() if line.strip()):
        match = _LINE.match(line)
        if match is None:
            raise GuardParseError(f"{family}: expected 'Label: value' lines, got {line!r} in {text!r}")
        label = match.group(1).lower()
        if label in values and label in READ_LABELS:
            raise GuardParseError(f"{family}: repeated '{match.group(1)}:' line in {text!r}")
        values[label] = match.group(2)
    for needed in ("safety", "categories"):
        if needed not in values:
            raise GuardParseError(f"{family}: no '{needed.capitalize()}:' line in {text!r}")
    return values


class Qwen3GuardGen(GuardFamily):
    """Qwen3Guard-Gen in one view.

    Parameters
    ----------
    view
        ``"strict"`` (Controversial counts as unsafe) or ``"loose"`` (it does not).
    labels
        The categories' canonical meaning (default ``taxonomy.QWEN3GUARD``; the catalog's ``category_map`` over it).

    Examples
    --------
    >>> from aegis_online.experts.base import ExpertInput
    >>> from aegis_online.schemas import Message
    >>> from aegis_online.taxonomy import category
    >>> item = ExpertInput(messages=(Message(role="user", content="hi"),), check="prompt", categories=(category("S1"),))
    >>> answer = GuardAnswer("Safety: Controversial\\nCategories: Violent", 0.2, {"Unsafe": 0.2, "Safe": 0.3,
    ...                      "Controversial": 0.5})
    >>> strict, loose = Qwen3GuardGen("strict"), Qwen3GuardGen("loose")
    >>> strict.parse(item, strict.queries(item), [answer]), loose.parse(item, loose.queries(item), [answer])
    ({'S1': 0.7}, {'S1': 0.2})
    """

    name = "qwen3guard_gen"
    free_form = False

    def __init__(self, view: View = "strict", labels: ExternalTaxonomy = QWEN3GUARD) -> None:
        if view not in ("strict", "loose"):
            raise ValueError(f"view must be 'strict' or 'loose', got {view!r}")
        self.view = view
        self.labels = labels
        self.categories = frozenset().union(*labels.to_canonical.values())

    def queries(self, item: ExpertInput) -> list[GuardQuery]:
        if not requested(self, item):
            return []
        messages = exchange_messages(item)
        return [
            GuardQuery(
                key=KEY,
                positive=UNSAFE,
                negative=SAFE,
                other_verdicts=(CONTROVERSIAL,),
                messages=messages,
                verdict_prefix=VERDICT_PREFIX,
                max_new_tokens=MAX_NEW_TOKENS,
            )
        ]

    def flagged(self, verdict: str) -> bool:
        return verdict == UNSAFE or (self.view == "strict" and verdict == CONTROVERSIAL)

    def probability(self, verdict: str, answer: GuardAnswer, text: str) -> float:
        """P(unsafe in this view): from the three shares, or 1.0/0.0 from the written verdict without them. A
        written verdict that is not the likeliest of the three means the backend read another position."""
        shares = answer.shares
        if shares is None:
            return 1.0 if self.flagged(verdict) else 0.0
        if set(shares) != set(VERDICTS) or any(not 0.0 <= p <= 1.0 for p in shares.values()):
            raise GuardParseError(f"{self.name}: verdict shares must be probabilities of {VERDICTS}, got {shares!r}")
        if shares[verdict] + CONSISTENCY_SLACK < max(shares.values()):
            raise GuardParseError(
                f"{self.name}: shares {shares!r} contradict the generated verdict {verdict!r} in {text!r}"
            )
        return shares[UNSAFE] + (shares[CONTROVERSIAL] if self.view == "strict" else 0.0)

    def listed(self, value: str, text: str, check: str = "prompt") -> set[str]:
        """Canonical ids of the categories named in ``Categories:`` (empty for ``None``); a prompt-only category
        (Jailbreak) on a response check is off-format."""
        names = [name.strip() for name in value.split(",") if name.strip()]
        if names == ["None"] or not names:
            return set()
        by_name = {label.lower(): label for label in self.labels.labels}
        unknown = [name for name in names if name.lower() not in by_name]
        if unknown:
            raise GuardParseError(f"{self.name}: unknown categories {unknown} in {text!r}")
        prompt_only = [by_name[name.lower()] for name in names if name.lower() in PROMPT_ONLY_LABELS]
        if check == "response" and prompt_only:
            raise GuardParseError(
                f"{self.name}: {', '.join(prompt_only)} is a prompt-check category, off-format on a response check, "
                f"in {text!r}"
            )
        return set(self.labels.scores_to_canonical(dict.fromkeys((by_name[n.lower()] for n in names), 1.0)))

    def parse(
        self, item: ExpertInput, queries: Sequence[GuardQuery], answers: Sequence[GuardAnswer]
    ) -> dict[str, float]:
        asked = requested(self, item)
        scores: dict[str, float] = {}
        for key, answer in paired(self.name, queries, answers):
            if key != KEY:
                raise ValueError(f"{self.name}: query key {key!r} does not belong to this item")
            values = read_lines(self.name, answer.text)
            verdict = values["safety"].capitalize()
            if verdict not in VERDICTS:
                raise GuardParseError(f"{self.name}: 'Safety' must be one of {VERDICTS}, got {values['safety']!r}")
            if item.check == "response" and values.get("refusal", "no").lower() not in ("yes", "no"):
                raise GuardParseError(f"{self.name}: 'Refusal' must be Yes or No, got {values['refusal']!r}")
            p = self.probability(verdict, answer, answer.text)
            listed = self.listed(values["categories"], answer.text, item.check)
            hit = self.flagged(verdict) and listed
            scores.update({cat_id: (p if not hit or cat_id in listed else 0.0) for cat_id in asked.canonical})
            if item.check == "response":
                scores.update({cat_id: 0.0 for cat_id in asked.canonical & PROMPT_ONLY})
        return ordered(scores)

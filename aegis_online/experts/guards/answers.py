"""What every family does the same way: pick the categories to ask about, and turn a verdict into a probability.

A backend gives P(positive verdict token) renormalised over the positive and negative tokens, or ``None`` when it
has no log-probabilities; the greedy text always comes with it. Greedy decoding writes the more likely of the two
tokens, so a negative written verdict with a probability above one half means the backend read another position
than the verdict's. That is reported as a parse error, so such a probability never reaches the learner silently.
The other direction is no contradiction: when the negative token is missing from a server's top-k log-probabilities
the backends report the unnormalised P(positive) (the model cards' reading), which may be below one half under a
positive verdict.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from aegis_online.experts.base import ExpertInput
from aegis_online.experts.guards.base import GuardAnswer, GuardFamily, GuardParseError, GuardQuery
from aegis_online.taxonomy import CANONICAL_IDS, Category

#: Slack for numerical noise between the decoding pass and the log-probability read (bf16 ties and the like).
CONSISTENCY_SLACK = 0.05


@dataclass(frozen=True)
class Requested:
    """The categories of an item a family should answer: canonical ids it covers, and custom categories."""

    canonical: frozenset[str]
    custom: tuple[Category, ...]

    def __bool__(self) -> bool:
        return bool(self.canonical or self.custom)


def requested(family: GuardFamily, item: ExpertInput) -> Requested:
    """Canonical ids of ``item`` that ``family`` covers, and its custom categories when the family is free-form."""
    canonical = frozenset(c.id for c in item.categories if not c.custom and c.id in family.categories)
    custom = tuple(c for c in item.categories if c.custom) if family.free_form else ()
    return Requested(canonical, custom)


def ordered(scores: dict[str, float], custom: Sequence[Category] = ()) -> dict[str, float]:
    """``scores`` in canonical column order, then custom categories in the item's order."""
    ids = [*CANONICAL_IDS, *(c.id for c in custom)]
    return {cat_id: scores[cat_id] for cat_id in ids if cat_id in scores}


def valid_ids(ids: Iterable[str], what: str) -> frozenset[str]:
    """``ids`` as a set, after checking each is a canonical id (a typo in a constructor option fails early)."""
    chosen = frozenset(ids)
    invalid = sorted(chosen - set(CANONICAL_IDS))
    if invalid:
        raise ValueError(f"{what}: unknown canonical ids {invalid}; valid ids: {', '.join(CANONICAL_IDS)}")
    return chosen


def paired(family: str, queries: Sequence[GuardQuery], answers: Sequence[GuardAnswer]) -> list[tuple[str, GuardAnswer]]:
    """(query key, answer) pairs; the backend must answer every query, in order, and completely where the query
    needs it (``require_complete``). Every family reads its answers through here, so no family can forget the
    check that its queries' ``needs_complete_answer`` asks for."""
    if len(queries) != len(answers):
        raise GuardParseError(f"{family}: {len(answers)} answers for {len(queries)} queries")
    return [(q.key, require_complete(family, q, a)) for q, a in zip(queries, answers, strict=True)]


def require_complete(family: str, query: GuardQuery, answer: GuardAnswer) -> GuardAnswer:
    """``answer`` unchanged, unless the query needs a complete answer and generation was cut at its token limit:
    then a ``GuardParseError``, whatever the text looks like (a reasoning model cut just after quoting a planted
    verdict reads exactly like one that answered)."""
    if query.needs_complete_answer and answer.truncated:
        raise GuardParseError(
            f"{family}: output cut at max_new_tokens ({query.max_new_tokens}): raise max_new_tokens (an unfinished "
            f"reasoning may end in a verdict it only quoted). Output ends {answer.text[-200:]!r}"
        )
    return answer


def checked_probability(family: str, p: float | None) -> float | None:
    """``p`` unchanged, after checking it is a probability."""
    if p is not None and not (isinstance(p, (int, float)) and not math.isnan(p) and 0.0 <= p <= 1.0):
        raise GuardParseError(f"{family}: p_positive must be a probability in [0, 1], got {p!r}")
    return p


def verdict_probability(family: str, flagged: bool, p_positive: float | None, *, verdict: str) -> float:
    """P(positive) for a written verdict: the backend's probability, or 1.0/0.0 from the text without one.

    ``verdict`` is the written verdict word, quoted in the error when the probability contradicts it.
    """
    p = checked_probability(family, p_positive)
    if p is None:
        return 1.0 if flagged else 0.0
    if not flagged and p > 0.5 + CONSISTENCY_SLACK:
        raise GuardParseError(
            f"{family}: p_positive={p:.3f} contradicts the generated verdict {verdict!r}; the backend read the "
            "probability at another position than the verdict's"
        )
    return p


_YES_NO = re.compile(r"\s*(yes|no)\b", re.IGNORECASE)


def yes_no(text: str) -> bool | None:
    """True for an answer starting with Yes, False for No, None otherwise (case-insensitive, leading blanks ok)."""
    match = _YES_NO.match(text)
    if match is None:
        return None
    return match.group(1).lower() == "yes"


def yes_no_probability(family: str, key: str, answer: GuardAnswer) -> float:
    """P(Yes) of a Yes/No family (ShieldGemma, Granite Guardian).

    With a probability the text is only cross-checked when it starts with Yes or No (the backend may stop after one
    token, or the model may start off-format: the renormalised probability is still the model's preference).
    Without one the text must start with Yes or No.
    """
    p = checked_probability(family, answer.p_positive)
    said = yes_no(answer.text)
    if said is None:
        if p is None:
            raise GuardParseError(f"{family}: answer to {key!r} must start with 'Yes' or 'No', got {answer.text!r}")
        return p
    return verdict_probability(family, said, p, verdict="Yes" if said else "No")

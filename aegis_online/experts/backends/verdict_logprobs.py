"""Read P(positive verdict) from per-step generation info: the one rule every backend shares.

Backends differ in where per-step logprobs come from (logits in transformers, ``Logprob`` objects in vLLM, JSON
from an OpenAI-compatible server) but must agree on how a verdict is read, or the same model would give different
probabilities depending on where it runs. Each backend converts its output to ``Step``s and calls
``read_verdict`` (``verdict_probability`` and, for more than two verdicts, ``verdict_shares``). Standard library
only.

Examples
--------
>>> steps = [("\\n\\n", {"\\n\\n": -0.1}), ("unsafe", {"unsafe": -0.2, "safe": -1.8})]
>>> round(verdict_probability(steps, positive="unsafe", negative="safe"), 4)
0.832
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from aegis_online.experts.guards.base import GuardQuery

__all__ = [
    "Occurrence",
    "Step",
    "best_logprob",
    "read_verdict",
    "verdict_probability",
    "verdict_shares",
    "verdict_step",
]

Step = tuple[str, Mapping[str, float]]
"""One generated token: its text and the logprobs of candidate token texts at that position (the chosen one too)."""

Occurrence = Literal["first", "last"]
"""Which occurrence of the verdict prefix the verdict follows (``GuardQuery.verdict_occurrence``)."""

# Space and newline markers of SentencePiece ("▁") and byte-level BPE ("Ġ", "Ċ") read as whitespace: servers that
# return raw token strings instead of decoded text would otherwise never match a verdict word or a blank line.
_MARKERS_AS_SPACE = str.maketrans("▁ĠĊ", "  \n")
_WHITESPACE = re.compile(r"\s+")


def _normalise(token: str) -> str:
    return token.translate(_MARKERS_AS_SPACE).strip()


def _without_whitespace(text: str) -> str:
    return _WHITESPACE.sub("", text.translate(_MARKERS_AS_SPACE))


def verdict_step(steps: Sequence[Step], verdict_prefix: str = "", occurrence: Occurrence = "first") -> int | None:
    """Index of the step holding the verdict, or None when generation stopped before it.

    The verdict is the first non-whitespace token generated once the text so far ends with ``verdict_prefix``: its
    ``"first"`` occurrence, or its ``"last"`` for a model that reasons before it answers (its reasoning may quote
    the prefix with another verdict; the answer ends the output). When the last occurrence has no verdict after it,
    there is none: an earlier one belongs to the reasoning. Without a prefix both are the first non-blank token.
    The comparison ignores all whitespace, because models differ in spacing (``{"User Safety":"`` vs
    ``{"User Safety": "``) and whitespace-only tokens (Llama Guard 3's leading blank lines) carry no verdict.
    """
    prefix = _without_whitespace(verdict_prefix)
    start = _prefix_end(steps, prefix, occurrence)
    if start is None:
        return None
    return next((i for i in range(start, len(steps)) if _normalise(steps[i][0])), None)


def _prefix_end(steps: Sequence[Step], prefix: str, occurrence: Occurrence) -> int | None:
    """Index of the first step after the chosen occurrence of ``prefix`` (0 for an empty one); None without it."""
    if not prefix:
        return 0
    found = None
    so_far = ""
    for index, (token, _) in enumerate(steps):
        added = _without_whitespace(token)
        so_far += added
        if added and so_far.endswith(prefix):
            if occurrence == "first":
                return index + 1
            found = index + 1
    return found


def best_logprob(candidates: Mapping[str, float], word: str, other: str = "") -> float | None:
    """Highest logprob among candidates that start spelling ``word``, or None if none does.

    A candidate counts when its text (stripped of whitespace and word-start markers) equals ``word`` or is a
    non-empty prefix of it, since tokenizers split words ("unsafe" may be "uns" + "afe"). A candidate that also
    starts ``other`` (the opposite verdict) counts only for the verdict it equals, if any: it is ambiguous.
    Suffixes never count: "safe" ends "unsafe" but does not start it.
    """
    best: float | None = None
    for text, logprob in candidates.items():
        stem = _normalise(text)
        if not stem or not word.startswith(stem):
            continue
        if stem != word and other and other.startswith(stem):
            continue
        if best is None or logprob > best:
            best = logprob
    return best


def _upper_bound_of_absent(candidates: Mapping[str, float]) -> float:
    """The largest probability a token missing from ``candidates`` can have, if they are the top-k.

    It is at most the smallest listed probability, and at most what the listed ones leave of 1.
    """
    listed = [math.exp(lp) for lp in candidates.values()]
    return max(0.0, min(min(listed), 1.0 - sum(listed)))


def verdict_probability(
    steps: Sequence[Step], positive: str, negative: str, verdict_prefix: str = "", occurrence: Occurrence = "first"
) -> float | None:
    """P(positive verdict), renormalised over the positive and negative verdicts at the verdict step
    (``verdict_step``).

    - both verdicts among the candidates: ``exp(lp_pos) / (exp(lp_pos) + exp(lp_neg))``;
    - only the positive: ``exp(lp_pos)``, the model cards' unnormalised P(first verdict token);
    - only the negative: the positive's largest possible probability, renormalised, so that a top-k list that
      misses the positive yields a small but conservative value rather than 0 (over-flagging is the safe error);
    - neither, or no verdict step: None.
    """
    index = verdict_step(steps, verdict_prefix, occurrence)
    if index is None:
        return None
    candidates = steps[index][1]
    lp_pos = best_logprob(candidates, positive, negative)
    lp_neg = best_logprob(candidates, negative, positive)
    if lp_pos is None and lp_neg is None:
        return None
    if lp_neg is None:
        return min(1.0, math.exp(lp_pos))
    if lp_pos is None:
        bound = _upper_bound_of_absent(candidates)
        return bound / (bound + math.exp(lp_neg))
    # Logistic of the log-odds: stable where exp() of either logprob alone would underflow.
    log_odds = lp_pos - lp_neg
    if log_odds >= 0:
        return 1.0 / (1.0 + math.exp(-log_odds))
    odds = math.exp(log_odds)
    return odds / (1.0 + odds)


def verdict_shares(
    steps: Sequence[Step], words: Sequence[str], verdict_prefix: str = "", occurrence: Occurrence = "first"
) -> dict[str, float] | None:
    """P(each verdict word), renormalised over ``words``, at the verdict step: for a model with more than two verdicts
    (Qwen3Guard's ``Safe`` / ``Controversial`` / ``Unsafe``).

    A candidate counts for a word when its text equals it, or starts it and starts no other word. A word missing from
    the candidates gets the largest probability it can have (as in ``verdict_probability``); None when no word is
    among them, or there is no verdict step.

    >>> steps = [("Unsafe", {"Unsafe": -0.5, "Safe": -2.0, "Controversial": -1.5})]
    >>> {w: round(p, 3) for w, p in verdict_shares(steps, ["Safe", "Controversial", "Unsafe"]).items()}
    {'Safe': 0.14, 'Controversial': 0.231, 'Unsafe': 0.629}
    """
    index = verdict_step(steps, verdict_prefix, occurrence)
    if index is None:
        return None
    candidates = steps[index][1]
    found: dict[str, float] = {}
    for word in words:
        best: float | None = None
        for text, logprob in candidates.items():
            stem = _normalise(text)
            if not stem or not word.startswith(stem):
                continue
            if stem != word and any(other != word and other.startswith(stem) for other in words):
                continue
            best = logprob if best is None or logprob > best else best
        if best is not None:
            found[word] = math.exp(best)
    if not found:
        return None
    absent = _upper_bound_of_absent(candidates)
    mass = {word: found.get(word, absent) for word in words}
    total = sum(mass.values())
    return {word: value / total for word, value in mass.items()}


def read_verdict(steps: Sequence[Step], query: GuardQuery) -> tuple[float | None, dict[str, float] | None]:
    """What every backend reads for ``query``: P(positive verdict) and, for a query with other verdicts, each
    verdict's share (else None), both at the verdict step that ``query`` names."""
    where = (query.verdict_prefix, query.verdict_occurrence)
    p = verdict_probability(steps, query.positive, query.negative, *where)
    shares = verdict_shares(steps, query.verdicts, *where) if query.other_verdicts else None
    return p, shares

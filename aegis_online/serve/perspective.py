"""``POST /v1alpha1/comments:analyze``: Google's Perspective API over the ensemble (protocol <-> engine).

A comment becomes a prompt check of the caller's tenant over the canonical categories its requested attributes map
to (``taxonomy.PERSPECTIVE``), so the tenant's learned weights and calibration apply. An attribute's summary score
is the highest score of its scored categories (the taxonomy's recall-oriented projection), a probability as
Perspective's. What Perspective's shape cannot say, it does not fake:

* An attribute none of whose categories could be scored is never answered with a number: when the experts that
  cover it do not read the comment's language, the answer is Perspective's ``LANGUAGE_NOT_SUPPORTED_BY_ATTRIBUTE``
  error (or the attribute is dropped, with ``dropUnsupportedAttributes``); when they failed or timed out, 503.
* A partly scored answer says so under the extra key ``aegis`` (``degraded``, the unscored categories and missing
  experts) and in the ``X-Aegis-Degraded`` header.
* ``doNotStore: true`` logs nothing: no prediction record, so no request id and nothing feedback could join.

``spanAnnotations`` scores each sentence too (spans in UTF-16 code units, as Perspective's, for JavaScript
callers); those checks are never logged: feedback labels the comment, not its sentences.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Sequence
from dataclasses import dataclass

from aegis_online.api_models.perspective_protocol import (
    AegisAnalyzeInfo,
    AnalyzeCommentRequest,
    AnalyzeCommentResponse,
    AttributeScores,
    Score,
    SpanScore,
)
from aegis_online.config import LimitsSection
from aegis_online.engine import Engine
from aegis_online.experts import Expert
from aegis_online.language import UNDETERMINED, identify, is_language_code
from aegis_online.schemas import FAILURE_KINDS, Decision, Message, ModerationRequest
from aegis_online.serve.auth import Principal
from aegis_online.serve.errors import ApiError
from aegis_online.serve.moderate import DecisionRecorder
from aegis_online.taxonomy import CANONICAL, CANONICAL_IDS, PERSPECTIVE

#: A sentence ends at ., ! or ? (or their full-width forms) followed by space, or at a line break.
_SENTENCE_END = re.compile(r"(?<=[.!?\u3002\uff01\uff1f])\s+|\n+")


@dataclass(frozen=True)
class Span:
    """A piece of the comment: its text and its UTF-16 offsets."""

    text: str
    begin: int
    end: int


def utf16_length(text: str) -> int:
    """Length in UTF-16 code units (what JavaScript's ``String.length`` counts, and Perspective's offsets)."""
    return len(text.encode("utf-16-le")) // 2


def sentence_spans(text: str, most: int) -> list[Span]:
    """The comment's sentences with their UTF-16 offsets, leading and trailing space left out; when there are more
    than ``most``, neighbours are merged into ``most`` spans of about equal count, so one call costs at most
    ``most`` extra checks.

    >>> [(s.text, s.begin, s.end) for s in sentence_spans("Hi there. You idiot!  Bye", 8)]
    [('Hi there.', 0, 9), ('You idiot!', 10, 20), ('Bye', 22, 25)]
    >>> [s.text for s in sentence_spans("One. Two. Three.", 2)]
    ['One. Two.', 'Three.']
    """
    pieces: list[tuple[int, int]] = []
    start = 0
    for match in _SENTENCE_END.finditer(text):
        pieces.append((start, match.start()))
        start = match.end()
    pieces.append((start, len(text)))
    pieces = [(a, b) for a, b in pieces if text[a:b].strip()]
    if len(pieces) > most:
        size = -(-len(pieces) // most)
        pieces = [(pieces[i][0], pieces[min(i + size, len(pieces)) - 1][1]) for i in range(0, len(pieces), size)]
    return [Span(text[a:b], utf16_length(text[:a]), utf16_length(text[:b])) for a, b in pieces]


def perspective_error(status: int, message: str, error_type: str, **extra: object) -> ApiError:
    """An ``ApiError`` carrying Perspective's ``errorType`` (``code``) for ``errors.error_response``."""
    return ApiError(status, message, code=error_type, field=str(extra.pop("field", "")) or None, details=extra or None)


class PerspectiveServing:
    def __init__(self, engine: Engine, record: DecisionRecorder, limits: LimitsSection) -> None:
        self.engine = engine
        self.record = record
        self.limits = limits
        #: Spans of one comment: with the comment itself, at most ``limits.max_inputs`` checks per call.
        self.most_spans = max(limits.max_inputs - 1, 1)

    def checks(self, body: AnalyzeCommentRequest) -> int:
        """How many expert checks the call costs (the comment, and its spans): what admission and quotas count."""
        return 1 + (len(sentence_spans(body.comment.text, self.most_spans)) if body.spanAnnotations else 0)

    async def __call__(
        self, body: AnalyzeCommentRequest, principal: Principal, *, deadline_s: float | None = None
    ) -> AnalyzeCommentResponse:
        text = body.comment.text
        if not text.strip():
            raise perspective_error(400, "Comment must be non-empty.", "COMMENT_EMPTY", field="comment.text")
        if len(text) > self.limits.max_input_chars:
            raise perspective_error(
                400,
                f"Comment text too long: at most {self.limits.max_input_chars} characters (limits.max_input_chars).",
                "COMMENT_TOO_LONG",
                field="comment.text",
            )
        attributes = self.attributes(body)
        detected = identify(text)
        languages = self.languages(body, detected)
        attributes = self.readable(attributes, languages, detected, drop=body.dropUnsupportedAttributes)
        categories = [c for c in CANONICAL_IDS if any(c in PERSPECTIVE.to_canonical[a] for a in attributes.values())]
        tenant = principal.home_tenant

        def request(piece: str) -> ModerationRequest:
            return ModerationRequest(
                messages=[Message(role="user", content=piece)], tenant=tenant, categories=categories
            )

        spans = sentence_spans(text, self.most_spans) if body.spanAnnotations else []
        remember = not body.doNotStore
        decision, *span_decisions = await asyncio.gather(
            self.engine.moderate(request(text), deadline_s=deadline_s, remember=remember),
            *(self.engine.moderate(request(s.text), deadline_s=deadline_s, remember=False) for s in spans),
        )
        self.record(decision)
        scores: dict[str, AttributeScores] = {}
        for name, attribute in attributes.items():
            summary = attribute_score(decision, attribute)
            if summary is None:
                raise self.unscored(decision, name, detected)
            threshold = body.requestedAttributes[name].scoreThreshold
            if threshold is not None and summary < threshold:
                continue
            span_scores = None
            if body.spanAnnotations:
                span_scores = [
                    SpanScore(begin=s.begin, end=s.end, score=Score(value=value))
                    for s, d in zip(spans, span_decisions, strict=True)
                    if (value := attribute_score(d, attribute)) is not None
                ]
            scores[attribute] = AttributeScores(summaryScore=Score(value=summary), spanScores=span_scores)
        degraded = decision.degraded or any(d.degraded for d in span_decisions)
        return AnalyzeCommentResponse(
            attributeScores=scores,
            languages=languages or ([] if detected == UNDETERMINED else [detected]),
            detectedLanguages=[] if detected == UNDETERMINED else [detected],
            clientToken=body.clientToken,
            aegis=AegisAnalyzeInfo(
                request_id=decision.request_id if remember else None,
                degraded=degraded,
                unscored_categories=sorted({u.category for u in decision.unscored}),
                missing_experts=[{"expert": m.expert, "kind": m.kind} for m in decision.missing_experts],
            ),
        )

    @staticmethod
    def attributes(body: AnalyzeCommentRequest) -> dict[str, str]:
        """Requested name -> attribute (``NAME@VERSION`` pins a version: there is one of each here)."""
        if not body.requestedAttributes:
            raise perspective_error(
                400,
                "No requested attributes: name at least one.",
                "NO_REQUESTED_ATTRIBUTES",
                field="requestedAttributes",
            )
        attributes = {}
        for name in body.requestedAttributes:
            attribute = name.partition("@")[0]
            if attribute not in PERSPECTIVE.to_canonical:
                raise perspective_error(
                    400,
                    f"Unknown requested attribute: {name} (this service scores {', '.join(PERSPECTIVE.labels)})",
                    "INVALID_REQUEST",
                    field=f"requestedAttributes.{name}",
                )
            attributes[name] = attribute
        return attributes

    @staticmethod
    def languages(body: AnalyzeCommentRequest, detected: str) -> list[str]:
        """The request's languages as ISO 639-1 codes (``en-US`` -> ``en``), in order, once each."""
        codes = []
        for i, tag in enumerate(body.languages or ()):
            code = tag.strip().lower().replace("_", "-").partition("-")[0]
            if not is_language_code(code):
                raise perspective_error(
                    400, f"languages.{i}: {tag!r} is not a language code", "INVALID_REQUEST", field=f"languages.{i}"
                )
            codes.append(code)
        return list(dict.fromkeys(codes))

    def readable(
        self, attributes: dict[str, str], languages: Sequence[str], detected: str, *, drop: bool
    ) -> dict[str, str]:
        """The attributes some expert covering them reads the comment's language for: the request's languages, or
        the detected one (``und``: every expert reads it). The others fail the call, or are dropped."""
        wanted = list(languages) or [detected]
        kept = {}
        for name, attribute in attributes.items():
            related = [c for c in CANONICAL if c.id in PERSPECTIVE.to_canonical[attribute]]
            experts = [e for e in self.engine.experts if any(e.covers(c) for c in related)]
            if any(e.reads(lang) for e in experts for lang in wanted):
                kept[name] = attribute
            elif not drop:
                raise self.language_error(name, wanted, detected, experts)
        if not kept:
            raise self.language_error(next(iter(attributes)), wanted, detected, [])
        return kept

    @staticmethod
    def language_error(name: str, languages: Sequence[str], detected: str, experts: Sequence[Expert]) -> ApiError:
        read = sorted({lang for e in experts for lang in (e.languages or ())})
        return perspective_error(
            400,
            f"Attribute {name} does not support request languages: {','.join(languages)}"
            + (f" (its experts read {','.join(read)})" if read else ""),
            "LANGUAGE_NOT_SUPPORTED_BY_ATTRIBUTE",
            field="languages",
            languageNotSupportedByAttributeError={
                "detectedLanguages": [] if detected == UNDETERMINED else [detected],
                "attribute": name,
            },
        )

    def unscored(self, decision: Decision, name: str, detected: str) -> ApiError:
        """Why an attribute has no score: its experts do not read the comment's language (400, Perspective's
        error), or they failed (503: could not check, never a made-up score)."""
        related = PERSPECTIVE.to_canonical[name.partition("@")[0]]
        kinds = {k for u in decision.unscored if u.category in related for k in u.kinds}
        if kinds == {"language"}:
            experts = [e for e in self.engine.experts if any(e.covers(c) for c in CANONICAL if c.id in related)]
            return self.language_error(name, [detected], detected, experts)
        failed = sorted(kinds & FAILURE_KINDS) or ["no expert answered"]
        return ApiError(
            503,
            f"Attribute {name} could not be scored now ({', '.join(failed)}); retry later",
            code="UNAVAILABLE",
            headers={"Retry-After": "1"},
        )


def attribute_score(decision: Decision, attribute: str) -> float | None:
    """The highest score among the attribute's categories that were scored; None when none was."""
    related = PERSPECTIVE.to_canonical[attribute]
    scores = [d.score for d in decision.categories if d.category in related and d.score is not None]
    return max(scores) if scores else None

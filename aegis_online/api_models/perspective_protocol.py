# ruff: noqa: N815  (the field names are Perspective's camelCase wire names)
"""Google's Perspective API on the wire: ``POST /v1alpha1/comments:analyze`` request, response and error models.

Field names are Perspective's own camelCase (``requestedAttributes``, ``summaryScore``, ...) so that its client
libraries and hand-written callers work by changing the base URL. Perspective closes at the end of 2026; this is the
migration path for the forums, comment platforms and research code built on it. The translation to the engine lives
in ``serve.perspective``; the models live below ``serve`` so that clients can read the same types.

Unknown fields are refused (400 naming them), as Perspective's own JSON parser does, so a misspelt option is never
silently ignored.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

#: Perspective's ``errorType`` values (its error details), the ones this endpoint answers with.
PerspectiveErrorType = Literal[
    "COMMENT_EMPTY",
    "COMMENT_TOO_LONG",
    "NO_REQUESTED_ATTRIBUTES",
    "LANGUAGE_NOT_SUPPORTED_BY_ATTRIBUTE",
    "INVALID_REQUEST",
]
ERROR_DETAIL_TYPE = "type.googleapis.com/google.commentanalyzer.v1alpha1.Error"


class _Wire(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Comment(_Wire):
    text: str = Field(description="The comment to score.")
    type: Literal["PLAIN_TEXT"] = Field(default="PLAIN_TEXT", description="Only plain text, as Perspective.")


class AttributeParameters(_Wire):
    scoreType: Literal["PROBABILITY"] = Field(default="PROBABILITY", description="Only probabilities.")
    scoreThreshold: float | None = Field(
        default=None, ge=0.0, le=1.0, description="Leave the attribute out of the answer when its score is lower."
    )


class ContextEntry(_Wire):
    text: str = ""
    type: Literal["PLAIN_TEXT"] = "PLAIN_TEXT"


class Context(_Wire):
    """Accepted for compatibility and not used: the experts score the comment alone, as Perspective's production
    models do."""

    entries: list[ContextEntry] = Field(default_factory=list)


class AnalyzeCommentRequest(_Wire):
    comment: Comment
    requestedAttributes: dict[str, AttributeParameters] = Field(
        description="Attribute name (NAME or NAME@VERSION) -> parameters ({} for the defaults)."
    )
    languages: list[str] | None = Field(
        default=None, max_length=16, description="ISO 639-1 codes of the comment; omitted: detected."
    )
    doNotStore: bool = Field(default=False, description="True: nothing about the comment is kept (no feedback).")
    spanAnnotations: bool = Field(default=False, description="Also score each sentence (spanScores).")
    clientToken: str | None = Field(default=None, max_length=256, description="Echoed in the response.")
    sessionId: str | None = Field(default=None, max_length=256, description="Accepted; not used.")
    communityId: str | None = Field(default=None, max_length=256, description="Accepted; not used.")
    context: Context | None = Field(default=None, description="Accepted; not used.")
    dropUnsupportedAttributes: bool = Field(
        default=False,
        description="Leave out attributes that do not support the comment's language instead of failing.",
    )


class Score(_Wire):
    value: float
    type: Literal["PROBABILITY"] = "PROBABILITY"


class SpanScore(_Wire):
    begin: int = Field(description="UTF-16 code-unit offset of the span's start.")
    end: int = Field(description="UTF-16 code-unit offset just past its end.")
    score: Score


class AttributeScores(_Wire):
    summaryScore: Score
    spanScores: list[SpanScore] | None = None


class AegisAnalyzeInfo(_Wire):
    """This service's own facts, under the extra key ``aegis``: the degradation Perspective's shape cannot say."""

    request_id: str | None = Field(description="What /v1/feedback labels; absent when doNotStore kept nothing.")
    degraded: bool = Field(description="True when a requested attribute's categories were not all scored.")
    unscored_categories: list[str] = Field(description="Canonical categories no expert could score.")
    missing_experts: list[dict[str, str]] = Field(description="{expert, kind} of each expert that gave no score.")


class AnalyzeCommentResponse(_Wire):
    attributeScores: dict[str, AttributeScores]
    languages: list[str]
    detectedLanguages: list[str]
    clientToken: str | None = None
    aegis: AegisAnalyzeInfo


class ErrorDetail(BaseModel):
    model_config = ConfigDict(populate_by_name=True, frozen=True)

    type_url: str = Field(default=ERROR_DETAIL_TYPE, alias="@type")
    errorType: PerspectiveErrorType
    languageNotSupportedByAttributeError: dict[str, object] | None = None


class ErrorBody(_Wire):
    code: int
    message: str
    status: str
    details: list[ErrorDetail] = Field(default_factory=list)
    field: str | None = Field(default=None, description="The request field at fault, when one is (an extra key).")


class PerspectiveErrorResponse(_Wire):
    error: ErrorBody

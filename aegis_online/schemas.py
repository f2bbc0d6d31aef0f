"""Pydantic models of what crosses a boundary: requests, expert outputs, decisions, feedback events.

Validation lives here so that every entry point (HTTP, Kafka, CLI, replay) rejects bad input the same way, with
an error that names the field. Imports only ``taxonomy``; nothing above it.
"""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from datetime import datetime, timezone
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

MAX_MESSAGES = 64
MAX_MESSAGE_CHARS = 32_000
TENANT_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
REQUEST_ID_PATTERN = r"^[A-Za-z0-9_.:-]{1,128}$"

#: Tenant ids refused in any letter case. ``global`` is the scope of the weights every tenant starts from (their
#: learner keys are tagged ``{global}`` where a tenant's are tagged with its id), so a tenant by that name would read
#: and train them as its own. The stores compare ids exactly, but ``Global`` and ``GLOBAL`` are refused too: an id one
#: letter's case away from the global scope is a mistake waiting to happen, in a key listing or a dashboard.
RESERVED_TENANT_IDS: frozenset[str] = frozenset({"global"})


def check_tenant_id(value: str) -> str:
    """``value`` if it is a tenant id (``TENANT_PATTERN``, not reserved); else ``ValueError`` saying why.

    >>> check_tenant_id("acme")
    'acme'
    >>> try:
    ...     check_tenant_id("Global")
    ... except ValueError as error:
    ...     print(error)  # doctest: +ELLIPSIS
    'Global' is reserved: 'global' (in any case) names the global weights every tenant starts from; ...
    """
    if not re.fullmatch(TENANT_PATTERN, value):
        raise ValueError(f"{value!r} is not a tenant id (1-64 letters, digits, '_', '.', '-'; a letter or digit first)")
    if value.casefold() in RESERVED_TENANT_IDS:  # a ValueError whose type (the API's error code) says why
        raise PydanticCustomError(
            "reserved_tenant",
            f"{value!r} is reserved: 'global' (in any case) names the global weights every tenant starts from; "
            "choose another tenant id",
        )
    return value


Probability = Annotated[float, Field(ge=0.0, le=1.0)]
#: A tenant id wherever one enters (requests, feedback events, policies, API keys, the config): the pattern, checked
#: first (it is also the OpenAPI schema's), then ``check_tenant_id`` for the reserved ids.
TenantId = Annotated[
    str,
    Field(pattern=TENANT_PATTERN, description="Tenant id: letters, digits, '_', '.', '-'; not 'global' (reserved)."),
    AfterValidator(check_tenant_id),
]
RequestId = Annotated[str, Field(pattern=REQUEST_ID_PATTERN)]
Role = Literal["system", "user", "assistant", "tool"]
Check = Literal["prompt", "response"]
Action = Literal["allow", "flag", "block"]
StrictnessName = Literal["lenient", "balanced", "strict"]
#: Why an expert gave no score for a request, as code reads it (the free-text ``reason`` is for people):
#: ``timeout`` (missed the deadline), ``error`` (raised, or answered without a score it covers), ``not_queried``
#: (bandit mode left it out), ``not_covered`` (it covers none of the request's categories), ``language``
#: (it does not read the request's language).
MissingKind = Literal["timeout", "error", "not_queried", "not_covered", "language"]
#: Kinds that mean "could have scored, did not": the ones that make a category unscored and a decision degraded.
FAILURE_KINDS: frozenset[str] = frozenset({"timeout", "error", "not_queried", "language"})
STRICTNESS_NAMES: dict[str, float] = {"lenient": 0.2, "balanced": 0.5, "strict": 0.8}


def _strictness(value: object) -> str | float:
    """A named level or a number in [0, 1]; anything else fails with one message that names both forms."""
    if isinstance(value, str) and value in STRICTNESS_NAMES:
        return value
    if isinstance(value, int | float) and not isinstance(value, bool) and 0.0 <= float(value) <= 1.0:
        return float(value)  # NaN fails the range check above
    raise ValueError(f"must be 'lenient', 'balanced', 'strict' or a number in [0, 1], got {value!r}")


#: A named level or a continuous value in [0, 1] (0 most lenient, 1 strictest).
Strictness = Annotated[
    StrictnessName | Annotated[float, Field(ge=0.0, le=1.0)],
    BeforeValidator(_strictness),
    Field(description="'lenient', 'balanced', 'strict', or a number in [0, 1] (0 most lenient, 1 strictest)."),
]

ACTION_SEVERITY: dict[str, int] = {"allow": 0, "flag": 1, "block": 2}


class Model(BaseModel):
    """Base of every schema: unknown fields are errors (a typo must not be silently ignored)."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Message(Model):
    role: Role
    content: str = Field(max_length=MAX_MESSAGE_CHARS)


class ModerationRequest(Model):
    """One conversation to check: its last user turn (``prompt``) or its last assistant turn (``response``)."""

    messages: list[Message] = Field(min_length=1, max_length=MAX_MESSAGES)
    check: Check = "prompt"
    tenant: TenantId = "default"
    strictness: Strictness | None = None
    categories: list[str] | None = Field(
        default=None, min_length=1, max_length=64, description="Subset of category ids or slugs to evaluate."
    )
    request_id: RequestId | None = None

    @property
    def input_digest(self) -> str:
        """A digest of what the experts are asked (messages, check, categories): a caller that reuses its
        ``request_id`` for another input is told so, instead of overwriting the logged prediction."""
        body = json.dumps(
            [[[m.role, m.content] for m in self.messages], self.check, self.categories], separators=(",", ":")
        )
        return hashlib.sha256(body.encode()).hexdigest()[:32]

    @property
    def checked_text(self) -> str:
        """The turn under check: the last user message (prompt) or the last assistant message (response)."""
        role = "user" if self.check == "prompt" else "assistant"
        return next(m.content for m in reversed(self.messages) if m.role == role)

    @model_validator(mode="after")
    def _checked_turn_exists(self) -> ModerationRequest:
        role = "user" if self.check == "prompt" else "assistant"
        if self.check == "response" and self.messages[-1].role != "assistant":
            raise ValueError("messages: a response check needs the last message to be from the assistant")
        if not any(m.role == role for m in self.messages):
            raise ValueError(f"messages: a {self.check} check needs at least one {role} message")
        return self


class ExpertOutput(Model):
    """What one expert said about one input: a probability per category it covers, or why it could not answer."""

    expert: str
    scores: dict[str, Probability] = Field(default_factory=dict)
    latency_ms: float = Field(default=0.0, ge=0.0)
    error: str | None = None
    #: set with ``error``: ``timeout`` when it missed its deadline, else ``error``
    error_kind: Literal["timeout", "error"] = "error"

    @property
    def ok(self) -> bool:
        return self.error is None


#: Where a decision threshold came from.
ThresholdSource = Literal["fixed", "learned", "floor"]
#: The key (category) of the whole-request decision: safe/unsafe verdicts of whole requests train it.
OVERALL = "overall"


class CategoryDecision(Model):
    category: str
    score: Probability | None = Field(description="Ensemble risk; null when no expert scored it (see unscored).")
    threshold: Probability
    flagged: bool
    action: Action
    weights_scope: Literal["global", "tenant"]
    unscored: MissingKind | None = Field(
        default=None,
        description="Why no expert scored this category (null: scored). not_covered: no expert of this deployment "
        "reads it; any other kind: its experts could not answer now, so the policy's on_unscored decided.",
    )
    threshold_source: ThresholdSource = Field(
        default="fixed",
        description="Where the threshold came from: the policy (fixed), learned from threshold_labels labels "
        "toward the policy's objective (learned), or the platform's floor, which no tenant policy loosens (floor).",
    )
    threshold_labels: int = Field(default=0, ge=0, description="Labels the applied threshold was learned from.")


class OverallDecision(Model):
    """The decision of the whole request (any category), learned from safe/unsafe verdicts of whole requests.

    Once its threshold is learned it decides whether the request is flagged (the categories say which action);
    floors and unscored categories still flag whatever it says."""

    score: Probability | None = Field(description="Calibrated risk that the request is unsafe in any category.")
    threshold: Probability
    threshold_source: ThresholdSource
    threshold_labels: int = Field(ge=0)
    flagged: bool
    weights_scope: Literal["global", "tenant"]


class ExpertContribution(Model):
    expert: str
    weights: dict[str, float] = Field(description="Weight of this expert per category, among the awake experts.")
    scores: dict[str, float]
    latency_ms: float


class MissingExpert(Model):
    expert: str
    kind: MissingKind = Field(description="Machine-readable: timeout, error, not_queried, not_covered, language.")
    reason: str = Field(description="For people; code reads kind.")


class UnscoredCategory(Model):
    """A category the request asked for that no awake expert scored: what the policy could not check."""

    category: str
    kinds: list[MissingKind] = Field(description="Why its experts gave no score (timeout, error, ...).")
    experts: list[str] = Field(description="The experts that cover it and did not score it.")


class CascadeDecision(Model):
    """Which tier decided a request in cascade mode: the cheap experts alone, or with the expensive ones."""

    tier: Literal["cheap", "expensive"]
    expected_loss: float | None = Field(
        default=None,
        description="The cheap tier's predicted squared loss on this request, summed over the categories the policy "
        "acts on and the whole request (learned from feedback; null when a category had no cheap score, or the "
        "cheap tier scored none of those).",
    )
    cut: float = Field(
        description="The tenant's escalation cut when the request was decided: the expensive tier is "
        "called when expected_loss reaches it."
    )
    reason: str | None = Field(
        default=None,
        description="Why the expensive tier was called, and when tier is nevertheless cheap, why none of it "
        "answered or could take the request (null: the cheap tier was confident).",
    )
    experts: list[str] = Field(
        default_factory=list,
        description="The expensive experts called (empty: none): the most trusted for this tenant "
        "(cascade.experts_per_escalation of them), now and then another, so that its weight stays measured, and "
        "the rest of the tier in place of one that failed.",
    )


class Decision(Model):
    request_id: str
    tenant: str
    check: Check
    strictness: float
    action: Action
    flagged: bool
    categories: list[CategoryDecision]
    experts: list[ExpertContribution]
    missing_experts: list[MissingExpert]
    degraded: bool = Field(
        default=False,
        description="True when a category the experts normally score went unscored (listed in unscored): the "
        "policy's on_unscored (or on_no_experts) decided it, not a score.",
    )
    unscored: list[UnscoredCategory] = Field(default_factory=list, description="Categories degraded, with why.")
    overall: OverallDecision | None = Field(
        default=None, description="The whole-request decision (null when no category was scored)."
    )
    language: str = Field(
        default="und",
        description="ISO 639-1 code of the checked turn's language, as identified; 'und' when it could not be told "
        "with confidence (every expert reads it). Experts that do not read it are missing with kind language.",
    )
    cascade: CascadeDecision | None = Field(
        default=None, description="Cascade mode: which tier decided (null: every expert was called)."
    )


def _utc_now() -> datetime:
    return datetime.now(timezone.utc)


class FeedbackEvent(Model):
    """A label for a past decision, from a moderator or a user report.

    Give either ``labels`` (per category, 0 safe .. 1 unsafe) or ``label`` (one verdict for the whole turn).
    ``event_id`` is the idempotency key: when absent it is derived from the content, so a retried delivery of
    the same feedback is recognised and applied once.
    """

    request_id: RequestId
    tenant: TenantId = "default"
    labels: dict[str, Probability] | None = Field(default=None, min_length=1, max_length=64)
    label: Literal["safe", "unsafe"] | None = None
    severity: Probability | None = Field(default=None, description="Recorded with the event; not a learner input.")
    source: Literal["moderator", "user_report", "automated"] = "moderator"
    time: datetime = Field(default_factory=_utc_now)
    event_id: Annotated[str, Field(min_length=1, max_length=128)] | None = None
    trusted: bool = Field(
        default=False,
        description="Whether the event also trains the global weights every tenant starts from. The service sets "
        "it from the caller's key (admin and moderator keys, or a contributing tenant within its share); a client "
        "key that sends true is refused.",
    )

    @model_validator(mode="after")
    def _one_kind_of_label(self) -> FeedbackEvent:
        if (self.labels is None) == (self.label is None):
            raise ValueError("labels: give exactly one of 'labels' (per category) or 'label' (safe/unsafe)")
        return self

    @property
    def idempotency_key(self) -> str:
        """``event_id``, or a digest of what the event says (not when it was sent)."""
        return self.event_id or self.content_digest

    @property
    def content_digest(self) -> str:
        """A digest of what the event says (request, tenant, labels, source; not when it was sent nor who may learn
        from it): two events under one ``event_id`` with different digests are two different events."""
        body = json.dumps(
            [self.request_id, self.tenant, self.labels, self.label, self.source], sort_keys=True, default=str
        )
        return "sha1:" + hashlib.sha1(body.encode()).hexdigest()


class FeedbackResult(Model):
    request_id: str
    event_id: str
    applied: bool = Field(description="False when this event had been applied before (a duplicate).")
    categories: dict[str, float] = Field(
        description="The labels applied, per category id; 'overall' is the whole request's (from label: safe/unsafe)."
    )
    scopes: list[Literal["tenant", "global"]] = Field(
        default_factory=list,
        description="Whose weights the event trains: the tenant's, and the global ones if trusted.",
    )


def new_request_id() -> str:
    return uuid.uuid4().hex


class CustomCategorySpec(Model):
    name: str = Field(min_length=1, max_length=64)
    description: str = Field(min_length=1, max_length=2000)

    @field_validator("description")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be blank")
        return value

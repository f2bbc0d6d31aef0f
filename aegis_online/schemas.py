"""Pydantic models of what crosses a boundary: requests, expert outputs, decisions, feedback events.

Validation lives here so that every entry point (HTTP, Kafka, CLI, replay) rejects bad input the same way, with
an error that names the field. Imports only ``taxonomy``; nothing above it.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from datetime import datetime, timezone
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

MAX_MESSAGES = 64
MAX_MESSAGE_CHARS = 32_000
TENANT_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
REQUEST_ID_PATTERN = r"^[A-Za-z0-9_.:-]{1,128}$"

Probability = Annotated[float, Field(ge=0.0, le=1.0)]
TenantId = Annotated[str, Field(pattern=TENANT_PATTERN, description="Tenant id: letters, digits, '_', '.', '-'.")]
RequestId = Annotated[str, Field(pattern=REQUEST_ID_PATTERN)]
Role = Literal["system", "user", "assistant", "tool"]
Check = Literal["prompt", "response"]
Action = Literal["allow", "flag", "block"]
StrictnessName = Literal["lenient", "balanced", "strict"]
#: A named level or a continuous value in [0, 1] (0 most lenient, 1 strictest).
Strictness = StrictnessName | Annotated[float, Field(ge=0.0, le=1.0)]

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

    @property
    def ok(self) -> bool:
        return self.error is None


class CategoryDecision(Model):
    category: str
    score: Probability | None = Field(description="Ensemble risk; null when no expert covering it answered.")
    threshold: Probability
    flagged: bool
    action: Action
    weights_scope: Literal["global", "tenant"]


class ExpertContribution(Model):
    expert: str
    weights: dict[str, float] = Field(description="Weight of this expert per category, among the awake experts.")
    scores: dict[str, float]
    latency_ms: float


class MissingExpert(Model):
    expert: str
    reason: str


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
    degraded: bool = Field(default=False, description="True when no expert answered and the fail mode decided.")


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

    @model_validator(mode="after")
    def _one_kind_of_label(self) -> FeedbackEvent:
        if (self.labels is None) == (self.label is None):
            raise ValueError("labels: give exactly one of 'labels' (per category) or 'label' (safe/unsafe)")
        return self

    @property
    def idempotency_key(self) -> str:
        """``event_id``, or a digest of what the event says (not when it was sent)."""
        if self.event_id:
            return self.event_id
        body = json.dumps(
            [self.request_id, self.tenant, self.labels, self.label, self.source], sort_keys=True, default=str
        )
        return "sha1:" + hashlib.sha1(body.encode()).hexdigest()


class FeedbackResult(Model):
    request_id: str
    event_id: str
    applied: bool = Field(description="False when this event had been applied before (a duplicate).")
    categories: dict[str, float] = Field(description="The labels applied, per category id.")


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

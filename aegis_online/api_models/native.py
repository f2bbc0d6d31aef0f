"""Bodies of the native API beyond ``schemas`` (which already holds requests, decisions, feedback events, policies):
errors, feedback batches and receipts, tenant weights, health. Pydantic models only; no behaviour.

They live below ``serve`` so that the service and its client (``aegis_online.client``) share one definition of the
wire format without the client importing the service (Ray, FastAPI).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag

from aegis_online.schemas import FeedbackEvent


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ErrorDetail(Body):
    type: str = Field(description="invalid_request, authentication_error, permission_denied, not_found, ...")
    message: str
    field: str | None = Field(default=None, description="Dotted path of the offending field, when there is one.")
    code: str | None = Field(default=None, description="A finer machine-readable reason (e.g. unknown_request).")


class ErrorResponse(Body):
    error: ErrorDetail


class FeedbackBatch(Body):
    """Several feedback events in one call; each is accepted or refused on its own."""

    events: list[FeedbackEvent] = Field(min_length=1, max_length=100_000)


def _feedback_kind(value: object) -> str:
    if isinstance(value, dict):
        return "batch" if "events" in value else "event"
    return "batch" if isinstance(value, FeedbackBatch) else "event"


FeedbackBody = Annotated[
    Annotated[FeedbackEvent, Tag("event")] | Annotated[FeedbackBatch, Tag("batch")],
    Discriminator(_feedback_kind),
]


class FeedbackOutcome(Body):
    index: int = Field(description="Position of the event in the call.")
    request_id: str
    event_id: str | None = Field(description="Idempotency key: the event's event_id or a digest of its content.")
    status: Literal["queued", "duplicate", "rejected"] = Field(
        description="queued now; duplicate: the same event id was queued before (it is applied once); rejected."
    )
    scopes: list[Literal["tenant", "global"]] = Field(
        default_factory=list,
        description="For a queued event: whose weights it trains (the tenant's; the global ones too when trusted).",
    )
    error: ErrorDetail | None = None


class FeedbackReceipt(Body):
    """Events queued on the feedback bus; the learner applies each one exactly once, asynchronously."""

    accepted: int = Field(description="Events queued now or before (duplicates).")
    rejected: int
    results: list[FeedbackOutcome]


class CategoryWeights(Body):
    scope: Literal["global", "tenant"] = Field(description="Whose learned state the tenant's requests use.")
    weights: dict[str, float] = Field(
        description="Weight of each expert that scores this category (sums to 1); experts that do not score it are "
        "left out."
    )


class TenantWeights(Body):
    tenant: str
    learner: str
    experts: list[str]
    categories: dict[str, CategoryWeights]


class Liveness(Body):
    status: Literal["ok"] = "ok"


class ComponentCheck(Body):
    status: Literal["ok", "degraded", "down"]
    detail: str = ""


class Readiness(Body):
    status: Literal["ready", "degraded", "not_ready"]
    checks: dict[str, ComponentCheck]

"""``POST /v1/feedback``: labels for past decisions, one event or a batch, onto the feedback bus (Kafka or the
in-process queue); the feedback worker applies each event to the learner exactly once.

Each event is checked before it is queued, so the caller learns at once what the worker would refuse: its tenant
must be the key's (403 for the whole call otherwise), and it must join a logged prediction of that tenant with labels
for categories that were evaluated (``Engine.plan_feedback``; another tenant's request reads as unknown). In a batch
every event is accepted or refused on its own; a single refused event is a 4xx. When the prediction log cannot be
read the events are queued unverified (the worker checks them again and dead-letters what it refuses).

A 202 means the bus has the events durably (its acknowledgement was awaited). When the bus cannot take them the
call fails with 503 and can be retried as is. The bus applies a *delivery* once (per partition offset), not an
*event*: so this endpoint records the events it queued (``event_id``, or a digest of the content) in the store's
``FeedbackLedger``, shared by every ingress replica, and answers ``duplicate`` instead of queueing one again. An
event another call is queueing at that moment is refused as ``in_progress`` (409, retry). While the store is
unreachable the replica falls back to a ledger of its own (duplicates across replicas are then possible).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from aegis_online.config import LimitsSection
from aegis_online.engine import Engine
from aegis_online.errors import AegisError
from aegis_online.feedback.bus import FeedbackPublisher
from aegis_online.schemas import FeedbackEvent
from aegis_online.serve.access import tenant_for
from aegis_online.serve.auth import Principal
from aegis_online.serve.errors import ApiError, from_aegis_error
from aegis_online.serve.metrics import ServiceMetrics
from aegis_online.serve.models import ErrorDetail, FeedbackBatch, FeedbackOutcome, FeedbackReceipt
from aegis_online.serve.resilience import DependencyHealth
from aegis_online.state import (
    EventKey,
    FeedbackLedger,
    MemoryFeedbackLedger,
    PredictionRecord,
    StoreUnavailableError,
)

log = logging.getLogger("aegis_online.serve.feedback")


class FeedbackServing:
    def __init__(
        self,
        engine: Engine,
        publisher: FeedbackPublisher,
        bus_health: DependencyHealth,
        metrics: ServiceMetrics,
        limits: LimitsSection,
        ledger: FeedbackLedger | None = None,
    ) -> None:
        self.engine = engine
        self.publisher = publisher
        self.bus_health = bus_health
        self.metrics = metrics
        self.limits = limits
        self.local_ledger = MemoryFeedbackLedger()
        self.ledger = ledger or self.local_ledger
        self._publishing = asyncio.Lock()

    async def __call__(self, body: FeedbackEvent | FeedbackBatch, principal: Principal) -> FeedbackReceipt:
        single = isinstance(body, FeedbackEvent)
        events = [body] if isinstance(body, FeedbackEvent) else list(body.events)
        if len(events) > self.limits.max_feedback_batch:
            raise ApiError(
                413,
                f"events: at most {self.limits.max_feedback_batch} events per call, got {len(events)}",
                field="events",
                code="too_many_events",
            )
        scoped = [self._scoped(event, principal) for event in events]
        records: list = await asyncio.to_thread(self._records, [e.request_id for e in scoped]) or [_UNVERIFIED] * len(
            scoped
        )
        errors = [self._check(event, record) for event, record in zip(scoped, records, strict=True)]
        if single and errors[0] is not None:
            self.metrics.observe_feedback(0, 1)
            raise errors[0]
        candidates: dict[EventKey, FeedbackEvent] = {}
        for event, error in zip(scoped, errors, strict=True):
            if error is None:
                candidates.setdefault((event.tenant, event.idempotency_key), event)
        fresh: dict[EventKey, FeedbackEvent] = {}
        statuses: dict[EventKey, str] = {}
        async with self._publishing:  # within a replica one call at a time; across replicas the ledger's claims
            if candidates:
                ledger, claimed = await asyncio.to_thread(self._reserve, list(candidates))
                statuses = dict(zip(candidates, claimed, strict=True))
                fresh = {k: e for k, e in candidates.items() if statuses[k] == FeedbackLedger.NEW}
            if fresh:
                try:
                    await asyncio.to_thread(self._publish, list(fresh.values()))
                except ApiError:
                    await asyncio.to_thread(self._settle, ledger.release, list(fresh))
                    raise
                await asyncio.to_thread(self._settle, ledger.confirm, list(fresh))
        in_progress = ApiError(
            409,
            "another call is queueing this event right now; retry in a second",
            field="event_id",
            code="in_progress",
            headers={"Retry-After": "1"},
        )
        errors = [
            in_progress
            if error is None and statuses.get((event.tenant, event.idempotency_key)) == FeedbackLedger.PENDING
            else error
            for event, error in zip(scoped, errors, strict=True)
        ]
        if single and errors[0] is not None:
            self.metrics.observe_feedback(0, 1)
            raise errors[0]
        outcomes = []
        queued = set()
        for i, (event, error) in enumerate(zip(scoped, errors, strict=True)):
            key = (event.tenant, event.idempotency_key)
            if error is not None:
                status = "rejected"
            elif key in fresh and key not in queued:
                status = "queued"
                queued.add(key)
            else:
                status = "duplicate"
            outcomes.append(
                FeedbackOutcome(
                    index=i,
                    request_id=event.request_id,
                    event_id=event.idempotency_key,
                    status=status,  # type: ignore[arg-type]
                    error=None if error is None else _detail(error, f"events.{i}"),
                )
            )
        rejected = sum(e is not None for e in errors)
        self.metrics.observe_feedback(len(fresh), rejected)
        return FeedbackReceipt(accepted=len(events) - rejected, rejected=rejected, results=outcomes)

    @staticmethod
    def _scoped(event: FeedbackEvent, principal: Principal) -> FeedbackEvent:
        explicit = event.tenant if "tenant" in event.model_fields_set else None
        tenant = tenant_for(principal, explicit)
        return event if tenant == event.tenant else event.model_copy(update={"tenant": tenant})

    def _records(self, request_ids: list[str]) -> list[PredictionRecord | None] | None:
        try:
            return self.engine.prediction_log.get_many(request_ids)
        except StoreUnavailableError as error:
            log.warning("prediction log unreachable; queueing feedback unverified: %s", error)
            return None

    def _check(self, event: FeedbackEvent, record: PredictionRecord | _Unverified | None) -> ApiError | None:
        if record is _UNVERIFIED:
            return None
        try:
            self.engine.plan_feedback(event, record)  # type: ignore[arg-type]
        except AegisError as error:
            return from_aegis_error(error)
        return None

    def _reserve(self, keys: list[EventKey]) -> tuple[FeedbackLedger, list[str]]:
        """Claims in the shared ledger, or in this replica's own while the store is unreachable."""
        try:
            return self.ledger, self.ledger.reserve(keys)
        except StoreUnavailableError as error:
            log.warning("feedback ledger unreachable; deduplicating in this replica only: %s", error)
            return self.local_ledger, self.local_ledger.reserve(keys)

    @staticmethod
    def _settle(step: Callable[[list[EventKey]], None], keys: list[EventKey]) -> None:
        """Confirm or release claims; if the store fails now, the claims lapse on their own (``pending_ttl_s``)."""
        try:
            step(keys)
        except StoreUnavailableError as error:
            log.warning("feedback ledger unreachable after publishing; claims lapse on their own: %s", error)

    def _publish(self, events: list[FeedbackEvent]) -> None:
        try:
            receipts = [self.publisher.publish(event) for event in events]
            for receipt in receipts:
                receipt.wait(self.limits.feedback_ack_timeout_s)
        except Exception as error:  # the bus's own errors (queue full, broker down, timeout) all mean "retry later"
            self.bus_health.failed(error)
            raise ApiError(
                503,
                f"the feedback bus did not take the events ({type(error).__name__}); retry, it is safe",
                code="bus_unavailable",
                headers={"Retry-After": "1"},
            ) from None
        self.bus_health.succeeded()


class _Unverified:
    """Marks events whose prediction could not be read."""


_UNVERIFIED = _Unverified()


def _detail(error: ApiError, prefix: str) -> ErrorDetail:
    field = f"{prefix}.{error.field}" if error.field else prefix
    return ErrorDetail(type=error.type, message=error.message, field=field, code=error.code)

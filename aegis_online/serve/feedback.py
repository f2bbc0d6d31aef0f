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
unreachable the replica falls back to a ledger of its own (duplicates across replicas are then possible). The
ledger also keeps each event's content digest: the same ``event_id`` with other labels is refused (409
``event_conflict``), never answered ``duplicate`` while its content is dropped.

Whose weights an event trains is decided here, from the caller's key, and stamped on the event (``trusted``) before
it is queued, so every worker applies it the same way on every redelivery: the tenant's own weights always; the
global weights every tenant starts from only for moderator and admin keys, or for a tenant the config lists in
``global_learning.contributors`` while its share of the window's global updates stays under ``max_share``. A client
key that asks for ``trusted: true`` is refused (403).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from aegis_online.api_models.native import ErrorDetail, FeedbackBatch, FeedbackOutcome, FeedbackReceipt
from aegis_online.config import GlobalLearningSection, LimitsSection
from aegis_online.engine import Engine
from aegis_online.errors import AegisError
from aegis_online.feedback.bus import FeedbackPublisher
from aegis_online.schemas import FeedbackEvent
from aegis_online.serve.access import tenant_for
from aegis_online.serve.auth import Principal
from aegis_online.serve.errors import ApiError, from_aegis_error
from aegis_online.serve.metrics import ServiceMetrics
from aegis_online.serve.quotas import TenantQuotas
from aegis_online.serve.resilience import DependencyHealth
from aegis_online.state import (
    EventKey,
    FeedbackLedger,
    MemoryFeedbackLedger,
    PredictionRecord,
    StoreUnavailableError,
)
from aegis_online.state.quotas import ContributionCounter, MemoryContributionCounter

log = logging.getLogger("aegis_online.serve.feedback")


class GlobalLearningGate:
    """Which fresh events of a call may train the global weights (see the module docstring)."""

    def __init__(self, config: GlobalLearningSection, counter: ContributionCounter | None = None) -> None:
        self.contributors = frozenset(config.contributors)
        self.cap = config.cap()
        self.counter = counter or MemoryContributionCounter()

    def wants_global(self, event: FeedbackEvent, principal: Principal) -> bool:
        """Whether ``event`` asks to train the global weights and may ask; 403 for a client key that may not."""
        asked = event.trusted if "trusted" in event.model_fields_set else None
        if principal.trusted or event.tenant in self.contributors:
            return asked is not False
        if asked:
            raise ApiError(
                403,
                "trusted: this API key's feedback trains its tenant's weights only (moderator or admin keys, or "
                "tenants listed in global_learning.contributors, train the global ones)",
                field="trusted",
                code="not_trusted",
            )
        return False

    def admit(self, events: list[FeedbackEvent], principal: Principal) -> list[FeedbackEvent]:
        """``events`` (fresh, each marked by ``wants_global`` in ``trusted``) with ``trusted`` kept only where the
        caller is trusted or its tenant's share allows; the counts are taken once, for what is queued now."""
        wanting = [e for e in events if e.trusted]
        if not wanting:
            return events
        if principal.trusted:
            self._count(wanting[0].tenant, 0, len(wanting))
            return events
        by_tenant: dict[str, int] = {}
        for event in wanting:
            by_tenant[event.tenant] = by_tenant.get(event.tenant, 0) + 1
        allowed = {tenant: self._count(tenant, n, 0) for tenant, n in by_tenant.items()}
        out = []
        for event in events:
            if event.trusted:
                if allowed[event.tenant] > 0:
                    allowed[event.tenant] -= 1
                else:
                    event = event.model_copy(update={"trusted": False})
            out.append(event)
        return out

    def _count(self, tenant: str, capped: int, trusted: int) -> int:
        try:
            return self.counter.admit(tenant, capped, trusted, self.cap)
        except StoreUnavailableError as error:  # fail safe: a contributor's events then train its own weights only
            log.warning(
                "global-learning counter unreachable; %d contributed events stay tenant-only: %s", capped, error
            )
            return 0


class FeedbackServing:
    def __init__(
        self,
        engine: Engine,
        publisher: FeedbackPublisher,
        bus_health: DependencyHealth,
        metrics: ServiceMetrics,
        limits: LimitsSection,
        ledger: FeedbackLedger | None = None,
        gate: GlobalLearningGate | None = None,
        quotas: TenantQuotas | None = None,
    ) -> None:
        self.engine = engine
        self.publisher = publisher
        self.bus_health = bus_health
        self.metrics = metrics
        self.limits = limits
        self.local_ledger = MemoryFeedbackLedger()
        self.ledger = ledger or self.local_ledger
        self.gate = gate or GlobalLearningGate(GlobalLearningSection())
        self.quotas = quotas
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
        if self.quotas is not None:
            for tenant in dict.fromkeys(e.tenant for e in scoped):
                cost = sum(e.tenant == tenant for e in scoped)
                await asyncio.to_thread(self.quotas.check, principal, tenant, "feedback", cost)
        records: list = await asyncio.to_thread(self._records, [e.request_id for e in scoped]) or [_UNVERIFIED] * len(
            scoped
        )
        errors = [self._check(event, record) for event, record in zip(scoped, records, strict=True)]
        if single and errors[0] is not None:
            self.metrics.observe_feedback(0, 1)
            raise errors[0]
        candidates: dict[EventKey, FeedbackEvent] = {}
        for i, (event, error) in enumerate(zip(scoped, errors, strict=True)):
            if error is None:
                key = (event.tenant, event.idempotency_key)
                first = candidates.setdefault(key, event)
                if first.content_digest != event.content_digest:  # one call, one event id, two contents
                    errors[i] = _conflict()
        fresh: dict[EventKey, FeedbackEvent] = {}
        statuses: dict[EventKey, str] = {}
        async with self._publishing:  # within a replica one call at a time; across replicas the ledger's claims
            if candidates:
                digests = [e.content_digest for e in candidates.values()]
                ledger, claimed = await asyncio.to_thread(self._reserve, list(candidates), digests)
                statuses = dict(zip(candidates, claimed, strict=True))
                fresh = {k: e for k, e in candidates.items() if statuses[k] == FeedbackLedger.NEW}
            if fresh:
                stamped = await asyncio.to_thread(self.gate.admit, list(fresh.values()), principal)
                fresh = dict(zip(fresh, stamped, strict=True))
                try:
                    await asyncio.to_thread(self._publish, stamped)
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
        held = {FeedbackLedger.PENDING: in_progress, FeedbackLedger.CONFLICT: _conflict()}
        errors = [
            held.get(statuses.get((event.tenant, event.idempotency_key), ""), error) if error is None else error
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
            learns: list[str] = []
            if status == "queued":
                learns = ["tenant", "global"] if fresh[key].trusted else ["tenant"]
            outcomes.append(
                FeedbackOutcome(
                    index=i,
                    request_id=event.request_id,
                    event_id=event.idempotency_key,
                    status=status,  # type: ignore[arg-type]
                    scopes=learns,  # type: ignore[arg-type]
                    error=None if error is None else _detail(error, f"events.{i}"),
                )
            )
        rejected = sum(e is not None for e in errors)
        self.metrics.observe_feedback(len(fresh), rejected)
        return FeedbackReceipt(accepted=len(events) - rejected, rejected=rejected, results=outcomes)

    def _scoped(self, event: FeedbackEvent, principal: Principal) -> FeedbackEvent:
        """The event as the caller's key allows it: its tenant (403 for another's), and whether it asks to train
        the global weights (``trusted``, granted or not by ``GlobalLearningGate.admit`` once it is known fresh)."""
        explicit = event.tenant if "tenant" in event.model_fields_set else None
        tenant = tenant_for(principal, explicit)
        scoped = event if tenant == event.tenant else event.model_copy(update={"tenant": tenant})
        wants = self.gate.wants_global(scoped, principal)
        return scoped if wants == scoped.trusted else scoped.model_copy(update={"trusted": wants})

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

    def _reserve(self, keys: list[EventKey], digests: list[str]) -> tuple[FeedbackLedger, list[str]]:
        """Claims in the shared ledger, or in this replica's own while the store is unreachable."""
        try:
            return self.ledger, self.ledger.reserve(keys, digests)
        except StoreUnavailableError as error:
            log.warning("feedback ledger unreachable; deduplicating in this replica only: %s", error)
            return self.local_ledger, self.local_ledger.reserve(keys, digests)

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


def _conflict() -> ApiError:
    return ApiError(
        409,
        "event_id: an event with this id and other content was sent before; an event id names one event (use a "
        "new id for new labels)",
        field="event_id",
        code="event_conflict",
    )


class _Unverified:
    """Marks events whose prediction could not be read."""


_UNVERIFIED = _Unverified()


def _detail(error: ApiError, prefix: str) -> ErrorDetail:
    field = f"{prefix}.{error.field}" if error.field else prefix
    return ErrorDetail(type=error.type, message=error.message, field=field, code=error.code)

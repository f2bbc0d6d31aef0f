"""``POST /v1/feedback`` with the feedback ledger: a refused publish frees the claim (the retry is queued, not a
duplicate), and an event another call is queueing right now is refused as ``in_progress``."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from fastapi.testclient import TestClient

from aegis_online.feedback.bus import FeedbackPublisher, Receipt
from aegis_online.schemas import FeedbackEvent
from aegis_online.serve.app import create_app
from aegis_online.serve.auth import Principal
from aegis_online.serve.errors import ApiError
from aegis_online.serve.feedback import FeedbackServing
from aegis_online.state import FeedbackLedger, MemoryFeedbackLedger

from .helpers import ACME_KEY, bearer, conversation, make_service


class RefusingOnce(FeedbackPublisher):
    """The real in-process publisher, except that its first publish fails as a broker outage would."""

    def __init__(self, inner: FeedbackPublisher) -> None:
        self.inner = inner
        self.refused = 0

    def publish(self, event: FeedbackEvent) -> Receipt:
        if not self.refused:
            self.refused += 1
            raise ConnectionError("broker unreachable")
        return self.inner.publish(event)

    def close(self) -> None:
        self.inner.close()


@pytest.fixture()
def setup() -> Any:
    service = make_service()
    with TestClient(create_app(service)) as client:
        decision = client.post("/v1/moderate", json=conversation("hello there"), headers=bearer(ACME_KEY)).json()
        yield service, decision["request_id"]


def serving(service: Any, publisher: FeedbackPublisher, ledger: FeedbackLedger) -> FeedbackServing:
    return FeedbackServing(
        service.engine, publisher, service.bus_health, service.metrics, service.config.limits, ledger
    )


ACME = Principal(name="acme-app", role="client", tenant="acme")


def test_a_refused_publish_frees_the_claim_so_the_retry_is_queued(setup: Any) -> None:
    service, request_id = setup
    ledger = MemoryFeedbackLedger()
    feedback = serving(service, RefusingOnce(service.publisher), ledger)
    event = FeedbackEvent(request_id=request_id, tenant="acme", label="safe", event_id="retry-me")
    with pytest.raises(ApiError) as refused:
        asyncio.run(feedback(event, ACME))
    assert refused.value.status == 503
    assert ledger.reserve([("acme", "other")]) == [FeedbackLedger.NEW]  # the ledger works; "retry-me" was freed:
    receipt = asyncio.run(feedback(event, ACME))
    assert receipt.results[0].status == "queued"
    assert asyncio.run(feedback(event, ACME)).results[0].status == "duplicate"


def test_an_event_being_queued_elsewhere_is_refused_as_in_progress(setup: Any) -> None:
    service, request_id = setup
    ledger = MemoryFeedbackLedger()
    ledger.reserve([("acme", "racing")])  # another replica holds the claim
    feedback = serving(service, service.publisher, ledger)
    event = FeedbackEvent(request_id=request_id, tenant="acme", label="unsafe", event_id="racing")
    with pytest.raises(ApiError) as refused:
        asyncio.run(feedback(event, ACME))
    assert refused.value.status == 409 and refused.value.code == "in_progress"
    assert refused.value.headers == {"Retry-After": "1"}

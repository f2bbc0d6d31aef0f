"""Replay over HTTP against the real service (``serve.app.create_app`` under uvicorn, no Ray): the wire format,
feedback through the API and its queue, the weights endpoint, refusals and an unreachable service.

The service runs the same keyword experts as the in-process replay, so once each feedback event is applied both
paths must reach the same decisions, score for score.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
pytest.importorskip("httpx")

from aegis_online.api_models import FeedbackOutcome
from aegis_online.client import AegisClient, APIConnectionError, APIError, RetryPolicy
from aegis_online.learn import DEFAULT_LEARNER
from aegis_online.schemas import FeedbackEvent, Message, ModerationRequest
from aegis_online.serve.app import create_app
from aegis_online.serve.service import ModerationService
from aegis_online.simulate.cache import ReplayCache
from aegis_online.simulate.replay import FeedbackRejectedError
from aegis_online.simulate.replay_run import SERVICE_LEARNER, ReplayConfig, run_replay, run_replay_http
from aegis_online.simulate.service_client import ServiceBackend
from aegis_online.simulate.traffic import DataSpec
from tests.serve.helpers import make_service, spare_port, uvicorn_server

from .stubs import COLUMNS, experts, shifted_files


def _config(folder: Path, **extra: object) -> ReplayConfig:
    first, second = shifted_files(folder)
    data = [DataSpec(first, "jsonl", COLUMNS), DataSpec(second, "jsonl", COLUMNS)]
    return ReplayConfig(data=data, learners=[DEFAULT_LEARNER], **extra)  # type: ignore[arg-type]


@pytest.fixture
def service() -> Iterator[tuple[str, ModerationService]]:
    """The service over the replay's keyword experts, in open development mode (every call acts as the default
    tenant's admin, whose feedback trains the global weights, as the in-process replay's does)."""
    built = make_service(experts(), keys=[])
    with uvicorn_server(create_app(built)) as url:
        yield url, built


class AppliedFirstClient(AegisClient):
    """Waits after each feedback call until the service's worker has applied what is queued: the in-process replay
    applies each event before the next request, and a score-for-score comparison needs the same order."""

    def __init__(self, url: str, service: ModerationService) -> None:
        super().__init__(url)
        self.service = service

    def feedback(self, event: FeedbackEvent) -> FeedbackOutcome:
        outcome = super().feedback(event)
        assert self.service.worker is not None and self.service.worker.drain(timeout_s=10)
        return outcome


def test_replay_over_http_matches_the_in_process_replay(tmp_path: Path, service: tuple[str, ModerationService]) -> None:
    url, built = service
    config = _config(tmp_path, feedback_delay=3)
    with AppliedFirstClient(url, built) as client:
        remote = run_replay_http(config, url, client=client)
    local = run_replay(config, experts(), ReplayCache(None))
    np.testing.assert_allclose(
        remote.runs[SERVICE_LEARNER].predictions, local.runs[DEFAULT_LEARNER].predictions, atol=1e-9
    )
    np.testing.assert_array_equal(remote.runs[SERVICE_LEARNER].flagged, local.runs[DEFAULT_LEARNER].flagged)
    report = remote.report
    assert report["mode"] == "http" and set(report["learners"]) == {SERVICE_LEARNER}
    assert set(report["experts"]) == {"red", "blue"} and report["service_learner"] == DEFAULT_LEARNER
    # the service queued every event and said so; it never said "applied" (its worker applies them later)
    feedback = {"sent": 120, "applied": 0, "queued": 120, "duplicate": 0, "rejected": {}}
    assert report["learners"][SERVICE_LEARNER]["feedback"] == feedback
    # the feedback went through the API into the service's learner: its weights moved to blue for S1, and the
    # weights over time the report shows are the service's own (GET /v1/tenants/default/weights)
    weights = built.engine.weights("default", ["S1"])["S1"]
    assert weights["blue"] > weights["red"]
    final = report["learners"][SERVICE_LEARNER]["weights"]["final"]["global"]["S1"]
    assert final["blue"] > final["red"]


def test_refusals_carry_the_services_reason(service: tuple[str, ModerationService]) -> None:
    url, _ = service
    backend = ServiceBackend(AegisClient(url, retry=RetryPolicy(attempts=1)))
    try:
        uncovered = ModerationRequest(messages=[Message(role="user", content="zap")], categories=["S17"])
        decision = backend.moderate(uncovered)  # S17 is known but no expert covers it: reported, not refused
        assert decision.categories[0].score is None and not decision.flagged
        with pytest.raises(APIError) as refused_request:
            backend.moderate(ModerationRequest(messages=[Message(role="user", content="x")], categories=["nope"]))
        assert (refused_request.value.status, refused_request.value.reason) == (422, "invalid_request")
        assert refused_request.value.field == "categories.0" and "unknown category" in refused_request.value.message
        with pytest.raises(FeedbackRejectedError) as refused_event:
            backend.feedback(FeedbackEvent(request_id="never-seen", label="safe"))
        assert refused_event.value.reason == "unknown_request"
        # feedback to a real decision: queued, then a duplicate, as the service says (``trusted`` is not sent: the
        # service decides it from the key)
        scored = backend.moderate(ModerationRequest(messages=[Message(role="user", content="zap")]))
        event = FeedbackEvent(request_id=scored.request_id, label="unsafe", event_id="fb-2", trusted=True)
        assert backend.feedback(event).status == "queued"
        assert backend.feedback(event).status == "duplicate"
    finally:
        backend.close()


def test_an_unreachable_service_is_a_client_error_not_a_traceback(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{spare_port()}"  # bound, then released: nobody listens
    client = AegisClient(url, retry=RetryPolicy(attempts=2, backoff_s=0.01), timeout=0.5)
    with pytest.raises(APIConnectionError, match="unreachable after 2 attempt"):
        run_replay_http(_config(tmp_path), url, client=client)

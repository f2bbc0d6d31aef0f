"""Replay over HTTP against a real service in a thread: the wire format, feedback through the API, retries, errors.

The service wraps an ``Engine`` with the same keyword experts as the in-process replay, so both paths must reach the
same decisions, score for score.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from aegis_online.engine import Engine
from aegis_online.schemas import FeedbackEvent, Message, ModerationRequest
from aegis_online.simulate.cache import ReplayCache
from aegis_online.simulate.replay import FeedbackRejectedError
from aegis_online.simulate.replay_run import SERVICE_LEARNER, ReplayConfig, run_replay, run_replay_http
from aegis_online.simulate.service_client import ServiceClient, ServiceError
from aegis_online.simulate.traffic import DataSpec

from .stubs import COLUMNS, experts, shifted_files

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
pytest.importorskip("httpx")

from .service_app import make_app, serve


def _config(folder: Path, **extra: object) -> ReplayConfig:
    first, second = shifted_files(folder)
    data = [DataSpec(first, "jsonl", COLUMNS), DataSpec(second, "jsonl", COLUMNS)]
    return ReplayConfig(data=data, learners=["default"], **extra)  # type: ignore[arg-type]


def test_replay_over_http_matches_the_in_process_replay(tmp_path: Path) -> None:
    config = _config(tmp_path, feedback_delay=3)
    engine = Engine(experts(), learner="default")
    app = make_app(engine)
    with serve(app) as url:
        remote = run_replay_http(config, url)
    local = run_replay(config, experts(), ReplayCache(None))
    np.testing.assert_allclose(remote.runs[SERVICE_LEARNER].predictions, local.runs["default"].predictions, atol=1e-9)
    np.testing.assert_array_equal(remote.runs[SERVICE_LEARNER].flagged, local.runs["default"].flagged)
    report = remote.report
    assert report["mode"] == "http" and set(report["learners"]) == {SERVICE_LEARNER}
    assert set(report["experts"]) == {"red", "blue"}
    assert report["learners"][SERVICE_LEARNER]["feedback"] == {"sent": 120, "applied": 120, "rejected": {}}
    assert app.state.counters["feedbacks"] == 120
    # the feedback went through the API into the service's learner: its weights moved to blue for S1
    weights = engine.weights("default", ["S1"])["S1"]
    assert weights["blue"] > weights["red"]


def test_the_client_retries_a_flaky_service(tmp_path: Path) -> None:
    engine = Engine(experts(), learner="default")
    with serve(make_app(engine, fail_first=2)) as url, ServiceClient(url, backoff=0.01) as client:
        request = ModerationRequest(messages=[Message(role="user", content="zap")], categories=["S1"])
        decision = client.moderate(request)
        assert decision.categories[0].category == "S1" and client.retried == 2


def test_a_refused_request_stops_with_the_services_reason_and_refused_feedback_is_counted(tmp_path: Path) -> None:
    engine = Engine(experts(), learner="default")
    with serve(make_app(engine)) as url, ServiceClient(url, retries=0) as client:
        bad = ModerationRequest(messages=[Message(role="user", content="zap")], categories=["S17"])
        decision = client.moderate(bad)  # S17 is known but no expert covers it: reported, not refused
        assert decision.categories[0].score is None and not decision.flagged
        with pytest.raises(ServiceError, match="invalid_request"):
            client.moderate(ModerationRequest(messages=[Message(role="user", content="x")], categories=["nope"]))
        with pytest.raises(FeedbackRejectedError) as refused:
            client.feedback(FeedbackEvent(request_id="never-seen", label="safe"))
        assert refused.value.reason == "unknown_request"


def test_an_unreachable_service_is_reported_not_a_traceback() -> None:
    with (
        ServiceClient("http://127.0.0.1:9", retries=1, backoff=0.01, timeout=0.5) as client,
        pytest.raises(ServiceError, match="unreachable"),
    ):
        client.moderate(ModerationRequest(messages=[Message(role="user", content="x")]))


def test_a_service_with_a_feedback_bus_receipts_and_a_weights_endpoint_is_understood(tmp_path: Path) -> None:
    config = _config(tmp_path)
    engine = Engine(experts(), learner="default")
    app = make_app(engine, queued=True)
    with serve(app) as url:
        result = run_replay_http(config, url)
        with ServiceClient(url) as client, pytest.raises(FeedbackRejectedError) as refused:
            client.feedback(FeedbackEvent(request_id="never-seen", label="safe"))
    assert refused.value.reason == "unknown_request"
    report = result.report
    assert report["service_learner"] == "default"
    assert report["learners"][SERVICE_LEARNER]["feedback"] == {"sent": 120, "applied": 120, "rejected": {}}
    assert app.state.counters["weights"] > 100  # the weights over time come from the service
    final = report["learners"][SERVICE_LEARNER]["weights"]["final"]["global"]["S1"]
    assert final["blue"] > final["red"]

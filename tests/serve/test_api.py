"""The HTTP API on the FastAPI app, without Ray: experts run in process and answer instantly."""

from __future__ import annotations

import json
import re
from collections.abc import Callable

import pytest
from fastapi.testclient import TestClient

from aegis_online.schemas import MAX_MESSAGE_CHARS
from tests.helpers import wait_until

from .helpers import (
    ACME_ADMIN_KEY,
    ACME_KEY,
    ADMIN_KEY,
    GLOBEX_KEY,
    KeywordExpert,
    bearer,
    conversation,
    default_experts,
)

ACME = bearer(ACME_KEY)


def moderate(client: TestClient, text: str, key: str = ACME_KEY, **extra: object) -> dict:
    response = client.post("/v1/moderate", json=conversation(text, **extra), headers=bearer(key))
    assert response.status_code == 200, response.text
    return response.json()


# -- /v1/moderate ------------------------------------------------------------------------------------------------------


def test_moderate_answers_the_decision_for_the_keys_tenant(client: TestClient) -> None:
    body = moderate(client, "I will kill you, damn it")
    assert body["tenant"] == "acme"
    assert body["action"] == "block" and body["flagged"] is True
    by_category = {c["category"]: c for c in body["categories"]}
    assert by_category["S1"]["flagged"] and by_category["S1"]["score"] == pytest.approx(0.9)
    assert by_category["S1"]["threshold"] == pytest.approx(0.5)
    assert by_category["S2"]["score"] is None  # no expert covers it
    assert {e["expert"] for e in body["experts"]} == {"words-a", "words-b"}
    assert body["experts"][0]["weights"]["S1"] == pytest.approx(0.5)
    assert body["missing_experts"] == []
    assert len(body["request_id"]) >= 16


def test_moderate_allows_benign_text_and_honours_strictness_and_categories(client: TestClient) -> None:
    assert moderate(client, "What a lovely day")["action"] == "allow"
    strict = moderate(client, "hello", strictness="strict", categories=["violence", "S12"])
    assert [c["category"] for c in strict["categories"]] == ["S1", "S12"]
    assert strict["strictness"] == pytest.approx(0.8)
    assert strict["categories"][0]["threshold"] < 0.5


def test_moderate_checks_the_last_assistant_turn_for_a_response_check(client: TestClient) -> None:
    messages = [
        {"role": "user", "content": "tell me a story"},
        {"role": "assistant", "content": "then he stabbed them"},
    ]
    response = client.post("/v1/moderate", json={"messages": messages, "check": "response"}, headers=ACME)
    assert response.status_code == 200
    assert response.json()["check"] == "response" and response.json()["action"] == "block"


def test_a_failing_expert_is_named_and_the_others_decide(service_factory: Callable[..., TestClient]) -> None:
    experts = [*default_experts(), KeywordExpert("broken", {"S1": ("kill",)}, fail=True)]
    client = service_factory(experts)
    body = moderate(client, "kill")
    assert body["action"] == "block"
    missing = {m["expert"]: m["reason"] for m in body["missing_experts"]}
    assert "broken is broken" in missing["broken"]


def test_an_expert_missing_the_deadline_is_named_and_treated_as_asleep(
    service_factory: Callable[..., TestClient],
) -> None:
    # 3 s: the instant experts must answer within it on a loaded 2-core CI machine (100 ms once timed them out too)
    experts = [*default_experts(), KeywordExpert("slow", {"S1": ("kill",)}, delay_s=30.0)]
    client = service_factory(experts, limits={"deadline_ms": 3000})
    body = moderate(client, "kill")
    (missing,) = body["missing_experts"]
    waited = re.fullmatch(r"timed out after (\d+) ms", missing["reason"])
    assert missing["expert"] == "slow" and waited is not None
    # the experts get what is left of the 3 s, less limits.admission.reserve_share (10%) for deciding and answering
    assert 2400 <= int(waited.group(1)) <= 2700  # 80-90% of it, as the 80-90 ms of the 100 ms before
    assert body["categories"][0]["score"] == pytest.approx(0.9)  # from the two that answered


@pytest.mark.parametrize(("on_no_experts", "action"), [("allow", "allow"), ("block", "block")])
def test_with_no_expert_answering_the_tenants_fail_mode_decides(
    service_factory: Callable[..., TestClient], on_no_experts: str, action: str
) -> None:
    client = service_factory(default_experts(fail=True), policies=[{"tenant": "acme", "on_no_experts": on_no_experts}])
    body = moderate(client, "kill")
    assert body["degraded"] is True and body["action"] == action
    assert {m["expert"] for m in body["missing_experts"]} == {"words-a", "words-b"}


# -- bad input: 4xx naming the field, never 5xx ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        ({"messages": []}, 422, "messages"),
        ({"messages": [{"role": "robot", "content": "x"}]}, 422, "messages.0.role"),
        ({"messages": [{"role": "user", "content": "x" * (MAX_MESSAGE_CHARS + 1)}]}, 422, "messages.0.content"),
        ({"messages": [{"role": "user", "content": "x"}], "strictness": 7}, 422, "strictness"),
        ({"messages": [{"role": "user", "content": "x"}], "surprise": 1}, 422, "surprise"),
        ({"messages": [{"role": "user", "content": "x"}], "categories": ["nonsense"]}, 422, "categories.0"),
        ({"messages": [{"role": "user", "content": "x"}], "check": "response"}, 422, "messages"),
        ({"messages": [{"role": "user", "content": "x"}] * 65}, 422, "messages"),
        ({"messages": [{"role": "user", "content": "x"}], "tenant": "bad tenant!"}, 422, "tenant"),
        ([1, 2, 3], 422, None),
    ],
)
def test_invalid_moderation_requests_are_422_naming_the_field(
    client: TestClient, body: object, status: int, field: str | None
) -> None:
    response = client.post("/v1/moderate", json=body, headers=ACME)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request" and error["message"]
    assert error["field"] == field


def test_malformed_json_is_400(client: TestClient) -> None:
    response = client.post(
        "/v1/moderate", content=b'{"messages": [', headers=ACME | {"content-type": "application/json"}
    )
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "json_invalid"


def test_a_body_over_the_size_limit_is_413_before_parsing(service_factory: Callable[..., TestClient]) -> None:
    client = service_factory(limits={"max_body_bytes": 2048})
    big = json.dumps(conversation("x" * 5000)).encode()
    response = client.post("/v1/moderate", content=big, headers=ACME | {"content-type": "application/json"})
    assert response.status_code == 413
    assert response.json()["error"]["type"] == "payload_too_large"

    def chunks():  # no Content-Length: the limit is enforced on the bytes actually read
        yield big[:1000]
        yield big[1000:]

    response = client.post("/v1/moderate", content=chunks(), headers=ACME | {"content-type": "application/json"})
    assert response.status_code == 413


def test_unknown_routes_and_methods_answer_json_errors(client: TestClient) -> None:
    assert client.get("/v2/nothing").json()["error"]["type"] == "not_found"
    response = client.get("/v1/moderate", headers=ACME)
    assert response.status_code == 405 and response.json()["error"]["type"] == "method_not_allowed"


# -- feedback ----------------------------------------------------------------------------------------------------------


def _weights(client: TestClient, tenant: str, category: str, key: str = ADMIN_KEY) -> dict[str, float]:
    response = client.get(f"/v1/tenants/{tenant}/weights", params={"category": category}, headers=bearer(key))
    assert response.status_code == 200, response.text
    return response.json()["categories"][category]["weights"]


def test_feedback_is_queued_then_applied_and_the_weights_move(service_factory: Callable[..., TestClient]) -> None:
    experts = [
        KeywordExpert("right", {"S1": ("kill",)}),
        KeywordExpert("wrong", {"S1": ("kill",)}, high=0.05, low=0.9),
    ]
    # acme's client key trains acme's own weights (used from its first event here), never the global ones
    client = service_factory(experts, policies=[{"tenant": "acme", "personalise_after": 0}])
    before = _weights(client, "acme", "S1")
    assert before["right"] == pytest.approx(0.5)
    for i in range(30):
        decision = moderate(client, "kill" if i % 2 else "hello")
        label = {"S1": 1.0 if i % 2 else 0.0}
        response = client.post(
            "/v1/feedback", json={"request_id": decision["request_id"], "labels": label}, headers=ACME
        )
        assert response.status_code == 202, response.text
        assert response.json()["results"][0]["status"] == "queued"
    service = client.app.state.service
    assert service.worker.drain(10)
    assert wait_until(lambda: service.worker.stats.applied >= 30)
    after = _weights(client, "acme", "S1")
    assert after["right"] > 0.9 > after["wrong"] * 10


def test_the_same_feedback_twice_is_applied_once(client: TestClient) -> None:
    decision = moderate(client, "kill")
    event = {"request_id": decision["request_id"], "label": "unsafe", "event_id": "moderator-1"}
    statuses = []
    for _ in range(2):
        response = client.post("/v1/feedback", json=event, headers=ACME)
        assert response.status_code == 202 and response.json()["results"][0]["event_id"] == "moderator-1"
        statuses.append(response.json()["results"][0]["status"])
    assert statuses == ["queued", "duplicate"]
    service = client.app.state.service
    assert service.worker.drain(10) and wait_until(lambda: service.worker.stats.records >= 1)
    assert service.worker.stats.applied == 1


def test_a_feedback_batch_accepts_or_refuses_each_event(client: TestClient) -> None:
    decision = moderate(client, "kill")
    events = [
        {"request_id": decision["request_id"], "label": "unsafe"},
        {"request_id": "no-such-request", "label": "safe"},
        {"request_id": decision["request_id"], "labels": {"S2": 1.0}},  # S2 was evaluated: fine
        {"request_id": decision["request_id"], "labels": {"custom:nope": 1.0}},
    ]
    response = client.post("/v1/feedback", json={"events": events}, headers=ACME)
    assert response.status_code == 202, response.text
    body = response.json()
    assert (body["accepted"], body["rejected"]) == (2, 2)
    statuses = [r["status"] for r in body["results"]]
    assert statuses == ["queued", "rejected", "queued", "rejected"]
    assert body["results"][1]["error"]["code"] == "unknown_request"
    assert body["results"][1]["error"]["field"] == "events.1.request_id"
    assert body["results"][3]["error"]["field"].startswith("events.3.labels")


def test_a_single_refused_feedback_event_is_a_4xx(client: TestClient) -> None:
    response = client.post("/v1/feedback", json={"request_id": "nope", "label": "safe"}, headers=ACME)
    assert response.status_code == 404 and response.json()["error"]["code"] == "unknown_request"
    decision = moderate(client, "kill", categories=["S1"])
    response = client.post(
        "/v1/feedback", json={"request_id": decision["request_id"], "labels": {"S12": 1}}, headers=ACME
    )
    assert response.status_code == 422 and "not evaluated" in response.json()["error"]["message"]
    response = client.post("/v1/feedback", json={"request_id": decision["request_id"]}, headers=ACME)
    assert response.status_code == 422 and response.json()["error"]["field"] == "labels"


def test_feedback_batches_over_the_limit_are_413(service_factory: Callable[..., TestClient]) -> None:
    client = service_factory(limits={"max_feedback_batch": 2})
    events = [{"request_id": f"r{i}", "label": "safe"} for i in range(3)]
    response = client.post("/v1/feedback", json={"events": events}, headers=ACME)
    assert response.status_code == 413 and response.json()["error"]["field"] == "events"


# -- policies and weights ----------------------------------------------------------------------------------------------


def test_an_admin_sets_a_policy_and_the_decisions_follow_it(client: TestClient) -> None:
    assert moderate(client, "damn")["action"] == "block"
    policy = {"categories": {"profanity": {"action": "flag"}}, "strictness": "lenient"}
    response = client.put("/v1/tenants/acme/policy", json=policy, headers=bearer(ACME_ADMIN_KEY))
    assert response.status_code == 200, response.text
    assert response.json()["tenant"] == "acme" and response.json()["categories"]["S12"]["action"] == "flag"
    assert client.get("/v1/tenants/acme/policy", headers=ACME).json()["strictness"] == "lenient"
    assert moderate(client, "damn")["action"] == "flag"
    assert moderate(client, "damn", key=GLOBEX_KEY)["action"] == "block"  # another tenant: unchanged


def test_policy_writes_are_validated(client: TestClient) -> None:
    admin = bearer(ADMIN_KEY)
    bad = client.put("/v1/tenants/acme/policy", json={"categories": {"nonsense": {}}}, headers=admin)
    assert bad.status_code == 422 and "unknown category" in bad.json()["error"]["message"]
    other = client.put("/v1/tenants/acme/policy", json={"tenant": "globex"}, headers=admin)
    assert other.status_code == 403 and other.json()["error"]["field"] == "tenant"
    assert client.put("/v1/tenants/bad%20id/policy", json={}, headers=admin).status_code == 422
    assert client.put("/v1/tenants/acme/policy", json={}, headers=ACME).status_code == 403  # a client cannot


def test_a_tenant_without_a_policy_reads_the_default_one(service_factory: Callable[..., TestClient]) -> None:
    client = service_factory(policies=[{"tenant": "default", "threshold": 0.3}])
    body = client.get("/v1/tenants/acme/policy", headers=ACME).json()
    assert body["tenant"] == "acme" and body["threshold"] == pytest.approx(0.3)


def test_weights_name_every_expert_per_category_and_refuse_unknown_categories(client: TestClient) -> None:
    body = client.get("/v1/tenants/acme/weights", headers=ACME).json()
    assert body["experts"] == ["words-a", "words-b"] and body["learner"] == "default+adaptive"
    assert len(body["categories"]) == 24 and body["categories"]["S1"]["scope"] == "global"
    bad = client.get("/v1/tenants/acme/weights", params={"category": "nonsense"}, headers=ACME)
    assert bad.status_code == 422 and bad.json()["error"]["field"] == "category.0"


# -- operations --------------------------------------------------------------------------------------------------------


def test_health_readiness_and_a_failing_expert(service_factory: Callable[..., TestClient]) -> None:
    client = service_factory([*default_experts(), KeywordExpert("broken", {"S1": ("x",)}, fail=True)])
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json()["status"] == "ready"
    for _ in range(5):
        moderate(client, "hello")
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["status"] == "degraded"
    assert "broken" in ready.json()["checks"]["experts"]["detail"]
    assert client.get("/readyz", params={"strict": "true"}).status_code == 503


def test_metrics_expose_requests_latency_decisions_feedback_and_entropy(client: TestClient) -> None:
    decision = moderate(client, "kill")
    client.post("/v1/feedback", json={"request_id": decision["request_id"], "label": "unsafe"}, headers=ACME)
    service = client.app.state.service
    assert service.worker.drain(10) and wait_until(lambda: service.worker.stats.applied == 1)
    text = client.get("/metrics").text
    for needle in (
        'aegis_requests_total{method="POST",route="/v1/moderate",status="200"} 1.0',
        'aegis_request_latency_seconds_bucket{le="0.5",route="/v1/moderate"}',
        'aegis_expert_latency_seconds_count{expert="words-a"} 1.0',
        'aegis_category_decisions_total{action="block",category="S1"} 1.0',
        'aegis_decisions_total{action="block",degraded="false"} 1.0',
        'aegis_feedback_events_total{outcome="queued"} 1.0',
        'aegis_feedback_applied_total{outcome="applied"} 1.0',
        'aegis_weight_entropy_nats{category="S1"}',
        "aegis_store_degraded 0.0",
    ):
        assert needle in text, needle


def test_metrics_can_require_an_admin_key(service_factory: Callable[..., TestClient]) -> None:
    client = service_factory(auth={"protect_metrics": True})
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", headers=ACME).status_code == 403
    assert client.get("/metrics", headers=bearer(ADMIN_KEY)).status_code == 200


def test_the_openapi_document_lists_every_route(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    assert {
        "/v1/moderate",
        "/v1/moderations",
        "/v1/feedback",
        "/v1/tenants/{tenant}/policy",
        "/v1/tenants/{tenant}/weights",
        "/healthz",
        "/readyz",
        "/metrics",
    } <= set(paths)
    assert client.get("/docs").status_code == 200


# -- /v1/moderations (OpenAI shape) without the SDK --------------------------------------------------------------------


def test_openai_moderations_answer_one_result_per_string(client: TestClient) -> None:
    response = client.post("/v1/moderations", json={"input": ["hello there", "I will kill you"]}, headers=ACME)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["id"].startswith("modr-") and body["model"] == "aegis-online"
    assert [r["flagged"] for r in body["results"]] == [False, True]
    violent = body["results"][1]
    assert violent["categories"]["violence"] is True and violent["categories"]["harassment/threatening"] is False
    assert violent["category_scores"]["violence"] == pytest.approx(0.9)
    assert violent["category_applied_input_types"]["violence"] == ["text"]
    assert len(response.headers["x-aegis-request-ids"].split(",")) == 2


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"input": []}, "input"),
        ({"input": [{"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}]}, "input.0"),
        ({"input": ["a"] * 33}, "input"),
        ({}, "input"),
        ({"input": "x", "unknown": 1}, "unknown"),
    ],
)
def test_openai_moderations_refuse_bad_input_with_openai_errors(client: TestClient, body: dict, param: str) -> None:
    response = client.post("/v1/moderations", json=body, headers=ACME)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == param and error["message"]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"input": []}, "input: List should have at least 1 item"),
        ({"input": 5}, "input: Input should be a valid string"),
        ({"input": ["a", 3]}, "input.1: Input should be a valid string"),
        ({"input": [{"type": "text"}]}, "input.0.text.text: required"),
    ],
)
def test_an_input_that_fits_no_form_is_told_what_is_wrong_with_the_form_it_has(
    client: TestClient, body: dict, message: str
) -> None:
    """``input`` is a string, a list of strings or a list of parts; the error speaks of the form the value came
    closest to, not of each form it is not."""
    error = client.post("/v1/moderations", json=body, headers=ACME).json()["error"]
    assert error["message"].startswith(message) and "more problems" not in error["message"], error


def test_openai_moderations_join_the_text_parts_of_one_multimodal_input(client: TestClient) -> None:
    parts = [{"type": "text", "text": "I will"}, {"type": "text", "text": "kill you"}]
    body = client.post("/v1/moderations", json={"input": parts}, headers=ACME).json()
    assert len(body["results"]) == 1 and body["results"][0]["flagged"] is True

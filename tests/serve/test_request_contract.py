"""What a client is told when it sends something wrong, and what the API promises about ids and pages (issue 11,
item 7): errors that name the field and the rule, conflicts instead of silent overwrites or drops."""

from __future__ import annotations

import json
import re
from collections.abc import Callable

import pytest
from fastapi.testclient import TestClient

from .helpers import ACME_ADMIN_KEY, ACME_KEY, ADMIN_KEY, KeywordExpert, bearer, conversation

ACME, ADMIN = bearer(ACME_KEY), bearer(ADMIN_KEY)


@pytest.mark.parametrize("value", [-0.1, 1.5, "NaN", "strictest"])
def test_an_out_of_range_strictness_names_the_range(client: TestClient, value: object) -> None:
    raw = json.dumps(conversation("hi")).replace("}]", f'}}], "strictness": {json.dumps(value)}')
    if value == "NaN":
        raw = raw.replace('"NaN"', "NaN")
    response = client.post("/v1/moderate", content=raw, headers=ACME | {"Content-Type": "application/json"})
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["field"] == "strictness"
    assert "a number in [0, 1]" in error["message"] and "more problems" not in error["message"]


def test_a_policy_body_naming_another_tenant_is_403(client: TestClient) -> None:
    response = client.put("/v1/tenants/acme/policy", json={"tenant": "globex"}, headers=bearer(ACME_ADMIN_KEY))
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "wrong_tenant" and response.json()["error"]["field"] == "tenant"


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", "text/html; charset=x"])
def test_json_sent_as_another_media_type_is_415(client: TestClient, content_type: str) -> None:
    response = client.post(
        "/v1/moderate", content=json.dumps(conversation("hi")), headers=ACME | {"Content-Type": content_type}
    )
    assert response.status_code == 415
    assert "application/json" in response.json()["error"]["message"]


def test_json_media_types_and_a_missing_content_type_are_accepted(client: TestClient) -> None:
    body = json.dumps(conversation("hi"))
    for headers in ({"Content-Type": "application/json; charset=utf-8"}, {"Content-Type": "application/vnd+json"}, {}):
        assert client.post("/v1/moderate", content=body, headers=ACME | headers).status_code == 200


def test_an_event_id_reused_with_other_labels_is_a_conflict_not_a_duplicate(client: TestClient) -> None:
    request_id = client.post("/v1/moderate", json=conversation("kill"), headers=ACME).json()["request_id"]
    first = {"request_id": request_id, "labels": {"S1": 1}, "event_id": "ev-1"}
    assert client.post("/v1/feedback", json=first, headers=ACME).json()["results"][0]["status"] == "queued"
    assert client.post("/v1/feedback", json=first, headers=ACME).json()["results"][0]["status"] == "duplicate"
    other = first | {"labels": {"S1": 0}}
    response = client.post("/v1/feedback", json=other, headers=ACME)
    assert response.status_code == 409 and response.json()["error"]["code"] == "event_conflict"
    batch = client.post("/v1/feedback", json={"events": [other]}, headers=ACME).json()
    assert batch["results"][0]["status"] == "rejected"
    assert batch["results"][0]["error"]["code"] == "event_conflict"
    assert client.app.state.service.worker.drain(10)
    assert client.app.state.service.worker.stats.applied == 1


def test_one_call_cannot_carry_two_contents_under_one_event_id(client: TestClient) -> None:
    request_id = client.post("/v1/moderate", json=conversation("kill"), headers=ACME).json()["request_id"]
    events = [
        {"request_id": request_id, "labels": {"S1": 1}, "event_id": "ev-2"},
        {"request_id": request_id, "labels": {"S1": 0}, "event_id": "ev-2"},
    ]
    results = client.post("/v1/feedback", json={"events": events}, headers=ACME).json()["results"]
    assert [r["status"] for r in results] == ["queued", "rejected"]
    assert results[1]["error"]["code"] == "event_conflict"


def test_a_request_id_reused_for_another_text_is_409_and_the_logged_prediction_stays(client: TestClient) -> None:
    first = client.post("/v1/moderate", json=conversation("kill", request_id="mine-1"), headers=ACME)
    assert first.status_code == 200
    retry = client.post("/v1/moderate", json=conversation("kill", request_id="mine-1"), headers=ACME)
    assert retry.status_code == 200  # the same input again: a retry
    other = client.post("/v1/moderate", json=conversation("hello", request_id="mine-1"), headers=ACME)
    assert other.status_code == 409 and other.json()["error"]["code"] == "request_id_reused"
    record = client.app.state.service.engine.prediction_log.get("mine-1")
    assert record is not None and record.scores[record.categories.index("S1")] > 0.5  # still the "kill" one


def test_weights_leave_out_experts_that_do_not_score_the_category(service_factory: Callable[..., TestClient]) -> None:
    client = service_factory([KeywordExpert("a", {"S1": ("kill",)}), KeywordExpert("b", {"S1": ("kill",), "S6": ()})])
    categories = client.get("/v1/tenants/acme/weights?category=S1&category=S6", headers=ACME).json()["categories"]
    assert categories["S1"]["weights"] == pytest.approx({"a": 0.5, "b": 0.5})
    assert categories["S6"]["weights"] == pytest.approx({"b": 1.0})  # a never scores S6: not shown at 0.5


def test_the_api_pages_load_their_assets_from_the_service_not_a_cdn(client: TestClient) -> None:
    for page in ("/docs", "/redoc"):
        html = client.get(page).text
        assert "cdn" not in html.lower() and "https://" not in html.split("<body")[0].lower()
        for asset in re.findall(r'(?:src|href)="(/[^"]+\.(?:js|css))"', html):
            assert client.get(asset).status_code == 200, asset


def test_the_api_pages_can_be_turned_off(service_factory: Callable[..., TestClient]) -> None:
    client = service_factory(server={"docs": False})
    assert client.get("/docs").status_code == 404 and client.get("/redoc").status_code == 404
    assert client.get("/openapi.json").status_code == 200

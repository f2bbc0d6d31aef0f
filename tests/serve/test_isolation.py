"""Tenant isolation: a tenant's key never reads or changes another tenant's policy, weights, predictions or feedback."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from fastapi.testclient import TestClient

from tests.helpers import wait_until

from .helpers import ACME_ADMIN_KEY, ACME_KEY, ADMIN_KEY, GLOBEX_KEY, KeywordExpert, bearer, conversation

ACME, GLOBEX = bearer(ACME_KEY), bearer(GLOBEX_KEY)


def _decide(client: TestClient, headers: dict[str, str], text: str = "kill", **extra: object) -> dict:
    response = client.post("/v1/moderate", json=conversation(text, **extra), headers=headers)
    assert response.status_code == 200, response.text
    return response.json()


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("get", "/v1/tenants/globex/policy", None),
        ("put", "/v1/tenants/globex/policy", {"strictness": "lenient"}),
        ("get", "/v1/tenants/globex/weights", None),
        ("post", "/v1/moderate", conversation("hi", tenant="globex")),
        ("post", "/v1/feedback", {"request_id": "any", "tenant": "globex", "label": "safe"}),
        ("post", "/v1/feedback", {"events": [{"request_id": "a", "tenant": "globex", "label": "safe"}]}),
    ],
)
def test_a_tenants_key_is_refused_on_another_tenant(
    client: TestClient, method: str, path: str, body: dict | None
) -> None:
    for key in (ACME_KEY, ACME_ADMIN_KEY):  # not even acme's admin
        response = client.request(method, path, json=body, headers=bearer(key))
        assert response.status_code == 403, (key, response.text)
        assert response.json()["error"]["type"] == "permission_denied"


def test_a_refused_policy_change_leaves_the_other_tenants_policy_alone(client: TestClient) -> None:
    client.put("/v1/tenants/globex/policy", json={"threshold": 0.9}, headers=bearer(ACME_ADMIN_KEY))
    assert client.get("/v1/tenants/globex/policy", headers=GLOBEX).json()["threshold"] == pytest.approx(0.5)


def test_feedback_on_another_tenants_request_reads_as_unknown_and_changes_nothing(
    service_factory: Callable[..., TestClient],
) -> None:
    client = service_factory(
        [KeywordExpert("a", {"S1": ("kill",)}), KeywordExpert("b", {"S1": ("kill",)}, high=0.1, low=0.8)],
        policies=[{"tenant": "globex", "personalise_after": 0}, {"tenant": "acme", "personalise_after": 0}],
    )
    globex_request = _decide(client, GLOBEX)["request_id"]
    before = client.get("/v1/tenants/globex/weights", headers=GLOBEX).json()
    single = client.post("/v1/feedback", json={"request_id": globex_request, "label": "unsafe"}, headers=ACME)
    assert single.status_code == 404 and single.json()["error"]["code"] == "unknown_request"
    assert "globex" not in single.text  # the refusal does not reveal whose request it is
    batch = client.post(
        "/v1/feedback", json={"events": [{"request_id": globex_request, "label": "safe"}]}, headers=ACME
    )
    assert batch.json()["results"][0]["status"] == "rejected"
    service = client.app.state.service
    assert service.worker.drain(10)
    assert client.get("/v1/tenants/globex/weights", headers=GLOBEX).json() == before
    assert service.worker.stats.applied == 0


def test_a_request_id_of_another_tenant_cannot_be_taken_over(client: TestClient) -> None:
    taken = _decide(client, GLOBEX, request_id="shared-id-1")["request_id"]
    response = client.post("/v1/moderate", json=conversation("hi", request_id=taken), headers=ACME)
    assert response.status_code == 409 and response.json()["error"]["field"] == "request_id"
    # globex's logged prediction is intact: its feedback still joins
    ok = client.post("/v1/feedback", json={"request_id": taken, "label": "unsafe"}, headers=GLOBEX)
    assert ok.status_code == 202 and ok.json()["results"][0]["status"] == "queued"
    # ... and globex may reuse its own id (a retry)
    assert _decide(client, GLOBEX, request_id=taken)["request_id"] == taken


def test_one_tenants_feedback_moves_only_its_own_weights(service_factory: Callable[..., TestClient]) -> None:
    client = service_factory(
        [KeywordExpert("a", {"S1": ("kill",)}), KeywordExpert("b", {"S1": ("kill",)}, high=0.1, low=0.8)],
        policies=[{"tenant": "acme", "personalise_after": 1}, {"tenant": "globex", "personalise_after": 1}],
    )
    for _ in range(10):
        rid = _decide(client, ACME)["request_id"]
        client.post("/v1/feedback", json={"request_id": rid, "labels": {"S1": 1}}, headers=ACME)
    service = client.app.state.service
    assert service.worker.drain(10) and wait_until(lambda: service.worker.stats.applied == 10)
    acme = client.get("/v1/tenants/acme/weights", params={"category": "S1"}, headers=ACME).json()["categories"]["S1"]
    globex = client.get("/v1/tenants/globex/weights", params={"category": "S1"}, headers=GLOBEX).json()
    assert acme["scope"] == "tenant" and acme["weights"]["a"] > 0.9
    assert globex["categories"]["S1"]["scope"] == "global"  # globex has no feedback of its own


def test_keys_are_required_and_checked(client: TestClient) -> None:
    assert client.post("/v1/moderate", json=conversation("hi")).status_code == 401
    wrong = client.post("/v1/moderate", json=conversation("hi"), headers=bearer("not-a-key-at-all-000000"))
    assert wrong.status_code == 401 and wrong.headers["www-authenticate"] == "Bearer"
    assert (
        client.post("/v1/moderate", json=conversation("hi"), headers={"Authorization": "Basic abc"}).status_code == 401
    )
    via_header = client.post("/v1/moderate", json=conversation("hi"), headers={"X-API-Key": ACME_KEY})
    assert via_header.status_code == 200 and via_header.json()["tenant"] == "acme"


def test_admins_act_for_any_tenant_and_tenant_admins_for_their_own(client: TestClient) -> None:
    admin = bearer(ADMIN_KEY)
    assert _decide(client, admin, tenant="globex")["tenant"] == "globex"
    assert _decide(client, admin)["tenant"] == "default"
    assert client.put("/v1/tenants/globex/policy", json={}, headers=admin).status_code == 200
    assert client.put("/v1/tenants/acme/policy", json={}, headers=bearer(ACME_ADMIN_KEY)).status_code == 200
    assert client.get("/v1/tenants/globex/weights", headers=admin).status_code == 200


def test_open_development_mode_acts_for_the_default_tenant_only(service_factory: Callable[..., TestClient]) -> None:
    client = service_factory(keys=[])
    assert _decide(client, {})["tenant"] == "default"
    assert _decide(client, bearer("anything"))["tenant"] == "default"
    other = client.post("/v1/moderate", json=conversation("hi", tenant="acme"), headers=bearer("anything"))
    assert other.status_code == 403
    assert client.put("/v1/tenants/default/policy", json={}).status_code == 200
    assert client.put("/v1/tenants/acme/policy", json={}).status_code == 403

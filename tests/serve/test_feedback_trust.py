"""Whose weights feedback trains: a tenant's client key trains its own weights only; the global weights every tenant
starts from learn from keys the operator trusts (moderator, admin) and from contributing tenants within a share
(issue 11, item 6)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from fastapi.testclient import TestClient

from aegis_online.config import ApiKey

from .helpers import ACME_KEY, ADMIN_KEY, GLOBEX_KEY, KEYS, KeywordExpert, bearer, conversation

MODERATOR_KEY = "test-trust-moderator-key-00001"
BRAVO_KEY = "test-bravo-client-key-000000001"
TRUST_KEYS = [
    *KEYS,
    ApiKey(name="tns", key=MODERATOR_KEY, role="moderator"),
    ApiKey(name="bravo-app", key=BRAVO_KEY, tenant="bravo", role="client"),
]
PROFANE = ["damn this", "what the damn", "damn it all", "oh damn"]


def profanity_experts() -> list[KeywordExpert]:
    """Two experts that disagree on profanity: one sees it, one never does."""
    return [KeywordExpert("strict", {"S12": ("damn",)}), KeywordExpert("lax", {"S12": ("zzz",)}, low=0.2)]


def _service(factory: Callable[..., TestClient], **sections: Any) -> TestClient:
    return factory(profanity_experts(), keys=TRUST_KEYS, **sections)


def _decide(client: TestClient, key: str, text: str, **extra: Any) -> dict:
    body = conversation(text, categories=["S12"], **extra)
    response = client.post("/v1/moderate", json=body, headers=bearer(key))
    assert response.status_code == 200, response.text
    return response.json()


def _label(client: TestClient, key: str, n: int, value: float = 0.0, **extra: Any) -> list[dict]:
    """``n`` moderations on profane text, each labelled ``S12: value`` with ``key``; the receipts. A ``tenant`` in
    ``extra`` goes to both calls (for keys of every tenant)."""
    receipts = []
    scope = {"tenant": extra["tenant"]} if "tenant" in extra else {}
    for i in range(n):
        request_id = _decide(client, key, PROFANE[i % len(PROFANE)], **scope)["request_id"]
        response = client.post(
            "/v1/feedback", json={"request_id": request_id, "labels": {"S12": value}, **extra}, headers=bearer(key)
        )
        assert response.status_code == 202, response.text
        receipts.append(response.json()["results"][0])
    assert client.app.state.service.worker.drain(10)
    return receipts


def _global_s12(client: TestClient) -> dict[str, float]:
    body = client.get("/v1/weights/global?category=S12", headers=bearer(ADMIN_KEY)).json()
    return body["categories"]["S12"]["weights"]


def test_one_tenants_client_feedback_leaves_every_other_tenant_unchanged(
    service_factory: Callable[..., TestClient],
) -> None:
    client = _service(service_factory)
    before = [_decide(client, BRAVO_KEY, text) for text in PROFANE]
    receipts = _label(client, ACME_KEY, 10)  # acme says profanity is fine, ten times
    assert all(r["status"] == "queued" and r["scopes"] == ["tenant"] for r in receipts)
    after = [_decide(client, BRAVO_KEY, text) for text in PROFANE]
    assert [d["action"] for d in after] == [d["action"] for d in before] == ["block"] * 4
    assert [d["categories"][0]["score"] for d in after] == [d["categories"][0]["score"] for d in before]
    assert _global_s12(client) == pytest.approx({"strict": 0.5, "lax": 0.5})
    # acme's own weights did learn from its own feedback
    acme = client.get("/v1/tenants/acme/weights?category=S12", headers=bearer(ACME_KEY)).json()
    assert client.app.state.service.worker.stats.applied == 10
    assert acme["categories"]["S12"]["scope"] == "global"  # not personalised yet (personalise_after: 50)


def test_a_tenant_starts_using_weights_learned_from_its_own_feedback(
    service_factory: Callable[..., TestClient],
) -> None:
    client = _service(service_factory, policies=[{"tenant": "acme", "personalise_after": 5}])
    _label(client, ACME_KEY, 10)
    acme = client.get("/v1/tenants/acme/weights?category=S12", headers=bearer(ACME_KEY)).json()["categories"]["S12"]
    assert acme["scope"] == "tenant" and acme["weights"]["lax"] > 0.9
    assert _decide(client, ACME_KEY, "damn this")["categories"][0]["weights_scope"] == "tenant"
    assert _global_s12(client) == pytest.approx({"strict": 0.5, "lax": 0.5})


@pytest.mark.parametrize("key", [MODERATOR_KEY, ADMIN_KEY])
def test_feedback_from_keys_the_operator_trusts_moves_the_global_weights(
    service_factory: Callable[..., TestClient], key: str
) -> None:
    client = _service(service_factory)
    receipts = _label(client, key, 10, tenant="acme")
    assert all(r["scopes"] == ["tenant", "global"] for r in receipts)
    assert _global_s12(client)["lax"] > 0.9
    assert [_decide(client, BRAVO_KEY, t)["action"] for t in PROFANE] == ["allow"] * 4  # everyone follows


def test_a_moderator_may_keep_its_labels_to_the_tenant(service_factory: Callable[..., TestClient]) -> None:
    client = _service(service_factory)
    receipts = _label(client, MODERATOR_KEY, 3, tenant="acme", trusted=False)
    assert all(r["scopes"] == ["tenant"] for r in receipts)
    assert _global_s12(client) == pytest.approx({"strict": 0.5, "lax": 0.5})


def test_a_client_key_cannot_claim_trust(service_factory: Callable[..., TestClient]) -> None:
    client = _service(service_factory)
    request_id = _decide(client, ACME_KEY, "damn this")["request_id"]
    response = client.post(
        "/v1/feedback", json={"request_id": request_id, "label": "safe", "trusted": True}, headers=bearer(ACME_KEY)
    )
    assert response.status_code == 403
    assert response.json()["error"]["field"] == "trusted" and response.json()["error"]["code"] == "not_trusted"


def test_a_contributing_tenant_trains_the_global_weights_only_up_to_its_share(
    service_factory: Callable[..., TestClient],
) -> None:
    window = {"contributors": ["acme"], "max_share": 0.25, "min_events": 3, "window_s": 30 * 86400}
    client = _service(service_factory, global_learning=window)
    receipts = _label(client, ACME_KEY, 6)
    assert [r["scopes"] for r in receipts] == [["tenant", "global"]] * 3 + [["tenant"]] * 3
    assert _global_s12(client)["lax"] > 0.5  # the three admitted ones moved it
    _label(client, MODERATOR_KEY, 12, value=1.0, tenant="globex")  # trusted traffic: 15 global updates in all
    receipts = _label(client, ACME_KEY, 2)
    assert [r["scopes"] for r in receipts] == [["tenant", "global"], ["tenant"]]  # 4 <= 0.25 x 16; 5 > 0.25 x 17


def test_the_trust_stamp_travels_with_the_event_to_the_worker(service_factory: Callable[..., TestClient]) -> None:
    client = _service(service_factory)
    _label(client, GLOBEX_KEY, 2)
    _label(client, MODERATOR_KEY, 2, tenant="globex")
    stats = client.app.state.service.worker.stats
    assert stats.applied == 4 and stats.dead_letters == 0


def test_the_global_weights_are_read_by_operator_keys_on_their_own_path(
    service_factory: Callable[..., TestClient],
) -> None:
    client = _service(service_factory)
    assert _global_s12(client) == pytest.approx({"strict": 0.5, "lax": 0.5})
    refused = client.get("/v1/weights/global", headers=bearer(ACME_KEY))
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "wrong_tenant"
    # "global" names the scope, never a tenant: the tenant path refuses it instead of showing the global weights
    reserved = client.get("/v1/tenants/global/weights", headers=bearer(ADMIN_KEY))
    assert reserved.status_code == 422 and "reserved" in reserved.text

"""``global`` names the global learner scope, so it is no tenant id: refused, in any letter case, wherever a tenant
id enters (the API with a 4xx naming the field, the config naming the key, the feedback worker with a dead letter)."""

from __future__ import annotations

import json
from collections.abc import Callable

import httpx
import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from aegis_online.config import ApiKey, ServiceConfig
from aegis_online.schemas import FeedbackEvent, ModerationRequest
from tests.helpers import wait_until

from .helpers import ACME_KEY, ADMIN_KEY, bearer, conversation

RESERVED = ("global", "Global", "GLOBAL")
ADMIN = bearer(ADMIN_KEY)


def assert_refused(response: httpx.Response, field: str, tenant: str) -> None:
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["field"] == field and error["code"] == "reserved_tenant", error
    assert error["message"].startswith(f"{field}: {tenant!r} is reserved"), error["message"]


@pytest.mark.parametrize("tenant", RESERVED)
def test_a_request_naming_the_reserved_tenant_is_refused_naming_the_field(client: TestClient, tenant: str) -> None:
    assert_refused(client.post("/v1/moderate", json=conversation("hi", tenant=tenant), headers=ADMIN), "tenant", tenant)
    response = client.post("/v1/moderate", json=conversation("hi", tenant=tenant), headers=bearer(ACME_KEY))
    assert_refused(response, "tenant", tenant)


def test_ids_that_only_contain_global_are_tenants_like_any_other(client: TestClient) -> None:
    for tenant in ("global-eu", "globalx", "my.global"):
        assert client.post("/v1/moderate", json=conversation("hi", tenant=tenant), headers=ADMIN).status_code == 200


def test_the_policy_routes_refuse_it_in_the_path_and_in_the_body(client: TestClient) -> None:
    assert_refused(client.put("/v1/tenants/global/policy", json={}, headers=ADMIN), "tenant", "global")
    assert_refused(client.get("/v1/tenants/Global/policy", headers=ADMIN), "tenant", "Global")
    assert_refused(client.get("/v1/tenants/global/weights", headers=ADMIN), "tenant", "global")
    response = client.put("/v1/tenants/acme/policy", json={"tenant": "GLOBAL"}, headers=ADMIN)
    assert_refused(response, "tenant", "GLOBAL")
    assert client.get("/v1/tenants/acme/policy", headers=ADMIN).json()["tenant"] != "GLOBAL"


def test_feedback_naming_it_is_refused_naming_the_field_alone_or_in_a_batch(client: TestClient) -> None:
    event = {"request_id": "r-1", "label": "unsafe", "tenant": "global"}
    assert_refused(client.post("/v1/feedback", json=event, headers=ADMIN), "tenant", "global")
    batch = {"events": [{**event, "tenant": "acme"}, event]}
    assert_refused(client.post("/v1/feedback", json=batch, headers=ADMIN), "events.1.tenant", "global")


def test_an_event_on_the_bus_naming_it_becomes_a_malformed_dead_letter(
    service_factory: Callable[..., TestClient],
) -> None:
    """What a producer other than the API could put on the topic: the worker's processor refuses it, names the field,
    and carries on (the embedded queue runs the Kafka worker's loop and processor)."""
    service = service_factory().app.state.service
    value = json.dumps({"request_id": "r-1", "label": "unsafe", "tenant": "global"}).encode()
    service.worker.queue.publish_raw(b"global", value)
    assert service.worker.drain(10) and wait_until(lambda: service.worker.stats.dead_letters == 1)
    (letter,) = service.worker.dead_letters.letters
    assert letter.reason == "malformed" and letter.detail.startswith("tenant: 'global' is reserved"), letter.detail
    assert service.worker.stats.dead_letter_reasons == {"malformed": 1}


@pytest.mark.parametrize(
    ("document", "where"),
    [
        ({"auth": {"keys": [{"key": "k" * 20, "tenant": "global"}]}}, ("auth", "keys", 0, "tenant")),
        ({"rate_limits": {"tenants": {"Global": {}}}}, ("rate_limits", "tenants", "Global", "[key]")),
        ({"global_learning": {"contributors": ["acme", "GLOBAL"]}}, ("global_learning", "contributors", 1)),
        ({"policies": [{"tenant": "global"}]}, ("policies", 0, "tenant")),
    ],
)
def test_the_config_refuses_it_naming_the_key(document: dict, where: tuple) -> None:
    with pytest.raises(ValidationError) as caught:
        ServiceConfig.model_validate(document)
    (error,) = caught.value.errors()
    assert error["loc"] == where and error["type"] == "reserved_tenant", error


def test_every_model_with_a_tenant_id_refuses_it() -> None:
    for build in (
        lambda t: ApiKey(key="k" * 20, tenant=t),
        lambda t: ModerationRequest(messages=[{"role": "user", "content": "hi"}], tenant=t),
        lambda t: FeedbackEvent(request_id="r-1", label="unsafe", tenant=t),
    ):
        for tenant in RESERVED:
            with pytest.raises(ValidationError, match="is reserved"):
                build(tenant)
        assert build("acme").tenant == "acme"

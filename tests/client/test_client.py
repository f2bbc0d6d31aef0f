"""``aegis_online.client`` against the real service over a real socket: every call answered with the service's own
models, every refusal as a typed error carrying the service's status, reason, message and field."""

from __future__ import annotations

import asyncio

import pytest

from aegis_online.api_models import FeedbackReceipt, ModerationCreateRequest, ModerationCreateResponse, TenantWeights
from aegis_online.client import AegisClient, APIError, APIResponseError, AsyncAegisClient, RetryPolicy
from aegis_online.schemas import Decision, FeedbackEvent, Message, ModerationRequest
from tests.serve.helpers import ACME_KEY, ADMIN_KEY, GLOBEX_KEY

from .scripted_server import Reply, scripted_server


def conversation(text: str, **extra: object) -> ModerationRequest:
    return ModerationRequest(messages=[Message(role="user", content=text)], **extra)  # type: ignore[arg-type]


@pytest.fixture
def acme(base_url: str):
    with AegisClient(base_url, api_key=ACME_KEY, retry=RetryPolicy(attempts=1)) as client:
        yield client


def test_moderate_answers_with_the_services_decision(acme: AegisClient) -> None:
    decision = acme.moderate(conversation("I will kill you"))
    assert isinstance(decision, Decision)
    assert decision.tenant == "acme" and decision.flagged and decision.request_id  # the client gave it an id
    assert {c.category for c in decision.categories if c.flagged} >= {"S1"}
    again = acme.moderate(conversation("I will kill you", request_id=decision.request_id))
    assert again.request_id == decision.request_id  # the same input under its id again: a retry, not a conflict
    with pytest.raises(APIError) as reused:
        acme.moderate(conversation("something else", request_id=decision.request_id))
    assert (reused.value.status, reused.value.reason) == (409, "request_id_reused")


def test_refusals_are_typed_errors_with_the_services_reason(base_url: str, acme: AegisClient) -> None:
    stranger = AegisClient(base_url, api_key="not-a-key-0000000000", retry=RetryPolicy(attempts=1))
    with stranger, pytest.raises(APIError) as unknown:
        stranger.moderate(conversation("hi"))
    assert unknown.value.status == 401 and unknown.value.type == "authentication_error"
    with pytest.raises(APIError) as other_tenant:
        acme.get_policy("globex")
    assert other_tenant.value.status == 403
    with pytest.raises(APIError, match="PUT /v1/tenants/acme/policy answered 403") as not_admin:
        acme.put_policy("acme", {"strictness": "strict"})  # a client key may not change its policy
    assert not_admin.value.type == "permission_denied"
    with pytest.raises(APIError) as invalid:
        acme.moderate(conversation("hi", categories=["S1", "no-such-category"]))
    assert (invalid.value.status, invalid.value.reason, invalid.value.field) == (422, "invalid_request", "categories.1")
    assert "unknown category 'no-such-category'" in invalid.value.message


def test_openai_compatible_moderations(acme: AegisClient) -> None:
    response = acme.moderations(["I will kill you", "Thanks for your help!"], model="omni-moderation-latest")
    assert isinstance(response, ModerationCreateResponse)
    assert [r.flagged for r in response.results] == [True, False]
    assert response.results[0].categories.violence and response.results[0].aegis is not None
    assert response.results[0].aegis.request_id != response.results[1].aegis.request_id
    with pytest.raises(APIError) as image:
        acme.moderations(
            ModerationCreateRequest.model_validate(
                {"input": [{"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}]}
            )
        )
    assert (image.value.status, image.value.type, image.value.field) == (400, "invalid_request_error", "input.0")


def test_feedback_says_queued_then_duplicate_never_applied(acme: AegisClient) -> None:
    decision = acme.moderate(conversation("you damn idiot"))
    event = FeedbackEvent(request_id=decision.request_id, labels={"S12": 1.0}, event_id=f"{decision.request_id}:fb")
    first = acme.feedback(event)
    assert (first.status, first.scopes, first.event_id) == ("queued", ["tenant"], event.event_id)
    assert acme.feedback(event).status == "duplicate"
    with pytest.raises(APIError) as unknown:
        acme.feedback(FeedbackEvent(request_id="never-seen", label="safe"))
    assert (unknown.value.status, unknown.value.reason, unknown.value.field) == (404, "unknown_request", "request_id")
    other = acme.moderate(conversation("shoot"))
    receipt = acme.feedback_batch(
        [FeedbackEvent(request_id=other.request_id, label="unsafe"), FeedbackEvent(request_id="nope", label="safe")]
    )
    assert isinstance(receipt, FeedbackReceipt) and (receipt.accepted, receipt.rejected) == (1, 1)
    assert [r.status for r in receipt.results] == ["queued", "rejected"]
    assert receipt.results[1].error is not None and receipt.results[1].error.code == "unknown_request"


def test_policies_and_weights(base_url: str, acme: AegisClient) -> None:
    admin = acme.with_api_key(ADMIN_KEY)
    stored = admin.put_policy("globex", {"strictness": "strict", "categories": {"violence": {"threshold": 0.35}}})
    assert stored["tenant"] == "globex" and stored["strictness"] == "strict"
    with AegisClient(base_url, api_key=GLOBEX_KEY) as globex:
        assert globex.get_policy("globex") == stored
    weights = acme.weights("acme", ["S1", "profanity"])
    assert isinstance(weights, TenantWeights) and weights.tenant == "acme"
    assert set(weights.categories) == {"S1", "S12"} and weights.experts == ["words-a", "words-b"]
    assert sum(weights.categories["S1"].weights.values()) == pytest.approx(1.0)
    admin.close()  # a view: the connections stay open for their owner
    assert acme.health().status == "ok"


def test_health_and_readiness(acme: AegisClient) -> None:
    assert acme.health().status == "ok"
    assert acme.ready().status == "ready"
    assert acme.wait_ready(timeout_s=5) < 5
    assert "aegis_requests_total" in acme.metrics()


def test_the_async_client_makes_the_same_calls_concurrently(base_url: str) -> None:
    async def run() -> tuple[list[Decision], FeedbackReceipt, TenantWeights]:
        async with AsyncAegisClient(base_url, api_key=ACME_KEY) as client:
            texts = [f"message {i}: have a nice day" for i in range(6)] + ["stab him"]
            decisions = await asyncio.gather(*(client.moderate(conversation(t)) for t in texts))
            events = [
                FeedbackEvent(request_id=d.request_id, label="unsafe" if d.flagged else "safe") for d in decisions
            ]
            receipt = await client.feedback_batch(events)
            weights = await client.with_api_key(ADMIN_KEY).weights("acme", ["S1"])
            assert (await client.ready()).status == "ready"
            return list(decisions), receipt, weights

    decisions, receipt, weights = asyncio.run(run())
    assert [d.flagged for d in decisions] == [False] * 6 + [True]
    assert receipt.accepted == 7 and {r.status for r in receipt.results} == {"queued"}
    assert weights.tenant == "acme"


def test_an_answer_the_client_cannot_read_is_an_error_never_a_success() -> None:
    event = FeedbackEvent(request_id="r1", label="safe")
    replies = (Reply(202, b"accepted, probably"), Reply(202, {"accepted": 0, "rejected": 0, "results": []}))
    with scripted_server(*replies) as (url, _), AegisClient(url) as client:
        with pytest.raises(APIResponseError, match="cannot read"):
            client.feedback(event)
        with pytest.raises(APIResponseError, match="0 results"):
            client.feedback(event)

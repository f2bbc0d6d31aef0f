"""Retries over real sockets: a server that answers 503 with ``Retry-After`` then 200 is waited for, one that keeps
refusing is given up on after the bound with a typed error, and the real service's rate limit (429 with
``Retry-After``) is honoured; plus the policy's arithmetic."""

from __future__ import annotations

import asyncio
import time

import pytest

from aegis_online.client import AegisClient, APIConnectionError, APIError, AsyncAegisClient, RetryPolicy
from aegis_online.client.retry import parse_retry_after
from aegis_online.schemas import Decision, Message, ModerationRequest
from aegis_online.serve.app import create_app
from tests.serve.helpers import ACME_KEY, make_service, spare_port, uvicorn_server

from .scripted_server import Reply, scripted_server

REQUEST = ModerationRequest(messages=[Message(role="user", content="hello")], request_id="r-1")
DECISION = Decision(
    request_id="r-1",
    tenant="default",
    check="prompt",
    strictness=0.5,
    action="allow",
    flagged=False,
    categories=[],
    experts=[],
    missing_experts=[],
).model_dump(mode="json")
OVERLOADED = {"error": {"type": "unavailable", "message": "at capacity; retry in 1 s", "code": "overloaded"}}
FAST = RetryPolicy(attempts=3, backoff_s=0.01, max_backoff_s=2.0)


def test_a_503_with_retry_after_is_waited_for_then_the_answer_is_read() -> None:
    replies = (Reply(503, OVERLOADED, {"Retry-After": "1"}), Reply(200, DECISION))
    with scripted_server(*replies) as (url, script), AegisClient(url, retry=FAST) as client:
        started = time.monotonic()
        decision = client.moderate(REQUEST)
        waited = time.monotonic() - started
    assert decision.request_id == "r-1" and len(script.seen) == 2
    assert waited >= 1.0  # the service said when to come back


def test_a_service_that_keeps_refusing_is_given_up_on_after_the_bound() -> None:
    with (
        scripted_server(Reply(503, OVERLOADED, {"Retry-After": "0"})) as (url, script),
        AegisClient(url, retry=FAST) as client,
        pytest.raises(APIError) as refused,
    ):
        client.moderate(REQUEST)
    error = refused.value
    assert (error.status, error.reason, error.attempts, error.retry_after) == (503, "overloaded", 3, 0.0)
    assert error.message == "at capacity; retry in 1 s" and len(script.seen) == 3


def test_a_wait_longer_than_the_policy_allows_is_not_retried_early() -> None:
    with (
        scripted_server(Reply(503, OVERLOADED, {"Retry-After": "30"})) as (url, script),
        AegisClient(url, retry=FAST) as client,
        pytest.raises(APIError) as refused,
    ):
        client.moderate(REQUEST)
    assert refused.value.retry_after == 30.0 and refused.value.attempts == 1 and len(script.seen) == 1


def test_only_what_may_pass_on_its_own_is_retried() -> None:
    conflict = {"error": {"type": "conflict", "message": "queueing right now", "code": "in_progress"}}
    invalid = {"error": {"type": "invalid_request", "message": "messages: required", "field": "messages"}}
    replies = (Reply(409, conflict, {"Retry-After": "0"}), Reply(200, DECISION), Reply(422, invalid))
    with scripted_server(*replies) as (url, script), AegisClient(url, retry=FAST) as client:
        assert client.moderate(REQUEST).request_id == "r-1"  # a 409 that says when to come back: retried
        with pytest.raises(APIError) as refused:
            client.moderate(REQUEST)  # the caller's mistake: at once
    assert (refused.value.status, refused.value.field, refused.value.attempts) == (422, "messages", 1)
    assert len(script.seen) == 3


def test_the_async_client_retries_the_same_way() -> None:
    replies = (Reply(503, OVERLOADED, {"Retry-After": "0"}), Reply(502, b"bad gateway"), Reply(200, DECISION))

    async def run(url: str) -> Decision:
        async with AsyncAegisClient(url, retry=FAST) as client:
            return await client.moderate(REQUEST)

    with scripted_server(*replies) as (url, script):
        assert asyncio.run(run(url)).request_id == "r-1" and len(script.seen) == 3


def test_no_answer_at_all_is_a_connection_error_after_the_tries() -> None:
    with (
        AegisClient(f"http://127.0.0.1:{spare_port()}", retry=FAST, timeout=1.0) as client,
        pytest.raises(APIConnectionError, match="unreachable after 3 attempt") as failed,
    ):
        client.health()
    assert failed.value.attempts == 3


def test_the_real_services_rate_limit_is_honoured() -> None:
    limits = {"default": {"moderate": [{"rate": 1, "per": "second", "burst": 1}]}}
    with uvicorn_server(create_app(make_service(rate_limits=limits))) as url:
        with AegisClient(url, api_key=ACME_KEY, retry=RetryPolicy(attempts=1)) as once:
            once.moderate(ModerationRequest(messages=[Message(role="user", content="one")]))
            with pytest.raises(APIError) as limited:
                once.moderate(ModerationRequest(messages=[Message(role="user", content="two")]))
            assert (limited.value.status, limited.value.type) == (429, "rate_limited")
            assert limited.value.retry_after is not None and limited.value.retry_after > 0
        with AegisClient(url, api_key=ACME_KEY, retry=RetryPolicy(attempts=3, backoff_s=0.01)) as patient:
            decision = patient.moderate(ModerationRequest(messages=[Message(role="user", content="three")]))
    assert decision.tenant == "acme"


def test_the_backoff_doubles_with_jitter_and_is_capped() -> None:
    policy = RetryPolicy(attempts=5, backoff_s=0.2, max_backoff_s=0.5)
    for attempt, ceiling in ((1, 0.2), (2, 0.4), (3, 0.5), (4, 0.5)):
        waits = [policy.delay(attempt) for _ in range(50)]
        assert all(w is not None and ceiling / 2 <= w <= ceiling for w in waits)
    assert policy.delay(5) is None
    assert policy.delay(1, retry_after=0.45) == 0.45  # at least what the server asked for
    assert parse_retry_after("-3") == 0.0 and parse_retry_after("nan") is None
    with pytest.raises(ValueError):
        RetryPolicy(attempts=0)

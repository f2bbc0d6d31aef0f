"""Schemas reject bad input with errors that name the field."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from aegis_online.schemas import ExpertOutput, FeedbackEvent, ModerationRequest

USER = {"role": "user", "content": "hello"}


def _fields(error: ValidationError) -> list[str]:
    return [".".join(str(p) for p in e["loc"]) for e in error.errors()]


def test_a_prompt_check_needs_a_user_turn() -> None:
    with pytest.raises(ValidationError, match="messages"):
        ModerationRequest(messages=[{"role": "assistant", "content": "hi"}])


def test_a_response_check_needs_the_assistant_to_speak_last() -> None:
    with pytest.raises(ValidationError, match="messages"):
        ModerationRequest(messages=[USER], check="response")
    ok = ModerationRequest(messages=[USER, {"role": "assistant", "content": "hi"}], check="response")
    assert ok.check == "response"


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ({"strictness": 3}, "strictness"),
        ({"tenant": "a b"}, "tenant"),
        ({"check": "both"}, "check"),
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "robot", "content": "x"}]}, "messages.0.role"),
        ({"messages": [{"role": "user", "content": "x" * 40_000}]}, "messages.0.content"),
        ({"colour": "red"}, "colour"),
    ],
)
def test_bad_requests_name_the_field(extra: dict, field: str) -> None:
    with pytest.raises(ValidationError) as caught:
        ModerationRequest.model_validate({"messages": [USER], **extra})
    assert any(f.startswith(field) for f in _fields(caught.value)), caught.value


def test_expert_probabilities_must_lie_in_the_unit_interval() -> None:
    with pytest.raises(ValidationError) as caught:
        ExpertOutput(expert="x", scores={"S1": 1.2})
    assert _fields(caught.value) == ["scores.S1"]


def test_feedback_needs_exactly_one_kind_of_label() -> None:
    with pytest.raises(ValidationError, match="labels"):
        FeedbackEvent(request_id="r1")
    with pytest.raises(ValidationError, match="labels"):
        FeedbackEvent(request_id="r1", label="safe", labels={"S1": 0})
    with pytest.raises(ValidationError) as caught:
        FeedbackEvent(request_id="r1", labels={"S1": 2})
    assert _fields(caught.value) == ["labels.S1"]


def test_feedback_idempotency_key_ignores_send_time_but_not_content() -> None:
    a = FeedbackEvent(request_id="r1", label="unsafe")
    b = FeedbackEvent(request_id="r1", label="unsafe")
    c = FeedbackEvent(request_id="r1", label="safe")
    assert a.idempotency_key == b.idempotency_key != c.idempotency_key
    assert FeedbackEvent(request_id="r1", label="safe", event_id="e-9").idempotency_key == "e-9"

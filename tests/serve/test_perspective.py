"""``POST /v1alpha1/comments:analyze`` over real HTTP (uvicorn on a loopback port): requests shaped like
Perspective API's public documentation, its error shape, its key in the URL, and what its shape cannot say (no
score made up for an attribute that could not be checked)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from aegis_online.experts import Expert

from .helpers import ACME_KEY, GLOBEX_KEY, KeywordExpert, bearer, uvicorn_server

PATH = "/v1alpha1/comments:analyze"


def english_experts() -> list[Expert]:
    """Harassment, profanity and threats in English; sexual content in any language."""
    experts: list[Expert] = [
        KeywordExpert("words-a", {"S10": ("idiot",), "S12": ("damn",), "S11": ("kill",)}),
        KeywordExpert("words-b", {"S10": ("idiot", "moron"), "S12": ("damn",)}),
        KeywordExpert("any-language", {"S2": ("nude",)}),
    ]
    experts[0].languages = experts[1].languages = frozenset({"en"})
    return experts


@pytest.fixture
def served(service_factory: Callable[..., TestClient]) -> Iterator[tuple[str, TestClient]]:
    client = service_factory(english_experts())
    with uvicorn_server(client.app) as url:
        yield url, client


def analyze(url: str, body: dict[str, Any], key: str | None = ACME_KEY, query_key: bool = True) -> httpx.Response:
    params = {"key": key} if key and query_key else None
    headers = bearer(key) if key and not query_key else None
    return httpx.post(f"{url}{PATH}", json=body, params=params, headers=headers, timeout=10)


def documented_request(text: str, *attributes: str, **extra: Any) -> dict[str, Any]:
    """The request of Perspective's documentation: comment text, languages, attributes with {} parameters."""
    return {"comment": {"text": text}, "languages": ["en"], "requestedAttributes": {a: {} for a in attributes}} | extra


def error_type(response: httpx.Response) -> str:
    return response.json()["error"]["details"][0]["errorType"]


def test_a_documented_request_gets_perspectives_response_shape(served: tuple[str, TestClient]) -> None:
    url, _ = served
    response = analyze(url, documented_request("What kind of idiot name is foo?", "TOXICITY", "INSULT", "PROFANITY"))
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body["attributeScores"]) == {"TOXICITY", "INSULT", "PROFANITY"}
    assert body["attributeScores"]["INSULT"]["summaryScore"] == {"value": pytest.approx(0.9), "type": "PROBABILITY"}
    # TOXICITY is the highest of its categories (harassment here); profanity stays low
    assert body["attributeScores"]["TOXICITY"]["summaryScore"]["value"] == pytest.approx(0.9)
    assert body["attributeScores"]["PROFANITY"]["summaryScore"]["value"] == pytest.approx(0.05)
    assert "spanScores" not in body["attributeScores"]["INSULT"]
    # the request's languages; too short for the identifier to claim one ("und", which every expert reads)
    assert body["languages"] == ["en"] and body["detectedLanguages"] == []
    assert body["aegis"]["degraded"] is False and response.headers["X-Aegis-Degraded"] == "false"
    assert response.headers["X-Aegis-Request-Ids"] == body["aegis"]["request_id"]
    # a pinned version, the header key and a client token
    pinned = analyze(url, documented_request("you idiot", "INSULT@1", clientToken="t-42"), query_key=False)
    assert pinned.status_code == 200 and pinned.json()["clientToken"] == "t-42"
    assert set(pinned.json()["attributeScores"]) == {"INSULT"}


def test_thresholds_spans_and_utf16_offsets(served: tuple[str, TestClient]) -> None:
    url, _ = served
    text = "😀 Have a nice day. You idiot!"
    body = documented_request(text, "INSULT", "PROFANITY", spanAnnotations=True)
    body["requestedAttributes"]["PROFANITY"] = {"scoreThreshold": 0.5}  # 0.05: left out
    answer = analyze(url, body).json()
    assert set(answer["attributeScores"]) == {"INSULT"}
    spans = answer["attributeScores"]["INSULT"]["spanScores"]
    # the emoji counts two UTF-16 code units, as in JavaScript: the first sentence ends at 19, the second starts at 20
    assert [(s["begin"], s["end"]) for s in spans] == [(0, 19), (20, 30)]
    assert [s["score"]["value"] for s in spans] == [pytest.approx(0.05), pytest.approx(0.9)]
    assert text.encode("utf-16-le")[40:60].decode("utf-16-le") == "You idiot!"


def test_do_not_store_keeps_nothing_feedback_could_join(served: tuple[str, TestClient]) -> None:
    url, client = served
    log = client.app.state.service.engine.prediction_log
    stored: list[str] = []
    original = log.put
    log.put = lambda record: (stored.append(record.request_id), original(record))[1]  # type: ignore[method-assign]
    kept = analyze(url, documented_request("you idiot", "INSULT"))
    private = analyze(url, documented_request("you idiot", "INSULT", doNotStore=True, spanAnnotations=True))
    assert private.status_code == 200 and "request_id" not in private.json()["aegis"]
    assert "X-Aegis-Request-Ids" not in private.headers
    assert stored == [kept.json()["aegis"]["request_id"]]  # the stored call only; no span is ever logged
    feedback = httpx.post(
        f"{url}/v1/feedback",
        json={"request_id": stored[0], "labels": {"S10": 1}},
        headers=bearer(ACME_KEY),
        timeout=10,
    )
    assert feedback.status_code == 202, feedback.text
    # another tenant's key cannot label it
    other = httpx.post(
        f"{url}/v1/feedback", json={"request_id": stored[0], "label": "safe"}, headers=bearer(GLOBEX_KEY), timeout=10
    )
    assert other.status_code == 404


@pytest.mark.parametrize(
    ("body", "wanted", "message"),
    [
        (documented_request("hi", "FLIRTATION"), "INVALID_REQUEST", "Unknown requested attribute: FLIRTATION"),
        (documented_request("hi"), "NO_REQUESTED_ATTRIBUTES", "No requested attributes"),
        (documented_request("   ", "TOXICITY"), "COMMENT_EMPTY", "Comment must be non-empty"),
        (documented_request("hi", "TOXICITY", colour="red"), "INVALID_REQUEST", "colour"),
        (documented_request("hi", "TOXICITY", languages=["not a code"]), "INVALID_REQUEST", "languages.0"),
        (
            {"comment": {"text": "hi", "type": "HTML"}, "requestedAttributes": {"TOXICITY": {}}},
            "INVALID_REQUEST",
            "comment.type",
        ),
        (
            documented_request("hi", "TOXICITY", languages=["it"]),
            "LANGUAGE_NOT_SUPPORTED_BY_ATTRIBUTE",
            "Attribute TOXICITY does not support request languages: it",
        ),
    ],
)
def test_bad_requests_get_perspectives_error_shape(
    served: tuple[str, TestClient], body: dict[str, Any], wanted: str, message: str
) -> None:
    url, _ = served
    response = analyze(url, body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == 400 and error["status"] == "INVALID_ARGUMENT" and message in error["message"]
    assert error["details"][0]["@type"].endswith("commentanalyzer.v1alpha1.Error") and error_type(response) == wanted


def test_a_too_long_comment_and_a_missing_key(service_factory: Callable[..., TestClient]) -> None:
    client = service_factory(english_experts(), limits={"deadline_ms": 500, "max_input_chars": 50})
    with uvicorn_server(client.app) as url:
        long = analyze(url, documented_request("x" * 51, "TOXICITY"))
        assert long.status_code == 400 and error_type(long) == "COMMENT_TOO_LONG"
        missing = analyze(url, documented_request("hi", "TOXICITY"), key=None)
        assert missing.status_code == 401 and missing.json()["error"]["status"] == "UNAUTHENTICATED"
        wrong = analyze(url, documented_request("hi", "TOXICITY"), key="not-a-key")
        assert wrong.status_code == 401 and wrong.json()["error"]["message"] == "invalid API key"
        # the key in the URL is for this route only
        assert httpx.get(f"{url}/v1/tenants/acme/weights", params={"key": ACME_KEY}, timeout=10).status_code == 401


def test_languages_its_experts_do_not_read_fail_or_are_dropped(served: tuple[str, TestClient]) -> None:
    url, _ = served
    russian = {"comment": {"text": "Ты просто жалкий идиот"}, "requestedAttributes": {"INSULT": {}}}
    refused = analyze(url, russian)
    assert refused.status_code == 400 and error_type(refused) == "LANGUAGE_NOT_SUPPORTED_BY_ATTRIBUTE"
    detail = refused.json()["error"]["details"][0]["languageNotSupportedByAttributeError"]
    assert detail == {"detectedLanguages": ["ru"], "attribute": "INSULT"}
    both = russian | {"requestedAttributes": {"INSULT": {}, "SEXUALLY_EXPLICIT": {}}, "dropUnsupportedAttributes": True}
    dropped = analyze(url, both)
    assert dropped.status_code == 200, dropped.text
    assert set(dropped.json()["attributeScores"]) == {"SEXUALLY_EXPLICIT"}  # read by an expert of any language
    assert dropped.json()["detectedLanguages"] == ["ru"]


def test_an_attribute_that_could_not_be_checked_is_never_a_score(service_factory: Callable[..., TestClient]) -> None:
    """Its only expert failed: 503 with Retry-After. Partly checked (threats failed, insults scored): the score of
    what was checked, and ``aegis.degraded`` says the rest was not."""
    experts = [
        KeywordExpert("insults", {"S10": ("idiot",)}),
        KeywordExpert("threats", {"S11": ("kill",)}, fail=True),
    ]
    client = service_factory(experts)
    with uvicorn_server(client.app) as url:
        failed = analyze(url, documented_request("I will kill you", "THREAT"))
        assert failed.status_code == 503 and failed.headers["Retry-After"] == "1"
        assert failed.json()["error"]["status"] == "UNAVAILABLE" and "THREAT" in failed.json()["error"]["message"]
        partial = analyze(url, documented_request("you idiot", "TOXICITY"))
        assert partial.status_code == 200, partial.text
        body = partial.json()
        assert body["attributeScores"]["TOXICITY"]["summaryScore"]["value"] == pytest.approx(0.9)
        assert body["aegis"]["degraded"] is True and partial.headers["X-Aegis-Degraded"] == "true"
        assert "S11" in body["aegis"]["unscored_categories"]
        assert {"expert": "threats", "kind": "error"} in body["aegis"]["missing_experts"]

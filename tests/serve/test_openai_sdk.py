"""The official ``openai`` SDK, pointed at the service by ``base_url``, works unchanged on ``/v1/moderations``."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import httpx
import openai
import pytest
from openai.types import ModerationCreateResponse

from aegis_online.serve.app import create_app

from .helpers import ACME_KEY, GLOBEX_KEY, bearer, make_service, uvicorn_server


@pytest.fixture(scope="module")
def base_url() -> Iterator[str]:
    with uvicorn_server(create_app(make_service())) as url:
        yield url


def sdk(base_url: str, key: str = ACME_KEY) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{base_url}/v1", api_key=key, max_retries=0, timeout=10)


def test_a_string_input_gets_one_typed_result(base_url: str) -> None:
    response = sdk(base_url).moderations.create(input="I am going to kill you", model="omni-moderation-latest")
    assert isinstance(response, ModerationCreateResponse)
    assert response.id.startswith("modr-") and response.model == "aegis-online"
    (result,) = response.results
    assert result.flagged is True
    assert result.categories.violence is True and result.categories.sexual is False
    assert result.categories.harassment_threatening is False and result.categories.self_harm_intent is False
    assert result.category_scores.violence == pytest.approx(0.9)
    assert 0.0 <= result.category_scores.hate_threatening <= 1.0
    assert result.category_applied_input_types.violence == ["text"]
    assert result.model_dump(by_alias=True)["categories"]["violence/graphic"] is True


def test_a_list_input_gets_one_result_per_string_in_order(base_url: str) -> None:
    response = sdk(base_url).moderations.create(input=["have a nice day", "shoot them", "damn"])
    assert [r.flagged for r in response.results] == [False, True, False]  # profanity is no OpenAI category


def test_multimodal_text_parts_are_one_input(base_url: str) -> None:
    parts = [{"type": "text", "text": "we should"}, {"type": "text", "text": "stab him"}]
    response = sdk(base_url).moderations.create(input=parts, model="omni-moderation-latest")
    assert len(response.results) == 1 and response.results[0].flagged


def test_the_request_ids_for_feedback_are_in_a_header(base_url: str) -> None:
    raw = sdk(base_url).moderations.with_raw_response.create(input=["kill", "hello"])
    ids = raw.headers["x-aegis-request-ids"].split(",")
    assert len(ids) == 2 and raw.parse().id == f"modr-{ids[0]}"

    response = httpx.post(
        f"{base_url}/v1/feedback", json={"request_id": ids[0], "label": "unsafe"}, headers=bearer(ACME_KEY)
    )
    assert response.status_code == 202
    other = httpx.post(
        f"{base_url}/v1/feedback", json={"request_id": ids[1], "label": "safe"}, headers=bearer(GLOBEX_KEY)
    )
    assert other.status_code == 404  # another tenant's request


def test_errors_surface_as_the_sdks_usual_exceptions(base_url: str) -> None:
    with pytest.raises(openai.AuthenticationError):
        sdk(base_url, key="wrong-key-000000000000000").moderations.create(input="hi")
    with pytest.raises(openai.BadRequestError) as raised:
        sdk(base_url).moderations.create(input=[])
    assert raised.value.body["param"] == "input"
    image = [{"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}]
    with pytest.raises(openai.BadRequestError, match="image inputs are not supported"):
        sdk(base_url).moderations.create(input=image)


def test_the_async_client_works_too(base_url: str) -> None:
    async def run() -> list[bool]:
        client = openai.AsyncOpenAI(base_url=f"{base_url}/v1", api_key=ACME_KEY, max_retries=0)
        try:
            responses = await asyncio.gather(*(client.moderations.create(input=t) for t in ("kill", "hello")))
        finally:
            await client.close()
        return [r.results[0].flagged for r in responses]

    assert asyncio.run(run()) == [True, False]

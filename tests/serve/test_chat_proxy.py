"""The guarded chat proxy (``POST /v1/chat/completions``) over real HTTP: the service under uvicorn, a scripted
OpenAI-compatible LLM (``demos.scripted_llm``) under uvicorn as its upstream, and the official ``openai`` SDK as the
client, streaming and not."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import httpx
import openai
import pytest
from fastapi.testclient import TestClient

from aegis_online.demos.scripted_llm import BENIGN, HARMFUL, HARMFUL_SPAN, ScriptedLLM

from .helpers import ACME_KEY, GLOBEX_KEY, KeywordExpert, bearer, uvicorn_server

UPSTREAM_KEY = "upstream-secret-key-0000000001"
#: The experts: threats and violence ("kill") block under the default policy; instant.
EXPERTS = [KeywordExpert("threats", {"S1": ("kill",), "S11": ("kill",)})]


@pytest.fixture
def upstream() -> Iterator[tuple[str, ScriptedLLM]]:
    llm = ScriptedLLM(api_key=UPSTREAM_KEY, slow_s=3.0)
    with uvicorn_server(llm.app()) as url:
        yield f"{url}/v1", llm


@pytest.fixture
def proxy(
    service_factory: Callable[..., TestClient], upstream: tuple[str, ScriptedLLM], monkeypatch: pytest.MonkeyPatch
) -> Callable[..., str]:
    """Starts the service with a ``chat`` section over the scripted upstream; returns its base URL."""
    monkeypatch.setenv("TEST_UPSTREAM_KEY", UPSTREAM_KEY)
    stack: list[Any] = []

    def start(experts: list[Any] | None = None, sections: dict[str, Any] | None = None, **chat: Any) -> str:
        section = {"upstream": {"base_url": upstream[0], "api_key_env": "TEST_UPSTREAM_KEY", "read_timeout_s": 1.5}}
        section["window_chars"] = 60
        section["overlap_chars"] = 20
        section |= chat
        client = service_factory(
            experts or list(EXPERTS), chat=section, limits={"deadline_ms": 2000}, **(sections or {})
        )
        server = uvicorn_server(client.app)
        url = server.__enter__()
        stack.append(server)
        return url

    yield start  # type: ignore[misc]
    for server in stack:
        server.__exit__(None, None, None)


def sdk(url: str, key: str = ACME_KEY) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=20)


def ask(model: str, text: str = "Tell me something nice", **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": text}], **extra}


def raw_stream(url: str, body: dict[str, Any], key: str | None = ACME_KEY) -> httpx.Response:
    headers = bearer(key) if key else {}
    return httpx.post(
        f"{url}/chat/completions" if url.endswith("/v1") else f"{url}/v1/chat/completions",
        json=body | {"stream": True},
        headers=headers,
        timeout=20,
    )


def streamed_text(stream: Any) -> tuple[str, list[str | None]]:
    text, finishes = "", []
    for chunk in stream:
        for choice in chunk.choices:
            text += choice.delta.content or ""
            finishes.append(choice.finish_reason)
    return text, [f for f in finishes if f]


def test_a_benign_answer_passes_whole_and_streamed_through_the_openai_sdk(
    proxy: Callable[..., str], upstream: tuple[str, ScriptedLLM]
) -> None:
    url = proxy()
    raw = sdk(url).chat.completions.with_raw_response.create(**ask("benign"))
    completion = raw.parse()
    assert completion.choices[0].message.content == BENIGN and completion.choices[0].finish_reason == "stop"
    ids = raw.headers["x-aegis-request-ids"].split(",")
    assert len(ids) == 2 and raw.headers["x-aegis-degraded"] == "false"  # the prompt's and the answer's
    # the upstream got its own key, never the client's
    seen = upstream[1].requests[-1]["headers"]
    assert seen["authorization"] == f"Bearer {UPSTREAM_KEY}" and ACME_KEY not in str(seen)
    # both checks were logged: feedback labels the prompt and the answer
    for request_id in ids:
        response = httpx.post(
            f"{url}/v1/feedback", json={"request_id": request_id, "label": "safe"}, headers=bearer(ACME_KEY)
        )
        assert response.status_code == 202, response.text
    for mode in ("check_first", "stream_first"):
        mode_url = proxy(mode=mode)
        text, finishes = streamed_text(sdk(mode_url).chat.completions.create(**ask("benign"), stream=True))
        assert text == BENIGN and finishes == ["stop"], mode


@pytest.mark.parametrize("mode", ["check_first", "stream_first"])
def test_a_benign_stream_reaches_the_client_byte_for_byte(
    proxy: Callable[..., str], upstream: tuple[str, ScriptedLLM], mode: str
) -> None:
    url = proxy(mode=mode)
    direct = httpx.post(
        f"{upstream[0]}/chat/completions",
        json=ask("benign", stream=True),
        headers=bearer(UPSTREAM_KEY),
        timeout=20,
    )
    through = raw_stream(url, ask("benign"))
    assert through.status_code == 200 and through.headers["content-type"].startswith("text/event-stream")
    assert through.content == direct.content


@pytest.mark.parametrize("mode", ["check_first", "stream_first"])
def test_a_stream_that_turns_harmful_is_cut_with_content_filter(
    proxy: Callable[..., str], upstream: tuple[str, ScriptedLLM], mode: str
) -> None:
    upstream[1].tokens_per_s = 300  # an LLM's pace: stream_first's checks run between its tokens
    url = proxy(mode=mode)
    text, finishes = streamed_text(sdk(url).chat.completions.create(**ask("harmful"), stream=True))
    assert finishes == ["content_filter"]
    assert HARMFUL.startswith(text) and len(text) < len(HARMFUL)
    harm_at = HARMFUL.index(HARMFUL_SPAN)
    if mode == "check_first":
        assert "kill" not in text  # a window reaches the client only once checked
        assert len(text) <= harm_at + len(HARMFUL_SPAN)
    else:  # tokens flow first; the cut comes within a window (60 characters here) of the harmful span
        assert len(text) <= harm_at + len(HARMFUL_SPAN) + 60 + 20


def test_stream_first_stays_within_a_window_or_two_of_its_checks_when_they_are_slower_than_the_tokens(
    proxy: Callable[..., str],
) -> None:
    # Checks of 0.3 s, tokens as fast as the upstream sends them: unbounded, the whole answer would be out before the
    # first check came back.
    slow = [KeywordExpert("threats", {"S1": ("kill",), "S11": ("kill",)}, delay_s=0.3)]
    url = proxy(experts=slow, mode="stream_first", window_chars=20, overlap_chars=0)
    text, finishes = streamed_text(sdk(url).chat.completions.create(**ask("harmful"), stream=True))
    assert finishes == ["content_filter"] and HARMFUL.startswith(text)
    kill_end = HARMFUL.index("kill") + len("kill")
    # the window with "kill" ends within 20 characters of it (at a space); the stream goes on for at most one more
    # window while it is checked, and the event that completes the next one waits
    assert len(text) <= kill_end + 2 * 20, (len(text), kill_end)


def test_a_whole_answer_that_is_harmful_is_replaced_by_the_refusal(proxy: Callable[..., str]) -> None:
    url = proxy(refusal="Sorry, I cannot share that.")
    completion = sdk(url).chat.completions.create(**ask("harmful"))
    choice = completion.choices[0]
    assert choice.message.content == "Sorry, I cannot share that." and choice.finish_reason == "content_filter"
    assert completion.model_extra["aegis"]["blocked"] == "answer"


def test_a_blocked_prompt_is_refused_without_calling_the_upstream(
    proxy: Callable[..., str], upstream: tuple[str, ScriptedLLM]
) -> None:
    url = proxy()
    before = len(upstream[1].requests)
    completion = sdk(url).chat.completions.create(**ask("benign", "How do I kill my neighbour?"))
    assert completion.choices[0].finish_reason == "content_filter"
    assert completion.choices[0].message.content == "I can't help with that."
    text, finishes = streamed_text(
        sdk(url).chat.completions.create(**ask("benign", "How do I kill my neighbour?"), stream=True)
    )
    assert text == "I can't help with that." and finishes == ["content_filter"]
    assert len(upstream[1].requests) == before
    strict = proxy(prompt_block="error")
    with pytest.raises(openai.BadRequestError) as refused:
        sdk(strict).chat.completions.create(**ask("benign", "How do I kill my neighbour?"))
    assert refused.value.code == "content_filter"


def test_upstream_errors_keep_their_status_and_time_outs_are_bounded(proxy: Callable[..., str]) -> None:
    url = proxy()
    with pytest.raises(openai.InternalServerError) as broken:
        sdk(url).chat.completions.create(**ask("broken"))
    assert broken.value.status_code == 500 and "server had an error" in str(broken.value)
    slow = httpx.post(f"{url}/v1/chat/completions", json=ask("slow"), headers=bearer(ACME_KEY), timeout=20)
    assert slow.status_code == 504 and slow.json()["error"]["code"] == "upstream_timeout"
    # a stream that stalls midway ends with an error event, never a silent [DONE]
    stalled = raw_stream(url, ask("stall"))
    assert stalled.status_code == 200
    assert '"upstream_timeout"' in stalled.text or '"upstream_error"' in stalled.text
    assert "[DONE]" not in stalled.text


def test_a_wrong_upstream_key_is_the_upstreams_401_and_no_key_is_ours(
    proxy: Callable[..., str], monkeypatch: pytest.MonkeyPatch
) -> None:
    url = proxy()
    monkeypatch.setenv("TEST_UPSTREAM_KEY", "a-wrong-key-for-the-upstream-0001")  # read at each call
    with pytest.raises(openai.AuthenticationError) as upstream_401:
        sdk(url).chat.completions.create(**ask("benign"))
    assert "Incorrect API key" in str(upstream_401.value)
    with pytest.raises(openai.AuthenticationError) as ours:
        sdk(url, key="not-a-valid-aegis-key-000000001").chat.completions.create(**ask("benign"))
    assert "invalid API key" in str(ours.value)


def test_tenants_get_their_own_options_and_an_unconfigured_proxy_is_404(
    proxy: Callable[..., str], service_factory: Callable[..., TestClient]
) -> None:
    url = proxy(tenants={"globex": {"refusal": "Globex cannot help with that."}})
    acme = sdk(url).chat.completions.create(**ask("harmful"))
    globex = sdk(url, GLOBEX_KEY).chat.completions.create(**ask("harmful"))
    assert acme.choices[0].message.content == "I can't help with that."
    assert globex.choices[0].message.content == "Globex cannot help with that."
    bare = service_factory(list(EXPERTS))
    response = bare.post("/v1/chat/completions", json=ask("benign"), headers=bearer(ACME_KEY))
    assert response.status_code == 404 and response.json()["error"]["code"] == "chat_not_configured"
    bad = bare.post("/v1/chat/completions", json={"model": "x", "messages": "hi"}, headers=bearer(ACME_KEY))
    assert bad.status_code in (400, 404)


@pytest.mark.parametrize("mode", ["check_first", "stream_first"])
def test_what_could_not_be_checked_is_said_never_passed_as_checked(proxy: Callable[..., str], mode: str) -> None:
    """An expert that fails leaves its category unscored: the tenant's on_unscored rule (flag, by default) decides,
    the headers say degraded, and the stream carries an SSE comment saying so (SSE clients skip it)."""
    broken = KeywordExpert("profanity", {"S12": ("damn",)}, fail=True)
    url = proxy(experts=[*EXPERTS, broken], mode=mode)
    response = raw_stream(url, ask("benign"))
    assert response.status_code == 200 and response.headers["x-aegis-degraded"] == "true"
    assert ': aegis {"degraded": true' in response.text and response.text.endswith("data: [DONE]\n\n")
    text, finishes = streamed_text(sdk(url).chat.completions.create(**ask("benign"), stream=True))
    assert text == BENIGN and finishes == ["stop"]  # flag is not block: the answer passes, said degraded
    strict = proxy(experts=[*EXPERTS, broken], mode=mode, cut_on="flag")
    refused = sdk(strict).chat.completions.create(**ask("benign"))
    assert refused.choices[0].finish_reason == "content_filter"  # a tenant that stops on flag stops here


def test_rate_limits_apply_to_the_proxy_per_tenant(proxy: Callable[..., str], upstream: tuple[str, Any]) -> None:
    url = proxy(sections={"rate_limits": {"tenants": {"acme": {"moderate": [{"rate": 1, "per": "minute"}]}}}})
    assert sdk(url).chat.completions.create(**ask("benign")).choices[0].finish_reason == "stop"
    calls = len(upstream[1].requests)
    with pytest.raises(openai.RateLimitError) as limited:
        sdk(url).chat.completions.create(**ask("benign"))
    assert limited.value.response.headers.get("Retry-After")
    assert len(upstream[1].requests) == calls  # refused before the upstream is called
    assert sdk(url, GLOBEX_KEY).chat.completions.create(**ask("benign")).choices[0].finish_reason == "stop"

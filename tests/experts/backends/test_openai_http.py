"""HTTP experts against a real HTTP server (uvicorn in a thread) speaking the OpenAI wire formats.

The server answers chat completions, completions and moderations with fixed logprobs and scores, and can be told to
fail, stall or count concurrent requests, so retries, timeouts and pooling are exercised over real sockets.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

pytest.importorskip("httpx")
fastapi = pytest.importorskip("fastapi")
uvicorn = pytest.importorskip("uvicorn")

from fastapi import Request  # noqa: E402
from fastapi.responses import JSONResponse  # noqa: E402

from aegis_online.experts.backends.guard_expert import GuardExpert  # noqa: E402
from aegis_online.experts.backends.http_client import GuardHTTPError  # noqa: E402
from aegis_online.experts.backends.openai_http import OpenAIChatGuardBackend, OpenAIModerationsExpert  # noqa: E402
from aegis_online.experts.guards.base import GuardQuery  # noqa: E402
from aegis_online.taxonomy import OPENAI_OMNI_MAP  # noqa: E402

from .backend_helpers import ALL_CATEGORIES, OneWordFamily, item  # noqa: E402

# Llama Guard 3 style: a blank line, then the verdict, then the category.
CHAT_LOGPROBS = [
    {"token": "\n\n", "logprob": -0.01, "top_logprobs": [{"token": "\n\n", "logprob": -0.01}]},
    {
        "token": "unsafe",
        "logprob": -0.25,
        "top_logprobs": [
            {"token": "unsafe", "logprob": -0.25},
            {"token": "safe", "logprob": -1.6},
            {"token": "Unsafe", "logprob": -4.0},
        ],
    },
    {"token": "\n", "logprob": -0.1, "top_logprobs": [{"token": "\n", "logprob": -0.1}]},
    {"token": "S1", "logprob": -0.3, "top_logprobs": [{"token": "S1", "logprob": -0.3}]},
]
P_CHAT = math.exp(-0.25) / (math.exp(-0.25) + math.exp(-1.6))
P_COMPLETION = math.exp(-0.4) / (math.exp(-0.4) + math.exp(-1.2))


@dataclass
class Script:
    """What the server does next: queued (status, body, delay) replies before the normal answers."""

    failures: list[tuple[int, dict, float]] = field(default_factory=list)
    requests: list[tuple[str, dict, dict]] = field(default_factory=list)
    delay_s: float = 0.0
    # Concurrency is counted per test: requests stalled by an earlier timeout test may still be sleeping.
    test: int = 0
    in_flight: dict[int, int] = field(default_factory=dict)
    max_in_flight: int = 0
    finish_reason: str = "stop"


def build_app(script: Script) -> fastapi.FastAPI:
    app = fastapi.FastAPI()

    async def handle(path: str, request: Request, success) -> JSONResponse:
        body = await request.json()
        script.requests.append((path, body, dict(request.headers)))
        test = script.test
        script.in_flight[test] = script.in_flight.get(test, 0) + 1
        if test == script.test:
            script.max_in_flight = max(script.max_in_flight, script.in_flight[test])
        try:
            status, payload, delay = script.failures.pop(0) if script.failures else (200, None, script.delay_s)
            await asyncio.sleep(delay)
            headers = {"Retry-After": "0"} if status == 429 else None
            return JSONResponse(payload if status != 200 else success(body), status_code=status, headers=headers)
        finally:
            script.in_flight[test] -= 1

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> JSONResponse:
        def success(body: dict) -> dict:
            message = {"role": "assistant", "content": "\n\nunsafe\nS1"}
            choice = {"index": 0, "message": message, "logprobs": {"content": CHAT_LOGPROBS}}
            choice["finish_reason"] = script.finish_reason
            return {"object": "chat.completion", "choices": [choice]}

        return await handle("chat/completions", request, success)

    @app.post("/v1/completions")
    async def completions(request: Request) -> JSONResponse:
        def success(body: dict) -> dict:
            logprobs = {
                "tokens": ["Yes"],
                "token_logprobs": [-0.4],
                "top_logprobs": [{"Yes": -0.4, "No": -1.2, " Yes": -3.0}],
                "text_offset": [0],
            }
            choice = {"index": 0, "text": "Yes", "logprobs": logprobs, "finish_reason": script.finish_reason}
            return {"object": "text_completion", "choices": [choice]}

        return await handle("completions", request, success)

    @app.post("/v1/moderations")
    async def moderations(request: Request) -> JSONResponse:
        def success(body: dict) -> dict:
            results = []
            for text in body["input"]:
                scores = dict.fromkeys(OPENAI_OMNI_MAP, 0.01)
                if "hurt myself" in text:
                    scores["self-harm"] = 0.93
                    scores["self-harm/intent"] = 0.88
                results.append({"flagged": max(scores.values()) > 0.5, "categories": {}, "category_scores": scores})
            return {"id": "modr-1", "model": body["model"], "results": results}

        return await handle("moderations", request, success)

    return app


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[str, Script]]:
    """A live server on 127.0.0.1 at a free port; yields its base URL and its script."""
    script = Script()
    config = uvicorn.Config(build_app(script), host="127.0.0.1", port=0, log_level="warning", lifespan="off")
    config.timeout_graceful_shutdown = 2
    live = uvicorn.Server(config)
    thread = threading.Thread(target=live.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not live.started:
        assert time.monotonic() < deadline, "test server did not start"
        time.sleep(0.01)
    port = live.servers[0].sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}/v1", script
    live.should_exit = True
    thread.join(timeout=5)


@pytest.fixture
def script(server: tuple[str, Script]) -> Script:
    script = server[1]
    script.failures.clear()
    script.requests.clear()
    script.delay_s = 0.0
    script.finish_reason = "stop"
    script.test += 1
    script.max_in_flight = 0
    return script


@pytest.fixture
def base_url(server: tuple[str, Script], script: Script) -> str:
    return server[0]


HI = ({"role": "user", "content": "hi"},)
CHAT = GuardQuery(key="c", positive="unsafe", negative="safe", messages=HI, max_new_tokens=4)
RAW = GuardQuery(key="r", positive="Yes", negative="No", prompt="Does this violate the policy?", max_new_tokens=1)


def answer(base_url: str, queries, **options):
    async def run():
        backend = OpenAIChatGuardBackend(base_url, "guard", backoff_s=0.01, **options)
        try:
            return await backend.answer(queries)
        finally:
            await backend.aclose()

    return asyncio.run(run())


def test_chat_query_reads_the_verdict_after_the_blank_line(base_url: str, script: Script) -> None:
    (result,) = answer(base_url, [CHAT])
    assert result.text == "\n\nunsafe\nS1"
    assert result.p_positive == pytest.approx(P_CHAT)


def test_raw_prompt_goes_to_completions_and_reads_the_first_token(base_url: str, script: Script) -> None:
    (result,) = answer(base_url, [RAW])
    assert result.text == "Yes" and result.p_positive == pytest.approx(P_COMPLETION)
    assert [path for path, _, _ in script.requests] == ["completions"]


def test_requests_ask_for_greedy_decoding_with_top_logprobs_and_carry_the_key(base_url: str, script: Script) -> None:
    answer(base_url, [CHAT, RAW], api_key="sk-test")
    by_path = {path: (body, headers) for path, body, headers in script.requests}
    chat_body, chat_headers = by_path["chat/completions"]
    assert chat_body == {
        "model": "guard",
        "messages": [{"role": "user", "content": "hi"}],
        "temperature": 0,
        "max_tokens": 4,
        "logprobs": True,
        "top_logprobs": 20,
    }
    completion_body, _ = by_path["completions"]
    assert completion_body["prompt"] == RAW.prompt and completion_body["logprobs"] == 20
    assert completion_body["temperature"] == 0 and completion_body["max_tokens"] == 1
    assert chat_headers["authorization"] == "Bearer sk-test"


@pytest.mark.parametrize(("finish_reason", "truncated"), [("length", True), ("stop", False)])
def test_finish_reason_length_marks_chat_and_completion_answers_truncated(
    base_url: str, script: Script, finish_reason: str, truncated: bool
) -> None:
    """``choices[0].finish_reason``: ``"length"`` when the server stopped at ``max_tokens``, not at a stop token."""
    script.finish_reason = finish_reason
    chat_answer, completion_answer = answer(base_url, [CHAT, RAW])
    assert chat_answer.truncated is truncated and completion_answer.truncated is truncated


def test_two_503s_then_success_succeeds_on_the_third_attempt(base_url: str, script: Script) -> None:
    script.failures[:] = [(503, {"error": {"message": "overloaded"}}, 0.0)] * 2
    (result,) = answer(base_url, [CHAT], max_retries=2)
    assert result.p_positive == pytest.approx(P_CHAT)
    assert len(script.requests) == 3


def test_429_is_retried(base_url: str, script: Script) -> None:
    script.failures[:] = [(429, {"error": {"message": "slow down"}}, 0.0)]
    (result,) = answer(base_url, [RAW], max_retries=1)
    assert result.p_positive == pytest.approx(P_COMPLETION) and len(script.requests) == 2


def test_persistent_500_raises_after_max_retries_plus_one_attempts(base_url: str, script: Script) -> None:
    script.failures[:] = [(500, {"error": {"message": "engine crashed"}}, 0.0)] * 10
    with pytest.raises(GuardHTTPError, match="engine crashed") as caught:
        answer(base_url, [CHAT], max_retries=2)
    assert caught.value.status == 500 and caught.value.attempts == 3
    assert len(script.requests) == 3


def test_400_is_not_retried_and_reports_the_server_message(base_url: str, script: Script) -> None:
    script.failures[:] = [(400, {"error": {"message": "top_logprobs must be at most 5"}}, 0.0)] * 3
    with pytest.raises(GuardHTTPError, match="top_logprobs must be at most 5") as caught:
        answer(base_url, [CHAT], max_retries=2)
    assert caught.value.status == 400 and len(script.requests) == 1


def test_a_server_slower_than_the_timeout_is_an_error(base_url: str, script: Script) -> None:
    script.delay_s = 1.5
    started = time.perf_counter()
    with pytest.raises(GuardHTTPError, match="timed out") as caught:
        answer(base_url, [CHAT], timeout_s=0.2, max_retries=1)
    assert caught.value.status is None and caught.value.attempts == 2
    assert time.perf_counter() - started < 1.2


def test_a_timed_out_attempt_is_retried(base_url: str, script: Script) -> None:
    # The first attempt outlasts the timeout; the retry is answered at once. 1 s leaves a loaded CI machine room for
    # the retry itself (0.3 s once timed out the retry too).
    script.failures[:] = [(200, None, 3.0)]
    (result,) = answer(base_url, [CHAT], timeout_s=1.0, max_retries=1)
    assert result.p_positive == pytest.approx(P_CHAT)


def test_connection_refused_raises_after_the_retries() -> None:
    import socket

    with socket.socket() as probe:  # a port nobody listens on: bound, then released
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(GuardHTTPError, match="failed after 2 attempts") as caught:
        answer(f"http://127.0.0.1:{port}/v1", [CHAT], max_retries=1)
    assert caught.value.status is None


def test_concurrent_queries_share_a_bounded_pool(base_url: str, script: Script) -> None:
    script.delay_s = 0.05
    results = answer(base_url, [CHAT, RAW] * 5, max_connections=2)
    assert [r.p_positive for r in results] == pytest.approx([P_CHAT, P_COMPLETION] * 5)
    assert len(script.requests) == 10 and script.max_in_flight == 2


def test_guard_expert_over_http_scores_a_batch(base_url: str, script: Script) -> None:
    async def run():
        expert = GuardExpert(OneWordFamily(), OpenAIChatGuardBackend(base_url, "guard"), name="guard_http")
        try:
            return await expert.score([item("a"), item("b")])
        finally:
            await expert.aclose()

    outputs = asyncio.run(run())
    assert [o.scores for o in outputs] == [{"S1": pytest.approx(P_CHAT)}] * 2
    assert all(o.expert == "guard_http" and o.ok for o in outputs)


def test_shieldgemma_over_http_uses_completions_and_reads_yes(base_url: str, script: Script) -> None:
    shieldgemma = pytest.importorskip("aegis_online.experts.guards.shieldgemma")

    async def run():
        backend = OpenAIChatGuardBackend(base_url, "shieldgemma-2b")
        try:
            return await GuardExpert(shieldgemma.ShieldGemma(), backend).score([item("hello", ("S8", "S10"))])
        finally:
            await backend.aclose()

    (output,) = asyncio.run(run())
    assert output.ok, output.error
    assert output.scores == {"S8": pytest.approx(P_COMPLETION), "S10": pytest.approx(P_COMPLETION)}
    assert {path for path, _, _ in script.requests} == {"completions"}


def moderate(base_url: str, batch, **options):
    async def run():
        expert = OpenAIModerationsExpert(base_url, api_key="sk-mod", backoff_s=0.01, **options)
        try:
            return await expert.score(batch)
        finally:
            await expert.aclose()

    return asyncio.run(run())


def test_moderations_self_harm_score_lands_on_s6(base_url: str, script: Script) -> None:
    batch = [item("I want to hurt myself", ALL_CATEGORIES), item("what a nice day", ALL_CATEGORIES)]
    outputs = moderate(base_url, batch)
    assert outputs[0].scores["S6"] == pytest.approx(0.93)
    assert outputs[1].scores["S6"] == pytest.approx(0.01)
    assert len(script.requests) == 1
    path, body, headers = script.requests[0]
    assert path == "moderations" and body["input"] == ["I want to hurt myself", "what a nice day"]
    assert headers["authorization"] == "Bearer sk-mod"


def test_moderations_keep_only_the_asked_categories_it_covers(base_url: str, script: Script) -> None:
    (output,) = moderate(base_url, [item("I want to hurt myself", ("S6", "S9", "S10"))])
    assert output.scores == {"S6": pytest.approx(0.93), "S10": pytest.approx(0.01)}


def test_moderations_categories_are_the_canonical_ids_the_omni_map_reaches() -> None:
    pytest.importorskip("httpx")
    expert = OpenAIModerationsExpert("http://127.0.0.1:9/v1")
    assert expert.categories == frozenset().union(*OPENAI_OMNI_MAP.values())
    assert "S6" in expert.categories and "S9" not in expert.categories


def test_moderations_response_check_sends_the_assistant_turn(base_url: str, script: Script) -> None:
    moderate(base_url, [item("I will hurt myself", ("S6",), check="response")])
    assert script.requests[0][1]["input"] == ["I will hurt myself"]


def test_moderations_retry_like_the_guard_backend(base_url: str, script: Script) -> None:
    script.failures[:] = [(502, {"detail": "bad gateway"}, 0.0)]
    (output,) = moderate(base_url, [item("I want to hurt myself", ("S6",))], max_retries=1)
    assert output.scores == {"S6": pytest.approx(0.93)} and len(script.requests) == 2

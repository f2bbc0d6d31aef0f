"""``POST /v1/chat/completions``: a guarded proxy to an OpenAI-compatible LLM (configured in ``chat:``).

The prompt is checked first (``check: prompt``); a blocked one gets an assistant refusal (``finish_reason:
"content_filter"``) or a 400, per the tenant's ``prompt_block``. The answer is checked as a response:

* **Not streamed**: each choice's whole message; a blocked one is replaced by the refusal.
* **Streamed** (SSE): in windows of the growing text (``chat_windows``), cut on sentence or word boundaries with
  overlap. ``check_first``: an event reaches the client only once all the text it carries is checked.
  ``stream_first``: events flow at once and the checks run behind, at most one window behind (a window complete
  while the one before is still being checked waits for that check); the upstream's final event and ``[DONE]`` are
  held until the checks are done. A blocked window ends the stream with a ``finish_reason: "content_filter"`` chunk. The
  whole answer is checked once more at the end, and that check, like the prompt's, is logged: its request id (with
  the prompt's) is in ``X-Aegis-Request-Ids``, so ``/v1/feedback`` can label both. Window checks are not logged:
  they are intermediate, and feedback labels answers.

A benign stream reaches the client byte for byte as the upstream sent it. What could not be checked is never passed
as checked: a degraded check (an expert failed) is decided by the tenant's ``on_unscored`` rule like any other, and
said in an SSE comment line (``: aegis {...}``, which SSE clients ignore) or, for a whole answer, under the extra
key ``aegis``. Upstream errors keep their status and body; an upstream that times out is a 504 (or, mid-stream, an
``error`` event); the client's API key is never forwarded, the upstream's own key is sent instead.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
from fastapi.responses import JSONResponse, StreamingResponse

from aegis_online.config import ChatSection, ResolvedChat
from aegis_online.engine import Engine
from aegis_online.schemas import MAX_MESSAGES, Decision, Message, ModerationRequest, new_request_id
from aegis_online.serve.chat_windows import AnswerWindows
from aegis_online.serve.errors import ApiError
from aegis_online.serve.moderate import DecisionRecorder

ROLES = ("system", "user", "assistant", "tool")
#: Actions that stop a prompt or an answer, by the tenant's ``cut_on``.
STOPPING = {"block": frozenset({"block"}), "flag": frozenset({"flag", "block"})}


def conversation(body: Mapping[str, Any]) -> list[Message]:
    """The request's messages as the engine reads them (text parts joined; the last ``MAX_MESSAGES``); 400 naming
    the field when they are not an OpenAI conversation."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "messages: a non-empty list of chat messages is required", field="messages")
    turns = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in (*ROLES, "developer"):
            raise ApiError(400, f"messages.{i}: a message with a role of {', '.join(ROLES)}", field=f"messages.{i}")
        content = message.get("content")
        if isinstance(content, list):
            content = "\n".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
        if content is not None and not isinstance(content, str):
            raise ApiError(400, f"messages.{i}.content: text or text parts", field=f"messages.{i}.content")
        role = "system" if message["role"] == "developer" else message["role"]
        if content:
            turns.append(Message(role=role, content=content))
    if not turns or (turns[-1].role == "assistant" and all(t.role != "user" for t in turns)):
        raise ApiError(400, "messages: the conversation has no user message to answer", field="messages")
    return turns[-MAX_MESSAGES:]


@dataclass
class StreamState:
    """One streamed answer: per choice its windows, the events not yet released and the checks in flight."""

    chat: ResolvedChat
    windows: dict[int, AnswerWindows] = field(default_factory=dict)
    #: (raw event text, {choice: answer length it reaches}) in arrival order, not yet sent (check_first)
    held: list[tuple[str, dict[int, int]]] = field(default_factory=list)
    checks: list[asyncio.Task[Decision]] = field(default_factory=list)
    last_chunk: dict[str, Any] = field(default_factory=dict)
    degraded: bool = False

    def windows_of(self, choice: int) -> AnswerWindows:
        if choice not in self.windows:
            self.windows[choice] = AnswerWindows(self.chat.window_chars, self.chat.overlap_chars)
        return self.windows[choice]


class ChatProxyServing:
    def __init__(self, engine: Engine, record: DecisionRecorder, chat: ChatSection) -> None:
        self.engine = engine
        self.record = record
        self.chat = chat
        self._client: httpx.AsyncClient | None = None

    def options(self, tenant: str) -> ResolvedChat:
        resolved = self.chat.for_tenant(tenant)
        if resolved is None:
            raise ApiError(404, "the chat proxy is not configured (chat.upstream)", code="chat_not_configured")
        return resolved

    @property
    def client(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(limits=httpx.Limits(max_connections=512, max_keepalive_connections=64))
        return self._client

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    # -- the prompt --------------------------------------------------------------------------------------------------
    async def check_prompt(
        self, tenant: str, turns: list[Message], request_id: str, deadline_s: float | None
    ) -> Decision:
        request = ModerationRequest(messages=turns, tenant=tenant, check="prompt", request_id=request_id)
        decision = await self.engine.moderate(request, deadline_s=deadline_s)
        self.record(decision)
        return decision

    def refused(
        self, body: Mapping[str, Any], chat: ResolvedChat, decision: Decision, ids: Sequence[str]
    ) -> JSONResponse | StreamingResponse:
        """The answer to a blocked prompt: a refusal in the shape asked for (stream or not), or a 400."""
        headers = self.headers(ids, decision.degraded)
        if chat.prompt_block == "error":
            raise ApiError(
                400,
                "the prompt was blocked by the moderation policy",
                code="content_filter",
                field="messages",
                headers=headers,
            )
        model = chat.upstream.model or str(body.get("model", ""))
        completion_id, created = f"chatcmpl-{ids[0]}", int(time.time())
        aegis = {"request_ids": list(ids), "blocked": "prompt", "degraded": decision.degraded}
        if body.get("stream"):
            base = {"id": completion_id, "object": "chat.completion.chunk", "created": created, "model": model}
            first = {"index": 0, "delta": {"role": "assistant", "content": chat.refusal}, "finish_reason": None}
            last = {"index": 0, "delta": {}, "finish_reason": "content_filter"}
            events = [
                sse(base | {"choices": [first]}),
                sse(base | {"choices": [last], "aegis": aegis}),
                "data: [DONE]\n\n",
            ]
            return StreamingResponse(iter(events), media_type="text/event-stream", headers=headers)
        message = {"role": "assistant", "content": chat.refusal}
        completion = {
            "id": completion_id,
            "object": "chat.completion",
            "created": created,
            "model": model,
            "choices": [{"index": 0, "message": message, "finish_reason": "content_filter", "logprobs": None}],
            "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0},
            "aegis": aegis,
        }
        return JSONResponse(completion, headers=headers)

    # -- the upstream ------------------------------------------------------------------------------------------------
    def upstream_request(self, body: Mapping[str, Any], chat: ResolvedChat) -> httpx.Request:
        upstream = chat.upstream
        payload = dict(body)
        if upstream.model is not None:
            payload["model"] = upstream.model
        headers = {"Content-Type": "application/json"}
        key = upstream.api_key()
        if key:
            headers["Authorization"] = f"Bearer {key}"
        timeout = httpx.Timeout(
            upstream.read_timeout_s, connect=upstream.connect_timeout_s, pool=upstream.connect_timeout_s
        )
        url = upstream.base_url.rstrip("/") + "/chat/completions"
        return self.client.build_request("POST", url, json=payload, headers=headers, timeout=timeout)

    async def send(self, request: httpx.Request, chat: ResolvedChat, *, stream: bool) -> httpx.Response:
        """Send upstream; 504 when it times out, 502 when it cannot be reached."""
        try:
            return await self.client.send(request, stream=stream)
        except httpx.TimeoutException:
            raise ApiError(
                504,
                f"the upstream LLM did not answer within {chat.upstream.read_timeout_s:g} s",
                code="upstream_timeout",
            ) from None
        except httpx.HTTPError as error:
            raise ApiError(
                502, f"the upstream LLM could not be reached ({type(error).__name__})", code="upstream_error"
            ) from None

    # -- the answer, whole -------------------------------------------------------------------------------------------
    async def __call__(
        self, body: Mapping[str, Any], tenant: str, *, deadline_s: float | None = None
    ) -> JSONResponse | StreamingResponse:
        chat = self.options(tenant)
        turns = conversation(body)
        n = body.get("n", 1)
        choices = n if isinstance(n, int) and 1 <= n <= 16 else 1
        ids = [new_request_id() for _ in range(1 + choices)]
        prompt = await self.check_prompt(tenant, turns, ids[0], deadline_s)
        if prompt.action in STOPPING[chat.cut_on]:
            return self.refused(body, chat, prompt, ids)
        request = self.upstream_request(body, chat)
        if body.get("stream"):
            return await self.streamed(request, chat, tenant, turns, ids, prompt.degraded)
        try:
            async with asyncio.timeout(chat.upstream.total_timeout_s):
                response = await self.send(request, chat, stream=False)
        except TimeoutError:
            raise ApiError(504, "the upstream LLM's answer took too long", code="upstream_timeout") from None
        if response.status_code != 200:
            return relayed(response)
        try:
            completion = response.json()
            answers = [
                (c.get("index", i), c["message"].get("content") or "") for i, c in enumerate(completion["choices"])
            ]
        except (ValueError, KeyError, TypeError, AttributeError):
            raise ApiError(
                502, "the upstream LLM answered something that is not a chat completion", code="upstream_error"
            ) from None
        decisions = await asyncio.gather(
            *(
                self.check_answer(tenant, turns, text, ids[1 + min(index, choices - 1)], remember=True)
                for index, text in answers
            )
        )
        degraded = prompt.degraded or any(d.degraded for d in decisions)
        blocked = []
        for choice, decision in zip(completion["choices"], decisions, strict=True):
            if decision.action in STOPPING[chat.cut_on]:
                choice["message"] = {"role": "assistant", "content": chat.refusal}
                choice["finish_reason"] = "content_filter"
                blocked.append(choice.get("index", 0))
        completion["aegis"] = {"request_ids": ids, "blocked": "answer" if blocked else None, "degraded": degraded}
        return JSONResponse(completion, headers=self.headers(ids, degraded))

    async def check_answer(
        self, tenant: str, turns: list[Message], text: str, request_id: str | None, *, remember: bool
    ) -> Decision:
        answer = [*turns, Message(role="assistant", content=text or " ")][-MAX_MESSAGES:]
        request = ModerationRequest(messages=answer, tenant=tenant, check="response", request_id=request_id)
        decision = await self.engine.moderate(request, remember=remember)
        if remember:
            self.record(decision)
        return decision

    def window_check(self, tenant: str, turns: list[Message], text: str) -> asyncio.Task[Decision]:
        """A window of a streamed answer, checked in the background (not logged: feedback labels whole answers)."""
        return asyncio.ensure_future(self.check_answer(tenant, turns, text, None, remember=False))

    @staticmethod
    def headers(ids: Sequence[str], degraded: bool) -> dict[str, str]:
        return {"X-Aegis-Request-Ids": ",".join(ids), "X-Aegis-Degraded": "true" if degraded else "false"}

    # -- the answer, streamed ----------------------------------------------------------------------------------------
    async def streamed(
        self,
        request: httpx.Request,
        chat: ResolvedChat,
        tenant: str,
        turns: list[Message],
        ids: list[str],
        degraded: bool,
    ) -> JSONResponse | StreamingResponse:
        response = await self.send(request, chat, stream=True)
        if response.status_code != 200:
            await response.aread()
            await response.aclose()
            return relayed(response)
        state = StreamState(chat=chat, degraded=degraded)
        events = self.moderated_events(response, state, tenant, turns, ids)
        return StreamingResponse(events, media_type="text/event-stream", headers=self.headers(ids, degraded))

    async def moderated_events(
        self, response: httpx.Response, state: StreamState, tenant: str, turns: list[Message], ids: list[str]
    ) -> AsyncIterator[str]:
        chat = state.chat
        stops = STOPPING[chat.cut_on]
        first_check = chat.mode == "check_first"
        held_tail: list[str] = []  # stream_first: the final event(s) and [DONE], held until the checks are done
        try:
            async with asyncio.timeout(chat.upstream.total_timeout_s):
                async for event in sse_events(response):
                    payload = event_data(event)
                    if payload is None or payload == "[DONE]" or finishes(payload):
                        if first_check:
                            state.held.append((event, {}))
                        else:
                            held_tail.append(event)
                        continue
                    reaches: dict[int, int] = {}
                    for choice, delta in deltas(payload):
                        windows = state.windows_of(choice)
                        for window in windows.feed(delta):
                            state.checks.append(
                                asyncio.ensure_future(
                                    self.check_answer(tenant, turns, window.text, None, remember=False)
                                )
                            )
                        reaches[choice] = len(windows.answer)
                    state.last_chunk = payload
                    if first_check:
                        state.held.append((event, reaches))
                        if await self.settle(state, stops):
                            yield self.cut(state, ids)
                            return
                        for ready in self.release(state):
                            yield ready
                    else:
                        # at most one window behind: unchecked text that reaches the client is bounded in
                        # characters (about two windows), not in time, so an overloaded check cannot let a whole
                        # harmful answer through before its cut
                        if await self.settle(state, stops, behind=1):
                            yield self.cut(state, ids)
                            return
                        yield event
                        if self.failed(state, stops):
                            yield self.cut(state, ids)
                            return
        except TimeoutError:
            yield sse({"error": {"message": "the upstream LLM's answer took too long", "type": "upstream_timeout"}})
            return
        except httpx.HTTPError as error:
            yield sse(
                {"error": {"message": f"the upstream stream failed ({type(error).__name__})", "type": "upstream_error"}}
            )
            return
        finally:
            await response.aclose()
        # the upstream is done: the rest of each answer, then the whole answer once more (logged)
        for choice, windows in state.windows.items():
            for window in windows.finish():
                state.checks.append(
                    asyncio.ensure_future(self.check_answer(tenant, turns, window.text, None, remember=False))
                )
            final_id = ids[1 + min(choice, len(ids) - 2)]
            state.checks.append(
                asyncio.ensure_future(self.check_answer(tenant, turns, windows.answer, final_id, remember=True))
            )
        if await self.settle(state, stops):
            yield self.cut(state, ids)
            return
        if state.degraded:
            yield f": aegis {json.dumps({'degraded': True, 'request_ids': ids})}\n\n"
        for event, _ in state.held:
            yield event
        for event in held_tail:
            yield event

    async def settle(self, state: StreamState, stops: frozenset[str], behind: int = 0) -> bool:
        """Wait for the checks in flight but the newest ``behind`` (check_first and the end of a stream: all of them;
        stream_first: all but one); True when a check stops the answer."""
        if len(state.checks) > behind:
            await asyncio.wait(state.checks[: len(state.checks) - behind])
        return self.failed(state, stops)

    @staticmethod
    def failed(state: StreamState, stops: frozenset[str]) -> bool:
        """Whether a finished check stops the answer; the finished ones are taken off the list."""
        stop = False
        pending = []
        for task in state.checks:
            if not task.done():
                pending.append(task)
                continue
            decision = task.result()
            state.degraded = state.degraded or decision.degraded
            stop = stop or decision.action in stops
        state.checks = pending
        return stop

    @staticmethod
    def release(state: StreamState) -> list[str]:
        """check_first: the held events whose text is all checked, in order (an event with no text goes with the
        events before it)."""
        out = []
        while state.held:
            event, reaches = state.held[0]
            if any(state.windows_of(c).checked_to < end for c, end in reaches.items()):
                break
            out.append(event)
            state.held.pop(0)
        return out

    def cut(self, state: StreamState, ids: list[str]) -> str:
        """The event that ends a blocked answer, after which the stream stops (no [DONE] for what was cut)."""
        for task in state.checks:
            task.cancel()
        last = state.last_chunk
        chunk = {
            "id": last.get("id", f"chatcmpl-{ids[0]}"),
            "object": "chat.completion.chunk",
            "created": last.get("created", int(time.time())),
            "model": last.get("model", ""),
            "choices": [
                {"index": c, "delta": {}, "finish_reason": "content_filter"} for c in sorted(state.windows) or [0]
            ],
            "aegis": {"request_ids": ids, "blocked": "answer", "degraded": state.degraded},
        }
        return sse(chunk) + "data: [DONE]\n\n"


def answer_id(ids: Sequence[str], choice: int) -> str:
    """The request id of a choice's answer: ``ids`` is the prompt's, then one per choice."""
    return ids[1 + min(max(choice, 0), len(ids) - 2)]


def relayed(response: httpx.Response) -> JSONResponse:
    """An upstream error as the upstream said it: its status, its body (JSON, or wrapped in OpenAI's error shape)."""
    try:
        body = response.json()
    except ValueError:
        body = {"error": {"message": response.text[:2000] or response.reason_phrase, "type": "upstream_error"}}
    return JSONResponse(body, status_code=response.status_code)


async def sse_events(response: httpx.Response) -> AsyncIterator[str]:
    """The upstream's SSE events as raw text, each with its trailing blank line, byte for byte."""
    lines: list[str] = []
    async for line in response.aiter_lines():
        if line:
            lines.append(line)
            continue
        if lines:
            yield "\n".join(lines) + "\n\n"
            lines = []
    if lines:
        yield "\n".join(lines) + "\n\n"


def event_data(event: str) -> Any:
    """An event's ``data`` as JSON (``"[DONE]"`` as is); None for an event with no data (a comment)."""
    data = "\n".join(line[5:].lstrip(" ") for line in event.splitlines() if line.startswith("data:"))
    if not data:
        return None
    if data.strip() == "[DONE]":
        return "[DONE]"
    try:
        return json.loads(data)
    except ValueError:
        return None


def deltas(payload: Any) -> list[tuple[int, str]]:
    """(choice index, new text) of a chunk."""
    if not isinstance(payload, dict):
        return []
    out = []
    for choice in payload.get("choices") or ():
        delta = choice.get("delta") or {}
        if isinstance(delta.get("content"), str) and delta["content"]:
            out.append((int(choice.get("index", 0)), delta["content"]))
    return out


def finishes(payload: Any) -> bool:
    """Whether a chunk ends its choices (a finish_reason) and carries no new text."""
    if not isinstance(payload, dict):
        return False
    choices = payload.get("choices") or ()
    return bool(choices) and all(c.get("finish_reason") for c in choices) and not deltas(payload)


def sse(payload: Mapping[str, Any]) -> str:
    return f"data: {json.dumps(payload, separators=(',', ':'))}\n\n"

"""Two pure-ASGI middlewares: a request body size limit (413 before any parsing) and per-route timing for metrics.

Pure ASGI rather than ``BaseHTTPMiddleware``: no extra task per request, and the body limit can answer before the
route reads a byte too many. The body is read once here, up to the limit, and handed on unchanged.
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from aegis_online.serve.errors import ApiError, error_body
from aegis_online.serve.metrics import ServiceMetrics

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_WITH_BODY = frozenset({"POST", "PUT", "PATCH"})
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


async def _send_error(send: Send, path: str, status: int, error_type: str, message: str) -> None:
    content, _ = error_body(path, ApiError(status, message, type=error_type))
    body = json.dumps(content).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class BodySizeLimit:
    """Answers 413 to a request whose body exceeds ``max_bytes`` (declared or actual), 400 to a malformed length."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in _WITH_BODY:
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        declared = next((v for k, v in scope.get("headers", ()) if k == b"content-length"), None)
        if declared is not None:
            try:
                length = int(declared)
            except ValueError:
                await _send_error(send, path, 400, "invalid_request", "Content-Length is not a number")
                return
            if length > self.max_bytes:
                await _send_error(send, path, 413, "payload_too_large", self._too_large())
                return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await _send_error(send, path, 413, "payload_too_large", self._too_large())
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        delivered = False

        async def replay() -> Message:
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    def _too_large(self) -> str:
        return f"the request body exceeds {self.max_bytes} bytes"


class RequireJson:
    """Answers 415 to a request body declared as anything but JSON (``application/json`` or ``*/*+json``).

    Without it FastAPI reads such a body as a string and answers a puzzling 422 ("Input should be a valid
    dictionary") to valid JSON sent as ``text/plain``. A body with no Content-Type is taken as JSON.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] in _WITH_BODY:
            declared = next((v for k, v in scope.get("headers", ()) if k == b"content-type"), None)
            if declared is None:  # FastAPI would read it as a string: say what it is
                scope = dict(scope, headers=[*scope.get("headers", ()), (b"content-type", b"application/json")])
            else:
                media = declared.split(b";", 1)[0].strip().lower()
                if media and media != b"application/json" and not media.endswith(b"+json"):
                    shown = media.decode(errors="replace")[:100]
                    message = f"Content-Type {shown} is not supported: send the body as JSON (application/json)"
                    await _send_error(send, scope.get("path", ""), 415, "unsupported_media_type", message)
                    return
        await self.app(scope, receive, send)


class RequestTiming:
    """Counts requests and times them per route template (``/v1/tenants/{tenant}/policy``, never the raw path)."""

    def __init__(self, app: ASGIApp, metrics: ServiceMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_and_record(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_and_record)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            method = scope["method"] if scope["method"] in _METHODS else "OTHER"  # bounded label values
            self.metrics.observe_request(template, method, status, time.perf_counter() - started)

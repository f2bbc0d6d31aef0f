"""POST JSON to an OpenAI-compatible server with one pooled connection set and bounded, jittered retries.

Shared by the guard backend and the moderations expert. What is retried is what may pass on its own: connection
errors, timeouts, 429 and 5xx. Any other 4xx is the caller's mistake and raises at once with the server's message,
since retrying it would only spend the request's deadline. httpx is imported in the constructor (``serve`` extra).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Mapping
from typing import Any

__all__ = ["GuardHTTPError", "RetryingJSONClient"]


class GuardHTTPError(RuntimeError):
    """A request that failed for good; ``status`` is None when no HTTP response came back."""

    def __init__(self, message: str, status: int | None = None, attempts: int = 1) -> None:
        super().__init__(message)
        self.status = status
        self.attempts = attempts


class RetryingJSONClient:
    """One ``httpx.AsyncClient`` per server: connections are pooled across concurrent requests.

    Parameters
    ----------
    base_url
        Server root including the API version, e.g. ``http://localhost:8000/v1``.
    timeout_s
        Limit on one attempt, from sending to the whole response read.
    max_retries
        Attempts after the first, on retryable failures only.
    backoff_s, max_backoff_s
        Delay before retry ``n`` is about ``backoff_s * 2**n`` (capped), half of it random so that clients that
        failed together do not retry together; a 429's ``Retry-After`` is honoured up to the cap.
    """

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        timeout_s: float = 10.0,
        max_retries: int = 2,
        max_connections: int = 32,
        backoff_s: float = 0.2,
        max_backoff_s: float = 4.0,
    ) -> None:
        try:
            import httpx
        except ImportError as exc:
            raise ImportError("HTTP experts need httpx: pip install 'aegis-online[http]'") from exc
        if max_retries < 0 or timeout_s <= 0:
            raise ValueError("max_retries must be >= 0 and timeout_s > 0")
        self._httpx = httpx
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        # Requests beyond the pool wait here, not inside an attempt, so queueing never counts as a server timeout.
        self._slots = asyncio.Semaphore(max_connections)
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.AsyncClient(
            base_url=base_url.rstrip("/") + "/",
            headers=headers,
            timeout=httpx.Timeout(timeout_s),
            limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
        )

    async def post_json(self, path: str, body: Mapping[str, Any]) -> Any:
        """The decoded JSON response of ``POST {base_url}/{path}``; raises ``GuardHTTPError`` when all tries fail."""
        attempts = self.max_retries + 1
        for attempt in range(attempts):
            retry_after: float | None = None
            try:
                # httpx's timeout bounds each read; wait_for bounds the whole attempt (a slow drip of bytes too).
                async with self._slots:
                    response = await asyncio.wait_for(self._client.post(path, json=body), timeout=self.timeout_s)
            except (asyncio.TimeoutError, self._httpx.TimeoutException):
                failure, status = f"timed out after {self.timeout_s:g} s", None
            except self._httpx.TransportError as exc:
                failure, status = f"{type(exc).__name__}: {exc}", None
            else:
                if response.is_success:
                    try:
                        return response.json()
                    except ValueError as exc:
                        message = f"POST {path}: invalid JSON in response: {exc}"
                        raise GuardHTTPError(message, response.status_code) from exc
                status = response.status_code
                failure = f"HTTP {status}: {_server_message(response)}"
                if status != 429 and status < 500:
                    raise GuardHTTPError(f"POST {path}: {failure}", status, attempt + 1)
                retry_after = _retry_after(response)
            if attempt + 1 == attempts:
                raise GuardHTTPError(f"POST {path} failed after {attempts} attempts: {failure}", status, attempts)
            await asyncio.sleep(self._delay(attempt, retry_after))
        raise AssertionError("unreachable")

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        ceiling = min(self.max_backoff_s, self.backoff_s * 2**attempt)
        delay = ceiling / 2 + random.uniform(0.0, ceiling / 2)
        if retry_after is not None:
            delay = max(delay, min(retry_after, self.max_backoff_s))
        return delay

    async def aclose(self) -> None:
        """Close the pooled connections."""
        await self._client.aclose()


def _server_message(response: Any) -> str:
    """The ``error.message`` of an OpenAI-style error body, else the body text (truncated)."""
    try:
        body = response.json()
    except ValueError:
        return response.text[:500]
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])
        if isinstance(error, str):
            return error
        if body.get("detail"):
            return str(body["detail"])
    return response.text[:500]


def _retry_after(response: Any) -> float | None:
    try:
        return max(0.0, float(response.headers.get("retry-after", "")))
    except ValueError:
        return None

"""POST JSON to an OpenAI-compatible server with one pooled connection set and bounded, jittered retries.

Shared by the guard backend and the moderations expert. What is retried is what may pass on its own: connection
errors, timeouts, 429 and 5xx (``Retry-After`` honoured); any other 4xx is the caller's mistake and raises at once
with the server's message, since retrying it would only spend the request's deadline. The retry loop and its backoff
are the project's one implementation, ``aegis_online.client.retry``.

Why not the ``openai`` SDK: its retries wait 0.5 to 8 s with no way to shorten them, and a guard expert runs under
a request deadline of a second or two (here the first wait is ``backoff_s``, 0.2 s, and a server asking for a longer
``Retry-After`` than ``max_backoff_s`` is not retried inside the deadline); its timeout bounds each read, not a whole
try; and it is not a dependency of the ``http`` extra. The logprobs bodies it would send are the ones built here.
httpx is imported in the constructor (``http`` extra).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from aegis_online.client.retry import RetryPolicy, send_async

__all__ = ["GuardHTTPError", "RetryingJSONClient"]

#: Worth retrying from a model server: rate limited, and any server-side failure (an engine restarting, a proxy).
RETRY_STATUSES = frozenset({429, *range(500, 600)})


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
        failed together do not retry together; a ``Retry-After`` is honoured, and one beyond the cap is not retried.
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
        self.retry = RetryPolicy(
            attempts=max_retries + 1,
            backoff_s=backoff_s,
            max_backoff_s=max(max_backoff_s, backoff_s),
            statuses=RETRY_STATUSES,
        )
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

        async def attempt() -> Any:
            # httpx's timeout bounds each read; wait_for bounds the whole attempt (a slow drip of bytes too).
            async with self._slots:
                return await asyncio.wait_for(self._client.post(path, json=body), timeout=self.timeout_s)

        outcome = await send_async(self.retry, attempt)
        response = outcome.response
        if response is None:
            error = outcome.error
            timed_out = isinstance(error, asyncio.TimeoutError | self._httpx.TimeoutException)
            failure = f"timed out after {self.timeout_s:g} s" if timed_out else f"{type(error).__name__}: {error}"
            status = None
        elif response.is_success:
            try:
                return response.json()
            except ValueError as exc:
                message = f"POST {path}: invalid JSON in response: {exc}"
                raise GuardHTTPError(message, response.status_code, outcome.attempts) from exc
        else:
            status = response.status_code
            failure = f"HTTP {status}: {_server_message(response)}"
            if status not in RETRY_STATUSES and outcome.retry_after is None:
                raise GuardHTTPError(f"POST {path}: {failure}", status, outcome.attempts)
        attempts = outcome.attempts
        raise GuardHTTPError(f"POST {path} failed after {attempts} attempts: {failure}", status, attempts)

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

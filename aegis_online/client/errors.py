"""What the client raises: the service's refusal as it said it (status, reason, message, field), no answer at all,
or an answer that is not what the API documents. A body the client cannot read is an error, never a success."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import httpx

__all__ = ["APIConnectionError", "APIError", "APIResponseError", "ClientError", "api_error"]


class ClientError(Exception):
    """Base of every error of ``aegis_online.client``."""


class APIConnectionError(ClientError):
    """No answer came back after every try (connection refused or reset, timed out)."""

    def __init__(self, message: str, *, attempts: int) -> None:
        super().__init__(message)
        self.attempts = attempts
        self.status: int | None = None


class APIError(ClientError):
    """The service answered with an error status; its error body read as ``{"error": {type, message, field, code}}``.

    ``reason`` is the finest machine-readable reason the service gave (``code``, else ``type``): what code branches
    on. ``retry_after`` is the wait the service asked for (429 and 503), ``attempts`` the tries made.
    """

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str,
        code: str | None = None,
        field: str | None = None,
        retry_after: float | None = None,
        attempts: int = 1,
        request: str = "",
    ) -> None:
        reason = code or type
        super().__init__(f"{request} answered {status} ({reason}): {message}" if request else message)
        self.status = status
        self.type = type
        self.code = code
        self.message = message
        self.field = field
        self.retry_after = retry_after
        self.attempts = attempts

    @property
    def reason(self) -> str:
        return self.code or self.type


class APIResponseError(ClientError):
    """A success status whose body is not what the API documents (not JSON, or not the expected model)."""

    def __init__(self, message: str, *, status: int) -> None:
        super().__init__(message)
        self.status = status


def _error_body(response: httpx.Response) -> dict[str, Any] | None:
    try:
        body = response.json()
    except ValueError:
        return None
    error = body.get("error") if isinstance(body, dict) else None
    return error if isinstance(error, dict) else None


def api_error(response: httpx.Response, request: str, attempts: int, retry_after: float | None) -> APIError:
    """The ``APIError`` of an error answer; a body in another shape (a proxy's page) keeps its first 300 characters."""
    status = response.status_code
    error = _error_body(response)
    if error is None:
        return APIError(
            status,
            response.text[:300],
            type=f"http_{status}",
            retry_after=retry_after,
            attempts=attempts,
            request=request,
        )
    return APIError(
        status,
        str(error.get("message") or ""),
        type=str(error.get("type") or f"http_{status}"),
        code=None if error.get("code") is None else str(error["code"]),
        field=None if error.get("field") is None else str(error["field"]),
        retry_after=retry_after,
        attempts=attempts,
        request=request,
    )

"""Every error of the HTTP API as JSON: ``{"error": {"type", "message", "field", "code"}}`` with a 4xx status.

Bad input is the caller's to fix, so it must never surface as a 5xx: validation errors (schema, JSON syntax, the
engine's own ``AegisError``s) become 4xx naming the field; only faults of the service itself are 500 or 503.
``/v1/moderations`` answers in OpenAI's error shape (``param`` beside ``field``) and with 400 for invalid input,
as OpenAI does, so the SDK raises its usual ``BadRequestError``. ``/v1alpha1/`` (Perspective) answers in Google's
shape: ``{"error": {"code", "message", "status", "details": [{"@type", "errorType"}]}}``, 400 for invalid input.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from aegis_online.errors import AegisError, InvalidFeedbackError, TenantMismatchError, UnknownRequestError

log = logging.getLogger("aegis_online.serve")

OPENAI_PREFIXES = ("/v1/moderations", "/v1/chat/")
PERSPECTIVE_PREFIX = "/v1alpha1/"

#: Google's status names (google.rpc.Code) for the HTTP statuses this API answers with.
_GOOGLE_STATUS = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    405: "INVALID_ARGUMENT",
    409: "ALREADY_EXISTS",
    413: "INVALID_ARGUMENT",
    415: "INVALID_ARGUMENT",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    503: "UNAVAILABLE",
}
_PERSPECTIVE_ERROR_DETAIL = "type.googleapis.com/google.commentanalyzer.v1alpha1.Error"

_STATUS_TYPES = {
    400: "invalid_request",
    401: "authentication_error",
    403: "permission_denied",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "invalid_request",
    429: "rate_limited",
    502: "upstream_error",
    503: "unavailable",
    504: "upstream_timeout",
}


class ApiError(Exception):
    """An error the API answers with: status, type, message and the offending field."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str | None = None,
        field: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.type = type or _STATUS_TYPES.get(status, "error")
        self.message = message
        self.field = field
        self.code = code
        self.headers = headers
        self.details = details


def from_aegis_error(error: AegisError) -> ApiError:
    """The engine's input errors as API errors; the field is the message's ``field:`` prefix when it has one."""
    message = str(error)
    head, sep, _ = message.partition(": ")
    field = head if sep and " " not in head else None
    if isinstance(error, UnknownRequestError | TenantMismatchError):
        # Another tenant's request reads exactly like an unknown one: its existence is not this caller's business.
        return ApiError(
            404,
            "request_id: no prediction with this id for this tenant (unknown, expired or not yours)",
            field="request_id",
            code="unknown_request",
        )
    if isinstance(error, InvalidFeedbackError):
        return ApiError(422, message, field=field, code=error.reason)
    return ApiError(422, message, field=field, code=error.reason)


#: Location parts that name a branch of a union, not a field: pydantic's type tags and our feedback body tags.
_UNION_TAG = re.compile(r"^(str|int|float|bool|none|.*\[.*\]|function-.*|constrained-.*)$")
_BODY_TAGS = ("event", "batch")


def _field(loc: Sequence[Any]) -> str | None:
    parts = [str(p) for p in loc]
    if parts and parts[0] in ("body", "query", "path", "header"):
        parts = parts[1:]
        if parts and parts[0] in _BODY_TAGS and loc[0] == "body":
            parts = parts[1:]
    return ".".join(p for p in parts if not _UNION_TAG.match(p)) or None


def _closeness(branch: list[Any]) -> tuple[bool, int]:
    """How near a value came to a union member: it has the member's shape (a problem other than a type mismatch),
    then how deep into the member its problems lie."""
    return (
        any(not str(e.get("type", "")).endswith("_type") for e in branch),
        max(len(e.get("loc", ())) for e in branch),
    )


def _without_rejected_members(errors: list[Any]) -> list[Any]:
    """A value that fits no member of a union gets one error per member from pydantic, most of them "not a string",
    "not a list" for members it never resembled. Keep the errors of the member it came closest to, so that ``input:
    []`` is told its list is empty rather than that it is not a string (and 2 more problems)."""
    members: dict[tuple[str, ...], dict[str, list[Any]]] = {}
    for e in errors:
        loc = [str(p) for p in e.get("loc", ())]
        tag = next((i for i, p in enumerate(loc) if _UNION_TAG.match(p)), None)
        if tag is not None:
            members.setdefault(tuple(loc[:tag]), {}).setdefault(loc[tag], []).append(e)
    kept = {id(e) for branches in members.values() for e in max(branches.values(), key=_closeness)}
    in_union = {id(e) for branches in members.values() for branch in branches.values() for e in branch}
    return [e for e in errors if id(e) in kept or id(e) not in in_union]


def from_validation_error(error: RequestValidationError) -> ApiError:
    """The first problem of a failed validation, with its field; the count of the others."""
    errors = _without_rejected_members(list(error.errors()))
    if not errors:
        return ApiError(422, "invalid request")
    first = errors[0]
    kind = first.get("type", "")
    message = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
    field = _field(first.get("loc", ()))
    if kind == "json_invalid":
        reason = (first.get("ctx") or {}).get("error", "")
        return ApiError(400, f"the body is not valid JSON{': ' + str(reason) if reason else ''}", code="json_invalid")
    if field is None:  # a model-level check: its message starts with the field it is about
        head, sep, rest = message.partition(": ")
        if sep and " " not in head:
            field, message = head, rest
    elif kind == "missing":
        message = "required"
    more = f" (and {len(errors) - 1} more problems)" if len(errors) > 1 else ""
    text = f"{field}: {message}{more}" if field else f"{message}{more}"
    return ApiError(422, text, field=field, code=kind or None)


def perspective_error_body(error: ApiError) -> tuple[dict[str, Any], int]:
    """Google's error shape. Invalid input is 400, with Perspective's ``errorType`` in ``details`` (the error's
    ``code`` when it is one, else ``INVALID_REQUEST``); the field, when known, also under ``field``."""
    status = 400 if error.status == 422 else error.status
    body: dict[str, Any] = {"code": status, "message": error.message, "status": _GOOGLE_STATUS.get(status, "UNKNOWN")}
    if status == 400:
        error_type = error.code if error.code and error.code.isupper() else "INVALID_REQUEST"
        body["details"] = [{"@type": _PERSPECTIVE_ERROR_DETAIL, "errorType": error_type, **(error.details or {})}]
    if error.field:
        body["field"] = error.field
    return {"error": body}, status


def error_body(request_path: str, error: ApiError) -> tuple[dict[str, Any], int]:
    """The JSON body and status of an error, in the shape of the route's protocol (ours, OpenAI's, Google's)."""
    if request_path.startswith(PERSPECTIVE_PREFIX):
        return perspective_error_body(error)
    detail: dict[str, Any] = {"type": error.type, "message": error.message, "field": error.field, "code": error.code}
    status = error.status
    if request_path.startswith(OPENAI_PREFIXES):
        detail["param"] = error.field
        detail["type"] = "invalid_request_error" if status in (400, 422) else error.type
        status = 400 if status == 422 else status
    return {"error": detail}, status


def error_response(request_path: str, error: ApiError) -> JSONResponse:
    body, status = error_body(request_path, error)
    return JSONResponse(body, status_code=status, headers=error.headers)


def install_error_handlers(app: FastAPI) -> None:
    """Map every exception the app can meet to a JSON error with the right status."""

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, error: ApiError) -> JSONResponse:
        return error_response(request.url.path, error)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, error: RequestValidationError) -> JSONResponse:
        return error_response(request.url.path, from_validation_error(error))

    @app.exception_handler(AegisError)
    async def _aegis(request: Request, error: AegisError) -> JSONResponse:
        return error_response(request.url.path, from_aegis_error(error))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, error: StarletteHTTPException) -> JSONResponse:
        status = error.status_code
        message = error.detail if isinstance(error.detail, str) else "error"
        if status == 404:
            message = f"no route {request.method} {request.url.path}"
        elif status == 405:
            message = f"{request.method} is not allowed on {request.url.path}"
        return error_response(request.url.path, ApiError(status, message, headers=getattr(error, "headers", None)))

    @app.exception_handler(Exception)
    async def _internal(request: Request, error: Exception) -> JSONResponse:
        log.exception("internal error on %s %s", request.method, request.url.path)
        return JSONResponse(
            {"error": {"type": "internal_error", "message": "internal error", "field": None, "code": None}},
            status_code=500,
        )

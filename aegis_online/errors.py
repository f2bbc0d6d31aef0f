"""Errors the engine raises for bad input; the HTTP layer and the feedback worker map them to 4xx and dead letters."""


class AegisError(Exception):
    """Base of the errors a caller can fix (bad input), as opposed to faults of the service."""

    #: A short machine-readable reason, used in HTTP error bodies and dead-letter entries.
    reason = "invalid"


class UnknownRequestError(AegisError, LookupError):
    reason = "unknown_request"


class TenantMismatchError(AegisError, PermissionError):
    reason = "wrong_tenant"


class InvalidFeedbackError(AegisError, ValueError):
    reason = "invalid_feedback"


class InvalidRequestError(AegisError, ValueError):
    reason = "invalid_request"

"""Who may do what, at the HTTP layer: the caller's principal from its headers, and the tenant a call acts for.

The tenant of a call always comes from the key: a body that names another tenant is refused with 403 (it is never
silently rewritten, so a misconfigured client finds out at once). A body that names no tenant acts for the key's.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from fastapi import Security
from fastapi.security import APIKeyHeader, APIKeyQuery, HTTPAuthorizationCredentials, HTTPBearer

from aegis_online.serve.auth import KeyTable, Principal
from aegis_online.serve.errors import ApiError

_bearer = HTTPBearer(auto_error=False, description="An API key: `Authorization: Bearer <key>`.")
_api_key = APIKeyHeader(name="X-API-Key", auto_error=False, description="The same key, for clients without Bearer.")
_query_key = APIKeyQuery(
    name="key",
    auto_error=False,
    description="The same key as Perspective clients send it (`?key=`), on the Perspective route only: a key in a URL "
    "ends up in the logs of proxies on the way, so prefer the header.",
)


def _resolve(keys: KeyTable, token: str | None) -> Principal:
    found = keys.authenticate(token)
    if found is None:
        message = "missing API key: send Authorization: Bearer <key>" if not token else "invalid API key"
        raise ApiError(401, message, headers={"WWW-Authenticate": "Bearer"})
    return found


def principal_dependency(keys: KeyTable) -> Callable[..., Awaitable[Principal]]:
    """A FastAPI dependency resolving the caller; 401 when a key is required and missing or unknown."""

    async def principal(
        credentials: HTTPAuthorizationCredentials | None = Security(_bearer),
        api_key: str | None = Security(_api_key),
    ) -> Principal:
        return _resolve(keys, credentials.credentials if credentials is not None else api_key)

    return principal


def query_key_principal_dependency(keys: KeyTable) -> Callable[..., Awaitable[Principal]]:
    """``principal_dependency`` that also takes the key from ``?key=`` (Perspective's clients send it there)."""

    async def principal(
        credentials: HTTPAuthorizationCredentials | None = Security(_bearer),
        api_key: str | None = Security(_api_key),
        query_key: str | None = Security(_query_key),
    ) -> Principal:
        token = credentials.credentials if credentials is not None else api_key or query_key
        return _resolve(keys, token)

    return principal


def tenant_for(principal: Principal, requested: str | None) -> str:
    """The tenant a moderation or feedback call acts for: the body's (``requested``) if the key may, else 403."""
    if requested is None:
        return principal.home_tenant
    if not principal.may_act_for(requested):
        raise ApiError(
            403,
            f"tenant: this API key acts for tenant {principal.tenant!r}, not {requested!r}",
            field="tenant",
            code="wrong_tenant",
        )
    return requested


def require_read(principal: Principal, tenant: str) -> None:
    """Reading a tenant's policy or weights: its own clients and its admins."""
    if not principal.may_act_for(tenant):
        raise ApiError(403, f"this API key cannot read tenant {tenant!r}", field="tenant", code="wrong_tenant")


def require_admin(principal: Principal, tenant: str) -> None:
    """Changing a tenant's policy: admins of that tenant only."""
    if not principal.may_administer(tenant):
        reason = "an admin key" if principal.may_act_for(tenant) else f"a key of tenant {tenant!r} with the admin role"
        raise ApiError(403, f"changing a policy needs {reason}", field="tenant", code="admin_required")

"""API keys -> who is calling: a tenant and a role. The tenant of a request comes from its key, never from its body.

Roles:

* ``client``: moderates and sends feedback for its own tenant, and may read (not change) its own policy and weights.
  Its feedback trains its tenant's weights only (and the global ones when the config lists the tenant among the
  ``global_learning.contributors``, within its share).
* ``moderator``: a client whose labels the operator trusts: they also train the global weights every tenant starts
  from. For one tenant, or for every tenant when the key names none. Cannot change policies.
* ``admin``: everything, for every tenant, or for one tenant when the key names one; its feedback is trusted too.

Keys come from the config (``auth.keys``), a secrets file (``auth.keys_file``: YAML or JSON, a list under ``keys``)
or the environment (``AEGIS_SERVE_AUTH__KEYS`` as JSON, ``AEGIS_SERVE_AUTH__KEYS_FILE``). They are hashed (SHA-256)
as soon as they are read: only digests travel to the Ray ingress and are compared, so a key never appears in a log,
an error, a ``repr`` or a Ray object. A file may hold ``key_sha256`` instead of the key itself.

With no key configured the service runs in *open development mode*: any bearer key (or none) is accepted and acts
as an admin of the single tenant ``default``. That mode is refused on any address but loopback
(``require_safe_exposure``), so a service reachable from the network always checks keys.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import TypeAdapter, ValidationError

from aegis_online.config import ApiKey, AuthSection, ConfigError, ServiceConfig, is_loopback

Role = Literal["client", "moderator", "admin"]
DEFAULT_TENANT = "default"


def key_digest(key: str) -> str:
    """SHA-256 hex digest of an API key (what is stored and compared).

    >>> key_digest("example-key-0123456789")[:12]
    '298caeb640fd'
    """
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True)
class Principal:
    """Who is calling: a key's label, its role, and its tenant (None: an admin of every tenant)."""

    name: str
    role: Role
    tenant: str | None
    open_mode: bool = False

    @property
    def home_tenant(self) -> str:
        """The tenant a request acts for when its body names none."""
        return self.tenant or DEFAULT_TENANT

    def may_act_for(self, tenant: str) -> bool:
        return self.tenant is None or self.tenant == tenant

    def may_administer(self, tenant: str) -> bool:
        return self.role == "admin" and self.may_act_for(tenant)

    @property
    def trusted(self) -> bool:
        """Whether this caller's feedback trains the global weights (moderator and admin keys)."""
        return self.role in ("moderator", "admin")


OPEN_PRINCIPAL = Principal(name="development", role="admin", tenant=DEFAULT_TENANT, open_mode=True)


@dataclass(frozen=True)
class KeyTable:
    """Digest -> principal. Empty means open development mode."""

    principals: Mapping[str, Principal]

    @property
    def open_mode(self) -> bool:
        return not self.principals

    def __len__(self) -> int:
        return len(self.principals)

    def __repr__(self) -> str:
        return f"KeyTable({len(self.principals)} keys)"

    def authenticate(self, token: str | None) -> Principal | None:
        """The principal of ``token``; None when the key is unknown (or missing) and keys are required."""
        if self.open_mode:
            return OPEN_PRINCIPAL
        if not token:
            return None
        # Looked up by digest: timing reveals nothing about the key itself (preimages of SHA-256 are out of reach).
        return self.principals.get(key_digest(token))

    def to_wire(self) -> list[dict[str, Any]]:
        """Digests and principals as JSON-safe data (what the driver hands the Ray ingress)."""
        return [
            {"key_sha256": d, "name": p.name, "role": p.role, "tenant": p.tenant} for d, p in self.principals.items()
        ]

    @classmethod
    def from_wire(cls, items: Iterable[Mapping[str, Any]]) -> KeyTable:
        return cls({i["key_sha256"]: Principal(name=i["name"], role=i["role"], tenant=i["tenant"]) for i in items})

    @classmethod
    def from_keys(cls, keys: Iterable[ApiKey]) -> KeyTable:
        principals: dict[str, Principal] = {}
        for n, entry in enumerate(keys):
            digest = entry.key_sha256 or key_digest(entry.key.get_secret_value())  # type: ignore[union-attr]
            if digest in principals:
                raise ConfigError(f"auth: key #{n + 1} ({entry.name or 'unnamed'}) is configured twice")
            name = entry.name or f"key-{digest[:8]}"
            principals[digest] = Principal(name=name, role=entry.role, tenant=entry.tenant)
        return cls(principals)


_KEYS = TypeAdapter(list[ApiKey])


def read_keys_file(path: Path) -> list[ApiKey]:
    """Keys from a YAML or JSON secrets file: ``{"keys": [...]}`` or a bare list. Errors never quote a key."""
    try:
        document = yaml.safe_load(path.read_text())
    except OSError as error:
        raise ConfigError(f"{path}: cannot read the keys file: {error.strerror or error}") from None
    except yaml.YAMLError:
        raise ConfigError(f"{path}: the keys file is not valid YAML or JSON") from None
    items = document.get("keys") if isinstance(document, dict) else document
    if not isinstance(items, list):
        raise ConfigError(f"{path}: expected a list of keys under 'keys'")
    try:
        return _KEYS.validate_python(items)
    except ValidationError as error:
        lines = []
        for e in error.errors():
            where = ".".join(str(p) for p in e["loc"])
            lines.append(f"{path}: keys.{where}: {e['msg'].removeprefix('Value error, ')}")
        raise ConfigError("\n".join(lines)) from None


def load_key_table(auth: AuthSection) -> KeyTable:
    """Every configured key (file + inline/env), hashed. An empty table means open development mode."""
    keys = list(auth.keys)
    if auth.keys_file is not None:
        keys += read_keys_file(Path(os.path.expanduser(auth.keys_file)))
    return KeyTable.from_keys(keys)


def require_safe_exposure(config: ServiceConfig, keys: KeyTable) -> None:
    """Refuse open development mode anywhere but loopback: a reachable service must check keys."""
    if keys.open_mode and not is_loopback(config.server.host):
        raise ConfigError(
            f"server.host: refusing to serve {config.server.host} without API keys; configure auth.keys_file "
            "(or AEGIS_SERVE_AUTH__KEYS / AEGIS_SERVE_AUTH__KEYS_FILE), or bind to 127.0.0.1 for development"
        )


def bearer_token(authorization: str | None, api_key: str | None = None) -> str | None:
    """The key of an ``Authorization: Bearer <key>`` header (or an ``X-API-Key`` header).

    >>> bearer_token("Bearer abc"), bearer_token("bearer  abc "), bearer_token("Basic abc"), bearer_token(None, "k")
    ('abc', 'abc', None, 'k')
    """
    if authorization:
        scheme, _, value = authorization.strip().partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
        return None
    return api_key or None

"""Who sends each replayed row, and under which policy: tenant column, policy files and mid-stream policy changes.

A multi-tenant replay sends every row as the tenant named in one column of its data file (``--tenant-column``);
the row's labels are that tenant's labels (a text two tenants judge differently appears once per tenant, each copy
with its tenant's label). Each tenant gets the policy of a ``--policy FILE`` naming it, else the default policy, and
``--policy-change ROW:FILE`` replaces a tenant's policy from request ``ROW`` on (0-based, in replay order).

Everything a user can get wrong is checked here, before anything runs, and raised as a ``TenantInputError`` that
names the file, the column or the row: the CLI prints it and exits, never with a traceback.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from aegis_online.datasets import LabelledText
from aegis_online.policy import TenantPolicy


class TenantInputError(ValueError):
    """A tenant column, policy file or policy change that cannot be used; the message says which and why."""


@dataclass(frozen=True)
class PolicyChange:
    """From request ``row`` on (0-based, replay order), ``policy`` applies to its tenant."""

    row: int
    policy: TenantPolicy
    source: str = ""


@dataclass
class TenantSetup:
    """The tenant of every row, each tenant's first policy, and the policy changes in row order."""

    tenants: list[str]
    policies: dict[str, TenantPolicy]
    changes: list[PolicyChange] = field(default_factory=list)

    @property
    def names(self) -> tuple[str, ...]:
        """Tenants in order of first appearance."""
        return tuple(dict.fromkeys(self.tenants))

    def changes_at(self, row: int) -> list[PolicyChange]:
        return [c for c in self.changes if c.row == row]


def _policy_errors(error: ValidationError) -> str:
    return "; ".join(f"{'.'.join(str(p) for p in e['loc']) or '(policy)'}: {e['msg']}" for e in error.errors())


def policy_from_mapping(document: Any, where: str) -> TenantPolicy:
    """A ``TenantPolicy`` from a parsed mapping; ``where`` (a file, a scenario field) prefixes any error."""
    if not isinstance(document, Mapping):
        raise TenantInputError(f"{where}: expected a mapping of policy fields, got {type(document).__name__}")
    if "tenant" not in document:
        raise TenantInputError(f"{where}: a replay policy must name its tenant (field 'tenant')")
    try:
        return TenantPolicy.model_validate(dict(document))
    except ValidationError as error:
        raise TenantInputError(f"{where}: {_policy_errors(error)}") from None


def load_policy_file(path: Path) -> TenantPolicy:
    """A policy from a YAML or JSON file (JSON is YAML; ``.json`` files are read as JSON for exact errors)."""
    if not path.is_file():
        raise TenantInputError(f"{path}: no such policy file")
    text = path.read_text(encoding="utf-8")
    try:
        document = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as error:
        raise TenantInputError(f"{path}: not valid {'JSON' if path.suffix == '.json' else 'YAML'}: {error}") from None
    return policy_from_mapping(document, str(path))


def parse_policy_change(text: str) -> tuple[int, Path]:
    """``ROW:FILE`` -> (row, path); the row is a request index >= 0."""
    row, sep, path = text.partition(":")
    if not sep or not path or not row.strip().isdigit():
        raise TenantInputError(f"--policy-change takes ROW:FILE (ROW a request index >= 0), got {text!r}")
    return int(row), Path(path)


def row_tenants(rows: Sequence[LabelledText], column: str) -> list[str]:
    """The tenant of each row, read from ``column`` of its data file (kept in the row's ``meta``).

    Raises when no row has the column (unknown column: the message lists the columns the rows do have) or when a
    row lacks a tenant (missing, null or empty: the message names the row and its file).
    """
    if rows and not any(column in row.meta for row in rows):
        columns = sorted({k for row in rows[:50] for k in row.meta if k != "row"})
        raise TenantInputError(
            f"--tenant-column {column!r}: no such column in the data; columns besides text and labels: "
            f"{', '.join(columns) or '(none)'}"
        )
    tenants = []
    for t, row in enumerate(rows):
        value = row.meta.get(column)
        if value is None or not str(value).strip():
            where = f"{row.source or 'data'} row {row.meta.get('row', '?')}"
            raise TenantInputError(f"{where} (request {t}): no tenant in column {column!r}")
        tenants.append(str(value).strip())
    return tenants


def _default_policy(tenant: str) -> TenantPolicy:
    try:
        return TenantPolicy(tenant=tenant)
    except ValidationError as error:
        raise TenantInputError(f"tenant {tenant!r} of the data: {_policy_errors(error)}") from None


def tenant_setup(
    tenants: Sequence[str],
    policies: Sequence[TenantPolicy] = (),
    changes: Sequence[PolicyChange] = (),
) -> TenantSetup:
    """Check that every policy and change names a tenant of the data, once, and that changes fall inside the run.

    A tenant without a ``--policy`` gets the default policy (with its name). A policy naming a tenant that never
    sends a row is an error, not ignored: it is almost always a typo, and it would silently replay the wrong policy.
    """
    known = dict.fromkeys(tenants)
    given: dict[str, TenantPolicy] = {}
    for policy in policies:
        if policy.tenant not in known:
            raise TenantInputError(
                f"--policy for tenant {policy.tenant!r}: no row of the data is sent by it; tenants: {', '.join(known)}"
            )
        if policy.tenant in given:
            raise TenantInputError(f"--policy: two policies for tenant {policy.tenant!r}; give one per tenant")
        given[policy.tenant] = policy
    for change in changes:
        name = change.policy.tenant
        label = change.source or f"--policy-change {change.row}"
        if name not in known:
            raise TenantInputError(f"{label}: tenant {name!r} sends no row of the data; tenants: {', '.join(known)}")
        if not 0 < change.row < len(tenants):
            raise TenantInputError(f"{label}: row {change.row} is outside the replay (requests 1..{len(tenants) - 1})")
    resolved = {name: given.get(name) or _default_policy(name) for name in known}
    return TenantSetup(list(tenants), resolved, sorted(changes, key=lambda c: c.row))

"""Tenant policies in SQLite, read from memory.

The engine looks a tenant's policy up on every request: all policies (a few KB each, one per tenant) are loaded at
open and kept in a dict; ``put`` commits and syncs first (the PUT's 200 says the policy is set), then updates it.
"""

from __future__ import annotations

import threading

from aegis_online.policy import TenantPolicy
from aegis_online.state.base import PolicyStore
from aegis_online.state.sqlite.database import Database

SCHEMA = "CREATE TABLE IF NOT EXISTS policies (tenant TEXT PRIMARY KEY, policy TEXT NOT NULL) WITHOUT ROWID"


class SqlitePolicyStore(PolicyStore):
    def __init__(self, db: Database) -> None:
        self.db = db
        db.create(SCHEMA)
        with db.read() as conn:
            rows = conn.execute("SELECT policy FROM policies").fetchall()
        self._lock = threading.Lock()
        self._policies = {p.tenant: p for p in (TenantPolicy.model_validate_json(text) for (text,) in rows)}

    def get(self, tenant: str) -> TenantPolicy | None:
        return self._policies.get(tenant)

    def put(self, policy: TenantPolicy) -> None:
        with self._lock:  # two PUTs of one tenant: the dict ends as the database does
            with self.db.transaction() as conn:
                conn.execute(
                    "INSERT INTO policies (tenant, policy) VALUES (?, ?) "
                    "ON CONFLICT(tenant) DO UPDATE SET policy = excluded.policy",
                    (policy.tenant, policy.model_dump_json()),
                )
            self._policies[policy.tenant] = policy
        self.db.sync()

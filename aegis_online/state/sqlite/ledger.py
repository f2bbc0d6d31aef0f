"""The feedback ledger in SQLite: one row per claimed or queued event, in the state database.

The embedded service is one process, so a claim (``pending``) only ever belongs to a call of the running process:
at open, claims left by a process that died are dropped (their calls got no answer; the client's retry claims the
event anew). An event that reached the queue is marked ``queued`` by the queue's journal in the transaction that
journals it (``mark_queued``), so a crash between the journal write and ``confirm`` cannot leave a queued event
claimable, and queued twice.

Times are wall-clock (``time.time``): expiries outlive the process. Expired rows are deleted at most once a minute.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Sequence

from aegis_online.state.base import EventKey, FeedbackLedger
from aegis_online.state.sqlite.database import Database

SCHEMA = """
CREATE TABLE IF NOT EXISTS ledger (
    tenant TEXT NOT NULL, event_key TEXT NOT NULL, status TEXT NOT NULL, digest TEXT, expires REAL NOT NULL,
    PRIMARY KEY (tenant, event_key)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS ledger_by_expiry ON ledger (expires);
"""
_PURGE_EVERY_S = 60.0


class SqliteFeedbackLedger(FeedbackLedger):
    def __init__(
        self,
        db: Database,
        *,
        ttl_s: float = 7 * 24 * 3600,
        pending_ttl_s: float = 30.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.db = db
        self.ttl_s = ttl_s
        self.pending_ttl_s = pending_ttl_s
        self.clock = clock
        self._purged_at = 0.0
        db.create(SCHEMA)
        with db.transaction() as conn:
            conn.execute("DELETE FROM ledger WHERE status = ?", (self.PENDING,))

    def reserve(self, keys: Sequence[EventKey], digests: Sequence[str] | None = None) -> list[str]:
        now = self.clock()
        out = []
        with self.db.transaction() as conn:
            self._purge(conn, now)
            for i, (tenant, event_key) in enumerate(keys):
                digest = None if digests is None else digests[i]
                row = conn.execute(
                    "SELECT status, digest FROM ledger WHERE tenant = ? AND event_key = ? AND expires > ?",
                    (tenant, event_key, now),
                ).fetchone()
                if row is None:
                    conn.execute(
                        "INSERT OR REPLACE INTO ledger (tenant, event_key, status, digest, expires) "
                        "VALUES (?, ?, ?, ?, ?)",
                        (tenant, event_key, self.PENDING, digest, now + self.pending_ttl_s),
                    )
                    out.append(self.NEW)
                else:
                    status, held = row
                    out.append(self.CONFLICT if digest and held and digest != held else status)
        return out

    def confirm(self, keys: Sequence[EventKey]) -> None:
        with self.db.transaction() as conn:
            self.mark_queued(conn, keys)

    def mark_queued(self, conn: sqlite3.Connection, keys: Sequence[EventKey]) -> None:
        """Mark ``keys`` queued, keeping their digests, inside the caller's transaction on this ledger's database."""
        expires = self.clock() + self.ttl_s
        conn.executemany(
            "INSERT INTO ledger (tenant, event_key, status, digest, expires) VALUES (?, ?, ?, NULL, ?) "
            "ON CONFLICT(tenant, event_key) DO UPDATE SET status = excluded.status, expires = excluded.expires",
            [(tenant, event_key, self.QUEUED, expires) for tenant, event_key in keys],
        )

    def release(self, keys: Sequence[EventKey]) -> None:
        """Forget claims that did not reach the queue. A key the journal marked queued stays: its event is on disk
        (the publish failed after that, e.g. while syncing) and will be applied, so a retry must be a duplicate."""
        with self.db.transaction() as conn:
            conn.executemany(
                "DELETE FROM ledger WHERE tenant = ? AND event_key = ? AND status = ?",
                [(tenant, event_key, self.PENDING) for tenant, event_key in keys],
            )

    def _purge(self, conn: sqlite3.Connection, now: float) -> None:
        if now - self._purged_at >= _PURGE_EVERY_S:
            conn.execute("DELETE FROM ledger WHERE expires <= ?", (now,))
            self._purged_at = now

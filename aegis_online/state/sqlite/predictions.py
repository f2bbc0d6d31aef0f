"""The prediction log in SQLite: request id -> ``codec`` bytes, kept ``ttl_s`` and at most ``max_records``.

It lives in a database file of its own (``predictions.db``): every moderation request writes one record, and that
write must never queue behind the fsync a feedback acknowledgement waits for in the state database. Records are
written with ``synchronous=NORMAL`` (36 us a commit on the development machine): they survive a crash of the
process; a power loss can take the last ones back, and feedback for those requests is then refused as unknown. The
feedback path syncs this file before it acknowledges an event (``SqliteQueueJournal``), so a 202 never names a
prediction a power loss can lose.

Expiry: a read ignores a record older than ``ttl_s``; expired rows are deleted a thousand at a time at most once a
second. Past ``max_records`` the oldest 1% go at once (an eviction per write would cost 50 us each). So neither the
file nor one write grows without bound.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Sequence

from aegis_online.state.base import PredictionLog, PredictionRecord, StoreUnavailableError
from aegis_online.state.codec import decode_prediction, encode_prediction
from aegis_online.state.sqlite.database import Database

SCHEMA = """
CREATE TABLE IF NOT EXISTS predictions (request_id TEXT PRIMARY KEY, created REAL NOT NULL, record BLOB NOT NULL);
CREATE INDEX IF NOT EXISTS predictions_by_age ON predictions (created);
"""
_CHUNK = 500  # ids per SELECT ... IN (...): well under SQLite's limit on bound parameters
_PURGE_EVERY_S = 1.0
_PURGE_ROWS = 1000


class SqlitePredictionLog(PredictionLog):
    def __init__(
        self,
        db: Database,
        *,
        ttl_s: float = 7 * 24 * 3600,
        max_records: int = 1_000_000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.db = db
        self.ttl_s = ttl_s
        self.max_records = max_records
        self.clock = clock
        db.create(SCHEMA)
        self._count = 0
        self._purged_at = 0.0
        self._recount()

    def put(self, record: PredictionRecord) -> None:
        blob = encode_prediction(record)
        now = self.clock()
        try:
            with self.db.transaction() as conn:
                replaced = conn.execute("DELETE FROM predictions WHERE request_id = ?", (record.request_id,)).rowcount
                conn.execute(
                    "INSERT INTO predictions (request_id, created, record) VALUES (?, ?, ?)",
                    (record.request_id, record.created, blob),
                )
                count = self._count + 1 - replaced
                if count > self.max_records:  # evict 1% more than needed: one eviction per hundred writes
                    count -= _delete_oldest(conn, "", (), count - self.max_records + self.max_records // 100)
                if now - self._purged_at >= _PURGE_EVERY_S:
                    count -= _delete_oldest(conn, "WHERE created < ?", (now - self.ttl_s,), _PURGE_ROWS)
                    self._purged_at = now
                self._count = count  # under the database's lock, like every other write of it
        except StoreUnavailableError:
            self._recount()
            raise

    def _recount(self) -> None:
        with self.db.read() as conn:
            self._count = conn.execute("SELECT COUNT(*) FROM predictions").fetchone()[0]

    def get(self, request_id: str) -> PredictionRecord | None:
        return self.get_many([request_id])[0]

    def get_many(self, request_ids: Sequence[str]) -> list[PredictionRecord | None]:
        found: dict[str, bytes] = {}
        oldest = self.clock() - self.ttl_s
        with self.db.read() as conn:
            for start in range(0, len(request_ids), _CHUNK):
                chunk = list(dict.fromkeys(request_ids[start : start + _CHUNK]))
                marks = ",".join("?" * len(chunk))
                query = f"SELECT request_id, record FROM predictions WHERE created >= ? AND request_id IN ({marks})"
                found.update(conn.execute(query, (oldest, *chunk)).fetchall())
        return [None if (blob := found.get(r)) is None else decode_prediction(blob) for r in request_ids]

    def count(self) -> int:
        """Records held (expired ones included until purged). Not ``__len__``: an empty log must stay truthy."""
        return self._count


def _delete_oldest(conn: sqlite3.Connection, where: str, args: tuple[float, ...], limit: int) -> int:
    """Delete up to ``limit`` of the oldest rows matching ``where``; how many went."""
    query = f"DELETE FROM predictions WHERE rowid IN (SELECT rowid FROM predictions {where} ORDER BY created LIMIT ?)"
    return conn.execute(query, (*args, limit)).rowcount

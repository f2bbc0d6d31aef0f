"""Learner records in SQLite, with the in-memory copy the request path reads.

Every moderation request reads its tenant's and the global records, so reads never touch the database: all records
are loaded at open (about 1 KB per (scope, category) key: 1,000 tenants x 23 categories ~ 25 MB) and every write
goes to the database first and to the copy once committed (write-through). One ``compare_and_set`` is one
transaction: records, their watermarks and the event markers of the direct path land together or not at all, which
is what makes exactly-once hold across crashes (``docs/feedback.md``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from aegis_online.state.base import LearnerRecord
from aegis_online.state.codec import decode_learner, encode_learner
from aegis_online.state.memory import MemoryLearnerStore
from aegis_online.state.sqlite.database import Database

SCHEMA = """
CREATE TABLE IF NOT EXISTS learner (key TEXT PRIMARY KEY, record BLOB NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS applied_events (seq INTEGER PRIMARY KEY AUTOINCREMENT, event_id TEXT NOT NULL UNIQUE);
"""


class SqliteLearnerStore(MemoryLearnerStore):
    """``MemoryLearnerStore`` whose writes are committed to ``db`` before they become visible.

    Remembered event markers of the direct path live in the database only (bounded: the newest
    ``max_remembered_events``); that path is for low volumes. The direct path's writes are synced (its caller is
    told the event was applied); batches are not: their queue commit follows them in the same WAL, so a power loss
    that takes a batch back takes its commit back too, and the batch is redelivered.
    """

    def __init__(self, db: Database, max_remembered_events: int = 1_000_000) -> None:
        super().__init__(max_remembered_events)
        self.db = db
        db.create(SCHEMA)
        with db.read() as conn:
            rows = conn.execute("SELECT key, record FROM learner").fetchall()
        self._records.update((key, decode_learner(blob)) for key, blob in rows)

    def _was_applied(self, marker: str) -> bool:
        with self.db.read() as conn:
            return conn.execute("SELECT 1 FROM applied_events WHERE event_id = ?", (marker,)).fetchone() is not None

    def _save(self, records: Mapping[str, LearnerRecord], markers: Sequence[str]) -> None:
        with self.db.transaction() as conn:
            conn.executemany(
                "INSERT INTO learner (key, record) VALUES (?, ?) "
                "ON CONFLICT(key) DO UPDATE SET record = excluded.record",
                [(key, encode_learner(record)) for key, record in records.items()],
            )
            for marker in markers:
                seq = conn.execute("INSERT INTO applied_events (event_id) VALUES (?)", (marker,)).lastrowid
                conn.execute("DELETE FROM applied_events WHERE seq <= ?", ((seq or 0) - self._max_events,))
        if markers:
            self.db.sync()
        self._records.update(records)

"""The journal that makes the in-process feedback queue durable (``feedback.inprocess.InProcessFeedbackQueue``).

A published entry is inserted, with its partition's next offset, in one transaction; a committed one is deleted.
At open the queue reads back what is left (the entries published and not applied when the process stopped or
died) and the next offsets, which therefore never restart: the learner records' watermarks remember offsets per
partition, and an offset issued a second time would be skipped as already applied (the data loss of issue 11).

Exactly-once across crashes: the worker's batch (learner records and watermarks, one transaction) commits before
the entries are deleted (another); a crash between the two redelivers the batch and the watermarks skip it. The
ledger row of a published event turns ``queued`` in the insert's transaction. ``sync`` is the group commit behind
a 202: one fsync of the state database's WAL, and one of the prediction log's (the event's prediction must survive
whatever the event survives).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from aegis_online.state.base import EventKey, JournalEntry, QueueJournal
from aegis_online.state.sqlite.database import Database
from aegis_online.state.sqlite.ledger import SqliteFeedbackLedger

SCHEMA = """
CREATE TABLE IF NOT EXISTS queue_journal (
    topic TEXT NOT NULL, partition INTEGER NOT NULL, offset INTEGER NOT NULL,
    key BLOB, value BLOB, timestamp_ms INTEGER NOT NULL,
    PRIMARY KEY (topic, partition, offset)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS queue_offsets (
    topic TEXT NOT NULL, partition INTEGER NOT NULL, next_offset INTEGER NOT NULL,
    PRIMARY KEY (topic, partition)
) WITHOUT ROWID;
"""


class SqliteQueueJournal(QueueJournal):
    """``QueueJournal`` in ``db``; ``ledger`` (on the same database) is marked in the insert's transaction, and
    ``sync`` also syncs ``also_sync`` (the prediction log's database)."""

    def __init__(
        self, db: Database, ledger: SqliteFeedbackLedger | None = None, also_sync: Sequence[Database] = ()
    ) -> None:
        if ledger is not None and ledger.db is not db:
            raise ValueError("the ledger must live in the journal's database: they are written in one transaction")
        self.db = db
        self.ledger = ledger
        self.also_sync = tuple(also_sync)
        db.create(SCHEMA)

    def load(self, topic: str) -> tuple[dict[int, int], list[JournalEntry]]:
        with self.db.read() as conn:
            offsets = conn.execute("SELECT partition, next_offset FROM queue_offsets WHERE topic = ?", (topic,))
            next_offsets = dict(offsets.fetchall())
            rows = conn.execute(
                "SELECT partition, offset, key, value, timestamp_ms FROM queue_journal WHERE topic = ? "
                "ORDER BY partition, offset",
                (topic,),
            ).fetchall()
        return next_offsets, [JournalEntry(*row) for row in rows]

    def append(self, topic: str, entry: JournalEntry, queued: EventKey | None = None) -> int:
        with self.db.transaction() as conn:
            conn.execute(
                "INSERT INTO queue_journal (topic, partition, offset, key, value, timestamp_ms) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (topic, entry.partition, entry.offset, entry.key, entry.value, entry.timestamp_ms),
            )
            conn.execute(
                "INSERT INTO queue_offsets (topic, partition, next_offset) VALUES (?, ?, ?) "
                "ON CONFLICT(topic, partition) DO UPDATE SET next_offset = max(next_offset, excluded.next_offset)",
                (topic, entry.partition, entry.offset + 1),
            )
            if queued is not None and self.ledger is not None:
                self.ledger.mark_queued(conn, [queued])
        return self.db.commits

    def sync(self, ticket: int) -> None:
        self.db.sync(ticket)
        for other in self.also_sync:
            other.sync()

    def commit(self, topic: str, offsets: Mapping[int, int]) -> None:
        with self.db.transaction() as conn:
            conn.executemany(
                "DELETE FROM queue_journal WHERE topic = ? AND partition = ? AND offset < ?",
                [(topic, partition, offset) for partition, offset in offsets.items()],
            )

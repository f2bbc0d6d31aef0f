"""One SQLite database file of the embedded store: its connection, its lock, its transactions and its durability.

Why one connection behind a lock: every caller lives in one process (the service's request path, the feedback API's
threads, the embedded worker's thread), and SQLite lets one writer in at a time anyway. A Python lock hands the
connection over in microseconds, where two connections would meet SQLite's busy handler, which sleeps for
milliseconds. Reads are a few index look-ups and take the same lock.

Durability: WAL with ``synchronous=NORMAL``. A commit is in the WAL file when it returns, so it survives a crash of
the process (SIGKILL included); only a power loss or an OS crash can take the last commits back, and then always a
suffix of them (WAL frames carry chained checksums: recovery keeps the longest valid prefix of transactions). So a
queue commit is never kept while the learner write before it is lost. Where a caller is promised more (a 202 on
``/v1/feedback``, a 200 on a policy PUT), ``sync`` makes everything committed so far survive a power loss too: one
commit with ``synchronous=FULL``, whose fsync of the WAL covers every earlier commit (a group commit: a feedback
batch of a thousand events costs one fsync, not a thousand). Measured on the development machine (ext4 on a virtual
disk): a NORMAL commit 36 us, a FULL one 230 us.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from aegis_online.state.base import StoreUnavailableError

#: Schema version in ``PRAGMA user_version``; a newer file is refused rather than misread.
SCHEMA_VERSION = 1
FILE_MODE = 0o600


class Database:
    """A SQLite file opened in WAL mode, created ``0600`` (SQLite gives its ``-wal`` and ``-shm`` files the same
    mode), used through ``transaction``, ``read`` and ``sync``. Tables are created by the stores that own them."""

    def __init__(self, path: Path) -> None:
        self.path = path
        fd = os.open(path, os.O_RDWR | os.O_CREAT, FILE_MODE)  # create it private before SQLite opens it
        os.close(fd)
        os.chmod(path, FILE_MODE)
        self._conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._lock = threading.Lock()
        self._commits = 0
        self._synced = 0
        conn = self._conn
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            conn.close()
            raise RuntimeError(
                f"{path}: written by a newer aegis-online (schema {version}, this one reads {SCHEMA_VERSION})"
            )
        mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if mode != "wal":
            conn.close()
            raise RuntimeError(
                f"{path}: SQLite refused WAL mode (got {mode!r}); is the folder on a network file system?"
            )
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        conn.execute("CREATE TABLE IF NOT EXISTS sync_marker (id INTEGER PRIMARY KEY, n INTEGER NOT NULL)")

    def create(self, schema: str) -> None:
        """Run ``CREATE ... IF NOT EXISTS`` statements (a store's tables), in one transaction."""
        with self.transaction() as conn:
            for statement in filter(str.strip, schema.split(";")):
                conn.execute(statement)

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """A write transaction: committed when the block ends, rolled back (nothing written) when it raises.
        SQLite's own failures (disk full, I/O error) surface as ``StoreUnavailableError``: retrying later is safe."""
        with self._lock:
            conn = self._conn
            try:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    yield conn
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
                conn.execute("COMMIT")
            except sqlite3.OperationalError as error:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise StoreUnavailableError(f"sqlite {self.path.name}: {error}") from error
            self._commits += 1

    @contextmanager
    def read(self) -> Iterator[sqlite3.Connection]:
        """The connection, for reads, while no one else uses it."""
        with self._lock:
            try:
                yield self._conn
            except sqlite3.OperationalError as error:
                raise StoreUnavailableError(f"sqlite {self.path.name}: {error}") from error

    @property
    def commits(self) -> int:
        """How many transactions committed so far: a ticket for ``sync``."""
        return self._commits

    def sync(self, ticket: int | None = None) -> None:
        """Return once the first ``ticket`` commits (default: all so far) survive a power loss; at most one fsync."""
        with self._lock:
            if self._synced >= (self._commits if ticket is None else ticket):
                return
            conn = self._conn
            try:
                conn.execute("PRAGMA synchronous=FULL")
                try:
                    conn.execute("BEGIN IMMEDIATE")
                    conn.execute(
                        "INSERT INTO sync_marker (id, n) VALUES (1, 1) ON CONFLICT(id) DO UPDATE SET n = n + 1"
                    )
                    conn.execute("COMMIT")
                finally:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    conn.execute("PRAGMA synchronous=NORMAL")
            except sqlite3.OperationalError as error:
                raise StoreUnavailableError(f"sqlite {self.path.name}: {error}") from error
            self._commits += 1
            self._synced = self._commits

    def close(self) -> None:
        with self._lock:
            self._conn.close()

"""Open the embedded, persistent stores of a data directory: what ``aegis-online serve`` runs on by default.

Layout of ``data_dir`` (created ``0700``; every file ``0600``, SQLite's ``-wal`` and ``-shm`` files included)::

    state.db        learner records and watermarks, applied event ids, tenant policies, the feedback ledger,
                    the in-process feedback queue's journal and offsets
    predictions.db  the prediction log (written on every moderation request; a file of its own, see predictions.py)
    lock            held (flock) while a process uses the folder

One process at a time: the stores keep in-memory copies and the queue issues offsets, so a second process on the
same folder would diverge from the first; it is refused with the holder's pid.
"""

from __future__ import annotations

import logging
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from aegis_online.state.sqlite.database import FILE_MODE, Database
from aegis_online.state.sqlite.journal import SqliteQueueJournal
from aegis_online.state.sqlite.learner import SqliteLearnerStore
from aegis_online.state.sqlite.ledger import SqliteFeedbackLedger
from aegis_online.state.sqlite.policies import SqlitePolicyStore
from aegis_online.state.sqlite.predictions import SqlitePredictionLog

log = logging.getLogger("aegis_online.state.sqlite")
DIR_MODE = 0o700


class DataDirInUseError(RuntimeError):
    """Another process holds the data directory."""


@dataclass
class SqliteStores:
    data_dir: Path
    learner: SqliteLearnerStore
    predictions: SqlitePredictionLog
    policies: SqlitePolicyStore
    ledger: SqliteFeedbackLedger
    journal: SqliteQueueJournal
    #: the lock file's descriptor and the databases, closed in reverse order
    opened: list[int | Database] = field(default_factory=list, repr=False)

    def close(self) -> None:
        """Close the databases and release the folder (idempotent)."""
        _close_all(self.opened)


def open_sqlite_stores(
    data_dir: str | os.PathLike[str], *, prediction_ttl_s: float = 7 * 24 * 3600, max_predictions: int = 1_000_000
) -> SqliteStores:
    """The stores of ``data_dir`` (created when missing), holding its lock until ``close``."""
    folder = Path(data_dir).expanduser().resolve()
    if not folder.exists():
        folder.mkdir(mode=DIR_MODE, parents=True)
        os.chmod(folder, DIR_MODE)  # mkdir's mode is cut by the umask; make it exactly 0700
    elif stat.S_IMODE(folder.stat().st_mode) & 0o077:
        log.warning("data dir %s is readable by other users (mode %o); chmod 700 it", folder, folder.stat().st_mode)
    opened: list[int | Database] = [_lock(folder / "lock")]
    try:
        state = Database(folder / "state.db")
        opened.append(state)
        predictions_db = Database(folder / "predictions.db")
        opened.append(predictions_db)
        ledger = SqliteFeedbackLedger(state, ttl_s=prediction_ttl_s)
        stores = SqliteStores(
            data_dir=folder,
            learner=SqliteLearnerStore(state),
            predictions=SqlitePredictionLog(predictions_db, ttl_s=prediction_ttl_s, max_records=max_predictions),
            policies=SqlitePolicyStore(state),
            ledger=ledger,
            journal=SqliteQueueJournal(state, ledger, also_sync=[predictions_db]),
            opened=opened,
        )
    except BaseException:
        _close_all(opened)
        raise
    log.info(
        "embedded store in %s: %d learner keys, %d predictions",
        folder,
        len(stores.learner.keys()),
        stores.predictions.count(),
    )
    return stores


def _close_all(opened: list[int | Database]) -> None:
    while opened:
        item = opened.pop()
        if isinstance(item, Database):
            item.close()
        else:
            os.close(item)  # the lock file: closing it releases the flock


def _lock(path: Path) -> int:
    """Open and flock ``path`` (the kernel releases it when the process dies, SIGKILL included); its pid inside."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, FILE_MODE)
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock, as before
        return fd
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        holder = os.read(fd, 32).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise DataDirInUseError(f"{path.parent}: in use by another aegis-online process (pid {holder})") from None
    os.ftruncate(fd, 0)
    os.write(fd, str(os.getpid()).encode())
    return fd

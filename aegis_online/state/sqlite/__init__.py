"""The embedded, persistent stores: SQLite files in a data directory (``open_sqlite_stores``), with in-memory copies
of what the request path reads. Standard library only."""

from aegis_online.state.sqlite.database import Database
from aegis_online.state.sqlite.journal import SqliteQueueJournal
from aegis_online.state.sqlite.learner import SqliteLearnerStore
from aegis_online.state.sqlite.ledger import SqliteFeedbackLedger
from aegis_online.state.sqlite.policies import SqlitePolicyStore
from aegis_online.state.sqlite.predictions import SqlitePredictionLog
from aegis_online.state.sqlite.stores import DataDirInUseError, SqliteStores, open_sqlite_stores

__all__ = [
    "DataDirInUseError",
    "Database",
    "SqliteFeedbackLedger",
    "SqliteLearnerStore",
    "SqlitePolicyStore",
    "SqlitePredictionLog",
    "SqliteQueueJournal",
    "SqliteStores",
    "open_sqlite_stores",
]

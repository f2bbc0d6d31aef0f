"""Where learner state, the prediction log and tenant policies live: small interfaces, embedded and server backends.

The Redis backends live in ``state.redis_store`` and import ``redis`` only when used; the embedded, persistent ones
in ``state.sqlite``.
"""

from aegis_online.state.base import (
    BatchCompute,
    BatchOutcome,
    EventKey,
    FeedbackLedger,
    JournalEntry,
    LearnerRecord,
    LearnerStore,
    PolicyStore,
    PredictionLog,
    PredictionRecord,
    QueueJournal,
    StoreUnavailableError,
    UpdateBatch,
)
from aegis_online.state.memory import (
    CachedPolicyStore,
    MemoryFeedbackLedger,
    MemoryLearnerStore,
    MemoryPolicyStore,
    MemoryPredictionLog,
)

__all__ = [
    "BatchCompute",
    "BatchOutcome",
    "CachedPolicyStore",
    "EventKey",
    "FeedbackLedger",
    "JournalEntry",
    "LearnerRecord",
    "LearnerStore",
    "MemoryFeedbackLedger",
    "MemoryLearnerStore",
    "MemoryPolicyStore",
    "MemoryPredictionLog",
    "PolicyStore",
    "PredictionLog",
    "PredictionRecord",
    "QueueJournal",
    "StoreUnavailableError",
    "UpdateBatch",
]

"""Where learner state, the prediction log and tenant policies live: small interfaces, embedded and server backends.

The Redis backends live in ``state.redis_store`` and import ``redis`` only when used; the embedded, persistent ones
in ``state.sqlite``.
"""

from aegis_online.state.base import (
    CONFLICT,
    SEEN,
    WRITTEN,
    EventKey,
    FeedbackLedger,
    GroupWrite,
    JournalEntry,
    LearnerRecord,
    LearnerStore,
    PolicyStore,
    PredictionLog,
    PredictionRecord,
    QueueJournal,
    StoreUnavailableError,
    hash_tag,
)
from aegis_online.state.memory import (
    MemoryFeedbackLedger,
    MemoryLearnerStore,
    MemoryPolicyStore,
    MemoryPredictionLog,
)
from aegis_online.state.policy_cache import CachedPolicyStore

__all__ = [
    "CONFLICT",
    "SEEN",
    "WRITTEN",
    "CachedPolicyStore",
    "EventKey",
    "FeedbackLedger",
    "GroupWrite",
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
    "hash_tag",
]

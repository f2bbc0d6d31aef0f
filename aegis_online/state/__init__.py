"""Where learner state, the prediction log and tenant policies live: small interfaces, embedded and server backends.

The Redis backends live in ``state.redis_store`` and import ``redis`` only when used.
"""

from aegis_online.state.base import (
    BatchCompute,
    BatchOutcome,
    EventKey,
    FeedbackLedger,
    LearnerRecord,
    LearnerStore,
    PolicyStore,
    PredictionLog,
    PredictionRecord,
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
    "LearnerRecord",
    "LearnerStore",
    "MemoryFeedbackLedger",
    "MemoryLearnerStore",
    "MemoryPolicyStore",
    "MemoryPredictionLog",
    "PolicyStore",
    "PredictionLog",
    "PredictionRecord",
    "StoreUnavailableError",
    "UpdateBatch",
]

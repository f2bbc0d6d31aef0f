"""Where learner state, the prediction log and tenant policies live: small interfaces, embedded and server backends."""

from aegis_online.state.base import LearnerRecord, LearnerStore, PolicyStore, PredictionLog, PredictionRecord
from aegis_online.state.memory import MemoryLearnerStore, MemoryPolicyStore, MemoryPredictionLog

__all__ = [
    "LearnerRecord",
    "LearnerStore",
    "MemoryLearnerStore",
    "MemoryPolicyStore",
    "MemoryPredictionLog",
    "PolicyStore",
    "PredictionLog",
    "PredictionRecord",
]

"""Learner state per (scope, category): where it lives (``keyspace``), how feedback changes it exactly once
(``updates``), and the learning path that joins feedback with predictions (``applier``). Never calls an expert."""

from aegis_online.weights.applier import FeedbackApplier
from aegis_online.weights.keyspace import GLOBAL_SCOPE, KeySpace, personalised_states
from aegis_online.weights.updates import BatchOutcome, PlannedFeedback

__all__ = ["GLOBAL_SCOPE", "BatchOutcome", "FeedbackApplier", "KeySpace", "PlannedFeedback", "personalised_states"]

"""The learning path: join a feedback event with its logged prediction, plan its key updates, apply them once.

A ``FeedbackApplier`` needs expert *names* and a learner, never the experts: it reads their outputs from the
prediction log. So a feedback worker builds one from the service's config alone (``feedback/``), and nothing on
this path can call a model.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from aegis_online.errors import InvalidFeedbackError, TenantMismatchError, UnknownRequestError
from aegis_online.learn import DEFAULT_LEARNER, Learner, make_learner
from aegis_online.policy import resolve_category
from aegis_online.schemas import OVERALL, FeedbackEvent, FeedbackResult
from aegis_online.state import (
    LearnerStore,
    MemoryLearnerStore,
    MemoryPolicyStore,
    MemoryPredictionLog,
    PolicyStore,
    PredictionLog,
    PredictionRecord,
)
from aegis_online.weights.keyspace import GLOBAL_SCOPE, KeySpace
from aegis_online.weights.updates import (
    BatchOutcome,
    PlannedFeedback,
    StreamPositions,
    apply_updates,
    overall_outputs,
    plan_updates,
)


class FeedbackApplier:
    """Applies feedback to the learner state of one (learner, ordered expert list).

    >>> applier = FeedbackApplier(("a", "b"), "hedge")
    >>> applier.keyspace.key("acme", "S1").endswith(":{acme}:S1")
    True
    """

    def __init__(
        self,
        expert_names: Sequence[str],
        learner: str | Learner = DEFAULT_LEARNER,
        *,
        store: LearnerStore | None = None,
        prediction_log: PredictionLog | None = None,
        policies: PolicyStore | None = None,
    ) -> None:
        names = tuple(expert_names)
        if not names:
            raise ValueError("experts: at least one expert name is needed")
        if len(set(names)) != len(names):
            raise ValueError(f"experts: names must be unique, got {list(names)}")
        self.expert_names = names
        self.learner = learner if isinstance(learner, Learner) else make_learner(learner, len(names))
        if self.learner.n_experts != len(names):
            raise ValueError(f"learner has {self.learner.n_experts} experts, the expert list {len(names)}")
        self.keyspace = KeySpace(self.learner.name, names)
        self.store = store or MemoryLearnerStore()
        self.prediction_log = prediction_log or MemoryPredictionLog()
        self.policies = policies or MemoryPolicyStore()

    def apply(self, event: FeedbackEvent) -> FeedbackResult:
        """Apply one event now, exactly once per event id (the direct path: no queue)."""
        plan = self.plan(event, self.prediction_log.get(event.request_id))
        updates = plan_updates([plan], self.learner)
        applied, _ = apply_updates(self.store, self.learner, updates, event_id=event.idempotency_key)
        return FeedbackResult(
            request_id=event.request_id,
            event_id=event.idempotency_key,
            applied=bool(applied.any()),
            categories=plan.labels,
            scopes=plan.scopes,
        )

    def apply_batch(self, items: Sequence[tuple[PlannedFeedback, str, int]]) -> BatchOutcome:
        """Apply planned events read from ordered streams, given as ``(plan, stream, offset)`` in stream order.

        Exactly once per (stream, offset) whatever the redeliveries; the result equals calling ``apply`` on each
        event in order. Says, per item, whether this call applied it (False: it had been applied before).
        """
        if not items:
            return BatchOutcome([], 0)
        plans, item_streams, item_offsets = zip(*items, strict=True)
        updates = plan_updates(plans, self.learner)
        stream_index: dict[str, int] = {}
        stream_of = np.array([stream_index.setdefault(s, len(stream_index)) for s in item_streams], dtype=np.int64)
        positions = StreamPositions(
            streams=tuple(stream_index),
            entry_stream=stream_of[updates.entry_event],
            entry_offset=np.array(item_offsets, dtype=np.int64)[updates.entry_event],
        )
        entries, conflicts = apply_updates(self.store, self.learner, updates, positions=positions)
        applied = np.zeros(len(items), dtype=bool)
        np.logical_or.at(applied, updates.entry_event, entries)
        return BatchOutcome(applied.tolist(), conflicts)

    def plan(self, event: FeedbackEvent, record: PredictionRecord | None) -> PlannedFeedback:
        """Validate ``event`` against its logged prediction and say which keys it updates with what.

        Raises the ``AegisError`` that names what is wrong: unknown or expired request, another tenant's request,
        another expert set, labels for categories that were not evaluated.
        """
        if record is None:
            raise UnknownRequestError(f"request_id: no logged prediction {event.request_id!r} (unknown or expired)")
        if record.tenant != event.tenant:
            raise TenantMismatchError(f"tenant: request {event.request_id!r} belongs to another tenant")
        if record.experts != self.expert_names:
            raise InvalidFeedbackError("request_id: the prediction was made by a different expert set")
        labels = self.resolve_labels(event, record)
        where = {**_category_rows(record.categories), OVERALL: len(record.categories)}
        cats = list(labels)
        space = self.keyspace
        overall = None
        if OVERALL in labels:  # the whole-request row over the categories the tenant's policy acts on, as decided
            policy = self.policies.effective(record.tenant)
            acted = np.array([policy.action_for(c) != "allow" for c in record.categories])
            overall = None if acted.all() else overall_outputs(record.outputs, acted)
        return PlannedFeedback(
            event,
            record,
            labels,
            [where[c] for c in cats],
            space.keys(GLOBAL_SCOPE, cats),
            [] if record.tenant == GLOBAL_SCOPE else space.keys(record.tenant, cats),
            event.trusted,
            overall,
            derived_overall=OVERALL in labels and event.label is None,
        )

    def resolve_labels(self, event: FeedbackEvent, record: PredictionRecord) -> dict[str, float]:
        """Targets per key: category labels train their categories; the whole request's key (``OVERALL``) learns
        from a safe/unsafe verdict, or from category labels as their most severe one (a request whose labelled
        categories are all safe is safe: the categories a moderator did not label are taken as not unsafe, which
        keeps the whole-request key's labels from being all positives when moderators label some categories).

        A verdict of the whole request never labels a category: ``unsafe`` does not say which category was
        unsafe, and guessing (the flagged or top-scored one) would feed the learner its own scores back.
        """
        if event.label is not None:
            return {OVERALL: 1.0 if event.label == "unsafe" else 0.0}
        assert event.labels is not None
        if event.labels.keys() <= _category_rows(record.categories).keys():  # ids of evaluated categories: no policy
            resolved = dict(event.labels)
        else:
            known = self.policies.effective(record.tenant).category_set()
            resolved = {}
            for key, value in event.labels.items():
                cat = resolve_category(key, known)
                if cat is None:
                    raise InvalidFeedbackError(f"labels.{key}: unknown category")
                if cat not in record.categories:
                    raise InvalidFeedbackError(
                        f"labels.{key}: category was not evaluated in request {record.request_id!r}"
                    )
                resolved[cat] = value
        resolved[OVERALL] = max(resolved.values())
        return resolved


_ROWS: dict[int, tuple[tuple[str, ...], dict[str, int]]] = {}


def _category_rows(categories: tuple[str, ...]) -> dict[str, int]:
    """Row of each category in a prediction, cached by the identity of the categories tuple (the prediction
    codec shares one tuple between records over the same categories; the cache keeps it alive)."""
    found = _ROWS.get(id(categories))
    if found is None or found[0] is not categories:
        found = (categories, {c: i for i, c in enumerate(categories)})
        if len(_ROWS) >= 1024:
            _ROWS.clear()
        _ROWS[id(categories)] = found
    return found[1]

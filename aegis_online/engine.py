"""The engine: experts -> combine -> decide -> log, and feedback -> learner update. One definition of a decision.

Everything that serves, replays or simulates goes through ``Engine``: ``moderate`` (async, calls the experts
under a deadline) or ``decide`` (sync, from expert outputs already in hand, e.g. a replay cache) on the request
path, and ``feedback`` on the learning path. The feedback path never recomputes an expert: it joins the logged
prediction by request id and updates the learner from the stored outputs.

Weights are learned per (scope, category). Every event updates the global scope and the tenant's scope; the
tenant's scope starts as a copy of the global state when its first feedback arrives, and its weights are used
once it has ``policy.personalise_after`` events.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from aegis_online.ensemble import combine
from aegis_online.errors import InvalidFeedbackError, InvalidRequestError, TenantMismatchError, UnknownRequestError
from aegis_online.experts import Expert, ExpertInput, score_with_deadline
from aegis_online.learn import DEFAULT_LEARNER, Learner, make_learner
from aegis_online.learn.exp3ix import Exp3IX
from aegis_online.policy import TenantPolicy, decide_category, overall_action, resolve_category
from aegis_online.schemas import (
    FAILURE_KINDS,
    Decision,
    ExpertContribution,
    ExpertOutput,
    FeedbackEvent,
    FeedbackResult,
    MissingExpert,
    MissingKind,
    ModerationRequest,
    UnscoredCategory,
    new_request_id,
)
from aegis_online.state import (
    LearnerRecord,
    LearnerStore,
    MemoryLearnerStore,
    MemoryPolicyStore,
    MemoryPredictionLog,
    PolicyStore,
    PredictionLog,
    PredictionRecord,
    UpdateBatch,
)
from aegis_online.state.replay import KeyUpdates, replay
from aegis_online.taxonomy import CategorySet

GLOBAL_SCOPE = "global"
#: Order in which an unscored category names its reasons: the most actionable first.
_KIND_ORDER: tuple[str, ...] = ("timeout", "error", "language", "not_queried", "not_covered")


@dataclass(frozen=True)
class BanditConfig:
    """Query only ``k`` experts per request (the ``always`` ones plus a sample), learning with Exp3-IX."""

    k: int
    always: tuple[str, ...] = ()


class Engine:
    """Ties experts, learner, stores and policies together."""

    def __init__(
        self,
        experts: Sequence[Expert],
        *,
        learner: str | Learner = DEFAULT_LEARNER,
        store: LearnerStore | None = None,
        prediction_log: PredictionLog | None = None,
        policies: PolicyStore | None = None,
        deadline_s: float = 2.0,
        bandit: BanditConfig | None = None,
        seed: int | None = None,
    ) -> None:
        if not experts:
            raise ValueError("experts: the engine needs at least one expert")
        names = [e.name for e in experts]
        if len(set(names)) != len(names):
            raise ValueError(f"experts: names must be unique, got {names}")
        self.experts = list(experts)
        self.expert_names = tuple(names)
        if bandit is not None:
            learner = learner if isinstance(learner, Exp3IX) else Exp3IX(len(experts))
            unknown = set(bandit.always) - set(names)
            if unknown:
                raise ValueError(f"bandit.always: unknown experts {sorted(unknown)}")
        self.learner = learner if isinstance(learner, Learner) else make_learner(learner, len(experts))
        if self.learner.n_experts != len(experts):
            raise ValueError(f"learner has {self.learner.n_experts} experts, the engine {len(experts)}")
        if self.learner.bandit and bandit is None:
            raise ValueError("a bandit learner needs a BanditConfig (how many experts to query)")
        self.bandit = bandit
        self.store = store or MemoryLearnerStore()
        self.prediction_log = prediction_log or MemoryPredictionLog()
        self.policies = policies or MemoryPolicyStore()
        self.deadline_s = deadline_s
        self._rng = np.random.default_rng(seed)
        # State written for one (learner, expert list) must never be read by another: namespace the keys.
        digest = hashlib.sha1("\x1f".join(names).encode()).hexdigest()[:8]
        self.namespace = f"{self.learner.name}:{digest}"

    # -- policies and weights ----------------------------------------------------------------------------------
    def policy(self, tenant: str) -> TenantPolicy:
        """The tenant's policy, else the ``default`` tenant's, else the built-in default."""
        found = self.policies.get(tenant) or self.policies.get("default")
        if found is None:
            return TenantPolicy(tenant=tenant)
        return found if found.tenant == tenant else found.model_copy(update={"tenant": tenant})

    def state_key(self, scope: str, category: str) -> str:
        """Store key of one (scope, category); a tenant's keys share the ``{tenant}`` hash tag (Redis Cluster)."""
        return f"{self.namespace}:{{{scope}}}:{category}"

    def load_states(self, tenant: str, categories: Sequence[str], policy: TenantPolicy) -> tuple[np.ndarray, list[str]]:
        """Learner states to predict with per category, and which scope each came from."""
        keys = [self.state_key(GLOBAL_SCOPE, c) for c in categories]
        keys += [self.state_key(tenant, c) for c in categories]
        records = self.store.load(keys)
        n = len(categories)
        states = self.learner.init_states(n)
        scopes = [GLOBAL_SCOPE] * n
        for i in range(n):
            own, shared = records[n + i], records[i]
            if own is not None and own.updates >= policy.personalise_after:
                states[i], scopes[i] = own.state, "tenant"
            elif shared is not None:
                states[i] = shared.state
        return states, scopes

    def weights(self, tenant: str, categories: Sequence[str] | None = None) -> dict[str, dict[str, float]]:
        """Current weight of every expert per category for a tenant (the weights its requests use)."""
        policy = self.policy(tenant)
        cats = list(categories or policy.category_set().ids)
        states, _ = self.load_states(tenant, cats, policy)
        w = self.learner.weights(states)
        return {c: dict(zip(self.expert_names, map(float, w[i]), strict=True)) for i, c in enumerate(cats)}

    # -- request path ------------------------------------------------------------------------------------------
    def categories_for(self, request: ModerationRequest, policy: TenantPolicy) -> CategorySet:
        known = policy.category_set()
        if request.categories is None:
            return known
        chosen = []
        for i, key in enumerate(request.categories):
            cat_id = resolve_category(key, known)
            if cat_id is None:
                raise InvalidRequestError(f"categories.{i}: unknown category {key!r}")
            chosen.append(known[cat_id])
        return CategorySet(tuple(dict.fromkeys(chosen)))

    def select_experts(
        self, tenant: str, categories: Sequence[str], policy: TenantPolicy
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Which experts to query (all, or a bandit sample) and their selection probabilities."""
        n = len(self.experts)
        if self.bandit is None:
            return np.ones(n, dtype=bool), None
        states, _ = self.load_states(tenant, categories, policy)
        mean_state = states.mean(axis=0)  # one selection per request, from the categories' average estimates
        always = [self.expert_names.index(a) for a in self.bandit.always]
        assert isinstance(self.learner, Exp3IX)
        return self.learner.select(mean_state, self.bandit.k, self._rng, always=always)

    async def moderate(self, request: ModerationRequest, *, deadline_s: float | None = None) -> Decision:
        """Score the request with the experts under the deadline (``deadline_s``, default the engine's: what is
        left of the request's budget after queueing), combine, decide and log."""
        budget = self.deadline_s if deadline_s is None else deadline_s
        policy = self.policy(request.tenant)
        categories = self.categories_for(request, policy)
        chosen, propensities = self.select_experts(request.tenant, categories.ids, policy)
        calls = []
        for expert, selected in zip(self.experts, chosen, strict=True):
            covered = tuple(c for c in categories if expert.covers(c))
            if selected and covered:
                item = ExpertInput(messages=tuple(request.messages), check=request.check, categories=covered)
                calls.append(score_with_deadline(expert, [item], budget))
        results = await asyncio.gather(*calls)
        outputs = [batch[0] for batch in results]
        return self.decide(request, outputs, propensities=propensities, policy=policy, categories=categories)

    def decide(
        self,
        request: ModerationRequest,
        outputs: Sequence[ExpertOutput],
        *,
        propensities: np.ndarray | None = None,
        policy: TenantPolicy | None = None,
        categories: CategorySet | None = None,
    ) -> Decision:
        """Combine expert outputs already in hand, apply the tenant's policy, log the prediction."""
        policy = policy or self.policy(request.tenant)
        categories = categories or self.categories_for(request, policy)
        cat_ids = categories.ids
        by_name = {o.expert: o for o in outputs}
        unknown = set(by_name) - set(self.expert_names)
        if unknown:
            raise InvalidRequestError(f"outputs: unknown experts {sorted(unknown)}")
        matrix = np.full((len(cat_ids), len(self.experts)), np.nan)
        missing: list[MissingExpert] = []
        #: why expert i gave no score (None: it answered)
        absent: list[MissingKind | None] = []
        for i, (name, expert) in enumerate(zip(self.expert_names, self.experts, strict=True)):
            out = by_name.get(name)
            if out is None:
                covers_any = any(expert.covers(cat) for cat in categories)
                kind: MissingKind = "not_queried" if covers_any else "not_covered"
                reason = "not queried (bandit mode)" if propensities is not None else "not queried"
                missing.append(
                    MissingExpert(
                        expert=name, kind=kind, reason=reason if covers_any else "covers none of the categories"
                    )
                )
                absent.append(kind)
            elif not out.ok:
                missing.append(MissingExpert(expert=name, kind=out.error_kind, reason=out.error or "error"))
                absent.append(out.error_kind)
            else:
                absent.append(None)
                for c, cat in enumerate(cat_ids):
                    if cat in out.scores:
                        matrix[c, i] = out.scores[cat]
        states, scopes = self.load_states(request.tenant, cat_ids, policy)
        combination = combine(self.learner, states, matrix)
        strictness = policy.strictness_for(request.strictness)
        unscored = self._unscored(categories, combination.scores, absent)
        why = {u.category: u.kinds[0] for u in unscored}
        decisions = [
            decide_category(
                policy, cat, None if np.isnan(s) else float(s), strictness, scopes[c], why.get(cat, "not_covered")
            )
            for c, (cat, s) in enumerate(zip(cat_ids, combination.scores, strict=True))
        ]
        nobody = bool(np.isnan(combination.scores).all()) and any(k in FAILURE_KINDS for k in absent)
        degraded = bool(unscored) or nobody
        action = policy.on_no_experts if nobody and policy.on_no_experts else overall_action(decisions)
        request_id = request.request_id or new_request_id()
        contributions = [
            ExpertContribution(
                expert=name,
                weights={
                    cat: float(combination.weights[c, i]) for c, cat in enumerate(cat_ids) if not np.isnan(matrix[c, i])
                },
                scores={cat: float(matrix[c, i]) for c, cat in enumerate(cat_ids) if not np.isnan(matrix[c, i])},
                latency_ms=by_name[name].latency_ms,
            )
            for i, name in enumerate(self.expert_names)
            if name in by_name and by_name[name].ok
        ]
        flagged = tuple(d.category for d in decisions if d.flagged and d.score is not None)
        self.prediction_log.put(
            PredictionRecord(
                request_id=request_id,
                tenant=request.tenant,
                check=request.check,
                created=time.time(),
                experts=self.expert_names,
                categories=cat_ids,
                outputs=matrix,
                scores=combination.scores,
                flagged=flagged,
                propensities=propensities,
                input_digest=request.input_digest,
            )
        )
        return Decision(
            request_id=request_id,
            tenant=request.tenant,
            check=request.check,
            strictness=strictness,
            action=action,
            flagged=action != "allow",
            categories=decisions,
            experts=contributions,
            missing_experts=missing,
            degraded=degraded,
            unscored=unscored,
        )

    def _unscored(
        self, categories: CategorySet, scores: np.ndarray, absent: Sequence[MissingKind | None]
    ) -> list[UnscoredCategory]:
        """Categories with no score although an expert of the ensemble covers them, with why (the failure kinds of
        their covering experts; ``error`` for one that answered without the score). Categories no expert covers
        are a gap of the deployment, reported per category as ``not_covered``, not a degradation."""
        found = []
        for c, cat in enumerate(categories):
            if not np.isnan(scores[c]):
                continue
            experts = [i for i, expert in enumerate(self.experts) if expert.covers(cat)]
            if not experts:
                continue
            kinds = sorted({absent[i] or "error" for i in experts}, key=_KIND_ORDER.index)
            found.append(
                UnscoredCategory(
                    category=cat.id,
                    kinds=kinds,
                    experts=[self.expert_names[i] for i in experts],  # type: ignore[arg-type]
                )
            )
        return found

    # -- feedback path -----------------------------------------------------------------------------------------
    def feedback(self, event: FeedbackEvent) -> FeedbackResult:
        """Join the logged prediction and update the learner per labelled category, exactly once per event.

        Writes only the keys the event updates, plus the existing global keys a fresh tenant key starts from
        (rewritten unchanged: their version guards the start state); an untrusted event never creates a global key.
        """
        plan = self.plan_feedback(event, self.prediction_log.get(event.request_id))
        updates = _key_updates([plan], self.learner)
        keys = updates.keys
        touched = frozenset(updates.math.entry_key.tolist())
        parents = [k for k in range(len(keys)) if k not in touched]
        found = self.store.load([keys[k] for k in parents]) if parents else []
        needed = sorted(touched | {k for k, r in zip(parents, found, strict=True) if r is not None})
        learner = self.learner

        def update(loaded: list[LearnerRecord | None]) -> list[LearnerRecord]:
            current: list[LearnerRecord | None] = [None] * len(keys)
            for k, record in zip(needed, loaded, strict=True):
                current[k] = record
            mask = np.ones(len(updates.math.entry_key), dtype=bool)
            states = replay(learner, updates.math, current, mask, touched)
            out = []
            for k in needed:
                r = current[k]
                if k in touched:
                    marks = {} if r is None else r.marks
                    out.append(LearnerRecord(state=states[k], updates=1 + (0 if r is None else r.updates), marks=marks))
                else:  # a parent read, not updated
                    out.append(r if r is not None else LearnerRecord(state=learner.init_states(1)[0]))
            return out

        applied = self.store.apply(event.idempotency_key, [keys[k] for k in needed], update)
        return FeedbackResult(
            request_id=event.request_id,
            event_id=event.idempotency_key,
            applied=applied,
            categories=plan.labels,
            scopes=plan.scopes,
        )

    def plan_feedback(self, event: FeedbackEvent, record: PredictionRecord | None) -> PlannedFeedback:
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
        where = _category_rows(record.categories)
        tenant, cats = record.tenant, list(labels)
        rows = [where[c] for c in cats]
        ns = self.namespace
        return PlannedFeedback(
            event,
            record,
            labels,
            rows,
            [f"{ns}:{{{GLOBAL_SCOPE}}}:{c}" for c in cats],
            [] if tenant == GLOBAL_SCOPE else [f"{ns}:{{{tenant}}}:{c}" for c in cats],
            event.trusted,
        )

    def feedback_batch(self, items: Sequence[tuple[PlannedFeedback, str, int]]) -> BatchApplied:
        """Apply planned events read from ordered streams, given as ``(plan, stream, offset)`` in stream order.

        Exactly once per (stream, offset) whatever the redeliveries: each key's watermark per stream skips what it
        has seen. The result equals calling ``feedback`` on each event in order. Says, per item, whether this
        call applied it (False: it had been applied before).
        """
        if not items:
            return BatchApplied([], 0)
        plans, item_streams, item_offsets = zip(*items, strict=True)
        updates = _key_updates(plans, self.learner)
        stream_index: dict[str, int] = {}
        stream_of = np.array([stream_index.setdefault(s, len(stream_index)) for s in item_streams], dtype=np.int64)
        item_of = np.repeat(np.arange(len(items)), updates.per_plan)
        batch = UpdateBatch(
            keys=updates.keys,
            streams=tuple(stream_index),
            entry_key=updates.math.entry_key,
            entry_stream=stream_of[item_of],
            entry_offset=np.array(item_offsets, dtype=np.int64)[item_of],
            phases=updates.phases,
        )
        learner = self.learner

        def compute(
            records: Sequence[LearnerRecord | None], pending: np.ndarray, wanted: frozenset[int]
        ) -> dict[int, np.ndarray]:
            return replay(learner, updates.math, records, pending, wanted)

        outcome = self.store.apply_batch(batch, compute)
        applied = np.zeros(len(items), dtype=bool)
        np.logical_or.at(applied, item_of, outcome.applied)
        return BatchApplied(applied.tolist(), outcome.conflicts)

    def resolve_labels(self, event: FeedbackEvent, record: PredictionRecord) -> dict[str, float]:
        """Per-category targets: explicit labels, or one verdict spread over the evaluated categories.

        ``safe`` labels every evaluated category 0. ``unsafe`` labels 1 the categories the decision flagged or,
        when it flagged none (a miss), the one it scored highest; the others are left alone, since the reporter
        did not say they were safe.
        """
        if event.label == "safe":
            return dict.fromkeys(record.categories, 0.0)
        if event.label == "unsafe":
            if record.flagged:
                return dict.fromkeys(record.flagged, 1.0)
            scored = np.where(np.isnan(record.scores), -np.inf, record.scores)
            return {record.categories[int(np.argmax(scored))]: 1.0}
        assert event.labels is not None
        if event.labels.keys() <= _category_rows(record.categories).keys():  # ids of evaluated categories: no policy
            return dict(event.labels)
        known = self.policy(record.tenant).category_set()
        resolved: dict[str, float] = {}
        for key, value in event.labels.items():
            cat = resolve_category(key, known)
            if cat is None:
                raise InvalidFeedbackError(f"labels.{key}: unknown category")
            if cat not in record.categories:
                raise InvalidFeedbackError(f"labels.{key}: category was not evaluated in request {record.request_id!r}")
            resolved[cat] = value
        return resolved


class BatchApplied(NamedTuple):
    """What ``feedback_batch`` did: per item, applied now (False: before); and how many write races it lost
    (each re-read and recomputed: concurrent workers writing the same global keys)."""

    applied: list[bool]
    conflicts: int


class PlannedFeedback(NamedTuple):
    """A validated feedback event joined with its prediction: per labelled category (``rows`` of the prediction),
    the global key and the tenant's key, and the label. The tenant's keys always learn; the global keys learn only
    from a ``trusted`` event, otherwise they are only read (a fresh tenant key starts from them). (A tuple: the
    worker makes one per event.)"""

    event: FeedbackEvent
    record: PredictionRecord
    labels: dict[str, float]
    rows: list[int]
    shared_keys: list[str]
    own_keys: list[str]
    trusted: bool = False

    @property
    def scopes(self) -> list[str]:
        """Whose weights this event trains: the tenant's, and the global ones when trusted."""
        return (["tenant"] if self.own_keys else []) + (["global"] if self.trusted else [])


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


@dataclass(frozen=True, eq=False)
class _BatchKeys:
    keys: tuple[str, ...]
    phases: tuple[tuple[int, ...], ...]
    math: KeyUpdates
    per_plan: np.ndarray


def _key_updates(plans: Sequence[PlannedFeedback], learner: Learner) -> _BatchKeys:
    """Entries of the planned events in order: per event, the tenant's entries before the global ones, so that a
    fresh tenant key starts from the global state as it was before that event (see ``state.replay``)."""
    index: dict[str, int] = {}
    parent: list[int] = []
    entry_key: list[int] = []
    entry_parent: list[int] = []
    flat_rows: list[int] = []
    flat_records: list[int] = []
    targets: list[float] = []
    per_plan: list[int] = []
    records: dict[int, int] = {}
    outputs: list[np.ndarray] = []
    props: list[np.ndarray | None] = []
    first_row: list[int] = []
    total_rows = 0
    for plan in plans:
        record = plan.record
        r = records.get(id(record))
        if r is None:
            r = records[id(record)] = len(outputs)
            outputs.append(record.outputs)
            props.append(record.propensities)
            first_row.append(total_rows)
            total_rows += record.outputs.shape[0]
        shared = []
        for key in plan.shared_keys:
            k = index.get(key)
            if k is None:
                k = index[key] = len(parent)
                parent.append(-1)
            shared.append(k)
        own = []
        for key, g in zip(plan.own_keys, shared, strict=False):
            k = index.get(key)
            if k is None:
                k = index[key] = len(parent)
                parent.append(g)
            own.append(k)
        n, start = len(shared), len(entry_key)
        rows = [first_row[r] + row for row in plan.rows]
        values = list(plan.labels.values())
        if own:
            entry_key += own
            entry_parent += range(start + n, start + 2 * n) if plan.trusted else [-1] * len(own)
            flat_rows += rows
            targets += values
        if plan.trusted:  # an untrusted event's global keys stay in ``index``: read as parents, never updated
            entry_key += shared
            entry_parent += [-1] * n
            flat_rows += rows
            targets += values
        per_plan.append(len(own) + (n if plan.trusted else 0))
        flat_records += [r] * per_plan[-1]
    key_parent = np.array(parent, dtype=np.int64)
    with_props = [p is not None for p in props]
    if any(with_props) and not all(with_props):
        raise InvalidFeedbackError("a batch mixes bandit and full-information predictions")
    n_experts = learner.n_experts
    entry_outputs = (np.concatenate(outputs) if outputs else np.zeros((0, n_experts)))[np.array(flat_rows, dtype=int)]
    if np.any(np.abs(entry_outputs - 0.5) > 0.5):  # one check for the batch; NaN (asleep) compares False
        bad = int(np.flatnonzero(np.any(np.abs(entry_outputs - 0.5) > 0.5, axis=1))[0])
        request = plans[int(np.searchsorted(np.cumsum(per_plan), bad, side="right"))].event.request_id
        raise InvalidFeedbackError(f"request_id: the logged outputs of {request!r} are not probabilities")
    return _BatchKeys(
        keys=tuple(index),
        phases=(tuple(np.flatnonzero(key_parent >= 0).tolist()), tuple(np.flatnonzero(key_parent < 0).tolist())),
        math=KeyUpdates(
            key_parent=key_parent,
            entry_key=np.array(entry_key, dtype=np.int64),
            entry_parent=np.array(entry_parent, dtype=np.int64),
            outputs=entry_outputs,
            targets=np.array(targets, dtype=np.float64),
            propensities=np.stack(props)[np.array(flat_records, dtype=np.int64)] if all(with_props) and props else None,
        ),
        per_plan=np.array(per_plan, dtype=np.int64),
    )

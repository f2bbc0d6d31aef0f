"""The request path: experts -> combine -> decide -> log. One definition of a decision.

``moderate`` (async) calls the experts under a deadline; ``decide`` (sync) takes expert outputs already in hand (a
replay cache). Both combine with the learned weights of the tenant's scope (``weights.personalised_states``), apply
the tenant's policy and log the prediction that feedback will be joined with.

Both identify the language of the checked turn (``language.identify``) and apply one rule, ``Moderator.readers``: an
expert that does not read it is not called (and an output of it in hand is not used), and is missing with kind
``language``; a category only such experts cover is unscored, and the policy's ``on_unscored`` decides it. Every path
that calls experts for a request goes through ``moderate`` (the Ray Serve ingress too, over its remote experts).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from aegis_online.ensemble import combine
from aegis_online.errors import InvalidRequestError
from aegis_online.experts import Expert, ExpertInput, score_with_deadline
from aegis_online.language import identify, warm_up
from aegis_online.learn import DEFAULT_LEARNER, Adaptive, Learner, make_learner
from aegis_online.learn.escalation import (
    CASCADE_MARK,
    EscalationRule,
    cascade_learner_name,
    cheap_tier_loss,
    expected_cheap_loss,
    expert_disagreement,
)
from aegis_online.learn.exp3ix import Exp3IX
from aegis_online.policy import (
    PlatformFloor,
    TenantPolicy,
    ThresholdChoice,
    decide_category,
    overall_action,
    resolve_category,
)
from aegis_online.schemas import (
    FAILURE_KINDS,
    OVERALL,
    Action,
    CascadeDecision,
    CategoryDecision,
    Decision,
    ExpertContribution,
    ExpertOutput,
    MissingExpert,
    MissingKind,
    ModerationRequest,
    OverallDecision,
    UnscoredCategory,
    new_request_id,
)
from aegis_online.state import (
    LearnerStore,
    MemoryLearnerStore,
    MemoryPolicyStore,
    MemoryPredictionLog,
    PolicyStore,
    PredictionLog,
    PredictionRecord,
)
from aegis_online.taxonomy import CategorySet
from aegis_online.weights import GLOBAL_SCOPE, KeySpace, personalised_states
from aegis_online.weights.updates import overall_outputs

#: Order in which an unscored category names its reasons: the most actionable first.
_KIND_ORDER: tuple[str, ...] = ("timeout", "error", "language", "not_queried", "not_covered")


@dataclass(frozen=True)
class CascadeConfig:
    """Call the ``expensive`` experts only when the cheap tier's predicted loss on the request (summed over the
    categories the policy acts on and the whole request; learned from feedback by the cascade-aware learner,
    ``learn.escalation.CheapTierLoss``) reaches the tenant's cut, or when a category the expensive tier covers has
    no cheap score. The cut is learned per tenant toward ``rule.target_rate`` (in this process; each replica keeps
    its own, and each converges to the target on its own traffic)."""

    expensive: frozenset[str]
    rule: EscalationRule = field(default_factory=EscalationRule)
    #: the share of a request's deadline the cheap tier may take: the rest is kept for the expensive tier, so that a
    #: cheap tier that times out (which escalates the request) leaves its guard the time to answer
    cheap_deadline_share: float = 0.5
    #: seconds an expensive expert that failed is passed over when the most trusted are chosen (it is then tried
    #: again): while a guard is down, escalations go to the others at once instead of paying its failure first
    failed_cooldown_s: float = 10.0

    def indices(self, names: Sequence[str]) -> tuple[int, ...]:
        """The expensive experts' positions in ``names``; ValueError unless at least one is expensive and one cheap."""
        unknown = sorted(self.expensive - set(names))
        if unknown or not self.expensive or self.expensive >= set(names):
            raise ValueError(
                f"cascade.expensive: need at least one expensive and one cheap expert among {list(names)}"
                + (f"; unknown: {unknown}" if unknown else "")
            )
        return tuple(i for i, name in enumerate(names) if name in self.expensive)


@dataclass(frozen=True)
class BanditConfig:
    """Query only ``k`` experts per request (the ``always`` ones plus a sample), learning with Exp3-IX."""

    k: int
    always: tuple[str, ...] = ()


def final_action(
    decisions: Sequence[CategoryDecision], overall: OverallDecision | None, policy: TenantPolicy
) -> Action:
    """The request's action: the most severe category action, unless the whole-request threshold is learned and no
    category of the request has a learned threshold (the tenant teaches with whole-request verdicts, not category
    labels: the categories' own thresholds then know nothing of its conventions). Then the whole-request decision
    says whether the request is flagged (the crossed categories say with which action;
    when none crossed its own threshold, the action of the highest-scored category the policy acts on), except
    that floors and unscored categories act whatever it says: a learned "fine" never overrides the platform or a
    check that could not run. The whole-request score counts only categories the policy acts on, so a category it
    allows is never acted on through it."""
    by_categories = overall_action(list(decisions))
    taught_by_categories = any(d.threshold_source == "learned" for d in decisions)
    if overall is None or overall.threshold_source != "learned" or taught_by_categories:
        return by_categories
    if overall.flagged:
        if by_categories != "allow":
            return by_categories
        acted = [d for d in decisions if d.score is not None and policy.action_for(d.category) != "allow"]
        return policy.action_for(max(acted, key=lambda d: d.score or 0.0).category) if acted else "allow"
    guarded = [d for d in decisions if d.flagged and (d.score is None or d.threshold_source == "floor")]
    return overall_action(guarded)


class Moderator:
    """Scores, combines, decides and logs, for one (learner, ordered expert list)."""

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
        floors: dict[str, PlatformFloor] | None = None,
        cascade: CascadeConfig | None = None,
    ) -> None:
        if not experts:
            raise ValueError("experts: the engine needs at least one expert")
        names = [e.name for e in experts]
        if len(set(names)) != len(names):
            raise ValueError(f"experts: names must be unique, got {names}")
        self.experts = list(experts)
        self.expert_names = tuple(names)
        if cascade is not None and isinstance(learner, str) and CASCADE_MARK not in learner:
            learner = cascade_learner_name(learner, cascade.indices(names))
        self.learner = learner if isinstance(learner, Learner) else make_learner(learner, len(experts))
        if self.learner.n_experts != len(experts):
            raise ValueError(f"learner has {self.learner.n_experts} experts, the engine {len(experts)}")
        if bandit is not None:
            if not isinstance(self.learner, Exp3IX):
                raise ValueError(
                    f"bandit: bandit mode learns from selection probabilities and needs learner exp3-ix, "
                    f"not {self.learner.name!r}"
                )
            unknown = set(bandit.always) - set(names)
            if unknown:
                raise ValueError(f"bandit.always: unknown experts {sorted(unknown)}")
        elif self.learner.bandit:
            raise ValueError("a bandit learner needs a BanditConfig (how many experts to query)")
        self.bandit = bandit
        if cascade is not None:
            if bandit is not None:
                raise ValueError("cascade: bandit mode and a cascade both choose the experts to call: use one")
            router = cheap_tier_loss(self.learner)
            if router is None or router.expensive != cascade.indices(names):
                raise ValueError(
                    f"cascade: learner {self.learner.name!r} does not learn the loss of the cheap tier of "
                    f"{sorted(cascade.expensive)} (give a learner name, or one made by cascade_learner_name)"
                )
        self.cascade = cascade
        self._cuts: dict[str, float] = {}
        #: when each expensive expert last failed (``time.monotonic``; absent: its last call answered)
        self._failed_at: dict[str, float] = {}
        self.keyspace = KeySpace(self.learner.name, self.expert_names)
        self.store = store or MemoryLearnerStore()
        self.prediction_log = prediction_log or MemoryPredictionLog()
        self.policies = policies or MemoryPolicyStore()
        self.deadline_s = deadline_s
        #: The platform operator's per-category floors (category id -> floor), which no tenant policy loosens.
        self.floors = dict(floors or {})
        self._rng = np.random.default_rng(seed)
        warm_up()  # the language model loads now, not on the first request's clock

    def readers(self, language: str) -> np.ndarray:
        """Which experts read ``language`` (in the engine's order): the only rule by which the request path puts an
        expert to sleep for its language. An undetermined language (``und``) is read by all."""
        return np.array([expert.reads(language) for expert in self.experts], dtype=bool)

    def load_states(self, tenant: str, categories: Sequence[str], policy: TenantPolicy) -> tuple[np.ndarray, list[str]]:
        """Learner states to predict with per category, and which scope each came from."""
        return personalised_states(
            self.store, self.keyspace, self.learner, tenant, categories, policy.personalise_after
        )

    def weights(self, scope: str, categories: Sequence[str] | None = None) -> dict[str, dict[str, float]]:
        """Current weight of every expert per category for a tenant (the weights its requests use), or for
        ``GLOBAL_SCOPE`` (the weights every tenant starts from; categories of the ``default`` policy)."""
        policy = self.policies.effective("default" if scope == GLOBAL_SCOPE else scope)
        cats = list(categories or policy.category_set().ids)
        states, _ = self.load_states(scope, cats, policy)
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

    async def moderate(
        self, request: ModerationRequest, *, deadline_s: float | None = None, remember: bool = True
    ) -> Decision:
        """Score the request with the experts under the deadline (``deadline_s``, default the engine's: what is
        left of the request's budget after queueing), combine, decide and log (``remember=False``: not logged, so
        no feedback can refer to it; for callers that ask for their text not to be stored)."""
        budget = self.deadline_s if deadline_s is None else deadline_s
        started = time.perf_counter()
        policy = self.policies.effective(request.tenant)
        categories = self.categories_for(request, policy)
        chosen, propensities = self.select_experts(request.tenant, categories.ids, policy)
        language = identify(request.checked_text)
        context = {"policy": policy, "categories": categories, "language": language}
        if self.cascade is not None:
            cheap = np.array([name not in self.cascade.expensive for name in self.expert_names])
            share = self.cascade.cheap_deadline_share
            outputs = await self._score(request, categories, chosen & cheap, language, share * budget)
            # One read of the tenant's key states serves the escalation and the decision: one store round trip,
            # and both see the same weights.
            loaded = self.load_states(request.tenant, (*categories.ids, OVERALL), policy)
            tier, callable_ = self.escalation(request.tenant, outputs, categories, policy, language, loaded[0])
            if tier.tier == "expensive":
                expensive, tier = await self._expensive_outputs(
                    request, categories, chosen & ~cheap, tier, language, budget, started
                )
                outputs += expensive
            if callable_:  # the cut decided (EscalationRule.moves_cut): it moves by what was spent, failover included
                rule = self.cascade.rule
                spent = rule.spent(len(tier.experts), callable_)
                self._cuts[request.tenant] = rule.update(self._cuts.get(request.tenant, rule.initial), spent)
            return self.decide(request, outputs, remember=remember, cascade=tier, loaded=loaded, **context)  # type: ignore[arg-type]
        outputs = await self._score(request, categories, chosen, language, budget)
        return self.decide(
            request,
            outputs,
            propensities=propensities,
            remember=remember,
            **context,  # type: ignore[arg-type]
        )

    async def _expensive_outputs(
        self,
        request: ModerationRequest,
        categories: CategorySet,
        expensive: np.ndarray,
        tier: CascadeDecision,
        language: str,
        budget: float,
        started: float,
    ) -> tuple[list[ExpertOutput], CascadeDecision]:
        """The outputs of the expensive experts the escalation chose, within what is left of ``budget``. When one
        of them fails or misses its deadline, the rest of the ``expensive`` tier is called in its place with what is
        left then: calling one expert instead of all must not turn into a decision without a guard. ``tier`` comes
        back naming every expert called; when none of them answered, it says that the cheap tier decided after all,
        and why (their errors are in the decision's ``missing_experts``)."""
        called = np.array([name in tier.experts for name in self.expert_names])
        left = budget - (time.perf_counter() - started)
        outputs = await self._score(request, categories, expensive & called, language, left)
        if not all(out.ok for out in outputs):
            left = budget - (time.perf_counter() - started)
            spare = await self._score(request, categories, expensive & ~called, language, left)
            outputs += spare
        now = time.monotonic()
        for out in outputs:
            if out.ok:
                self._failed_at.pop(out.expert, None)
            else:
                self._failed_at[out.expert] = now
        experts = [out.expert for out in outputs]
        if any(out.ok for out in outputs):
            return outputs, tier.model_copy(update={"experts": experts})
        why = "no time was left of the request's deadline" if not outputs else "no expensive expert answered"
        reason = f"{tier.reason}, but {why}: the cheap tier decided"
        return outputs, tier.model_copy(update={"tier": "cheap", "reason": reason, "experts": experts})

    async def _score(
        self,
        request: ModerationRequest,
        categories: CategorySet,
        chosen: np.ndarray,
        language: str,
        budget: float,
    ) -> list[ExpertOutput]:
        """The outputs of the chosen experts that read the language and cover a category, under ``budget``. With
        no time left none is called (so none is blamed for a timeout it had no chance to avoid): the decision then
        lists them as not queried."""
        if budget <= 0:
            return []
        calls = []
        for expert, selected, reads in zip(self.experts, chosen, self.readers(language), strict=True):
            covered = tuple(c for c in categories if expert.covers(c))
            if selected and reads and covered:
                item = ExpertInput(messages=tuple(request.messages), check=request.check, categories=covered)
                calls.append(score_with_deadline(expert, [item], budget))
        results = await asyncio.gather(*calls)
        return [batch[0] for batch in results]

    def escalation(
        self,
        tenant: str,
        outputs: Sequence[ExpertOutput],
        categories: CategorySet,
        policy: TenantPolicy,
        language: str,
        states: np.ndarray,
    ) -> tuple[CascadeDecision, int]:
        """Whether the cheap tier's outputs need the expensive experts, and why; and how many expensive experts
        the tenant's cut is charged for (0: the cut did not decide, so the request does not move it).

        Escalates when the cheap tier's predicted loss, summed over the categories the policy acts on and the whole
        request, reaches the tenant's cut, or when a category that an expensive expert covers (and reads this
        language) has no cheap score. ``states``: the tenant's key states for ``(*categories, OVERALL)``.

        The cut moves only on requests it decided: not on one forced up by a category the cheap tier could not
        score (a cheap expert down would otherwise drive the cut up for as long as the outage lasts, and then
        starve the escalations after it), nor on one that no expensive expert could take (its language, its
        categories), which no cut could have sent up."""
        assert self.cascade is not None
        rule = self.cascade.rule
        matrix = self.output_matrix(outputs, categories.ids)
        expensive = np.array([name in self.cascade.expensive for name in self.expert_names])
        could = expensive & self.readers(language)
        covers = np.array([[e.covers(cat) for e in self.experts] for cat in categories])  # (C, N)
        candidates = could & covers.any(axis=0)
        acted = np.array([policy.action_for(c) != "allow" for c in categories.ids])
        keys = [c for c, a in zip(categories.ids, acted, strict=True) if a] + [OVERALL]
        rows = np.vstack([matrix[acted], overall_outputs(matrix, acted)[None, :]])
        states = states[np.append(acted, True)]
        loss = expected_cheap_loss(self.learner, states, rows)
        cut = self._cuts.get(tenant, rule.initial)
        unscored = [
            cat.id for c, cat in enumerate(categories) if np.isnan(matrix[c]).all() and (covers[c] & could).any()
        ]
        predicted = not np.isnan(loss).all()
        total = float(np.nansum(loss))
        reached = predicted and rule.escalate(cut, total)
        decided = CascadeDecision(
            tier="cheap", expected_loss=total if predicted and not unscored else None, cut=cut, reason=None
        )
        callable_ = int(candidates.sum())
        charged = callable_ if rule.moves_cut(bool(unscored), callable_) else 0
        if unscored:
            called = self.expensive_to_call(states, keys, categories, candidates, unscored)
            reason = f"{unscored[0]} was not scored by the cheap experts"
            return decided.model_copy(update={"tier": "expensive", "reason": reason, "experts": called}), charged
        if not reached or not callable_:
            why = f"the cheap tier's expected loss {total:.4f} reached the cut {cut:.4f}, but no expensive expert"
            reason = f"{why} reads {language!r} and covers these categories" if reached else None
            return decided.model_copy(update={"reason": reason}), charged
        called = self.expensive_to_call(states, keys, categories, candidates, unscored)
        reason = f"the cheap tier's expected loss {total:.4f} reached the cut {cut:.4f}"
        return decided.model_copy(update={"tier": "expensive", "reason": reason, "experts": called}), charged

    def expensive_to_call(
        self,
        states: np.ndarray,
        keys: Sequence[str],
        categories: CategorySet,
        candidates: np.ndarray,
        unscored: Sequence[str],
    ) -> list[str]:
        """The expensive experts an escalated request calls: ``rule.choose`` over the ``candidates`` (those that
        read its language and cover one of its categories), from their weights in the request's ``keys``
        (``states``; a category's key counts for the experts that cover that category, the whole request's for all
        the candidates); then, for each category that no cheap expert scored (``unscored``) and no chosen expert
        covers, the most trusted one that covers it, so that no category is left unscored because of the choice.
        An expert that failed within ``failed_cooldown_s`` counts as untrusted while another candidate is not
        resting: a guard that times out would otherwise take the request's time before its stand-in is called."""
        assert self.cascade is not None
        weights, ranking = self.learner.weights(states), self.learner.ranking_weights(states)
        now, cooldown = time.monotonic(), self.cascade.failed_cooldown_s
        resting = np.array([now - self._failed_at.get(name, -np.inf) < cooldown for name in self.expert_names])
        if (candidates & ~resting).any():  # one that failed just now is not chosen first while another can answer
            weights, ranking = np.where(resting, 0.0, weights), np.where(resting, 0.0, ranking)
        by_id = {cat.id: cat for cat in categories}
        answers = np.array(
            [
                candidates & np.array([e.covers(by_id[key]) for e in self.experts]) if key in by_id else candidates
                for key in keys
            ]
        )
        apart = expert_disagreement(self.learner, states) if self.cascade.rule.hedge_share > 0 else None
        chosen = self.cascade.rule.choose(weights, answers, self._rng, apart, ranking)
        trust = self.cascade.rule.trust(ranking, answers)
        for cat in categories:
            if cat.id in unscored and not any(self.experts[i].covers(cat) for i in np.flatnonzero(chosen)):
                covers = [i for i in np.flatnonzero(candidates) if self.experts[i].covers(cat)]
                if covers:
                    chosen[max(covers, key=lambda i: trust[i])] = True
        return [self.expert_names[i] for i in np.flatnonzero(chosen)]

    def output_matrix(self, outputs: Sequence[ExpertOutput], categories: Sequence[str]) -> np.ndarray:
        """Scores ``(categories, experts)`` from the outputs that answered (NaN: no score)."""
        matrix = np.full((len(categories), len(self.experts)), np.nan)
        for out in outputs:
            if out.ok and out.expert in self.expert_names:
                i = self.expert_names.index(out.expert)
                for c, cat in enumerate(categories):
                    if cat in out.scores:
                        matrix[c, i] = out.scores[cat]
        return matrix

    def decide(
        self,
        request: ModerationRequest,
        outputs: Sequence[ExpertOutput],
        *,
        propensities: np.ndarray | None = None,
        policy: TenantPolicy | None = None,
        categories: CategorySet | None = None,
        language: str | None = None,
        remember: bool = True,
        cascade: CascadeDecision | None = None,
        loaded: tuple[np.ndarray, list[str]] | None = None,
    ) -> Decision:
        """Combine expert outputs already in hand, apply the tenant's policy, log the prediction (unless not
        ``remember``). ``language``: the checked turn's, when already identified (else identified here); the outputs
        of experts that do not read it are not used, as ``moderate`` would not have called them. ``loaded``: what
        ``load_states`` gave for ``(*categories, OVERALL)`` earlier in this request (else loaded here)."""
        policy = policy or self.policies.effective(request.tenant)
        categories = categories or self.categories_for(request, policy)
        language = identify(request.checked_text) if language is None else language
        reads = self.readers(language)
        cat_ids = categories.ids
        by_name = {o.expert: o for o in outputs}
        unknown = set(by_name) - set(self.expert_names)
        if unknown:
            raise InvalidRequestError(f"outputs: unknown experts {sorted(unknown)}")
        matrix = self.output_matrix(outputs, cat_ids)
        missing: list[MissingExpert] = []
        #: why expert i gave no score (None: it answered)
        absent: list[MissingKind | None] = []
        for i, (name, expert) in enumerate(zip(self.expert_names, self.experts, strict=True)):
            out = by_name.get(name)
            covers_any = any(expert.covers(cat) for cat in categories)
            if covers_any and not reads[i]:
                read = ", ".join(sorted(expert.languages or ()))
                missing.append(
                    MissingExpert(expert=name, kind="language", reason=f"does not read {language!r} (reads {read})")
                )
                absent.append("language")
            elif out is None:
                kind: MissingKind = "not_queried" if covers_any else "not_covered"
                reason = "not queried (bandit mode)" if propensities is not None else "not queried"
                if cascade is not None and cascade.tier == "cheap":
                    confident = cascade.reason is None
                    reason = "not called: the cheap experts were confident (cascade)" if confident else "not called"
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
        matrix[:, [kind is not None for kind in absent]] = np.nan  # e.g. an expert that does not read the language
        states, scopes = loaded or self.load_states(request.tenant, (*cat_ids, OVERALL), policy)
        acted = np.array([policy.action_for(cat) != "allow" for cat in cat_ids])
        combination = combine(self.learner, states, np.vstack([matrix, overall_outputs(matrix, acted)[None, :]]))
        scores, overall_score = combination.scores[:-1], combination.scores[-1]
        strictness = policy.strictness_for(request.strictness)
        choices = self.learned_thresholds(states, (*cat_ids, OVERALL), policy, strictness)
        unscored = self._unscored(categories, scores, absent)
        why = {u.category: u.kinds[0] for u in unscored}
        decisions = [
            decide_category(
                policy,
                cat,
                None if np.isnan(s) else float(s),
                strictness,
                scopes[c],
                why.get(cat, "not_covered"),
                choices[c],
                self.floors.get(cat),
            )
            for c, (cat, s) in enumerate(zip(cat_ids, scores, strict=True))
        ]
        overall = self._overall(overall_score, choices[-1], policy, strictness, scopes[-1])
        nobody = bool(np.isnan(scores).all()) and any(k in FAILURE_KINDS for k in absent)
        degraded = bool(unscored) or nobody
        fail_safe = policy.on_no_experts if nobody else None
        action = fail_safe or final_action(decisions, overall, policy)
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
            if absent[i] is None
        ]
        flagged = tuple(d.category for d in decisions if d.flagged and d.score is not None)
        if remember:
            self.prediction_log.put(
                PredictionRecord(
                    request_id=request_id,
                    tenant=request.tenant,
                    check=request.check,
                    created=time.time(),
                    experts=self.expert_names,
                    categories=cat_ids,
                    outputs=matrix,
                    scores=scores,
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
            overall=overall,
            language=language,
            cascade=cascade,
        )

    def learned_thresholds(
        self, states: np.ndarray, keys: Sequence[str], policy: TenantPolicy, strictness: float
    ) -> list[ThresholdChoice | None]:
        """Per key (a category id, or ``OVERALL``), the learned threshold toward the policy's objective, or None
        where the fixed one applies (a learner without thresholds, ``thresholds: fixed``, too few labels)."""
        learner = self.learner
        if not isinstance(learner, Adaptive) or policy.thresholds == "fixed":
            return [None] * len(keys)
        labels = learner.labels_seen(states)
        ready = (labels >= policy.learn_after) & learner.both_classes(states)  # one class: no boundary to learn
        if not ready.any():
            return [None] * len(keys)
        tracker, part = learner.thresholds, learner.split(states)[2]
        if policy.min_recall is not None:
            values = tracker.recall_threshold(part, policy.min_recall)
        elif policy.max_false_positive_rate is not None:
            values = tracker.false_positive_threshold(part, policy.max_false_positive_rate)
        elif policy.f_beta is not None:
            values = tracker.f_beta_threshold(part, policy.f_beta)
        else:
            costs = [policy.cost_ratio_for(None if k == OVERALL else k, strictness) for k in keys]
            values = tracker.cost_threshold(part, np.array(costs))
        ready &= np.isfinite(values)  # a recall or false-positive target not certifiable yet: the fixed threshold
        return [
            ThresholdChoice(float(v), "learned", int(n)) if ok else None
            for v, n, ok in zip(values, labels, ready, strict=True)
        ]

    @staticmethod
    def _overall(
        score: float, learned: ThresholdChoice | None, policy: TenantPolicy, strictness: float, scope: str
    ) -> OverallDecision | None:
        if np.isnan(score):
            return None
        choice = learned or ThresholdChoice(policy.overall_threshold(strictness))
        return OverallDecision(
            score=float(score),
            threshold=choice.value,
            threshold_source=choice.source,
            threshold_labels=choice.labels,
            flagged=bool(score >= choice.value),
            weights_scope=scope,  # type: ignore[arg-type]
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

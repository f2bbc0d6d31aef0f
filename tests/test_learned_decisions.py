"""Learned thresholds, calibration, honest binary labels and the platform's floors, through the engine (issue 13)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest
from pydantic import ValidationError

from aegis_online.engine import Engine
from aegis_online.experts import ExpertInput
from aegis_online.moderator import final_action
from aegis_online.policy import PlatformFloor, TenantPolicy, decide_category
from aegis_online.schemas import OVERALL, Decision, ExpertOutput, FeedbackEvent, ModerationRequest, OverallDecision
from aegis_online.state import MemoryPolicyStore
from tests.test_engine import BrokenExpert, FixedExpert, moderate


class EchoExpert(FixedExpert):
    """Scores every covered category with the number the message holds, moved by ``offset`` (so a test chooses what
    the experts say per request)."""

    def __init__(self, name: str, offset: float, categories: Sequence[str] = ("S1", "S8")) -> None:
        super().__init__(name, 0.0, categories)
        self.offset = offset

    async def score(self, batch: Sequence[ExpertInput]) -> list[ExpertOutput]:
        out = []
        for x in batch:
            p = min(max(float(x.messages[-1].content) + self.offset, 0.001), 0.999)
            out.append(ExpertOutput(expert=self.name, scores={c.id: p for c in x.categories}))
        return out


def engine_with(*policies: TenantPolicy, **kw) -> Engine:
    return Engine(
        [EchoExpert("strict", 0.05), EchoExpert("loose", -0.05)], policies=MemoryPolicyStore(list(policies)), **kw
    )


def ask(engine: Engine, tenant: str, x: float) -> Decision:
    req = ModerationRequest(messages=[{"role": "user", "content": f"{x:.4f}"}], tenant=tenant, categories=["S1", "S8"])
    return moderate(engine, req)


#: What the experts say of borderline requests (crude but harmless, say swearing) and of clearly harmful ones.
BORDERLINE, HARMFUL = (0.55, 0.8), (0.88, 0.97)


def teach(engine: Engine, tenant: str, n: int, borderline_unsafe: bool, per_category: bool = False) -> None:
    """``n`` labelled requests: a third harmful (unsafe), a third borderline (as the tenant says), a third benign."""
    rng = np.random.default_rng(len(tenant))
    for k in range(n):
        kind = k % 3
        low, high = (HARMFUL, BORDERLINE, (0.02, 0.3))[kind]
        decision = ask(engine, tenant, float(rng.uniform(low, high)))
        unsafe = kind == 0 or (kind == 1 and borderline_unsafe)
        label = (
            {"labels": {"S1": float(unsafe), "S8": float(unsafe)}}
            if per_category
            else {"label": "unsafe" if unsafe else "safe"}
        )
        engine.feedback(FeedbackEvent(request_id=decision.request_id, tenant=tenant, **label))


def test_a_binary_verdict_trains_the_whole_request_never_a_category() -> None:
    engine = engine_with(TenantPolicy(tenant="acme"))
    decision = ask(engine, "acme", 0.7)
    result = engine.feedback(FeedbackEvent(request_id=decision.request_id, tenant="acme", label="unsafe"))
    assert result.categories == {OVERALL: 1.0}
    before = engine.learner.init_state()
    [own] = engine.store.load([engine.keyspace.key("acme", OVERALL)])
    assert own is not None and own.updates == 1
    assert engine.store.load(engine.keyspace.keys("acme", ["S1", "S8"])) == [None, None]
    assert not (own.state == before).all()


def test_category_labels_train_their_categories_and_the_overall_key_with_the_most_severe() -> None:
    engine = engine_with(TenantPolicy(tenant="acme"))
    decision = ask(engine, "acme", 0.7)
    one_unsafe = engine.feedback(FeedbackEvent(request_id=decision.request_id, tenant="acme", labels={"S1": 1.0}))
    assert one_unsafe.categories == {"S1": 1.0, OVERALL: 1.0}
    decision = ask(engine, "acme", 0.7)
    one_safe = engine.feedback(FeedbackEvent(request_id=decision.request_id, tenant="acme", labels={"S1": 0.0}))
    assert one_safe.categories == {"S1": 0.0, OVERALL: 0.0}  # what was not labelled is taken as not unsafe
    decision = ask(engine, "acme", 0.7)
    mixed = engine.feedback(FeedbackEvent(request_id=decision.request_id, tenant="acme", labels={"S1": 0, "S8": 0.8}))
    assert mixed.categories == {"S1": 0.0, "S8": 0.8, OVERALL: 0.8}


def test_a_tenant_that_calls_borderline_requests_safe_gets_them_allowed_after_learn_after_labels() -> None:
    """Both experts score borderline requests 0.5-0.85: no convex combination goes below the lower one, so a fixed
    policy flags them. This tenant's moderators call them safe (whole-request verdicts): its calibrated
    whole-request decision learns to allow them, and keeps flagging the harmful ones."""
    gaming = TenantPolicy(tenant="gaming", learn_after=30, personalise_after=10)
    engine = engine_with(gaming)
    first = ask(engine, "gaming", 0.7)
    assert first.flagged and first.overall is not None and first.overall.threshold_source == "fixed"
    teach(engine, "gaming", 20, borderline_unsafe=False)
    assert ask(engine, "gaming", 0.7).overall.threshold_source == "fixed"  # not enough labels yet
    teach(engine, "gaming", 100, borderline_unsafe=False)
    borderline, harmful = ask(engine, "gaming", 0.7), ask(engine, "gaming", 0.93)
    assert borderline.overall.threshold_source == "learned" and borderline.overall.weights_scope == "tenant"
    assert borderline.overall.threshold_labels >= 30
    assert borderline.overall.score < 0.5 and not borderline.flagged and borderline.action == "allow"
    assert any(c.flagged for c in borderline.categories)  # categories still say what their own thresholds say
    assert harmful.flagged and harmful.action == "block"


def test_each_tenant_learns_its_own_threshold() -> None:
    kids = TenantPolicy(tenant="kids", learn_after=30, personalise_after=10)
    gaming = TenantPolicy(tenant="gaming", learn_after=30, personalise_after=10)
    engine = engine_with(kids, gaming)
    teach(engine, "gaming", 120, borderline_unsafe=False)
    teach(engine, "kids", 120, borderline_unsafe=True)
    assert ask(engine, "gaming", 0.65).action == "allow"
    kept = ask(engine, "kids", 0.65)
    assert kept.flagged and kept.overall.threshold_source == "learned" and kept.overall.score > 0.5


def test_fixed_thresholds_stay_available() -> None:
    gaming = TenantPolicy(tenant="gaming", learn_after=30, personalise_after=10, thresholds="fixed")
    engine = engine_with(gaming)
    teach(engine, "gaming", 120, borderline_unsafe=False)
    decision = ask(engine, "gaming", 0.7)
    assert decision.overall.threshold_source == "fixed" and decision.flagged
    assert all(c.threshold_source == "fixed" for c in decision.categories)


def test_learned_category_thresholds_say_where_they_came_from() -> None:
    policy = TenantPolicy(tenant="acme", learn_after=30, personalise_after=10)
    engine = engine_with(policy)
    teach(engine, "acme", 120, borderline_unsafe=False, per_category=True)
    decision = ask(engine, "acme", 0.7)
    by = {c.category: c for c in decision.categories}
    assert by["S1"].threshold_source == "learned" and by["S1"].threshold_labels >= 30
    assert not by["S1"].flagged and not decision.flagged
    assert ask(engine, "acme", 0.93).action == "block"


def test_the_platform_floor_is_never_loosened() -> None:
    """A tenant that calls borderline requests fine cannot talk its way under the operator's floor for S1."""
    gaming = TenantPolicy(tenant="gaming", learn_after=30, personalise_after=10, categories={"S1": {"action": "allow"}})
    engine = engine_with(gaming, floors={"S1": PlatformFloor(threshold=0.6)})
    teach(engine, "gaming", 120, borderline_unsafe=False)
    decision = ask(engine, "gaming", 0.7)
    by = {c.category: c for c in decision.categories}
    assert decision.overall.threshold_source == "learned" and not decision.overall.flagged
    assert by["S1"].threshold_source == "floor" and by["S1"].threshold == 0.6
    assert by["S1"].flagged and by["S1"].action == "block"
    assert decision.action == "block"


def test_a_learned_allow_never_overrides_a_check_that_could_not_run() -> None:
    gaming = TenantPolicy(tenant="gaming", learn_after=30, personalise_after=10)
    experts = [EchoExpert("strict", 0.05, categories=("S1",)), EchoExpert("loose", -0.05, categories=("S8",))]
    engine = Engine(experts, policies=MemoryPolicyStore([gaming]))
    teach(engine, "gaming", 120, borderline_unsafe=False)
    assert ask(engine, "gaming", 0.7).action == "allow"
    engine.moderator.experts[0] = BrokenExpert("strict", 0.8, categories=("S1",))
    decision = ask(engine, "gaming", 0.7)
    assert decision.degraded and decision.flagged and decision.action == "flag"


@pytest.mark.parametrize(
    ("fields", "field"),
    [({"cost_ratio": 2.0, "min_recall": 0.9}, "min_recall"), ({"min_recall": 0.9, "max_false_positive_rate": 0.1}, "")],
)
def test_a_policy_has_one_threshold_objective(fields: dict, field: str) -> None:
    with pytest.raises(ValidationError, match=f"{field}: give one threshold objective"):
        TenantPolicy(**fields)


def test_the_configured_threshold_states_the_cost_ratio() -> None:
    policy = TenantPolicy(threshold=0.25, categories={"S1": {"threshold": 0.5}})
    assert policy.cost_ratio_for("S1") == pytest.approx(1.0)
    assert policy.cost_ratio_for(None) == pytest.approx(3.0)
    assert policy.cost_ratio_for("S1", "strict") > 1.0 > policy.cost_ratio_for("S1", "lenient")
    assert TenantPolicy(cost_ratio=7.0).cost_ratio_for("S1", "lenient") == 7.0


def test_an_f_beta_objective_learns_its_own_threshold() -> None:
    policy = TenantPolicy(tenant="acme", learn_after=30, personalise_after=10, f_beta=1.0)
    engine = engine_with(policy)
    teach(engine, "acme", 120, borderline_unsafe=False, per_category=True)
    borderline, harmful = ask(engine, "acme", 0.7), ask(engine, "acme", 0.93)
    s1 = next(c for c in borderline.categories if c.category == "S1")
    assert s1.threshold_source == "learned" and not s1.flagged and harmful.flagged
    with pytest.raises(ValidationError, match="f_beta: give one threshold objective"):
        TenantPolicy(min_recall=0.9, f_beta=1.0)


def both(tenant: str) -> ModerationRequest:
    return ModerationRequest(messages=[{"role": "user", "content": "text"}], tenant=tenant, categories=["S1", "S12"])


def test_a_category_the_policy_allows_never_makes_the_whole_request_unsafe() -> None:
    """gaming allows profanity (S12): its whole-request score counts only what it acts on, at decision time and when
    it learns; kids blocks profanity, so the same outputs make its request look unsafe."""
    allow_s12 = {"S12": {"action": "allow"}}
    gaming = TenantPolicy(tenant="gaming", learn_after=30, personalise_after=10, categories=allow_s12)
    experts = [FixedExpert("swears", 0.95, categories=("S12",)), FixedExpert("calm", 0.05, categories=("S1",))]
    engine = Engine(experts, policies=MemoryPolicyStore([gaming, TenantPolicy(tenant="kids")]))
    assert moderate(engine, both("kids")).overall.score == pytest.approx(0.5)  # max over S1, S12 per expert
    decision = moderate(engine, both("gaming"))
    assert decision.overall.score == pytest.approx(0.05) and decision.action == "allow"  # S1 only
    record = engine.prediction_log.get(decision.request_id)
    plan = engine.plan_feedback(FeedbackEvent(request_id=decision.request_id, tenant="gaming", label="safe"), record)
    assert np.isnan(plan.overall[0]) and plan.overall[1] == 0.05  # it learns from the row it decided with


def test_a_flag_of_the_whole_request_acts_with_the_top_category_the_policy_acts_on() -> None:
    policy = TenantPolicy(categories={"S12": {"action": "allow"}, "S10": {"action": "flag"}})
    overall = OverallDecision(
        score=0.9, threshold=0.3, threshold_source="learned", threshold_labels=80, flagged=True, weights_scope="tenant"
    )
    cats = [decide_category(policy, c, s, None, "tenant") for c, s in (("S12", 0.95), ("S10", 0.4), ("S1", 0.2))]
    assert not any(c.flagged for c in cats)
    assert final_action(cats, overall, policy) == "flag"  # S10: the highest-scored category it acts on
    only_allowed = [decide_category(policy, "S12", 0.95, None, "tenant")]
    assert final_action(only_allowed, overall, policy) == "allow"
    vetoed = overall.model_copy(update={"flagged": False})
    crossed = [decide_category(policy, "S1", 0.7, None, "tenant")]
    assert crossed[0].flagged and final_action(crossed, vetoed, policy) == "allow"
    fixed = vetoed.model_copy(update={"threshold_source": "fixed"})
    assert final_action(crossed, fixed, policy) == "block"  # until it is learned, the categories decide

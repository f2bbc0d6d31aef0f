"""Learned thresholds, calibration, honest binary labels and the platform's floors, through the engine (issue 13)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from aegis_online.engine import Engine
from aegis_online.policy import PlatformFloor, TenantPolicy
from aegis_online.schemas import OVERALL, Decision, FeedbackEvent
from aegis_online.state import MemoryPolicyStore
from tests.test_engine import BrokenExpert, FixedExpert, moderate, request


def engine_with(*policies: TenantPolicy, **kw) -> Engine:
    return Engine(
        [FixedExpert("strict", 0.8), FixedExpert("loose", 0.65)],
        policies=MemoryPolicyStore(list(policies)),
        **kw,
    )


def label_requests(engine: Engine, tenant: str, n: int, **label) -> Decision:
    decision = moderate(engine, request(tenant))
    for _ in range(n):
        decision = moderate(engine, request(tenant))
        engine.feedback(FeedbackEvent(request_id=decision.request_id, tenant=tenant, **label))
    return moderate(engine, request(tenant))


def test_a_binary_verdict_trains_the_whole_request_never_a_category() -> None:
    engine = engine_with(TenantPolicy(tenant="acme"))
    decision = moderate(engine, request("acme"))
    result = engine.feedback(FeedbackEvent(request_id=decision.request_id, tenant="acme", label="unsafe"))
    assert result.categories == {OVERALL: 1.0}
    before = engine.learner.init_state()
    [own] = engine.store.load([engine.keyspace.key("acme", OVERALL)])
    assert own is not None and own.updates == 1
    assert engine.store.load(engine.keyspace.keys("acme", ["S1", "S8"])) == [None, None]
    assert not (own.state == before).all()


def test_category_labels_train_their_categories_and_settle_the_overall_label() -> None:
    engine = engine_with(TenantPolicy(tenant="acme"))
    decision = moderate(engine, request("acme"))
    one_unsafe = engine.feedback(FeedbackEvent(request_id=decision.request_id, tenant="acme", labels={"S1": 1.0}))
    assert one_unsafe.categories == {"S1": 1.0, OVERALL: 1.0}
    decision = moderate(engine, request("acme"))
    one_safe = engine.feedback(FeedbackEvent(request_id=decision.request_id, tenant="acme", labels={"S1": 0.0}))
    assert one_safe.categories == {"S1": 0.0}  # S8 unknown: the request as a whole is not settled
    decision = moderate(engine, request("acme"))
    all_safe = engine.feedback(
        FeedbackEvent(request_id=decision.request_id, tenant="acme", labels={"S1": 0.0, "S8": 0.0})
    )
    assert all_safe.categories == {"S1": 0.0, "S8": 0.0, OVERALL: 0.0}


def test_a_tenant_that_calls_high_scores_safe_gets_them_allowed_after_learn_after_labels() -> None:
    """Both experts score 0.65-0.8: no convex combination goes below 0.65, so a fixed policy flags every request.
    This tenant's moderators call them safe: the whole-request decision learns to allow them."""
    gaming = TenantPolicy(tenant="gaming", learn_after=30, personalise_after=10)
    engine = engine_with(gaming)
    first = moderate(engine, request("gaming"))
    assert first.flagged and first.overall is not None and first.overall.threshold_source == "fixed"
    early = label_requests(engine, "gaming", 20, label="safe")
    assert early.overall.threshold_source == "fixed" and early.flagged  # not enough labels yet
    later = label_requests(engine, "gaming", 40, label="safe")
    assert later.overall.threshold_source == "learned"
    assert later.overall.threshold_labels >= 30 and later.overall.weights_scope == "tenant"
    assert later.overall.score < 0.5  # calibrated below both experts
    assert not later.flagged and later.action == "allow"
    assert any(c.flagged for c in later.categories)  # categories still say what their own thresholds say


def test_each_tenant_learns_its_own_threshold() -> None:
    kids = TenantPolicy(tenant="kids", learn_after=30, personalise_after=10)
    gaming = TenantPolicy(tenant="gaming", learn_after=30, personalise_after=10)
    engine = engine_with(kids, gaming)
    assert label_requests(engine, "gaming", 60, label="safe").action == "allow"
    kept = label_requests(engine, "kids", 60, label="unsafe")
    assert kept.flagged and kept.overall.threshold_source == "learned" and kept.overall.score > 0.5


def test_fixed_thresholds_stay_available() -> None:
    gaming = TenantPolicy(tenant="gaming", learn_after=30, personalise_after=10, thresholds="fixed")
    engine = engine_with(gaming)
    decision = label_requests(engine, "gaming", 60, label="safe")
    assert decision.overall.threshold_source == "fixed" and decision.flagged
    assert all(c.threshold_source == "fixed" for c in decision.categories)


def test_learned_category_thresholds_say_where_they_came_from() -> None:
    policy = TenantPolicy(tenant="acme", learn_after=30, personalise_after=10)
    engine = engine_with(policy)
    decision = label_requests(engine, "acme", 40, labels={"S1": 0.0, "S8": 1.0})
    by = {c.category: c for c in decision.categories}
    assert by["S1"].threshold_source == "learned" and by["S1"].threshold_labels >= 30
    assert not by["S1"].flagged and by["S8"].flagged
    assert decision.action == "block"


def test_the_platform_floor_is_never_loosened() -> None:
    """A tenant that calls everything safe cannot talk its way under the operator's floor for S1."""
    gaming = TenantPolicy(tenant="gaming", learn_after=30, personalise_after=10, categories={"S1": {"action": "allow"}})
    engine = engine_with(gaming, floors={"S1": PlatformFloor(threshold=0.6)})
    decision = label_requests(engine, "gaming", 60, label="safe")
    by = {c.category: c for c in decision.categories}
    assert decision.overall.threshold_source == "learned" and not decision.overall.flagged
    assert by["S1"].threshold_source == "floor" and by["S1"].threshold == 0.6
    assert by["S1"].flagged and by["S1"].action == "block"
    assert decision.action == "block"


def test_a_learned_allow_never_overrides_a_check_that_could_not_run() -> None:
    gaming = TenantPolicy(tenant="gaming", learn_after=30, personalise_after=10)
    experts = [FixedExpert("strict", 0.8, categories=("S1",)), FixedExpert("loose", 0.65, categories=("S8",))]
    engine = Engine(experts, policies=MemoryPolicyStore([gaming]))
    label_requests(engine, "gaming", 60, label="safe")
    engine.moderator.experts[0] = BrokenExpert("strict", 0.8, categories=("S1",))
    decision = moderate(engine, request("gaming"))
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
    decision = label_requests(engine, "acme", 40, labels={"S1": 0.0, "S8": 1.0})
    by = {c.category: c for c in decision.categories}
    assert by["S1"].threshold_source == "learned" and not by["S1"].flagged
    assert by["S8"].threshold_source == "learned" and by["S8"].flagged
    with pytest.raises(ValidationError, match="f_beta: give one threshold objective"):
        TenantPolicy(min_recall=0.9, f_beta=1.0)

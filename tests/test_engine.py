"""The engine: decisions from expert outputs, prediction log, feedback joins, exactly-once updates, bandit mode."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import numpy as np
import pytest

from aegis_online.engine import BanditConfig, CascadeConfig, Engine
from aegis_online.errors import InvalidFeedbackError, InvalidRequestError, TenantMismatchError, UnknownRequestError
from aegis_online.experts import Expert, ExpertInput
from aegis_online.learn import Hedge
from aegis_online.learn.escalation import CheapTierLoss, EscalationRule
from aegis_online.policy import TenantPolicy
from aegis_online.schemas import ExpertOutput, FeedbackEvent, ModerationRequest
from aegis_online.state import MemoryLearnerStore, MemoryPolicyStore


class FixedExpert(Expert):
    """Says the same probability for every covered category (and custom ones when free-form)."""

    def __init__(self, name: str, p: float, categories: Sequence[str] = ("S1", "S8"), free_form: bool = False):
        self.name, self.p, self.categories, self.free_form = name, p, frozenset(categories), free_form
        self.calls = 0

    async def score(self, batch: Sequence[ExpertInput]) -> list[ExpertOutput]:
        self.calls += 1
        return [ExpertOutput(expert=self.name, scores={c.id: self.p for c in x.categories}) for x in batch]


class SlowExpert(FixedExpert):
    async def score(self, batch: Sequence[ExpertInput]) -> list[ExpertOutput]:
        await asyncio.sleep(5)
        return await super().score(batch)


class BrokenExpert(FixedExpert):
    async def score(self, batch: Sequence[ExpertInput]) -> list[ExpertOutput]:
        raise RuntimeError("model server unreachable")


def request(tenant: str = "default", **kw) -> ModerationRequest:
    return ModerationRequest(
        messages=[{"role": "user", "content": "text"}], tenant=tenant, categories=["S1", "S8"], **kw
    )


def moderate(engine: Engine, req: ModerationRequest):
    return asyncio.run(engine.moderate(req))


def test_a_decision_combines_experts_and_applies_the_policy() -> None:
    engine = Engine([FixedExpert("hi", 0.9), FixedExpert("lo", 0.1)])
    decision = moderate(engine, request())
    assert [c.category for c in decision.categories] == ["S1", "S8"]
    assert all(c.score == pytest.approx(0.5) for c in decision.categories)  # uniform weights at the start
    assert decision.action == "block" and decision.flagged  # 0.5 >= balanced threshold 0.5
    assert {e.expert for e in decision.experts} == {"hi", "lo"}
    assert decision.experts[0].weights == {"S1": 0.5, "S8": 0.5}
    assert engine.prediction_log.get(decision.request_id) is not None


@pytest.mark.parametrize(("learner", "lead"), [("default", 0.95), ("default+adaptive", 0.6)])
def test_feedback_moves_weight_towards_the_expert_that_was_right(learner: str, lead: float) -> None:
    """(The adaptive learner also calibrates "hi" down, so the weights need not move as far.)"""
    engine = Engine([FixedExpert("hi", 0.9), FixedExpert("lo", 0.1)], learner=learner)
    for _ in range(30):
        decision = moderate(engine, request())
        engine.feedback(FeedbackEvent(request_id=decision.request_id, labels={"S1": 0, "S8": 0}, trusted=True))
    weights = engine.weights("default", ["S1"])["S1"]
    assert weights["lo"] > lead > 1 - lead > weights["hi"]
    assert moderate(engine, request()).action == "allow"


def test_the_same_feedback_event_is_applied_once() -> None:
    engine = Engine([FixedExpert("hi", 0.9), FixedExpert("lo", 0.1)])
    decision = moderate(engine, request())
    event = FeedbackEvent(request_id=decision.request_id, labels={"S1": 0.0})
    first = engine.feedback(event)
    state_after_first = engine.store.load([engine.keyspace.key("global", "S1")])[0]
    again = engine.feedback(FeedbackEvent(request_id=decision.request_id, labels={"S1": 0.0}))  # a retried send
    assert first.applied and not again.applied
    assert engine.store.load([engine.keyspace.key("global", "S1")])[0] is state_after_first


def test_redelivered_event_with_an_explicit_id_changes_nothing() -> None:
    engine = Engine([FixedExpert("hi", 0.9), FixedExpert("lo", 0.1)])
    decision = moderate(engine, request())
    event = FeedbackEvent(request_id=decision.request_id, labels={"S1": 1.0}, event_id="kafka-0-17")
    assert engine.feedback(event).applied
    before = engine.weights("default")
    assert not engine.feedback(event).applied
    assert engine.weights("default") == before


def test_feedback_errors_are_clear() -> None:
    engine = Engine([FixedExpert("hi", 0.9)])
    decision = moderate(engine, request(tenant="acme"))
    with pytest.raises(UnknownRequestError, match="request_id"):
        engine.feedback(FeedbackEvent(request_id="nope", label="safe"))
    with pytest.raises(TenantMismatchError, match="tenant"):
        engine.feedback(FeedbackEvent(request_id=decision.request_id, tenant="other", label="safe"))
    with pytest.raises(InvalidFeedbackError, match=r"labels\.S5"):
        engine.feedback(FeedbackEvent(request_id=decision.request_id, tenant="acme", labels={"S5": 1}))
    with pytest.raises(InvalidFeedbackError, match=r"labels\.zzz"):
        engine.feedback(FeedbackEvent(request_id=decision.request_id, tenant="acme", labels={"zzz": 1}))


def test_unknown_request_category_is_rejected() -> None:
    engine = Engine([FixedExpert("hi", 0.9)])
    bad = ModerationRequest(messages=[{"role": "user", "content": "x"}], categories=["S1", "nonsense"])
    with pytest.raises(InvalidRequestError, match=r"categories\.1"):
        moderate(engine, bad)


def test_failed_and_late_experts_are_named_and_asleep() -> None:
    # 2 s: the instant expert answers within it on a loaded CI machine; the slow one sleeps 5 s
    engine = Engine([FixedExpert("ok", 0.8), SlowExpert("slow", 0.1), BrokenExpert("broken", 0.1)], deadline_s=2.0)
    decision = moderate(engine, request())
    reasons = {m.expert: m.reason for m in decision.missing_experts}
    assert "timed out" in reasons["slow"] and "unreachable" in reasons["broken"]
    assert all(c.score == pytest.approx(0.8) for c in decision.categories)  # only the awake expert counts
    record = engine.prediction_log.get(decision.request_id)
    assert np.isnan(record.outputs[:, 1:]).all()
    engine.feedback(FeedbackEvent(request_id=decision.request_id, labels={"S1": 0.0}))
    assert engine.store.load([engine.keyspace.key("default", "S1")])[0] is not None  # S1 learned
    w = engine.weights("default", ["S1"])["S1"]
    assert w["slow"] == pytest.approx(w["broken"])  # sleeping experts were not punished relative to each other


@pytest.mark.parametrize(("mode", "action"), [("allow", "allow"), ("block", "block")])
def test_when_no_expert_answers_the_tenant_chooses_fail_open_or_closed(mode: str, action: str) -> None:
    policies = MemoryPolicyStore([TenantPolicy(tenant="t", on_no_experts=mode)])
    engine = Engine([BrokenExpert("broken", 0.5)], policies=policies)
    decision = moderate(engine, request(tenant="t"))
    assert decision.degraded and decision.action == action
    assert all(c.score is None for c in decision.categories)


def test_a_category_only_a_failed_expert_covers_is_unscored_and_flagged_by_default() -> None:
    engine = Engine([FixedExpert("fast", 0.1, categories=("S1",)), BrokenExpert("broken", 0.1, categories=("S8",))])
    decision = moderate(engine, request())
    s1, s8 = decision.categories
    assert s1.score == pytest.approx(0.1) and s1.unscored is None and s1.action == "allow"
    assert s8.score is None and s8.unscored == "error" and s8.action == "flag"
    assert decision.degraded and decision.action == "flag"
    assert [(u.category, u.kinds, u.experts) for u in decision.unscored] == [("S8", ["error"], ["broken"])]
    assert [(m.expert, m.kind) for m in decision.missing_experts] == [("broken", "error")]
    record = engine.prediction_log.get(decision.request_id)
    assert record.flagged == ()  # on_unscored flagged S8, no score did: a binary label has nothing to blame


def test_an_expert_asked_nothing_is_not_covered_and_does_not_degrade() -> None:
    engine = Engine([FixedExpert("s1", 0.1, categories=("S1",)), FixedExpert("s12", 0.1, categories=("S12",))])
    decision = moderate(engine, request())
    assert not decision.degraded and decision.action == "allow"
    assert [(m.expert, m.kind) for m in decision.missing_experts] == [("s12", "not_covered")]


def test_tenant_weights_start_from_global_and_take_over_after_enough_feedback() -> None:
    policies = MemoryPolicyStore([TenantPolicy(tenant="strict-shop", personalise_after=5)])
    engine = Engine([FixedExpert("hi", 0.9), FixedExpert("lo", 0.1)], policies=policies)
    for _ in range(20):  # the operator's moderators say these are safe ...
        d = moderate(engine, request())
        engine.feedback(FeedbackEvent(request_id=d.request_id, label="safe", trusted=True))
    for i in range(8):  # ... this tenant says they are harmful, while the moderators keep saying safe
        d = moderate(engine, request(tenant="strict-shop"))
        assert d.categories[0].weights_scope == ("tenant" if i >= 5 else "global")
        engine.feedback(FeedbackEvent(request_id=d.request_id, tenant="strict-shop", labels={"S1": 1.0}))
        for _ in range(2):
            d = moderate(engine, request())
            engine.feedback(FeedbackEvent(request_id=d.request_id, label="safe", trusted=True))
    assert engine.weights("strict-shop", ["S1"])["S1"]["hi"] > 0.5 > engine.weights("default", ["S1"])["S1"]["hi"]


def test_untrusted_feedback_trains_the_tenants_weights_and_never_the_global_ones() -> None:
    policies = MemoryPolicyStore([TenantPolicy(tenant="acme", personalise_after=0)])
    engine = Engine([FixedExpert("hi", 0.9), FixedExpert("lo", 0.1)], policies=policies)
    d = moderate(engine, request())
    engine.feedback(FeedbackEvent(request_id=d.request_id, label="safe", trusted=True))  # global learns a little
    shared = engine.weights("global", ["S1"])["S1"]
    for _ in range(20):
        d = moderate(engine, request(tenant="acme"))
        result = engine.feedback(FeedbackEvent(request_id=d.request_id, tenant="acme", labels={"S1": 1.0}))
        assert result.scopes == ["tenant"]
    assert engine.weights("global", ["S1"])["S1"] == shared
    assert engine.weights("acme", ["S1"])["S1"]["hi"] > 0.9


def test_the_batched_path_applies_the_same_scopes_as_the_direct_one() -> None:
    def run(batched: bool) -> tuple[dict, dict]:
        policies = MemoryPolicyStore([TenantPolicy(tenant="acme", personalise_after=0)])
        engine = Engine([FixedExpert("hi", 0.9), FixedExpert("lo", 0.1)], policies=policies)
        plans = []
        for i in range(12):
            d = moderate(engine, request(tenant="acme"))
            event = FeedbackEvent(
                request_id=d.request_id, tenant="acme", labels={"S1": float(i % 3 == 0)}, trusted=i < 4
            )
            if batched:
                plans.append((engine.plan_feedback(event, engine.prediction_log.get(d.request_id)), "s", i))
            else:
                engine.feedback(event)
        if batched:
            assert all(engine.feedback_batch(plans).applied)
        return engine.weights("global", ["S1"])["S1"], engine.weights("acme", ["S1"])["S1"]

    direct, batched = run(False), run(True)
    assert direct[0] == pytest.approx(batched[0], abs=1e-12) and direct[1] == pytest.approx(batched[1], abs=1e-12)
    assert direct[0] != pytest.approx({"hi": 0.5, "lo": 0.5})  # the four trusted events moved the global weights


def test_custom_categories_are_scored_only_by_free_form_experts() -> None:
    policy = TenantPolicy(tenant="films", custom_categories=[{"name": "Spoilers", "description": "Plot reveals."}])
    engine = Engine(
        [FixedExpert("fixed", 0.2), FixedExpert("policy-guard", 0.7, free_form=True)],
        policies=MemoryPolicyStore([policy]),
    )
    req = ModerationRequest(messages=[{"role": "user", "content": "x"}], tenant="films", categories=["Spoilers"])
    decision = moderate(engine, req)
    assert decision.categories[0].category == "custom:spoilers"
    assert decision.categories[0].score == pytest.approx(0.7)
    assert engine.experts[0].calls == 0  # nothing to ask the fixed-taxonomy expert


def test_bandit_mode_queries_k_experts_always_including_the_cheap_one() -> None:
    experts = [FixedExpert(f"e{i}", 0.1 * (i + 1)) for i in range(5)]
    engine = Engine(experts, learner="exp3-ix", bandit=BanditConfig(k=2, always=("e0",)), seed=3)
    for _ in range(200):
        d = moderate(engine, request())
        answered = {e.expert for e in d.experts}
        assert len(answered) == 2 and "e0" in answered
        record = engine.prediction_log.get(d.request_id)
        assert record.propensities[0] == 1.0 and record.propensities.sum() == pytest.approx(2.0)
        engine.feedback(FeedbackEvent(request_id=d.request_id, labels={"S1": 0.0}))
    assert experts[0].calls == 200 and sum(e.calls for e in experts[1:]) == 200
    w = engine.weights("default", ["S1"])["S1"]
    assert w["e1"] > w["e4"]  # the expert closest to the safe label gains


def test_decide_from_cached_outputs_matches_the_async_path() -> None:
    engine = Engine([FixedExpert("a", 0.6), FixedExpert("b", 0.2)])
    live = moderate(engine, request(request_id="r-live"))
    cached = engine.decide(
        request(request_id="r-cached"),
        [
            ExpertOutput(expert="a", scores={"S1": 0.6, "S8": 0.6}),
            ExpertOutput(expert="b", scores={"S1": 0.2, "S8": 0.2}),
        ],
    )
    assert [c.score for c in live.categories] == [c.score for c in cached.categories]
    with pytest.raises(InvalidRequestError, match="outputs"):
        engine.decide(request(), [ExpertOutput(expert="stranger", scores={})])


def test_engine_rejects_inconsistent_configuration() -> None:
    with pytest.raises(ValueError, match="experts"):
        Engine([])
    with pytest.raises(ValueError, match="unique"):
        Engine([FixedExpert("a", 0.1), FixedExpert("a", 0.2)])
    with pytest.raises(ValueError, match=r"bandit\.always"):
        Engine([FixedExpert("a", 0.1)], learner="exp3-ix", bandit=BanditConfig(k=1, always=("zz",)))
    # bandit mode never swaps the learner behind the caller's back: another learner is refused, not replaced
    with pytest.raises(ValueError, match="needs learner exp3-ix, not 'default'"):
        Engine([FixedExpert("a", 0.1)], learner="default", bandit=BanditConfig(k=1))
    with pytest.raises(ValueError, match="BanditConfig"):
        Engine([FixedExpert("a", 0.1)], learner="exp3-ix")


# -- language: an expert is not called on a language it does not read ---------------------------------------------


def english_only(name: str, p: float, categories: Sequence[str] = ("S1", "S8")) -> FixedExpert:
    expert = FixedExpert(name, p, categories)
    expert.languages = frozenset({"en"})
    return expert


def said(text: str, **kw) -> ModerationRequest:
    return ModerationRequest(messages=[{"role": "user", "content": text}], categories=["S1", "S8"], **kw)


@pytest.mark.parametrize(
    ("text", "code"),
    [("Ты тупая сука, я тебя убью", "ru"), ("אני אהרוג אותך", "he"), ("我要杀了你", "zh")],
)
def test_an_english_only_expert_sleeps_on_another_language_and_its_categories_are_flagged(text: str, code: str) -> None:
    expert = english_only("cpu", 0.05)
    engine = Engine([expert])
    decision = moderate(engine, said(text))
    assert expert.calls == 0  # never asked: its 0.05 would have been a silent allow
    assert decision.language == code
    assert [(m.expert, m.kind) for m in decision.missing_experts] == [("cpu", "language")]
    assert code in decision.missing_experts[0].reason
    assert [(u.category, u.kinds, u.experts) for u in decision.unscored] == [
        ("S1", ["language"], ["cpu"]),
        ("S8", ["language"], ["cpu"]),
    ]
    assert all(c.score is None and c.unscored == "language" for c in decision.categories)
    assert decision.degraded and decision.action == "flag" and decision.flagged  # default on_unscored: flag
    assert np.isnan(engine.prediction_log.get(decision.request_id).outputs).all()


def test_an_english_request_still_calls_the_english_expert() -> None:
    expert = english_only("cpu", 0.05)
    decision = moderate(Engine([expert]), said("What is the best way to kill a Python process on Linux?"))
    assert expert.calls == 1 and decision.language == "en"
    assert not decision.degraded and decision.missing_experts == [] and decision.action == "allow"


def test_an_undetermined_language_wakes_every_expert() -> None:
    expert = english_only("cpu", 0.05)
    decision = moderate(Engine([expert]), said("ok"))
    assert expert.calls == 1 and decision.language == "und" and not decision.degraded


def test_a_multilingual_expert_stays_awake_and_scores_what_it_covers() -> None:
    english, multi = english_only("cpu", 0.05), FixedExpert("guard", 0.9, categories=("S1",))
    assert multi.languages is None  # the default: it reads any language
    decision = moderate(Engine([english, multi]), said("Я тебя убью"))
    assert (english.calls, multi.calls) == (0, 1)
    s1, s8 = decision.categories
    assert s1.score == pytest.approx(0.9) and s1.unscored is None  # the multilingual expert alone decides S1
    assert s8.score is None and s8.unscored == "language"  # only the English expert covers S8
    assert [(m.expert, m.kind) for m in decision.missing_experts] == [("cpu", "language")]
    assert [e.expert for e in decision.experts] == ["guard"]


def test_decide_from_outputs_in_hand_applies_the_same_language_rule() -> None:
    """A replay cache may hold an English expert's score of a Russian text: it is not used, as the live path would
    not have asked for it."""
    engine = Engine([english_only("cpu", 0.05), FixedExpert("guard", 0.9, categories=("S1",))])
    outputs = [
        ExpertOutput(expert="cpu", scores={"S1": 0.05, "S8": 0.05}),
        ExpertOutput(expert="guard", scores={"S1": 0.9}),
    ]
    cached = engine.decide(said("Я тебя убью", request_id="r-cached"), outputs)
    live = moderate(engine, said("Я тебя убью", request_id="r-live"))
    assert cached.language == live.language == "ru"
    assert [c.score for c in cached.categories] == [c.score for c in live.categories]
    assert [(m.expert, m.kind) for m in cached.missing_experts] == [("cpu", "language")]
    assert engine.decide(said("x"), outputs, language="en").missing_experts == []  # a language already identified


def test_a_cascade_whose_cheap_tier_could_not_score_a_category_calls_the_expensive_one() -> None:
    """Could not check is never a quiet allow: the cheap expert that covers S1 fails, so S1 has no cheap score and
    the guard is called, however confident the cheap tier is on S8."""
    broken, calm = BrokenExpert("cheap-s1", 0.0, ("S1",)), FixedExpert("cheap-s8", 0.02, ("S8",))
    guard = FixedExpert("guard", 0.97)
    engine = Engine([broken, calm, guard], cascade=CascadeConfig(frozenset({"guard"})))
    decision = moderate(engine, request())
    assert decision.cascade is not None and decision.cascade.tier == "expensive"
    assert decision.cascade.reason == "S1 was not scored by the cheap experts" and guard.calls == 1
    s1 = next(c for c in decision.categories if c.category == "S1")
    assert s1.score == pytest.approx(0.97) and decision.action != "allow"


class CountingStore(MemoryLearnerStore):
    """The in-memory learner store, counting its reads: each read is a round trip to a production store."""

    def __init__(self) -> None:
        super().__init__()
        self.reads = 0

    def load(self, keys):
        self.reads += 1
        return super().load(keys)


def test_a_cascade_request_reads_its_key_states_once_and_escalates_on_the_categories_its_policy_acts_on() -> None:
    """The escalation and the decision share one read of the tenant's keys; the escalation takes from it the keys
    of the acted categories and the whole request's, so a category the policy allows does not move it."""
    store = CountingStore()
    policies = MemoryPolicyStore(
        [TenantPolicy(tenant="t", personalise_after=0, categories={"S8": {"action": "allow"}})]
    )
    experts = [FixedExpert("a", 0.9), FixedExpert("b", 0.2), FixedExpert("guard", 0.97)]
    engine = Engine(experts, cascade=CascadeConfig(frozenset({"guard"})), store=store, policies=policies)
    for k in range(40):  # the three keys part: S1's stays fresh, S8's learns "safe", the whole request's a mix
        decision = moderate(engine, request("t"))
        labels = {"label": "unsafe"} if k % 2 else {"labels": {"S8": 0.0}}
        engine.feedback(FeedbackEvent(request_id=decision.request_id, tenant="t", trusted=True, **labels))
    store.reads = 0
    both = moderate(engine, request("t"))
    assert store.reads == 1
    s1 = ModerationRequest(messages=[{"role": "user", "content": "text"}], tenant="t", categories=["S1"])
    only_s1 = moderate(engine, s1)
    assert both.cascade is not None and only_s1.cascade is not None
    assert both.cascade.expected_loss == pytest.approx(only_s1.cascade.expected_loss)


def cascade_engine(experts, rule: EscalationRule | None = None, **kw) -> Engine:
    """A cascade whose expensive tier is the experts named ``guard...``."""
    expensive = frozenset(e.name for e in experts if e.name.startswith("guard"))
    return Engine(experts, cascade=CascadeConfig(expensive, rule or EscalationRule(exploration=0.0)), **kw)


def test_escalations_forced_by_an_unscored_category_leave_the_cut_where_it_was() -> None:
    """A cheap expert down forces every request up; the cut did not choose those, so it does not move, and the
    escalations the cut decides resume as before once the expert is back (no wind-up to pay off afterwards)."""
    broken, calm = BrokenExpert("cheap-s1", 0.5, ("S1",)), FixedExpert("cheap-s8", 0.5, ("S8",))
    engine = cascade_engine([broken, calm, FixedExpert("guard", 0.97)])
    decisions = [moderate(engine, request()) for _ in range(30)]
    assert all(d.cascade is not None and d.cascade.tier == "expensive" for d in decisions)
    assert {d.cascade.cut for d in decisions if d.cascade is not None} == {EscalationRule().initial}


def test_a_slow_cheap_tier_leaves_its_guard_time_to_answer() -> None:
    """The cheap tier gets its share of the deadline: when it times out, the guard it escalates to still answers,
    and is not blamed for a timeout it had no time to avoid."""
    slow, guard = SlowExpert("cheap-slow", 0.5), FixedExpert("guard", 0.97)
    engine = cascade_engine([slow, guard], deadline_s=2.0)  # the guard has time to answer on a loaded CI machine
    decision = moderate(engine, request())
    assert decision.cascade is not None and decision.cascade.tier == "expensive" and guard.calls == 1
    assert [(m.expert, m.kind) for m in decision.missing_experts] == [("cheap-slow", "timeout")]
    assert not decision.degraded and all(c.score == pytest.approx(0.97) for c in decision.categories)


def test_with_no_time_left_no_expert_is_called_or_blamed_and_the_decision_says_so() -> None:
    cheap, guard = FixedExpert("cheap", 0.5), FixedExpert("guard", 0.97)
    engine = cascade_engine([cheap, guard])
    decision = asyncio.run(engine.moderate(request(), deadline_s=0.0))
    assert cheap.calls == guard.calls == 0
    assert {m.kind for m in decision.missing_experts} == {"not_queried"}
    assert decision.cascade is not None and decision.cascade.tier == "cheap"
    assert decision.cascade.reason is not None and "no time was left" in decision.cascade.reason
    assert decision.degraded and decision.action != "allow"


def test_an_escalation_no_guard_answered_says_the_cheap_tier_decided_and_why() -> None:
    cheap, guard = FixedExpert("cheap", 0.5), BrokenExpert("guard", 0.97)
    decision = moderate(cascade_engine([cheap, guard]), request())
    assert decision.cascade is not None and decision.cascade.tier == "cheap" and decision.cascade.experts == ["guard"]
    assert decision.cascade.reason is not None and "no expensive expert answered" in decision.cascade.reason
    assert [(m.expert, m.kind) for m in decision.missing_experts] == [("guard", "error")]


def test_failover_calls_are_charged_to_the_budget() -> None:
    """The trusted guard fails, the other is called in its place: two calls, and the cut moves by both."""
    rule = EscalationRule(target_rate=0.3, step=0.2, initial=0.01, exploration=0.0)
    experts = [FixedExpert("cheap", 0.5), BrokenExpert("guard-a", 0.97), FixedExpert("guard-b", 0.97)]
    engine = cascade_engine(experts, rule)
    first, second = moderate(engine, request()), moderate(engine, request())
    assert first.cascade is not None and first.cascade.experts == ["guard-a", "guard-b"]
    assert second.cascade is not None and second.cascade.cut == pytest.approx(0.01 * np.exp(0.2 * (2 - 0.3)))


def test_a_request_no_guard_can_take_is_not_an_escalation_and_leaves_the_cut() -> None:
    """The cheap tier is unsure of S8, which the guard does not cover: the decision says why no guard was called,
    and the cut, which could not have sent it up, stays."""
    engine = cascade_engine([FixedExpert("cheap", 0.5), FixedExpert("guard", 0.97, ("S1",))])
    only_s8 = ModerationRequest(messages=[{"role": "user", "content": "text"}], categories=["S8"])
    first, second = moderate(engine, only_s8), moderate(engine, only_s8)
    assert first.cascade is not None and first.cascade.tier == "cheap" and first.cascade.experts == []
    assert first.cascade.reason is not None and "no expensive expert reads" in first.cascade.reason
    assert second.cascade is not None and second.cascade.cut == first.cascade.cut


def test_the_expected_loss_is_null_when_the_cheap_tier_scored_nothing() -> None:
    engine = cascade_engine([BrokenExpert("cheap", 0.5), FixedExpert("guard", 0.97, ("S1",))])
    only_s8 = ModerationRequest(messages=[{"role": "user", "content": "text"}], categories=["S8"])
    decision = moderate(engine, only_s8)
    assert decision.cascade is not None and decision.cascade.expected_loss is None
    assert decision.degraded and decision.action != "allow"


def test_a_guard_that_just_failed_is_passed_over_until_its_cooldown_ends() -> None:
    """While the trusted guard is down, escalations go to the other at once instead of paying its failure first;
    after the cooldown it is tried again."""
    experts = [FixedExpert("cheap", 0.5), BrokenExpert("guard-a", 0.97), FixedExpert("guard-b", 0.97)]
    expensive = frozenset({"guard-a", "guard-b"})
    for cooldown, second_calls in ((60.0, ["guard-b"]), (0.0, ["guard-a", "guard-b"])):
        rule = EscalationRule(initial=0.01, exploration=0.0)
        engine = Engine(experts, cascade=CascadeConfig(expensive, rule, failed_cooldown_s=cooldown))
        first, second = moderate(engine, request()), moderate(engine, request())
        assert first.cascade is not None and first.cascade.experts == ["guard-a", "guard-b"]
        assert second.cascade is not None and second.cascade.experts == second_calls


class LastFirstHedge(Hedge):
    """Hedge whose ranking puts the last expert first, whatever its weights (as the default learner's fastest copy
    can, just after a guard regressed)."""

    def _ranking_weights(self, states: np.ndarray) -> np.ndarray:
        ranking = np.zeros((len(states), self.n_experts))
        ranking[:, -1] = 1.0
        return ranking


def test_the_service_calls_the_guard_the_learners_ranking_puts_first() -> None:
    experts = [FixedExpert("cheap", 0.5), FixedExpert("guard-a", 0.97), FixedExpert("guard-b", 0.97)]
    rule = EscalationRule(initial=0.01, exploration=0.0, hedge_share=0.0)
    plain = cascade_engine(experts, rule, learner=CheapTierLoss(Hedge(3), expensive=[1, 2]))
    ranked = cascade_engine(experts, rule, learner=CheapTierLoss(LastFirstHedge(3), expensive=[1, 2]))
    by_weights, by_ranking = moderate(plain, request()), moderate(ranked, request())
    assert by_weights.cascade is not None and by_weights.cascade.experts == ["guard-a"]  # equal weights: the first
    assert by_ranking.cascade is not None and by_ranking.cascade.experts == ["guard-b"]

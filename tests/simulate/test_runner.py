"""The vectorised runner weighs and learns exactly as the engine does, request by request.

The same small stream (two tenants with their own scopes, delayed and partial feedback, noisy labels, an expert that
sleeps on a category, a category that appears halfway) goes through ``run_learner`` and through ``Engine.decide`` and
``Engine.feedback`` one request at a time; every ensemble score must agree.
"""

from __future__ import annotations

import heapq

import numpy as np
import pytest

from aegis_online.engine import Engine
from aegis_online.experts import Expert
from aegis_online.learn import make_learner
from aegis_online.schemas import ExpertOutput, FeedbackEvent, Message, ModerationRequest
from aegis_online.simulate.runner import BanditSetup, run_learner
from aegis_online.simulate.scenario import Scenario
from aegis_online.simulate.stream import Stream
from aegis_online.simulate.synthetic import generate_traffic
from aegis_online.state import MemoryPolicyStore

SCENARIO = Scenario.model_validate(
    {
        "name": "everything",
        "categories": [
            {"id": "S1", "base_rate": 0.2, "borderline_rate": 0.1},
            {"id": "S8", "base_rate": 0.1},
            {"id": "S12", "base_rate": 0.15, "appears_at": 0.5},
        ],
        "experts": [
            {"name": "a", "quality": {"steps": [[0, 0.95], [0.5, 0.7]]}, "borderline": 0.9},
            {"name": "b", "quality": {"steps": [[0, 0.7], [0.5, 0.95]]}, "borderline": 0.1},
            {"name": "c", "quality": 0.8, "covers": ["S1", "S8"]},
        ],
        "tenants": [
            {
                "name": "strict-one",
                "share": 0.6,
                "strictness": "strict",
                "borderline_unsafe": True,
                "personalise_after": 20,
            },
            {"name": "lenient-one", "share": 0.4, "strictness": "lenient", "personalise_after": 30},
        ],
        "feedback": {"share": 0.7, "label_noise": 0.1, "delay": {"distribution": "geometric", "mean": 6}},
    }
)


class Silent(Expert):
    """An expert the engine never calls: the test hands its outputs to ``decide``."""

    def __init__(self, name: str, categories: list[str]) -> None:
        self.name, self.categories = name, frozenset(categories)

    async def score(self, batch):  # pragma: no cover - decide() is given the outputs
        raise AssertionError("not called")


def engine_scores(stream: Stream, learner: str) -> np.ndarray:
    """Ensemble scores ``(T, C)`` of replica 0 through the real engine, one request at a time."""
    policies = MemoryPolicyStore([t.policy() for t in SCENARIO.tenants])
    experts = [Silent(e.name, SCENARIO.covers(e)) for e in SCENARIO.experts]
    engine = Engine(experts, learner=learner, policies=policies)
    scores = np.full(stream.truth.shape[1:], np.nan)
    pending: list[tuple[int, int, FeedbackEvent]] = []
    for t in range(stream.steps):
        while pending and pending[0][0] <= t:
            engine.feedback(heapq.heappop(pending)[2])
        active = [c for k, c in enumerate(stream.categories) if np.isfinite(stream.truth[0, t, k])]
        tenant = stream.tenants[stream.tenant[0, t]]
        outputs = [
            ExpertOutput(
                expert=name,
                scores={
                    c: float(stream.outputs[0, t, k, i])
                    for k, c in enumerate(stream.categories)
                    if c in active and np.isfinite(stream.outputs[0, t, k, i])
                },
            )
            for i, name in enumerate(stream.experts)
        ]
        request = ModerationRequest(
            messages=[Message(role="user", content=f"r{t}")], tenant=tenant, categories=active, request_id=f"r{t}"
        )
        decision = engine.decide(request, outputs)
        for d in decision.categories:
            scores[t, stream.categories.index(d.category)] = d.score
        if stream.arrival[0, t] < stream.steps:
            labels = {c: float(stream.feedback[0, t, k]) for k, c in enumerate(stream.categories) if c in active}
            event = FeedbackEvent(request_id=f"r{t}", tenant=tenant, labels=labels, trusted=True)
            heapq.heappush(pending, (int(stream.arrival[0, t]), t, event))
    return scores


@pytest.mark.parametrize("learner", ["default", "hedge", "adanormalhedge"])
def test_the_runner_reproduces_the_engine_score_for_score(learner: str) -> None:
    stream = generate_traffic(SCENARIO, steps=400, seed=11)
    run = run_learner(make_learner(learner, 3), stream)
    expected = engine_scores(stream, learner)
    np.testing.assert_allclose(run.predictions[0], expected, rtol=0, atol=1e-12)
    assert np.isnan(run.predictions[0, :200, 2]).all()  # S12 appears halfway


def test_replicas_run_side_by_side_as_if_alone() -> None:
    stream = generate_traffic(SCENARIO, steps=300, seed=3, replicas=3)
    together = run_learner(make_learner("default", 3), stream)
    alone = generate_traffic(SCENARIO, steps=300, seed=3, replicas=1)
    single = run_learner(make_learner("default", 3), alone)
    np.testing.assert_allclose(together.predictions[0], single.predictions[0], atol=1e-12)


def test_bandit_mode_queries_k_experts_and_stores_their_probabilities() -> None:
    stream = generate_traffic(SCENARIO, steps=500, seed=4)
    run = run_learner(make_learner("exp3-ix", 3), stream, bandit=BanditSetup(k=2, always=(2,)))
    assert run.bandit and run.propensities is not None
    # the always-queried expert covers S1 and S8 (evaluated on every request) so it is called every time
    assert run.queried[0, :, 2].all()
    assert (run.queried[0].sum(axis=1) <= 2).all()
    assert run.propensities[0, :, 2].tolist() == [1.0] * 500
    chosen = run.propensities[0][run.queried[0]]
    assert (chosen > 0).all() and (chosen <= 1).all()
    np.testing.assert_allclose(run.propensities[0].sum(axis=1), 2.0)
    # an expert that was not queried has no weight in the ensemble
    assert (run.weights[0][~run.queried[0][:, None, :].repeat(3, axis=1)] == 0).all()


def test_a_bandit_learner_needs_a_bandit_setup_and_vice_versa() -> None:
    stream = generate_traffic(SCENARIO, steps=50, seed=4)
    with pytest.raises(ValueError, match="BanditSetup"):
        run_learner(make_learner("exp3-ix", 3), stream)
    with pytest.raises(ValueError, match="exp3-ix"):
        run_learner(make_learner("hedge", 3), stream, bandit=BanditSetup(k=1))


def test_a_cascade_calls_the_expensive_expert_its_weights_trust_and_explores_the_other() -> None:
    """Two expensive guards of 96% and 80% accuracy: escalations call the better one (its weight leads after a few
    labels), the other only at the exploration rate; a request that did not escalate calls neither."""
    from aegis_online.learn.escalation import EscalationRule, cascade_learner_name
    from aegis_online.simulate.runner import CascadeSetup

    guards = [{"name": "guard-large", "quality": 0.96}, {"name": "guard-small", "quality": 0.80}]
    cheap = [{"name": "embedding-head", "quality": 0.90}, {"name": "keyword-rules", "quality": 0.80}]
    scenario = Scenario.model_validate(
        {"name": "two-guards", "steps": 3000, "categories": [{"id": "S1", "base_rate": 0.2}], "experts": guards + cheap}
    )
    stream = generate_traffic(scenario, steps=3000, seed=5)
    names = list(scenario.expert_names)
    large, small = names.index("guard-large"), names.index("guard-small")
    setup = CascadeSetup((large, small), EscalationRule(target_rate=0.5, exploration=0.1, hedge_share=0.0))
    run = run_learner(make_learner(cascade_learner_name("default", (large, small)), len(names)), stream, cascade=setup)
    escalated, queried = run.escalated[0], run.queried[0]
    assert not queried[~escalated][:, [large, small]].any()
    later = escalated & (np.arange(len(escalated)) >= 500)
    assert queried[later, large].mean() > 0.9
    assert 0.05 < queried[later, small].mean() < 0.2  # explored at about 10%


def test_a_cascade_fed_back_every_experts_score_learns_the_full_information_weights() -> None:
    """``feedback_from_every_expert`` (an analysis bound): the requests escalate exactly as in the plain cascade
    (the escalation reads only the cheap tier, which both learn alike), and the cascade learner's weights are the
    ones the same learner reaches with every expert called, though each request still called only its tier."""
    from aegis_online.learn.escalation import EscalationRule, cascade_learner_name
    from aegis_online.simulate.runner import CascadeSetup

    stream = generate_traffic(SCENARIO, steps=400, seed=3)
    names = list(SCENARIO.expert_names)
    expensive = (names.index("a"), names.index("b"))
    rule = EscalationRule(target_rate=0.3, exploration=0.0, hedge_share=0.0)  # the choice reads the feedback
    runs = {
        every: run_learner(
            make_learner(cascade_learner_name("default", expensive), len(names)),
            stream,
            cascade=CascadeSetup(expensive, rule, feedback_from_every_expert=every),
        )
        for every in (False, True)
    }
    full = run_learner(make_learner("default", len(names)), stream)
    assert np.array_equal(runs[False].escalated, runs[True].escalated)
    for every, run in runs.items():
        assert run.escalated is not None and run.escalated.any() and not run.escalated.all()
        assert not run.queried[~run.escalated][:, list(expensive)].any()  # only escalations call a guard
        same = np.allclose(run.final_weights["global"], full.final_weights["global"])
        assert same == every, (every, run.final_weights["global"], full.final_weights["global"])

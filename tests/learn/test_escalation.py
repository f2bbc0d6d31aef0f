"""The cascade's escalation: the cheap tier's loss regression, the cut's rule, and the guarantee that the
escalation rate tracks its target."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aegis_online.learn import FixedShareGrid, Hedge, known_learner, make_learner
from aegis_online.learn.escalation import (
    CheapTierLoss,
    EscalationRule,
    cascade_learner_name,
    cheap_tier_loss,
    expected_cheap_loss,
    expert_disagreement,
)


def test_the_rule_escalates_at_the_cut_or_when_a_category_has_no_cheap_score() -> None:
    rule = EscalationRule()
    assert rule.escalate(0.1, 0.1) and not rule.escalate(0.1, 0.09)
    assert rule.escalate(0.1, 0.0, unscored=True)
    assert rule.update(0.1, True) > 0.1 > rule.update(0.1, False)


def test_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="target_rate"):
        EscalationRule(target_rate=1.5)
    with pytest.raises(ValueError, match="step > 0"):
        EscalationRule(step=0.0)
    with pytest.raises(ValueError, match="experts_per_escalation"):
        EscalationRule(exploration=-0.1)
    with pytest.raises(ValueError, match="one expensive and one cheap"):
        CheapTierLoss(Hedge(2), expensive=[0, 1])
    with pytest.raises(ValueError, match="one expensive and one cheap"):
        CheapTierLoss(Hedge(2), expensive=[2])


@settings(max_examples=30, deadline=None)
@given(st.floats(0.2, 0.6), st.floats(0.02, 0.2), st.integers(0, 10_000))
def test_the_escalation_rate_is_within_the_log_range_over_step_t_of_target(
    target: float, step: float, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    rule = EscalationRule(target_rate=target, step=step, initial=0.1)
    cut, escalated, cuts = rule.initial, [], [np.log(rule.initial)]
    for score in rng.exponential(0.1, size=4000):  # any scores: the guarantee does not depend on them
        up = rule.escalate(cut, float(score))
        escalated.append(up)
        cut = rule.update(cut, up)
        cuts.append(np.log(cut))
    width = max(cuts) - min(cuts)
    assert abs(np.mean(escalated) - target) <= width / (step * len(escalated)) + 1e-9
    assert abs(np.mean(escalated) - target) < 0.02  # and the range stays narrow on such traffic


@settings(max_examples=20, deadline=None)
@given(st.floats(0.2, 0.8), st.floats(0.0, 0.5), st.integers(0, 10_000))
def test_the_budget_counts_expensive_calls_when_escalations_call_more_than_one_expert(
    target: float, extra: float, seed: int
) -> None:
    """An escalation that calls a second guard (exploration, hedging; here with probability ``extra``) spends two:
    the expensive calls per request, over ``experts_per_escalation``, track the target, and escalations fall."""
    rng = np.random.default_rng(seed)
    rule = EscalationRule(target_rate=target, initial=0.1)
    cut, spent, cuts = rule.initial, [], [np.log(rule.initial)]
    for score in rng.exponential(0.1, size=4000):
        calls = (1 + int(rng.random() < extra)) if rule.escalate(cut, float(score)) else 0
        spent.append(rule.spent(calls, 2))
        cut = rule.update(cut, spent[-1])
        cuts.append(np.log(cut))
    width = max(cuts) - min(cuts)
    assert abs(np.mean(spent) - target) <= width / (rule.step * len(spent)) + 1e-9
    escalated = np.mean(np.array(spent) > 0)
    assert escalated == pytest.approx(target / (1 + extra), abs=0.03)


def test_names_round_trip_through_make_learner() -> None:
    name = cascade_learner_name("default+adaptive", [2])
    assert name == "default+cascade-2+adaptive" and known_learner(name)
    learner = make_learner(name, 3)
    router = cheap_tier_loss(learner)
    assert learner.name == name and router is not None and router.expensive == (2,)
    assert cheap_tier_loss(make_learner("default+adaptive", 3)) is None
    assert not known_learner("default+cascade-x")
    with pytest.raises(ValueError, match="unknown learner"):
        make_learner("default+cascade-x", 3)
    with pytest.raises(ValueError, match="already"):
        cascade_learner_name(name, [1])


@pytest.mark.parametrize("name", ["hedge", "default"])  # not +adaptive: its calibration would fix these scores
def test_the_regression_learns_where_the_cheap_tier_is_wrong(name: str) -> None:
    """Two cheap experts agree on every request; on requests where the first says 0.7 they are wrong (the label is
    0), where it says 0.9 they are right. The regression must learn to expect a large loss on the first kind only,
    from labels alone (the expensive expert never answers)."""
    learner = make_learner(cascade_learner_name(name, [2]), 3)
    wrong, right = np.array([[0.7, 0.7, np.nan]]), np.array([[0.9, 0.9, np.nan]])
    state = learner.init_state()
    before = expected_cheap_loss(learner, np.stack([state, state]), np.vstack([wrong, right]))
    rng = np.random.default_rng(0)
    for _ in range(600):
        if rng.random() < 0.5:
            state = learner.learn_one(state, wrong[0], label=0.0)
        else:
            state = learner.learn_one(state, right[0], label=1.0)
    after = expected_cheap_loss(learner, np.stack([state, state]), np.vstack([wrong, right]))
    assert before[0] == pytest.approx(0.7 * 0.3) and before[1] == pytest.approx(0.9 * 0.1)
    assert after[0] > 0.3 and after[1] < 0.05  # learned: the first kind is costly, the second is not


def test_no_cheap_score_means_no_prediction_and_no_update() -> None:
    learner = CheapTierLoss(Hedge(2), expensive=[1])
    state = learner.init_state()
    assert np.isnan(expected_cheap_loss(learner, state[None], np.array([[np.nan, 0.9]])))[0]
    after = learner.learn_one(state, [np.nan, 0.9], label=1.0)
    assert np.array_equal(learner.split(after)[2], learner.split(state)[2])  # the regression saw nothing


def test_a_tenant_key_inherits_the_global_regression() -> None:
    learner = make_learner(cascade_learner_name("default+adaptive", [1]), 2)
    state = learner.init_state()
    for _ in range(50):
        state = learner.learn_one(state, [0.8, 0.1], label=0.0)
    child = learner.inherit(state[None])[0]
    outputs = np.array([[0.8, np.nan]])
    assert expected_cheap_loss(learner, child[None], outputs)[0] == pytest.approx(
        expected_cheap_loss(learner, state[None], outputs)[0], rel=0.3
    )


def test_an_escalation_calls_the_most_trusted_experts_and_explores_the_others() -> None:
    weights = np.array([[0.05, 0.2, 0.1, 0.4], [0.05, 0.3, 0.2, 0.4]])  # two keys: trust 0.1, 0.5, 0.3, 0.8
    callable_ = np.array([True, True, True, False])  # the last cannot be called (e.g. it does not read the language)
    rng = np.random.default_rng(0)
    single = {"exploration": 0.0, "hedge_share": 0.0}
    assert EscalationRule(**single).choose(weights, callable_, rng).tolist() == [False, True, False, False]
    assert EscalationRule(experts_per_escalation=2, **single).choose(weights, callable_, rng).tolist() == [
        False,
        True,
        True,
        False,
    ]
    assert EscalationRule(experts_per_escalation=0).choose(weights, callable_, rng).tolist() == [
        True,
        True,
        True,
        False,
    ]
    draws = np.array(
        [EscalationRule(exploration=0.2, hedge_share=0.0).choose(weights, callable_, rng) for _ in range(4000)]
    )
    assert draws[:, 1].all() and not draws[:, 3].any()
    share = draws[:, [0, 2]].mean(axis=0)
    assert np.all(np.abs(share - 0.2) < 4 * np.sqrt(0.2 * 0.8 / 4000))  # each other one at the exploration rate


def test_the_ranking_picks_the_called_expert_and_the_weights_decide_the_hedge() -> None:
    weights = np.array([[0.1, 0.5, 0.4]])  # the combination trusts expert 1 most
    ranking = np.array([[0.0, 0.1, 0.9]])  # the ranking (the fastest copy) already prefers expert 2
    callable_ = np.array([False, True, True])
    rng = np.random.default_rng(0)
    single = EscalationRule(exploration=0.0, hedge_share=0.0)
    assert single.choose(weights, callable_, rng).tolist() == [False, True, False]
    assert single.choose(weights, callable_, rng, ranking=ranking).tolist() == [False, False, True]
    # hedged: beside the chosen expert 2, expert 1 holds 0.5 / 0.9 of the pair's *weight*, so both are called
    hedged = EscalationRule(exploration=0.0, hedge_share=0.5)
    assert hedged.choose(weights, callable_, rng, ranking=ranking).tolist() == [False, True, True]


def test_the_default_learner_ranks_by_its_fastest_copy_through_every_wrapper() -> None:
    name = cascade_learner_name("default+adaptive", [2])
    learner = make_learner(name, 3)
    grid = cheap_tier_loss(learner).base  # type: ignore[union-attr]
    assert isinstance(grid, FixedShareGrid)
    fastest = grid.copies[grid.fastest]
    assert (fastest.eta, fastest.alpha) == (max(c.eta for c in grid.copies), min(c.alpha for c in grid.copies))
    rng = np.random.default_rng(1)
    states = learner.init_states(4)
    for _ in range(200):
        outputs = rng.random((4, 3))
        states = learner.learn_many(states, outputs, (rng.random(4) < outputs[:, 0]).astype(float))
    ranking = learner.ranking_weights(states)
    inner = learner.split(states)[0]
    copies = grid._split(cheap_tier_loss(learner).split(inner)[0])[2]  # type: ignore[union-attr]
    assert np.allclose(ranking, copies[:, grid.fastest]) and np.allclose(ranking.sum(axis=1), 1.0)
    assert learner.ranking_weights(states[0]).shape == (3,)
    hedge = Hedge(3)
    assert np.array_equal(hedge.ranking_weights(hedge.init_states(2)), hedge.weights(hedge.init_states(2)))


@pytest.mark.parametrize("seed", range(5))
def test_after_a_swap_the_ranking_names_the_new_best_expert_no_later_than_the_weights(seed: int) -> None:
    """Why the cascade ranks by the fastest copy: its weights change hands sooner than the mixture's when the
    better of two noisy experts changes (docs/cascade.md, "Which guard")."""
    rng = np.random.default_rng(seed)
    learner = FixedShareGrid(2)
    state = learner.init_state()
    first = {"weights": None, "ranking": None}
    for t in range(3000 + 1000):
        y = float(rng.random() < 0.5)
        good, bad = np.clip(y + rng.normal(0.0, [0.3, 0.45]), 0.0, 1.0)
        state = learner.learn_one(state, [good, bad] if t < 3000 else [bad, good], label=y)
        if t >= 3000:
            for key, w in (("weights", learner.weights(state)), ("ranking", learner.ranking_weights(state))):
                if first[key] is None and w[1] > w[0]:
                    first[key] = t
    assert first["weights"] is not None and first["ranking"] is not None
    assert first["ranking"] <= first["weights"]


def test_hedging_calls_every_expert_whose_share_of_its_pair_with_a_chosen_one_reaches_the_share_in_some_key() -> None:
    weights = np.array([[0.05, 0.2, 0.1, 0.4], [0.05, 0.3, 0.2, 0.4]])  # expert 1 is chosen (trust 0.5)
    callable_ = np.array([True, True, True, False])
    rng = np.random.default_rng(0)
    # beside expert 1, expert 2 holds 0.1 / 0.3 = 0.33 and 0.2 / 0.5 = 0.4 of the pair's weight; expert 0: 0.2, 0.14
    expected = {0.45: [False, True, False, False], 0.35: [False, True, True, False], 0.15: [True, True, True, False]}
    for share, called in expected.items():
        rule = EscalationRule(exploration=0.0, hedge_share=share)
        assert rule.choose(weights, callable_, rng).tolist() == called, share
    with pytest.raises(ValueError, match="hedge_share"):
        EscalationRule(hedge_share=1.5)


def test_hedging_bounds_how_far_the_combined_score_moves_from_calling_every_expert() -> None:
    """The guarantee of ``choose``'s docstring: with the same weights, each key's combination over the experts
    called is within (m - 1) * hedge_share of the combination over every callable one, whatever their scores."""
    rng = np.random.default_rng(3)
    share, m = 0.1, 4
    rule = EscalationRule(exploration=0.0, hedge_share=share)
    worst = 0.0
    for _ in range(500):
        weights = rng.dirichlet(np.full(m, 0.3), size=2)
        chosen = rule.choose(weights, np.ones(m, dtype=bool), rng)
        scores = rng.integers(0, 2, size=(2, m)).astype(float)  # extreme scores: the worst case
        called = (weights * chosen * scores).sum(axis=1) / (weights * chosen).sum(axis=1)
        every = (weights * scores).sum(axis=1) / weights.sum(axis=1)
        worst = max(worst, float(np.abs(called - every).max()))
    assert 0.0 < worst <= (m - 1) * share


def test_the_expensive_experts_disagreement_is_measured_on_the_labels_where_both_answered() -> None:
    learner = CheapTierLoss(Hedge(n_experts=4), expensive=[2, 3])
    state = learner.init_state()
    start = learner.disagreement(state[None])[0]
    np.testing.assert_array_equal(start, 1.0 - np.eye(4))  # no call to both yet: the most two scores can differ
    for _ in range(300):
        state = learner.learn_one(state, [0.5, 0.4, 0.9, 0.6], label=1.0)  # both guards: 0.3 apart
        state = learner.learn_one(state, [0.5, 0.4, 0.9, np.nan], label=0.0)  # one guard: measures nothing
    apart = learner.disagreement(state[None])[0]
    # 300 calls to both at 0.3, after a prior of one at 1, with forgetting over LOSS_WINDOW labels
    assert 0.3 < apart[2, 3] == apart[3, 2] < 0.3 + 0.7 / 250
    assert apart[0, 1] == apart[0, 2] == 1.0 and apart[2, 2] == 0.0  # only the expensive pairs are measured
    wrapped = make_learner(cascade_learner_name("default+adaptive", [2, 3]), 4)
    np.testing.assert_array_equal(expert_disagreement(wrapped, wrapped.init_state()), start[None])
    np.testing.assert_array_equal(expert_disagreement(Hedge(n_experts=4), Hedge(4).init_states(2))[1], start)


def test_hedging_weighs_an_experts_share_by_how_far_its_scores_lie_from_the_chosen_ones() -> None:
    """An expert that holds a third of the weight it and the chosen one hold is left out where the two have agreed
    to within 0.1 on average (0.1 / 3 < 0.2), and called where they lie 0.9 apart; without a measurement, as if 1
    apart."""
    weights = np.array([[0.1, 0.2, 0.4]])
    callable_ = np.array([False, True, True])
    rule = EscalationRule(exploration=0.0, hedge_share=0.2)
    rng = np.random.default_rng(0)
    close, far = (np.full((1, 3, 3), d) for d in (0.1, 0.9))
    assert rule.choose(weights, callable_, rng, close).tolist() == [False, False, True]
    assert rule.choose(weights, callable_, rng, far).tolist() == [False, True, True]
    assert rule.choose(weights, callable_, rng).tolist() == [False, True, True]


def test_with_a_measured_disagreement_hedging_bounds_the_combined_scores_mean_move() -> None:
    """What the disagreement buys: on new requests whose two expert scores lie as far apart on average as measured,
    leaving the second expert out moves the key's combined score by less than ``hedge_share`` on average (up to
    the sampling error of a mean over 1,000 requests)."""
    rng = np.random.default_rng(5)
    share = 0.1
    rule = EscalationRule(exploration=0.0, hedge_share=share)
    learner = CheapTierLoss(Hedge(n_experts=3), expensive=[1, 2])
    hedged = []
    for spread in (0.05, 0.2, 0.6):
        state = learner.init_state()
        scores = np.clip(rng.random((2000, 1)) + spread * rng.standard_normal((2000, 2)), 0, 1)
        for a, b in scores[:1000]:
            state = learner.learn_one(state, [0.5, a, b], label=1.0)
        apart = learner.disagreement(state[None])
        for ratio in (0.1, 0.3, 0.6, 1.0):
            weights = np.array([[0.0, 1.0, ratio]])
            chosen = rule.choose(weights, np.array([False, True, True]), rng, apart)
            hedged.append(bool(chosen[2]))
            if chosen[2]:
                continue
            every = (scores[1000:] * weights[0, 1:]).sum(axis=1) / weights[0, 1:].sum()
            moves = np.abs(scores[1000:, 0] - every)  # on new requests: within their sampling error
            assert moves.mean() < share + 3 * moves.std() / np.sqrt(len(moves)), (spread, ratio)
    assert 0 < sum(hedged) < len(hedged)  # both cases occur


def test_a_batch_combines_each_row_with_the_cheap_tier_or_the_whole_ensemble_as_its_row_alone_would() -> None:
    """Rows with no expensive expert awake take the cheap tier's own weights, the others the whole ensemble's, in
    one batch exactly as one row at a time (the request path computes only the weights each row needs)."""
    learner = make_learner(cascade_learner_name("default+adaptive", [3, 4]), 5)
    rng = np.random.default_rng(4)
    state = learner.init_state()
    for _ in range(80):
        state = learner.learn_one(state, rng.random(5), label=float(rng.random() < 0.3))
    awake = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 0], [1, 0, 1, 0, 0], [0, 1, 1, 1, 1], [1, 1, 1, 0, 0]], dtype=bool)
    states = np.tile(state, (len(awake), 1))
    batch = learner.combination_weights(states, awake)
    one_by_one = np.vstack([learner.combination_weights(state[None, :], row[None, :]) for row in awake])
    np.testing.assert_allclose(batch, one_by_one)
    assert np.allclose(batch.sum(axis=1), 1.0) and not batch[~awake].any()
    router = cheap_tier_loss(learner)
    assert router is not None
    tier_state = router.split(learner.split(state[None, :])[0])[1]  # Adaptive's weights part, then the tier's
    cheap_only = router.tier.combination_weights(tier_state, awake[:1, :3])
    np.testing.assert_allclose(batch[0, :3], cheap_only[0])
    assert not np.allclose(batch[1, :4] / batch[1, :4].sum(), np.r_[batch[0, :3], 0.0])  # the guard changes the mix


def test_a_fresh_state_cannot_be_changed_through_what_init_state_returns() -> None:
    learner = make_learner(cascade_learner_name("default+adaptive", [1]), 3)
    first = learner.init_state()
    first[:] = 7.0
    learner.init_states(2)[0, :] = 7.0
    assert not np.any(learner.init_state() == 7.0) and not np.any(learner.init_states(3) == 7.0)

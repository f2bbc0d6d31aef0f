"""When a cascade calls its expensive experts: when the cheap tier's predicted loss is high, at a learned rate.

Two parts, each with one job:

- ``CheapTierLoss`` wraps a weights learner and learns, per (scope, category) key and from the same labels, what the
  ensemble's prediction from the *cheap* experts alone loses: a ridge regression (recursive least squares with
  forgetting) of that squared loss on features of the cheap experts' scores (each score, which ones answered, how far
  each lies from the combined score, their spread, the combined score and its ``p (1 - p)``). Labels arrive for
  every request, escalated or not, and the cheap tier's prediction is known for each, so the regression needs no
  call to the expensive experts. Before any label its prediction is ``p (1 - p)``: the loss a calibrated forecast
  expects. Why learned: the cheap tier's own uncertainty (a score near the threshold) does not say when it is wrong;
  on the shipped scenarios a band around the threshold loses 16-64% more than calling every expert at 60-70% fewer
  calls (docs/cascade.md), the learned prediction a few percent.
- ``EscalationRule`` escalates a request when the summed predicted loss of the categories the policy acts on reaches
  the scope's cut (or when a category the expensive tier covers has no cheap score). The cut moves in log space by
  ``step * (spent - target)`` after each request, ``spent`` being the expensive experts it called over
  ``experts_per_escalation`` (0 when it did not escalate). Summing the moves gives the guarantee: over any T
  requests during which ``log(cut)`` stays within a range of width W, the mean of ``spent`` is within
  ``W / (step * T)`` of the target, whatever the scores: the expensive calls per request are held at ``target *
  experts_per_escalation``. The budget is what is controlled; the regression decides which requests use it.
  ``EscalationRule.choose`` then picks which expensive experts an escalated request calls: the most trusted by the
  learner's ranking weights (``Learner.ranking_weights``: for the default learner its fastest copy's, which change
  hands soonest after a guard regresses; ``experts_per_escalation`` of them), each other one with probability
  ``exploration``, and each other one whose share of the weight it and a chosen one hold, times how far apart
  their scores have lain, reaches ``hedge_share`` (the weights have not told them apart, and leaving it out would
  move the combined score).

State: the regression's statistics, and how far apart the expensive experts' scores lie where both answered, ride
in each key's state vector (so the stores, the exactly-once writes and the scope rules are unchanged, as for
``Adaptive``); the cut is one float per scope. Pure numpy, no I/O.

Examples
--------
>>> from aegis_online.learn import Hedge
>>> learner = CheapTierLoss(Hedge(n_experts=3), expensive=[2])
>>> learner.name
'hedge+cascade-2'
>>> state = learner.init_state()
>>> loss = lambda: float(expected_cheap_loss(learner, state[None], np.array([[0.9, 0.1, np.nan]]))[0])
>>> round(loss(), 3)  # no label yet: p (1 - p) of the cheap tier's 0.5
0.25
>>> for _ in range(200):  # the first cheap expert is right: the weights, then the predicted loss, follow
...     state = learner.learn_one(state, [0.9, 0.1, 1.0], label=1.0)
>>> round(loss(), 2)  # the cheap tier now says 0.9 here, and loses (1 - 0.9) ** 2
0.01
>>> rule = EscalationRule(target_rate=0.5, step=0.1, initial=0.1)
>>> cut = rule.initial
>>> for score in [0.3, 0.01, 0.3, 0.01]:
...     cut = rule.update(cut, rule.escalate(cut, score))
>>> round(cut, 4)
0.1
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from aegis_online.learn.base import Learner, labelled_round

#: The escalation cut's range, in predicted squared loss summed over a request's keys: wide enough for every cut
#: that matters, and bounded so that the cut cannot run off while nothing can meet the target, then take as long
#: to come back (or reach 0 or infinity, where multiplying no longer moves it). A request's squared loss is at most 1
#: per key over at most 57 keys (24 canonical categories, 32 custom, the whole request's), so above ``MAX_CUT``
#: nothing escalates; ``MIN_CUT`` is the squared loss of a forecast 3e-5 from its label.
MIN_CUT = 1e-9
MAX_CUT = 64.0
#: Marks a cascade-aware learner's name: ``<learner>+cascade-<expensive indices>`` (its own key namespace).
CASCADE_MARK = "+cascade-"
#: Labels after which an old label's weight in the loss regression has fallen to 1/e (the regression forgets, so
#: it follows experts whose quality drifts).
LOSS_WINDOW = 5000
#: Ridge strength toward the prior ``p (1 - p)``: about as many labels as it is worth.
PRIOR_LABELS = 1.0


def cascade_learner_name(name: str, expensive: Sequence[int]) -> str:
    """The name of learner ``name`` made cascade-aware for the experts at indices ``expensive`` (``+adaptive``, if
    any, stays last: calibration wraps the whole).

    >>> cascade_learner_name("default+adaptive", [4, 3])
    'default+cascade-3-4+adaptive'
    """
    from aegis_online.learn import ADAPTIVE_SUFFIX

    if CASCADE_MARK in name:
        raise ValueError(f"{name!r} is already a cascade learner")
    base = name.removesuffix(ADAPTIVE_SUFFIX)
    marked = base + CASCADE_MARK + "-".join(str(i) for i in sorted(set(expensive)))
    return marked + (ADAPTIVE_SUFFIX if base != name else "")


class CheapTierLoss(Learner):
    """``base``, plus a per-key regression of the loss of its prediction from the experts not in ``expensive``."""

    def __init__(self, base: Learner, expensive: Sequence[int], window: int = LOSS_WINDOW) -> None:
        if base.bandit:
            raise ValueError(f"{base.name} is a bandit learner: a cascade and bandit mode both choose the experts")
        super().__init__(base.n_experts, base.loss_name)
        chosen = sorted(set(int(i) for i in expensive))
        if not chosen or chosen[0] < 0 or chosen[-1] >= base.n_experts or len(chosen) == base.n_experts:
            raise ValueError(
                f"expensive: need at least one expensive and one cheap expert among {base.n_experts}, got {chosen}"
            )
        self.base = base
        self.expensive = tuple(chosen)
        self.cheap = np.ones(base.n_experts, dtype=bool)
        self.cheap[chosen] = False
        self.forget = 1.0 - 1.0 / window
        k = int(self.cheap.sum())
        #: the same algorithm over the cheap experts alone: the tier's combination when it decides alone
        self.tier = type(base)(k)
        self.n_features = 3 * k + 4
        #: the pairs of expensive experts whose disagreement each key measures, as two index arrays
        self.pairs = np.triu_indices(len(chosen), k=1)
        self.name = base.name + CASCADE_MARK + "-".join(map(str, chosen))  # type: ignore[misc]

    @property
    def state_size(self) -> int:
        d = self.n_features
        return self.base.state_size + self.tier.state_size + d * (d + 1) + 2 * len(self.pairs[0])

    def _initial_state(self) -> np.ndarray:
        rest = np.zeros(self.state_size - self.base.state_size - self.tier.state_size)
        return np.concatenate([self.base.init_state(), self.tier.init_state(), rest])

    def split(self, states: np.ndarray) -> tuple[np.ndarray, ...]:
        """The base learner's states, the cheap tier's learner's, the regression's ``sum x x^T`` ``(B, d, d)`` and
        ``sum x y`` ``(B, d)``, and the expensive pairs' ``sum |s_i - s_j|`` and label counts ``(B, P)``, both
        with forgetting."""
        states = np.atleast_2d(states)
        d, n_pairs = self.n_features, len(self.pairs[0])
        a = self.base.state_size
        b = a + self.tier.state_size
        c = b + d * (d + 1)
        gram = states[:, b : b + d * d].reshape(-1, d, d)
        return (
            states[:, :a],
            states[:, a:b],
            gram,
            states[:, b + d * d : c],
            states[:, c : c + n_pairs],
            states[:, c + n_pairs :],
        )

    def _log_weights(self, states: np.ndarray) -> np.ndarray:
        return self.base.log_weights(self.split(states)[0])

    def _ranking_weights(self, states: np.ndarray) -> np.ndarray:
        return self.base.ranking_weights(self.split(states)[0])

    def combination_weights(self, states: np.ndarray, awake: np.ndarray) -> np.ndarray:
        base, tier, *_ = self.split(states)
        awake = np.asarray(awake, dtype=bool)
        alone = ~awake[:, ~self.cheap].any(axis=1)
        if not alone.any():
            return self.base.combination_weights(base, awake)
        weights = np.zeros(awake.shape)
        # each row's weights from one learner only: the cheap tier's decides most requests, and the request path
        # should not pay for the whole ensemble's weights there
        cheap = np.zeros((int(alone.sum()), awake.shape[1]))
        cheap[:, self.cheap] = self.tier.combination_weights(tier[alone], awake[alone][:, self.cheap])
        weights[alone] = cheap
        if not alone.all():
            weights[~alone] = self.base.combination_weights(base[~alone], awake[~alone])
        return weights

    def _update(self, states: np.ndarray, losses: np.ndarray) -> np.ndarray:  # pragma: no cover - learn_many
        raise NotImplementedError("CheapTierLoss learns in learn_many: it needs the outputs, not only the losses")

    def inherit(self, parent_states: np.ndarray) -> np.ndarray:
        base, tier, gram, moment, gaps, counts = self.split(parent_states)
        d = self.n_features
        return np.concatenate(
            [self.base.inherit(base), self.tier.inherit(tier), gram.reshape(-1, d * d), moment, gaps, counts], axis=1
        )

    def calibrate(self, states: np.ndarray, outputs: np.ndarray) -> np.ndarray:
        return self.base.calibrate(self.split(states)[0], outputs)

    def cheap_prediction(self, states: np.ndarray, outputs: np.ndarray) -> np.ndarray:
        """The prediction from the cheap experts alone, with the tier's own weights (NaN where none answered)."""
        outputs = np.asarray(outputs, dtype=np.float64)
        awake = np.isfinite(outputs) & self.cheap
        return self.predict_many(states, outputs, awake)

    def features(self, outputs: np.ndarray, cheap: np.ndarray) -> np.ndarray:
        """Regression features ``(B, d)`` from the outputs ``(B, N)`` and the cheap prediction ``(B,)``."""
        scores = np.asarray(outputs, dtype=np.float64)[:, self.cheap]
        asleep = np.isnan(scores)
        p = np.nan_to_num(cheap, nan=0.5)
        z = np.where(asleep, p[:, None], scores)
        high = np.where(asleep, -np.inf, z).max(axis=1)
        low = np.where(asleep, np.inf, z).min(axis=1)
        spread = np.where(asleep.all(axis=1), 0.0, high - low)
        ones = np.ones((len(p), 1))
        return np.hstack([ones, z, asleep, np.abs(z - p[:, None]), spread[:, None], p[:, None], (p * (1 - p))[:, None]])

    def _expected_loss(self, states: np.ndarray, outputs: np.ndarray) -> np.ndarray:
        cheap = self.cheap_prediction(states, outputs)
        _, _, gram, moment, _, _ = self.split(states)
        d = self.n_features
        prior = np.zeros(d)
        prior[-1] = PRIOR_LABELS
        coef = np.linalg.solve(gram + PRIOR_LABELS * np.eye(d), (moment + prior)[..., None])[..., 0]
        predicted = np.einsum("bd,bd->b", self.features(outputs, cheap), coef)
        return np.where(np.isfinite(cheap), np.clip(predicted, 0.0, 1.0), np.nan)

    def learn_many(
        self,
        states: np.ndarray,
        outputs: np.ndarray,
        labels: np.ndarray,
        awake: np.ndarray | None = None,
        propensities: np.ndarray | None = None,
    ) -> np.ndarray:
        states, outputs, labels = labelled_round(states, outputs, labels, awake)
        if states.shape[0] == 0:
            return states.copy()
        base, tier, gram, moment, gaps, counts = self.split(states)
        cheap = self.cheap_prediction(states, outputs)
        seen = np.isfinite(cheap)
        x = self.features(outputs, cheap)
        y = np.where(seen, (np.nan_to_num(cheap) - labels) ** 2, 0.0)
        keep = np.where(seen, self.forget, 1.0)
        gram = keep[:, None, None] * gram + seen[:, None, None] * np.einsum("bi,bj->bij", x, x)
        moment = keep[:, None] * moment + seen[:, None] * x * y[:, None]
        guards = outputs[:, list(self.expensive)]
        gap = np.abs(guards[:, self.pairs[0]] - guards[:, self.pairs[1]])  # NaN unless both answered
        both = np.isfinite(gap)
        gaps = np.where(both, self.forget * gaps + np.nan_to_num(gap), gaps)
        counts = np.where(both, self.forget * counts + 1.0, counts)
        d = self.n_features
        learned = [
            self.base.learn_many(base, outputs, labels),
            self.tier.learn_many(tier, outputs[:, self.cheap], labels),
        ]
        return np.concatenate([*learned, gram.reshape(-1, d * d), moment, gaps, counts], axis=1)

    def disagreement(self, states: np.ndarray) -> np.ndarray:
        """``(B, N, N)``: per key, how far apart two experts' scores lie on average, ``|s_i - s_j|``, measured on
        the labelled requests where both expensive experts answered, after a prior of one request at 1 (the most
        they can differ); 1 for every pair not both expensive, 0 on the diagonal. Why: how much leaving one expert
        out changes a combined score is its weight share times how far it lies from the others, and only calls
        to both measure the second."""
        _, _, _, _, gaps, counts = self.split(states)
        n = self.n_experts
        out = np.ones((len(gaps), n, n))
        guards = np.asarray(self.expensive)
        i, j = guards[self.pairs[0]], guards[self.pairs[1]]
        mean = (gaps + PRIOR_LABELS) / (counts + PRIOR_LABELS)
        out[:, i, j] = mean
        out[:, j, i] = mean
        out[:, np.arange(n), np.arange(n)] = 0.0
        return out

    def __repr__(self) -> str:
        return f"CheapTierLoss({self.base!r}, expensive={self.expensive})"


def cheap_tier_loss(learner: Learner) -> CheapTierLoss | None:
    """The ``CheapTierLoss`` inside ``learner`` (itself, or the base an ``Adaptive`` calibrates for), else None."""
    inner = getattr(learner, "base", None)
    if isinstance(learner, CheapTierLoss):
        return learner
    return inner if isinstance(inner, CheapTierLoss) else None


def expected_cheap_loss(learner: Learner, states: np.ndarray, outputs: np.ndarray) -> np.ndarray:
    """The cheap tier's predicted loss per key for a cascade-aware ``learner`` (``CheapTierLoss``, or ``Adaptive``
    over one: the outputs are calibrated first, as the learner combines them)."""
    router = cheap_tier_loss(learner)
    if router is None:
        raise ValueError(f"{learner.name} is not a cascade learner (see cascade_learner_name)")
    states = np.atleast_2d(np.asarray(states, dtype=np.float64))
    outputs = learner.calibrate(states, np.asarray(outputs, dtype=np.float64))
    if router is not learner:  # Adaptive: the router's states are the first part of each state
        states = learner.split(states)[0]  # type: ignore[attr-defined]
    return router._expected_loss(states, outputs)


def expert_disagreement(learner: Learner, states: np.ndarray) -> np.ndarray:
    """``CheapTierLoss.disagreement`` for a cascade-aware ``learner`` (itself, or ``Adaptive`` over one: measured
    on the calibrated scores it combines); all ones (the most two experts can differ) for any other learner."""
    states = np.atleast_2d(np.asarray(states, dtype=np.float64))
    router = cheap_tier_loss(learner)
    if router is None:
        n = learner.n_experts
        return np.broadcast_to(1.0 - np.eye(n), (len(states), n, n)).copy()
    if router is not learner:
        states = learner.split(states)[0]  # type: ignore[attr-defined]
    return router.disagreement(states)


@dataclass(frozen=True)
class EscalationRule:
    """Escalate when the predicted loss reaches the scope's cut; the cut learned toward ``target_rate``; on an
    escalation, call the ``experts_per_escalation`` most trusted expensive experts, each other one with probability
    ``exploration``."""

    target_rate: float = 0.3
    #: how far one request moves ``log(cut)``
    step: float = 0.05
    #: the cut a scope starts with
    initial: float = 0.05
    #: expensive experts called on an escalation, the most trusted first (0: all of them)
    experts_per_escalation: int = 1
    #: the chance that each expensive expert not among those is called as well, so that its weight keeps being
    #: measured (a regressed leader is then overtaken)
    exploration: float = 0.05
    #: an expensive expert b is called too when, in one of the request's keys, its share of the weight it and the
    #: chosen expert a hold there, ``w_b / (w_a + w_b)``, times how far apart their scores have lain
    #: (``CheapTierLoss.disagreement``) reaches this: leaving b out would move the pair's combined score by that
    #: much on average, and the weights have not told the two apart. Experts that agree are not both called,
    #: however close their weights (0: never hedge; docs/cascade.md, "Hedging")
    hedge_share: float = 0.1

    def __post_init__(self) -> None:
        if not 0.0 <= self.target_rate <= 1.0:
            raise ValueError(f"target_rate must be in [0, 1], got {self.target_rate}")
        if self.step <= 0 or self.initial <= 0:
            raise ValueError("need step > 0 and initial > 0")
        if self.experts_per_escalation < 0 or not 0.0 <= self.exploration <= 1.0:
            raise ValueError("need experts_per_escalation >= 0 and exploration in [0, 1]")
        if not 0.0 <= self.hedge_share <= 1.0:
            raise ValueError(f"hedge_share must be in [0, 1], got {self.hedge_share}")

    def choose(
        self,
        weights: np.ndarray,
        callable_: np.ndarray,
        rng: np.random.Generator,
        disagreement: np.ndarray | None = None,
        ranking: np.ndarray | None = None,
    ) -> np.ndarray:
        """Which experts an escalated request calls, over all ``N``, from their ``weights`` ``(K, N)`` in the
        request's keys and which of them can answer there: ``callable_`` ``(K, N)``, or ``(N,)`` for every key (the
        expensive experts that read the request's language and cover the key's category). Called are the
        ``experts_per_escalation`` most trusted (trust: an expert's ``ranking`` weights ``(K, N)``, the learner's
        ``ranking_weights``, else ``weights``, summed over the keys it can answer), each
        other callable one with probability ``exploration``, and each other one b whose share of the weight it and
        a hold in a key b can answer, ``w_b / (w_a + w_b)`` (a: the chosen expert with the highest weight there),
        times their ``disagreement`` ``(K, N, N)`` (the mean ``|s_a - s_b|`` measured per key; 1 for every pair
        when not given), reaches ``hedge_share``.

        Why not all: the weights already say which expensive expert is worth its cost. Calling the leader alone on
        more requests buys more than calling every expensive expert on fewer (docs/cascade.md), and exploration
        keeps the others' weights current, as the sleeping-experts learners need no importance weights.

        Why hedge: while the weights have not told the experts apart (a new tenant, a guard that regressed, noisy or
        late labels), one of them alone is a coin toss between them. Leaving out only experts below ``hedge_share``
        bounds what the choice changes: with the same weights, each key's combined score is within
        ``(m - 1) * hedge_share`` of the one with all its ``m`` callable experts, whatever the scores, when no
        disagreement is given (the weight left out over the weight of those that answer); with the measured one,
        each expert left out moves a pair's combination by less than ``hedge_share`` on average over requests whose
        scores lie as far apart as measured. Experts that agree are then not both called however close their
        weights: equally good experts keep close weights for good, and a second call that agrees buys nothing, at
        the cost of an escalation. Once the weights part, at the learners' exponential rates, the leader is called
        alone.

        >>> rule = EscalationRule(experts_per_escalation=1, exploration=0.0, hedge_share=0.0)
        >>> weights = np.array([[0.1, 0.1, 0.3, 0.5]])  # the last is the most trusted but cannot answer
        >>> rule.choose(weights, np.array([False, True, True, False]), np.random.default_rng(0)).tolist()
        [False, False, True, False]
        >>> hedged = EscalationRule(experts_per_escalation=1, exploration=0.0, hedge_share=0.35)
        >>> hedged.choose(weights, np.array([False, True, True, False]), np.random.default_rng(0)).tolist()
        [False, False, True, False]
        >>> close = np.array([[0.1, 0.2, 0.3, 0.4]])  # expert 1 holds 0.2 / (0.2 + 0.3) of the pair with expert 2
        >>> hedged.choose(close, np.array([False, True, True, False]), np.random.default_rng(0)).tolist()
        [False, True, True, False]
        """
        weights = np.atleast_2d(weights)
        answers = np.broadcast_to(np.asarray(callable_, dtype=bool), weights.shape)  # (K, N)
        callable_any = answers.any(axis=0)
        trust = np.where(callable_any, self.trust(weights if ranking is None else ranking, answers), -np.inf)
        k = self.experts_per_escalation or int(callable_any.sum())
        chosen = np.zeros(len(trust), dtype=bool)
        chosen[np.argsort(-trust, kind="stable")[:k]] = True
        chosen &= callable_any
        explored = np.zeros(len(trust), dtype=bool)
        explored[callable_any] = rng.random(int(callable_any.sum())) < self.exploration
        hedged = np.zeros(len(trust), dtype=bool)
        if self.hedge_share > 0:
            among_chosen = np.where(answers & chosen, weights, 0.0)
            leader = among_chosen.argmax(axis=1)  # (K,): the chosen expert with the highest weight in each key
            highest = among_chosen.max(axis=1, keepdims=True)  # (K, 1); 0: none chosen
            gap = 1.0 if disagreement is None else np.atleast_3d(disagreement)[np.arange(len(leader)), leader]
            moves = weights * gap >= self.hedge_share * (highest + weights)  # its share of the pair, times the gap
            hedged = (answers & (highest > 0) & moves).any(axis=0)
        return callable_any & (chosen | explored | hedged)

    @staticmethod
    def trust(weights: np.ndarray, answers: np.ndarray) -> np.ndarray:
        """Each expert's trust ``(N,)`` for a request: its weights ``(K, N)`` summed over the keys where it can
        answer (``answers``, ``(K, N)`` or ``(N,)``). ``choose`` ranks by it, and so does whatever must add an
        expert after the choice."""
        weights = np.atleast_2d(weights)
        return np.where(np.broadcast_to(np.asarray(answers, dtype=bool), weights.shape), weights, 0.0).sum(axis=0)

    def escalate(self, cut: float, score: float, unscored: bool = False) -> bool:
        """Whether to call the expensive tier: the predicted loss ``score`` at or above ``cut``, or a category the
        expensive tier covers that no cheap expert scored (``unscored``)."""
        return unscored or score >= cut

    @staticmethod
    def moves_cut(unscored: bool, callable_: int) -> bool:
        """Whether a request moves its scope's cut: only one the cut decided, so not one forced up by an
        ``unscored`` category (a cheap expert's outage would raise the cut for as long as it lasts, and starve the
        escalations after it), nor one that no expensive expert can take (``callable_``: 0), which no cut could
        have sent up."""
        return not unscored and callable_ > 0

    def spent(self, called: int, callable_: int) -> float:
        """What one request spent of the budget, in escalations: the expensive experts it ``called`` over the
        number an escalation calls (``experts_per_escalation``, at most the ``callable_`` ones; all of them when it
        is 0). Exploration, hedging and failover call more and count for more, so the target holds the expensive
        calls, not only the escalations; an escalation that calls every expert it can counts as one, however few.

        >>> rule = EscalationRule(experts_per_escalation=2)
        >>> rule.spent(2, 3), rule.spent(1, 1), EscalationRule(experts_per_escalation=0).spent(2, 2)
        (1.0, 1.0, 1.0)
        """
        per_escalation = min(self.experts_per_escalation, callable_) if self.experts_per_escalation else callable_
        return called / per_escalation if per_escalation else 0.0

    def update(self, cut: float, spent: float) -> float:
        """The cut after one request that ``spent`` this much (``spent``: 0 for none, 1 for one escalation's
        experts): up when it spent more than the target, down when less; kept within ``[MIN_CUT, MAX_CUT]``.

        Why the bounds: a cut that kept moving through a spell in which nothing could meet the target would store
        up moves to undo afterwards, and at the float range's ends it would stop moving for good (0 or infinity).
        Within them the guarantee is unchanged.

        >>> rule = EscalationRule(target_rate=0.5, step=1.0)
        >>> cut = 1.0
        >>> for _ in range(2000):  # a spell in which every request spends twice the target ...
        ...     cut = rule.update(cut, 2.0)
        >>> cut == MAX_CUT, rule.update(cut, 0.0) < MAX_CUT  # ... leaves the cut at the bound, free to come down
        (True, True)
        """
        moved = float(cut * np.exp(self.step * (float(spent) - self.target_rate)))
        return min(max(moved, MIN_CUT), MAX_CUT)

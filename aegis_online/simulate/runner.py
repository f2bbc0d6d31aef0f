"""Run an online learner over a ``Stream``, exactly as the engine would weigh and update, but vectorised.

One learner key per (scope, category), held in one table for every replica. The update runs the service's own
code (``weights.updates``: ``scope_entries`` and ``replay``): with several tenants every feedback event (trusted,
as a moderator's) updates the global key and the tenant's key, and a tenant's key starts from the global state as
it was just before its first feedback. A tenant's weights are used once it has ``personalise_after`` events.
Feedback is applied when it arrives (``stream.arrival``), from the outputs stored at request time, never
recomputed. In bandit mode the experts of each request are chosen by ``Exp3IX.select`` from the mean state of its
categories, and the selection probabilities are stored and handed to the update.

Each step costs one ``learn_many`` over the keys its feedback touches (every replica at once) and one weight lookup
for the keys of the request, so 20,000 requests take a second or two per learner.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from aegis_online.learn import Adaptive, Exp3IX, Learner
from aegis_online.learn.batch import occurrence_rank
from aegis_online.learn.escalation import EscalationRule, cheap_tier_loss, expected_cheap_loss, expert_disagreement
from aegis_online.simulate.stream import Stream
from aegis_online.weights.updates import KeyUpdates, replay, scope_entries

Progress = Callable[[int], None]


@dataclass(frozen=True)
class BanditSetup:
    """Query ``k`` experts per request; ``always`` (expert indices) are queried every time."""

    k: int
    always: tuple[int, ...] = ()


@dataclass(frozen=True)
class CascadeSetup:
    """Call the ``expensive`` experts (indices) only when the cheap tier's predicted loss on the request reaches
    the tenant's cut (``EscalationRule``; the learner must be cascade-aware: ``learn.cascade_learner_name``);
    ``full_information`` names the run of the same learner with every expert, the reference of the report."""

    expensive: tuple[int, ...]
    rule: EscalationRule = field(default_factory=EscalationRule)
    full_information: str | None = None
    #: analysis only, no service can do it: the feedback trains every expert on its score, called or not, so the
    #: guards' weights are learned as with full information while the requests still call only the chosen ones.
    #: The gap between this run and the plain cascade is what learning the guards' weights from the calls the
    #: cascade makes costs (``bench/cascade_hedging.py --full-feedback``)
    feedback_from_every_expert: bool = False


@dataclass
class LearnerRun:
    """What one learner did on a stream.

    ``weights[r, t, c]`` are the weights it used for request ``t`` (over the experts that answered, summing to 1;
    zero for the others), ``predictions[r, t, c]`` its probability (NaN: no expert answered), ``queried[r, t, i]``
    whether expert ``i`` was asked, ``propensities`` the selection probabilities (bandit mode). ``weight_times`` and
    ``weight_samples`` (replica 0, global scope, as if every expert answered) show the weights over time.
    ``learner`` is None when the learner is not known here (a remote service's).
    """

    name: str
    learner: Learner | None
    weights: np.ndarray
    predictions: np.ndarray
    queried: np.ndarray
    propensities: np.ndarray | None
    weight_times: np.ndarray
    weight_samples: np.ndarray
    final_weights: dict[str, np.ndarray] = field(default_factory=dict)
    #: With several tenants: the weights each tenant's requests used at ``weight_times`` (replica 0).
    tenant_weight_samples: dict[str, np.ndarray] = field(default_factory=dict)
    seconds: float = 0.0
    #: The decisions a service took per (request, category), where they came from one (replay); else None.
    flagged: np.ndarray | None = None
    #: True when only some experts were queried per request (bandit mode).
    bandit: bool = False
    #: The cascade it ran with, and per (replica, request) whether the expensive tier was called; else None.
    cascade: CascadeSetup | None = None
    escalated: np.ndarray | None = None


def _schedule(stream: Stream) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Feedback events sorted by (arrival, request), their wave rank within (arrival, replica), and step bounds."""
    r_all, t_all = np.nonzero(stream.arrival < stream.steps)
    arrival = stream.arrival[r_all, t_all]
    order = np.lexsort((t_all, arrival))
    ev_r, ev_t, ev_a = r_all[order], t_all[order], arrival[order]
    rank = occurrence_rank(ev_a * stream.replicas + ev_r)
    bounds = np.searchsorted(ev_a, np.arange(stream.steps + 1))
    return ev_r, ev_t, rank, bounds


def run_learner(
    learner: Learner,
    stream: Stream,
    *,
    name: str | None = None,
    bandit: BanditSetup | None = None,
    cascade: CascadeSetup | None = None,
    seed: int = 0,
    weight_samples: int = 200,
    progress: Progress | None = None,
) -> LearnerRun:
    """Replay ``stream`` through ``learner``: predict each request from the state its feedback so far has built.
    With ``cascade``, the expensive experts answer a request only when the cheap ones are uncertain; the others
    are asleep for it, and its feedback trains the experts that answered (as for a language an expert does not
    read)."""
    if learner.n_experts != len(stream.experts):
        raise ValueError(f"learner has {learner.n_experts} experts, the stream {len(stream.experts)}")
    if learner.bandit and bandit is None:
        raise ValueError(f"{learner.name} is a bandit learner: give a BanditSetup (how many experts to query)")
    if bandit is not None and cascade is not None:
        raise ValueError("bandit mode and a cascade both choose the experts to call: use one")
    if bandit is not None and not isinstance(learner, Exp3IX):
        raise ValueError("bandit mode needs the exp3-ix learner (it learns from stored selection probabilities)")
    started = time.perf_counter()
    R, T, C, N = stream.outputs.shape
    J = len(stream.tenants)
    scoped = J > 1  # one tenant: its scope would mirror the global one exactly
    K = C * (1 + J) if scoped else C
    table = learner.init_states(R * K)
    counts = np.zeros(R * K, dtype=np.int64)
    base = (np.arange(R) * K)[:, None]
    cat = np.arange(C)[None, :]
    global_rows = base + cat
    personalise = stream.personalise_after

    observed = stream.outputs.copy() if bandit is not None or cascade is not None else stream.outputs
    expensive = np.zeros(N, dtype=bool)
    if cascade is not None:
        expensive[list(cascade.expensive)] = True
    if cascade is not None:
        router = cheap_tier_loss(learner)
        if router is None or router.expensive != tuple(sorted(cascade.expensive)):
            raise ValueError(f"a cascade needs a learner cascade-aware for {cascade.expensive}, got {learner.name}")
    cuts = np.full((R, J), cascade.rule.initial if cascade is not None else 0.0)
    escalated = np.zeros((R, T), dtype=bool)
    queried = np.zeros((R, T, N), dtype=bool)
    covers = np.isfinite(stream.outputs).any(axis=2)  # (R, T, N): expert covers an evaluated category
    props = np.ones((R, T, N)) if bandit is not None else None
    rngs = [np.random.default_rng([seed, r, 3]) for r in range(R)]
    weights = np.zeros((R, T, C, N))
    calibrated = np.full((R, T, C, N), np.nan) if isinstance(learner, Adaptive) else None
    sample_at = np.unique(np.linspace(0, T - 1, min(weight_samples, T)).round().astype(np.int64))
    samples = np.zeros((len(sample_at), C, N))
    tenant_samples = {t: np.zeros((len(sample_at), C, N)) for t in stream.tenants} if scoped else {}
    next_sample = 0
    learned_from = stream.outputs if cascade is not None and cascade.feedback_from_every_expert else observed
    ev_r, ev_t, rank, bounds = _schedule(stream)
    report_every = max(T // 100, 1)

    for s in range(T):
        lo, hi = bounds[s], bounds[s + 1]
        if hi > lo:
            segment, top = np.arange(lo, hi), int(rank[lo:hi].max())
            waves = [segment] if top == 0 else [segment[rank[lo:hi] == w] for w in range(top + 1)]
            for wave in waves:
                _apply(learner, table, counts, stream, learned_from, props, ev_r[wave], ev_t[wave], K, scoped)
        if scoped:
            j = stream.tenant[:, s]
            own = base + C + j[:, None] * C + cat
            rows = np.where(counts[own] >= personalise[j][:, None], own, global_rows)
        else:
            rows = global_rows
        if next_sample < len(sample_at) and sample_at[next_sample] == s:
            samples[next_sample] = learner.weights(table[global_rows[0]])
            for j, tenant in enumerate(tenant_samples):
                own_rows = global_rows[0] + C + j * C
                used = np.where(counts[own_rows] >= personalise[j], own_rows, global_rows[0])
                tenant_samples[tenant][next_sample] = learner.weights(table[used])
            next_sample += 1
        out_s = stream.outputs[:, s]
        if bandit is not None:
            assert isinstance(learner, Exp3IX) and props is not None
            for r in range(R):
                active = np.isfinite(out_s[r]).any(axis=1)
                if not active.any():
                    continue
                mean_state = table[rows[r, active]].mean(axis=0)
                chosen, probs = learner.select(mean_state, bandit.k, rngs[r], always=bandit.always)
                queried[r, s], props[r, s] = chosen, probs
            out_s = np.where(queried[:, s, None, :], out_s, np.nan)
            observed[:, s] = out_s
        elif cascade is not None:
            cheap_out = np.where(expensive, np.nan, out_s)
            loss = expected_cheap_loss(learner, table[rows.reshape(-1)], cheap_out.reshape(R * C, N)).reshape(R, C)
            covered_by_expensive = np.isfinite(out_s[:, :, expensive]).any(axis=2)
            called = np.zeros((R, N), dtype=bool)  # the expensive experts each replica calls for this request
            for r in range(R):
                active = np.isfinite(out_s[r]).any(axis=1)
                j = int(stream.tenant[r, s]) if scoped else 0
                unscored = bool((np.isnan(loss[r]) & active & covered_by_expensive[r]).any())
                answers = expensive & np.isfinite(out_s[r, active])  # (keys, N): who answers each key
                callable_ = int(answers.any(axis=0).sum())
                up = callable_ > 0 and cascade.rule.escalate(cuts[r, j], float(np.nansum(loss[r, active])), unscored)
                escalated[r, s] = up
                if up:
                    used = table[rows[r, active]]
                    apart = expert_disagreement(learner, used) if cascade.rule.hedge_share > 0 else None
                    ranking = learner.ranking_weights(used)
                    called[r] = cascade.rule.choose(learner.weights(used), answers, rngs[r], apart, ranking)
                if cascade.rule.moves_cut(unscored, callable_):
                    spent = cascade.rule.spent(int(called[r].sum()), callable_)
                    cuts[r, j] = cascade.rule.update(cuts[r, j], spent)
            out_s = np.where(expensive & ~called[:, None, :], np.nan, out_s)
            observed[:, s] = out_s
            queried[:, s] = covers[:, s] & (~expensive | called)
        else:
            queried[:, s] = covers[:, s]
        used_states = table[rows.reshape(-1)]
        if calibrated is not None:  # an Adaptive learner combines its calibration of each expert's score
            calibrated[:, s] = learner.calibrate(used_states, out_s.reshape(R * C, N)).reshape(R, C, N)
        awake = np.isfinite(out_s).reshape(R * C, N)
        weights[:, s] = learner.combination_weights(used_states, awake).reshape(R, C, N)
        if progress is not None and (s + 1) % report_every == 0:
            progress(report_every)
    if progress is not None and T % report_every:
        progress(T % report_every)

    if bandit is not None:
        queried &= covers  # a chosen expert that covers none of the request's categories is not called
    answered = np.isfinite(observed)
    combined = observed if calibrated is None else calibrated
    predictions = np.einsum("rtcn,rtcn->rtc", weights, np.where(answered, combined, 0.0))
    predictions = np.where(answered.any(axis=3), predictions, np.nan)
    final = {"global": learner.weights(table[global_rows[0]])}
    if scoped:
        for j, tenant in enumerate(stream.tenants):
            final[tenant] = learner.weights(table[global_rows[0] + C + j * C])
    return LearnerRun(
        name=name or learner.name,
        learner=learner,
        weights=weights,
        predictions=predictions,
        queried=queried,
        propensities=props,
        weight_times=sample_at,
        weight_samples=samples,
        final_weights=final,
        tenant_weight_samples=tenant_samples,
        seconds=time.perf_counter() - started,
        bandit=bandit is not None,
        cascade=cascade,
        escalated=escalated if cascade is not None else None,
    )


def _apply(
    learner: Learner,
    table: np.ndarray,
    counts: np.ndarray,
    stream: Stream,
    observed: np.ndarray,
    props: np.ndarray | None,
    ev_r: np.ndarray,
    ev_t: np.ndarray,
    K: int,
    scoped: bool,
) -> None:
    """Apply feedback events with at most one per replica (so every key appears once) through ``replay``."""
    labels = stream.feedback[ev_r, ev_t]
    e, c = np.nonzero(np.isfinite(labels))
    if len(e) == 0:
        return
    r, t = ev_r[e], ev_t[e]
    # One event per replica and one item per category: every row below is distinct, so key i is ``rows[i]``.
    n = len(c)
    global_key = np.arange(n)
    if scoped:
        own_rows = r * K + stream.outputs.shape[2] * (1 + stream.tenant[r, t]) + c
        rows = np.concatenate([r * K + c, own_rows])
        own_key = np.arange(n, 2 * n)
    else:
        rows, own_key = r * K + c, np.full(n, -1)
    entry_key, entry_parent, entry_item = scope_entries(global_key, own_key, np.ones(len(c), dtype=bool))
    key_parent = np.full(len(rows), -1, dtype=np.int64)
    key_parent[own_key[own_key >= 0]] = global_key[own_key >= 0]
    updates = KeyUpdates(
        key_parent=key_parent,
        entry_key=entry_key,
        entry_parent=entry_parent,
        entry_event=entry_item,
        outputs=observed[r, t, c][entry_item],
        targets=labels[e, c][entry_item],
        propensities=None if props is None else props[r, t][entry_item],
    )
    states = table[rows]
    replay(learner, updates, states, counts[rows] == 0)
    table[rows] = states  # every row had its one entry
    counts[rows] += 1


def run_learners(
    learners: Sequence[tuple[str, Learner, BanditSetup | None]],
    stream: Stream,
    *,
    seed: int = 0,
    weight_samples: int = 200,
    progress: Callable[[str, int], None] | None = None,
) -> dict[str, LearnerRun]:
    """Run several learners on one stream; ``progress(name, steps_done)`` is called as they advance."""
    runs = {}
    for name, learner, bandit in learners:
        tick = None if progress is None else (lambda n, name=name: progress(name, n))
        runs[name] = run_learner(
            learner, stream, name=name, bandit=bandit, seed=seed, weight_samples=weight_samples, progress=tick
        )
    return runs

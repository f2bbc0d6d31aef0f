"""The learners' guarantees, checked on long sequences: regret bounds, tracking, recovery, bandit estimates,
sleeping experts, batch/one-by-one equivalence and input validation ("Core engine", item 7).

Regret is measured on the learner's expected (linearised) loss ``sum_t w_t . l_t`` with ``w_t`` the weights before
round ``t`` and ``l_t = (p_t - y_t)^2``, against the best fixed expert of every prefix (and, for the tracking
learners, against the best sequence of experts with ``m`` switches, by dynamic programming).

The long runs (T = 100,000 rounds, every sequence of a learner a row of one ``(B, S)`` state table, so one
vectorised loop per learner) are independent, so they run in a process pool sized to the machine, started once per
module; if a pool cannot be used, or a run fails in it, the run is repeated here (so a failure shows its own
traceback). Tests that need them are marked ``slow`` (``-m "not slow"`` runs the rest in seconds).
"""

from __future__ import annotations

import math
import multiprocessing
import os
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from functools import lru_cache
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aegis_online.learn import Exp3IX, apply_events, make_learner
from aegis_online.learn.exp3ix import inclusion_probabilities, ix_loss_estimate

N = 5
T = 100_000
SEED = 20_240_917
FULL_INFO = ("hedge", "fixed-share", "adahedge", "adanormalhedge", "default")
TRACKING = ("fixed-share", "default")
EVERY_LEARNER = (*FULL_INFO, "exp3-ix")

# Rows of the long-run state table: each is one independent sequence of T rounds.
ADAPTIVE = ("adaptive-top", "adaptive-graded", "adaptive-top-two")  # losses chosen from the learner's weights
OBLIVIOUS = ("ftl-trap", "quasi-periodic", "doubling-blocks")
STOCHASTIC = ("iid-calibration", "iid-identical", "iid-close")
SWITCHING = {"switch-10": 10, "switch-40": 40}  # name -> number of switches of the best expert
RECOVERY = {"recover-65k": 65_000, "recover-45k": 45_000}  # name -> round of the swap
ROWS = ADAPTIVE + OBLIVIOUS + STOCHASTIC + tuple(SWITCHING) + tuple(RECOVERY)
ROW = {name: i for i, name in enumerate(ROWS)}
ADVERSARIAL = ADAPTIVE + OBLIVIOUS + tuple(SWITCHING) + tuple(RECOVERY)
SWITCH_COUNTS = {**SWITCHING, **dict.fromkeys(RECOVERY, 1)}  # rows scored against the best m-switch sequence
RECOVERY_OTHERS_LOSS = 0.75**2  # the three bystanders in the recovery rows

#: Rounds at which regret is checked: every round up to 1,000, then log- and linearly spaced up to T.
CHECKPOINTS = np.unique(
    np.r_[np.arange(1, 1001), np.geomspace(1000, T, 400).round().astype(np.int64), np.arange(1000, T + 1, 1000)]
)
PREDICT_CHECK_EVERY = 997

HEDGE_LEAD = 78_000  # rounds for Hedge's anytime rate to put an expert >= 1000 nats behind: sqrt(8 ln(5) t) >= 1000
BANDIT_T = 20_000
BANDIT_ROWS = ("bandit-stochastic", "bandit-swap")
DRAWS = 10_000
EXP3_LOSSES = np.array([0.3, 0.8, 0.1, 0.55, 1.0])
EXP3_GAMMA = 0.05
#: (cumulative loss estimates, k, always-queried experts) for the selection tests; t = 10 rounds seen.
EXP3_CONFIGS = {
    "k1": ((0.0, 2.0, 5.0, 9.0, 14.0), 1, ()),
    "k2": ((0.0, 2.0, 5.0, 9.0, 14.0), 2, ()),
    "k2-always": ((0.0, 2.0, 5.0, 9.0, 14.0), 2, (2,)),
    "k3-always-capped": ((0.0, 30.0, 30.0, 30.0, 30.0), 3, (4,)),
}


# -- sequences ---------------------------------------------------------------------------------------------------
def realise(loss: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Expert outputs whose squared loss against ``labels`` is ``loss`` (so any loss vector in [0, 1] is possible)."""
    y = labels[..., None]
    return y + (1.0 - 2.0 * y) * np.sqrt(loss)


#: Loss by weight rank (0 = least weighted) for each adaptive row: ``adaptive-top`` gives loss 1 to the most-weighted
#: expert, ``adaptive-graded`` loss rank / (N - 1), ``adaptive-top-two`` loss 1 to the two most-weighted experts.
ADVERSARY_LOSS = np.array([[0, 0, 0, 0, 1], [0, 0.25, 0.5, 0.75, 1], [0, 0, 0, 1, 1]], dtype=np.float64)
_ADVERSARY_ROOT = np.sqrt(ADVERSARY_LOSS).ravel()
_ADVERSARY_OFFSET = N * np.arange(len(ADAPTIVE))[:, None]


def weight_ranks(log_weights: np.ndarray) -> np.ndarray:
    """Rank of each expert by weight within its row, 0 = least weighted; ties go to the later expert."""
    return np.argsort(np.argsort(log_weights, axis=1, kind="stable"), axis=1)


def adversary(log_weights: np.ndarray, labels: np.ndarray, signs: np.ndarray) -> np.ndarray:
    """Outputs for the adaptive rows from the learner's current log-weights ``(len(ADAPTIVE), N)``; ``labels`` and
    ``signs`` (``1 - 2 labels``) have shape ``(len(ADAPTIVE), 1)``."""
    return labels + signs * np.take(_ADVERSARY_ROOT, weight_ranks(log_weights) + _ADVERSARY_OFFSET)


@lru_cache(maxsize=1)
def make_sequences() -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """Outputs ``(T, B, N)`` (NaN for the adaptive rows, filled in at run time), labels ``(T, B)`` and, for the
    switching and recovery rows, the expert that is best in each round (the planted switching sequence)."""
    rng = np.random.default_rng(SEED)
    t = np.arange(T)
    outputs = np.full((T, len(ROWS), N), np.nan)
    labels = np.empty((T, len(ROWS)))
    planted: dict[str, np.ndarray] = {}

    def bits() -> np.ndarray:
        return (rng.random(T) < 0.5).astype(np.float64)

    def put(row: str, y: np.ndarray, out: np.ndarray | None = None, loss: np.ndarray | None = None) -> None:
        labels[:, ROW[row]] = y
        if out is not None:
            outputs[:, ROW[row]] = out
        elif loss is not None:
            outputs[:, ROW[row]] = realise(loss, y)

    for row in ADAPTIVE:
        put(row, bits())

    # Follow-the-leader's worst case: experts 0 and 1 take turns, (1/2, 0, 1, 0, ...) against (0, 1, 0, 1, ...).
    loss = np.empty((T, N))
    loss[:, 0] = (t % 2 == 0).astype(np.float64)
    loss[0, 0] = 0.5
    loss[:, 1] = (t % 2 == 1).astype(np.float64)
    loss[:, 2:] = (0.52, 0.6, 0.9)
    put("ftl-trap", bits(), loss=loss)

    # Slow incommensurate oscillations: the leader keeps changing, and never for long.
    golden = (1.0 + math.sqrt(5.0)) / 2.0
    freq = ((np.arange(N) + 1) * golden % 1.0) / 500.0
    phase = rng.uniform(0.0, 2.0 * math.pi, N)
    put("quasi-periodic", bits(), loss=0.5 + 0.5 * np.sin(2.0 * math.pi * freq * t[:, None] + phase))

    # Blocks of doubling length where experts 0 and 1 alternate being perfect: the leader always lags.
    block = np.floor(np.log2(t / 10.0 + 1.0)).astype(np.int64)
    loss = np.full((T, N), 0.5)
    loss[:, 0] = block % 2 == 1
    loss[:, 1] = block % 2 == 0
    put("doubling-blocks", bits(), loss=loss)

    # Calibrated, under-confident, over-confident, noisy and constant forecasts of a varying risk.
    z = rng.beta(2.0, 5.0, T)
    out = np.stack(
        [
            z,
            0.5 + 0.5 * (z - 0.5),
            np.clip(0.5 + 2.5 * (z - 0.5), 0.0, 1.0),
            np.clip(z + rng.normal(0.0, 0.15, T), 0.0, 1.0),
            np.full(T, 2.0 / 7.0),
        ],
        axis=1,
    )
    put("iid-calibration", (rng.random(T) < z).astype(np.float64), out=out)

    # Identically distributed experts: the best one in hindsight is best by luck only.
    put("iid-identical", bits(), out=rng.random((T, N)))

    # Hard 0/1 forecasts with close accuracies.
    y = (rng.random(T) < 0.3).astype(np.float64)
    correct = rng.random((T, N)) < np.array([0.70, 0.69, 0.68, 0.65, 0.60])
    put("iid-close", y, out=np.where(correct, y[:, None], 1.0 - y[:, None]))

    # A different expert is good in each of m + 1 segments; the others are uniform noise.
    for row, m in SWITCHING.items():
        starts = np.sort(rng.choice(np.arange(1, T), size=m, replace=False))
        experts = np.empty(m + 1, dtype=np.int64)
        experts[0] = rng.integers(N)
        for j in range(1, m + 1):
            experts[j] = (experts[j - 1] + rng.integers(1, N)) % N
        good = experts[np.searchsorted(starts, t, side="right")]
        y = bits()
        out = rng.random((T, N))
        hit = (y == 1.0) != (rng.random(T) < 0.1)
        out[t, good] = np.where(hit, 0.8, 0.2)
        put(row, y, out=out)
        planted[row] = good

    # Expert 0 is perfect and expert 1 always wrong until the swap, then the reverse.
    for row, swap in RECOVERY.items():
        before = t < swap
        loss = np.full((T, N), RECOVERY_OTHERS_LOSS)
        loss[:, 0] = ~before
        loss[:, 1] = before
        put(row, bits(), loss=loss)
        planted[row] = np.where(before, 0, 1)
    return outputs, labels, planted


# -- the long runs (executed in worker processes) ----------------------------------------------------------------
def simulate(name: str) -> dict[str, Any]:
    """Run learner ``name`` over every row for T rounds; cumulative losses at CHECKPOINTS and run-time checks."""
    learner = make_learner(name, N)
    outputs, labels, _ = make_sequences()
    n_adaptive, rows = len(ADAPTIVE), len(ROWS)
    fixed = outputs[:, n_adaptive:]
    adaptive_labels = labels[:, :n_adaptive, None]
    adaptive_signs = 1.0 - 2.0 * adaptive_labels
    states = learner.init_states(rows)
    log_w = np.empty((T, rows, N))  # before each round
    adaptive = np.empty((T, n_adaptive, N))
    predict_error = 0.0
    for step in range(T):
        log_w[step] = lw = learner.log_weights(states)
        adaptive[step] = adv = adversary(lw[:n_adaptive], adaptive_labels[step], adaptive_signs[step])
        out = np.concatenate([adv, fixed[step]])
        if step % PREDICT_CHECK_EVERY == 0:
            w = np.exp(lw)
            mix = np.einsum("bn,bn->b", w, out)
            predict_error = max(
                predict_error,
                float(np.abs(learner.predict_many(states, out) - mix).max()),
                abs(learner.predict_one(states[0], out[0]) - mix[0]),
            )
        states = learner.learn_many(states, out, labels[step])
    full = np.concatenate([adaptive, fixed], axis=1)
    del adaptive
    w = np.exp(log_w)
    recovery = log_w[:, [ROW[r] for r in RECOVERY]]
    any_nan = bool(np.isnan(log_w).any())
    del log_w
    loss = np.square(full - labels[:, :, None])
    linearised = np.einsum("tbn,tbn->tb", w, loss)
    combined = np.square(np.einsum("tbn,tbn->tb", w, full) - labels)
    del w, full
    return {
        "linearised": np.cumsum(linearised, axis=0)[CHECKPOINTS - 1],
        "combined": np.cumsum(combined, axis=0)[CHECKPOINTS - 1],
        "experts": np.cumsum(loss, axis=0)[CHECKPOINTS - 1],
        "worst_jensen_gap": float((combined - linearised).max()),
        "predict_error": predict_error,
        "any_nan": any_nan,
        "top": recovery.argmax(axis=2).astype(np.int8),
        "finite": np.isfinite(recovery).all(axis=2),
        "gap_at_swap": np.array(
            [recovery[swap, i, 0] - recovery[swap, i, 1] for i, swap in enumerate(RECOVERY.values())]
        ),
    }


def switching_oracle() -> dict[str, Any]:
    """Loss of the best sequence of experts with at most m switches at every checkpoint (dynamic programming over
    (round, switches used, expert)), of the planted sequence, and follow-the-leader's regret."""
    outputs, labels, planted = make_sequences()
    names = list(SWITCH_COUNTS)
    idx = [ROW[r] for r in names]
    budget = np.array([SWITCH_COUNTS[r] for r in names])
    loss = np.square(outputs[:, idx] - labels[:, idx, None])  # (T, R, N)
    r_all = np.arange(len(idx))
    best = np.repeat(loss[0][:, None, :], budget.max() + 1, axis=1)  # (R, switches + 1, N): at most j switches
    blocked = np.full((len(idx), 1), np.inf)
    oracle = np.empty((len(CHECKPOINTS), len(idx)))
    c = 0
    for step in range(T):
        if step:
            enter = np.concatenate([blocked, best.min(axis=2)[:, :-1]], axis=1)[:, :, None]
            best = np.minimum(best, enter) + loss[step][:, None, :]
        if step + 1 == CHECKPOINTS[c]:
            oracle[c] = best[r_all, budget].min(axis=1)
            c += 1
    planted_loss = np.array([loss[np.arange(T), j, planted[r]].sum() for j, r in enumerate(names)])

    # Follow the leader on the oblivious rows: play the expert with the least cumulative loss so far.
    obl = [ROW[r] for r in OBLIVIOUS]
    ol = np.square(outputs[:, obl] - labels[:, obl, None])
    before = np.cumsum(ol, axis=0) - ol
    ftl = np.take_along_axis(ol, before.argmin(axis=2)[..., None], axis=2)[..., 0].sum(axis=0)
    ftl_regret = ftl - ol.sum(axis=0).min(axis=1)
    return {"names": names, "oracle": oracle, "planted": planted_loss, "ftl_regret": ftl_regret}


def hedge_recovery() -> dict[str, Any]:
    """Hedge with expert 1 always wrong for HEDGE_LEAD rounds, then always right while expert 0 is always wrong."""
    learner = make_learner("hedge", N)
    y = np.zeros(1)
    lead = np.array([[0.0, 1.0, *([RECOVERY_OTHERS_LOSS] * (N - 2))]])
    before, after = realise(lead, y), realise(lead[:, [1, 0, 2, 3, 4]], y)
    state = learner.init_states(1)
    finite = True
    for step in range(HEDGE_LEAD):
        state = learner.learn_many(state, before, y)
        if step % 5000 == 0:
            finite &= bool(np.isfinite(learner.log_weights(state)).all())
    at_swap = learner.log_weights(state)[0]
    tops: dict[int, int] = {}
    watch = {HEDGE_LEAD // 2, HEDGE_LEAD - 1, HEDGE_LEAD + 1, HEDGE_LEAD + 100}
    for k in range(1, max(watch) + 1):
        state = learner.learn_many(state, after, y)
        if k in watch or k % 5000 == 0:
            log_w = learner.log_weights(state)[0]
            finite &= bool(np.isfinite(log_w).all())
            if k in watch:
                tops[k] = int(np.argmax(log_w))
    return {"at_swap": at_swap, "tops": tops, "finite": finite}


def exp3ix_bandit() -> dict[str, Any]:
    """Exp3-IX querying one expert per round on a stochastic sequence and on one whose best expert swaps midway."""
    rng = np.random.default_rng(SEED + 1)
    learner = Exp3IX(N, horizon=BANDIT_T)
    t = np.arange(BANDIT_T)
    labels = (rng.random((BANDIT_T, 2)) < 0.5).astype(np.float64)
    loss = np.empty((BANDIT_T, 2, N))
    loss[:, 0] = rng.random((BANDIT_T, N)) < np.array([0.1, 0.3, 0.4, 0.5, 0.6])
    swapped = (t >= BANDIT_T // 2)[:, None]
    means = np.where(swapped, [0.5, 0.05, 0.9, 0.9, 0.9], [0.05, 0.5, 0.9, 0.9, 0.9])
    loss[:, 1] = rng.random((BANDIT_T, N)) < means
    outputs = realise(loss, labels)
    states = learner.init_states(2)
    realised, expected = np.empty((BANDIT_T, 2)), np.empty((BANDIT_T, 2))
    for step in range(BANDIT_T):
        picks = [learner.select(states[r], 1, rng) for r in range(2)]
        chosen = np.stack([p[0] for p in picks])
        probs = np.stack([p[1] for p in picks])
        realised[step] = loss[step][chosen]
        expected[step] = np.einsum("bn,bn->b", probs, loss[step])
        observed = np.where(chosen, outputs[step], np.nan)
        states = learner.learn_many(states, observed, labels[step], propensities=probs)
    best = loss.sum(axis=0).min(axis=1)
    cps = CHECKPOINTS[CHECKPOINTS <= BANDIT_T]
    return {
        "realised": np.cumsum(realised, axis=0)[cps - 1],
        "expected": np.cumsum(expected, axis=0)[cps - 1],
        "experts": np.cumsum(loss, axis=0)[cps - 1].min(axis=2),
        "best_final": best,
        "uniform_regret": loss.mean(axis=2).sum(axis=0) - best,
        "bound": learner.regret_bound(BANDIT_T),
    }


def exp3ix_draws() -> dict[str, dict[str, Any]]:
    """DRAWS calls of ``select`` per configuration: selection counts and sums of the IX loss estimates."""
    learner = Exp3IX(N)
    rng = np.random.default_rng(SEED + 2)
    results = {}
    for config, (estimates, k, always) in EXP3_CONFIGS.items():
        state = np.array([10.0, *estimates])
        first: np.ndarray | None = None
        counts, sizes_ok, always_ok, probs_constant = np.zeros(N), True, True, True
        sums = {g: np.zeros(N) for g in (0.0, EXP3_GAMMA)}
        squares = {g: np.zeros(N) for g in (0.0, EXP3_GAMMA)}
        for _ in range(DRAWS):
            chosen, probs = learner.select(state, k, rng, always=always)
            if first is None:
                first = probs.copy()
            probs_constant &= bool(np.array_equal(probs, first))
            sizes_ok &= int(chosen.sum()) == k
            always_ok &= bool(chosen[list(always)].all())
            counts += chosen
            for g in sums:
                est = ix_loss_estimate(EXP3_LOSSES, chosen, probs, gamma=g)
                sums[g] += est
                squares[g] += est * est
        results[config] = {
            "probs": first,
            "counts": counts,
            "sums": sums,
            "squares": squares,
            "sizes_ok": sizes_ok,
            "always_ok": always_ok,
            "probs_constant": probs_constant,
        }
    return results


#: Long runs, heaviest first so that a small pool finishes them evenly.
TASKS: dict[str, tuple[Callable[..., Any], tuple[Any, ...]]] = {
    "default": (simulate, ("default",)),
    "adahedge": (simulate, ("adahedge",)),
    "adanormalhedge": (simulate, ("adanormalhedge",)),
    "hedge": (simulate, ("hedge",)),
    "exp3ix-bandit": (exp3ix_bandit, ()),
    "fixed-share": (simulate, ("fixed-share",)),
    "hedge-recovery": (hedge_recovery, ()),
    "exp3ix-draws": (exp3ix_draws, ()),
    "oracle": (switching_oracle, ()),
}


class LongRuns:
    """Results of TASKS by name, computed in a process pool when one can be used and here otherwise."""

    def __init__(self) -> None:
        self._futures: dict[str, Future[Any]] = {}
        self._done: dict[str, Any] = {}
        self._pool: ProcessPoolExecutor | None = None
        workers = min(len(TASKS), os.cpu_count() or 1)
        if workers > 1:
            try:
                self._pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
                self._futures = {key: self._pool.submit(fn, *args) for key, (fn, args) in TASKS.items()}
            except (OSError, NotImplementedError, ImportError):  # no semaphores or processes here: run serially
                self.close()

    def __getitem__(self, key: str) -> Any:
        if key not in self._done:
            future = self._futures.get(key)
            try:
                self._done[key] = future.result() if future is not None else None
            except Exception:  # the pool broke or the run failed there: rerun here for a local traceback
                self._done[key] = None
            if self._done[key] is None:
                fn, args = TASKS[key]
                self._done[key] = fn(*args)
        return self._done[key]

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        self._futures = {}


@pytest.fixture(scope="module")
def runs() -> Any:
    long_runs = LongRuns()
    yield long_runs
    long_runs.close()


def assert_under(regret: np.ndarray, bounds: np.ndarray, rows: list[str], what: str) -> None:
    """``regret`` ``(C, R)`` at CHECKPOINTS-like rounds stays at or under ``bounds`` ``(C,)`` or ``(C, R)``."""
    bounds = np.broadcast_to(bounds if bounds.ndim == 2 else bounds[:, None], regret.shape)
    excess = regret - bounds
    c, r = np.unravel_index(np.argmax(excess), excess.shape)
    assert excess[c, r] <= 1e-9, (
        f"{what}, row {rows[r]}: regret {regret[c, r]:.2f} > bound {bounds[c, r]:.2f} at t={CHECKPOINTS[c]}"
    )


def regret_to_best_expert(result: dict[str, Any], rows: tuple[str, ...]) -> np.ndarray:
    idx = [ROW[r] for r in rows]
    return result["linearised"][:, idx] - result["experts"][:, idx].min(axis=2)


# -- regret against the best fixed expert -----------------------------------------------------------------------
@pytest.mark.parametrize("name", FULL_INFO)
@pytest.mark.slow
def test_regret_to_best_fixed_expert_stays_under_bound_on_adversarial_sequences(runs: LongRuns, name: str) -> None:
    learner = make_learner(name, N)
    bounds = np.array([learner.regret_bound(int(t)) for t in CHECKPOINTS])
    assert_under(regret_to_best_expert(runs[name], ADVERSARIAL), bounds, list(ADVERSARIAL), name)


@pytest.mark.parametrize("name", FULL_INFO)
@pytest.mark.slow
def test_regret_to_best_fixed_expert_stays_under_bound_on_stochastic_sequences(runs: LongRuns, name: str) -> None:
    learner = make_learner(name, N)
    bounds = np.array([learner.regret_bound(int(t)) for t in CHECKPOINTS])
    assert_under(regret_to_best_expert(runs[name], STOCHASTIC), bounds, list(STOCHASTIC), name)


@pytest.mark.parametrize("name", FULL_INFO)
@pytest.mark.slow
def test_combined_prediction_loses_no_more_than_the_linearised_loss(runs: LongRuns, name: str) -> None:
    result = runs[name]
    assert result["predict_error"] <= 1e-12, f"predict_many/predict_one differ from w . p by {result['predict_error']}"
    assert result["worst_jensen_gap"] <= 1e-12, (
        f"a round's combined loss exceeds its linearised loss by {result['worst_jensen_gap']}"
    )
    assert np.all(result["combined"] <= result["linearised"] + 1e-9)
    assert not result["any_nan"], f"{name} produced NaN log-weights"


@pytest.mark.slow
def test_ftl_trap_row_defeats_follow_the_leader(runs: LongRuns) -> None:
    """The ftl-trap row is hard: follow-the-leader's regret there is linear, ~T/2, far over Hedge's bound."""
    bound = make_learner("hedge", N).regret_bound(T)
    ftl = dict(zip(OBLIVIOUS, runs["oracle"]["ftl_regret"], strict=True))
    assert ftl["ftl-trap"] >= T / 2 - 1 > 50 * bound, ftl


# -- tracking: regret against the best switching sequence ------------------------------------------------------
@pytest.mark.parametrize("name", TRACKING)
@pytest.mark.slow
def test_regret_to_best_switching_sequence_stays_under_bound(runs: LongRuns, name: str) -> None:
    learner, result, oracle = make_learner(name, N), runs[name], runs["oracle"]
    names = oracle["names"]
    idx = [ROW[r] for r in names]
    assert np.all(oracle["oracle"][-1] <= oracle["planted"] + 1e-9), "the m-switch optimum beats the planted sequence"
    regret = result["linearised"][:, idx] - oracle["oracle"]
    bounds = np.array(
        [[learner.regret_bound(int(t), switches=min(SWITCH_COUNTS[r], int(t) - 1)) for r in names] for t in CHECKPOINTS]
    )
    assert_under(regret, bounds, names, f"{name} against the best m-switch sequence")


# -- recovery after the experts swap -----------------------------------------------------------------------------
def rounds_to_recover(result: dict[str, Any], row: str) -> int:
    """Rounds after the swap until expert 1 is top-weighted and stays so to the end (-1 if it never does)."""
    i, swap = list(RECOVERY).index(row), RECOVERY[row]
    not_top = np.flatnonzero(result["top"][swap:, i] != 1)
    if not_top.size and not_top[-1] == T - swap - 1:
        return -1
    return int(not_top[-1]) + 1 if not_top.size else 0


@pytest.mark.parametrize("name", TRACKING)
@pytest.mark.slow
def test_expert_far_behind_becomes_top_within_200_rounds_of_the_swap(runs: LongRuns, name: str) -> None:
    """After 65,000 rounds of loss 1 against 0 (a gap of >= 1000 nats at every rate eta >= 1/64 of the grid)."""
    result = runs[name]
    assert result["finite"].all(), f"{name}: a log-weight became -inf or NaN"
    rounds = rounds_to_recover(result, "recover-65k")
    assert 0 <= rounds <= 200, f"{name}: took {rounds} rounds (-1: never) to recover"


@pytest.mark.slow
def test_hedge_recovers_from_1000_nats_behind_after_as_many_rounds_as_the_lead(runs: LongRuns) -> None:
    result = runs["hedge-recovery"]
    gap = result["at_swap"][0] - result["at_swap"][1]
    assert gap >= 1000.0, f"the lead reached only {gap:.1f} nats"
    assert result["finite"], "a log-weight became -inf or NaN"
    tops = result["tops"]
    assert tops[HEDGE_LEAD // 2] == 0 and tops[HEDGE_LEAD - 1] == 0, f"recovered before the lead was undone: {tops}"
    assert tops[HEDGE_LEAD + 1] == 1 and tops[HEDGE_LEAD + 100] == 1, f"did not recover: {tops}"


@pytest.mark.parametrize("name", ["adahedge", "adanormalhedge"])
@pytest.mark.slow
def test_fixed_expert_learners_recover_after_about_as_many_rounds_as_the_lead(runs: LongRuns, name: str) -> None:
    result, swap = runs[name], RECOVERY["recover-45k"]
    rounds = rounds_to_recover(result, "recover-45k")
    assert swap <= rounds <= 1.1 * swap, f"{name}: {rounds} rounds to recover from a {swap}-round lead"
    if name == "adahedge":  # AdaNormalHedge gives exactly zero weight (-inf) to experts far behind, by design
        gap = result["gap_at_swap"][list(RECOVERY).index("recover-45k")]
        assert gap >= 1000.0, f"the lead reached only {gap:.1f} nats"
        assert result["finite"].all(), "a log-weight became -inf or NaN"


@pytest.mark.parametrize("learning_rate", [0.5, 2.0])
def test_river_ewa_weights_underflow_the_trap_we_avoid(learning_rate: float) -> None:
    """River's EWARegressor multiplies linear weights, which underflow when an expert falls ~745 nats behind.

    At River's default rate 0.5 the weight of the expert that lost every round for 2,000 rounds bottoms out at the
    smallest subnormal (5e-324: how far behind it was is lost) and it needs ~1,500 rounds to recover after the swap.
    At a rate above ln 2 (here 2.0) one multiply by exp(-rate) < 1/2 rounds the smallest subnormal to exactly 0.0:
    the expert, and every other one, is written off for good and River keeps following the now-wrong expert.
    Ours, fed the same stream, keeps every log-weight finite and is back on the good expert within 200 rounds.
    """
    pytest.importorskip("river")
    from river import base, ensemble

    class Feature(base.Regressor):
        def __init__(self, index: int) -> None:
            self.index = index

        def learn_one(self, x: dict, y: float) -> None:
            return None

        def predict_one(self, x: dict) -> float:
            return x[self.index]

    river_model = ensemble.EWARegressor([Feature(i) for i in range(N)], learning_rate=learning_rate)
    ours = make_learner("default", N)
    state = ours.init_state()
    rng = np.random.default_rng(SEED + 3)
    lead, after = 2000, 200
    losses = np.array([0.0, 1.0, *([RECOVERY_OTHERS_LOSS] * (N - 2))])
    for step in range(lead + after):
        if step == lead:
            floor = 0.0 if math.exp(-learning_rate) < 0.5 else np.nextafter(0.0, 1.0)
            assert river_model.weights[1] == floor, f"river's weights did not underflow: {river_model.weights}"
            losses = losses[[1, 0, 2, 3, 4]]
        y = float(rng.random() < 0.5)
        out = realise(losses, np.array(y))
        river_model.learn_one(dict(enumerate(out.tolist())), y)
        state = ours.learn_one(state, out, y)
    assert int(np.argmax(river_model.weights)) == 0, f"river recovered within {after} rounds: {river_model.weights}"
    if math.exp(-learning_rate * RECOVERY_OTHERS_LOSS) < 0.5:
        assert river_model.weights[1:] == [0.0] * (N - 1), f"some weights were not written off: {river_model.weights}"
    log_w = ours.log_weights(state)
    assert np.isfinite(log_w).all() and int(np.argmax(log_w)) == 1, log_w


# -- Exp3-IX -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("config", EXP3_CONFIGS)
@pytest.mark.slow
def test_select_inclusion_frequencies_match_returned_probabilities(runs: LongRuns, config: str) -> None:
    draw = runs["exp3ix-draws"][config]
    _, k, always = EXP3_CONFIGS[config]
    q = draw["probs"]
    assert draw["probs_constant"] and draw["sizes_ok"] and draw["always_ok"], draw
    assert np.all((q >= 0) & (q <= 1)) and math.isclose(q.sum(), k), q
    assert np.all(q[list(always)] == 1.0), q
    freq = draw["counts"] / DRAWS
    tolerance = 4.0 * np.sqrt(q * (1.0 - q) / DRAWS) + 1e-12
    assert np.all(np.abs(freq - q) <= tolerance), f"frequencies {freq} vs probabilities {q}"
    if config == "k3-always-capped":  # the water-filling caps the dominant expert at 1
        assert q[0] == 1.0 and np.allclose(q[1:4], 1.0 / 3.0), q


@pytest.mark.parametrize("config", EXP3_CONFIGS)
@pytest.mark.parametrize("gamma", [0.0, EXP3_GAMMA])
@pytest.mark.slow
def test_ix_estimate_mean_is_loss_times_q_over_q_plus_gamma(runs: LongRuns, config: str, gamma: float) -> None:
    """Unbiased at gamma = 0; shrunk by q / (q + gamma) otherwise (z-test at 4 standard errors)."""
    draw = runs["exp3ix-draws"][config]
    q = draw["probs"]
    mean = draw["sums"][gamma] / DRAWS
    variance = np.maximum(draw["squares"][gamma] / DRAWS - mean**2, 0.0)
    expected = EXP3_LOSSES * q / (q + gamma)
    tolerance = 4.0 * np.sqrt(variance / DRAWS) + 1e-12
    assert np.all(np.abs(mean - expected) <= tolerance), f"mean {mean} vs {expected} (tolerance {tolerance})"


def test_inclusion_probabilities_cap_at_one_and_sum_to_budget() -> None:
    probs = inclusion_probabilities(np.array([100.0, 1.0, 1.0, 0.0, 2.0]), 3)
    np.testing.assert_allclose(probs, [1.0, 0.5, 0.5, 0.0, 1.0])
    assert math.isclose(probs.sum(), 3.0)


@pytest.mark.slow
def test_exp3ix_one_expert_per_round_regret_stays_under_bound(runs: LongRuns) -> None:
    result = runs["exp3ix-bandit"]
    bound = result["bound"]
    assert np.all(result["uniform_regret"] > bound), "the sequences are too easy to test the bound"
    for key in ("realised", "expected"):
        regret = result[key] - result["experts"]
        worst = regret.max(axis=0)
        assert np.all(worst <= bound), f"{key} regret {worst} > bound {bound:.1f} on rows {BANDIT_ROWS}"


# -- sleeping experts --------------------------------------------------------------------------------------------
def trained(name: str, rows: int = 1, rounds: int = 30, seed: int = 0) -> tuple[Any, np.ndarray]:
    """A learner and a ``(rows, S)`` state table after ``rounds`` random rounds (some experts asleep)."""
    learner = make_learner(name, N)
    rng = np.random.default_rng(seed)
    states = learner.init_states(rows)
    for _ in range(rounds):
        out = np.where(rng.random((rows, N)) < 0.2, np.nan, rng.random((rows, N)))
        states = learner.learn_many(states, out, rng.random(rows), propensities=np.full((rows, N), 0.5))
    return learner, states


@pytest.mark.parametrize("name", EVERY_LEARNER)
def test_sleeping_expert_gets_no_weight_in_prediction(name: str) -> None:
    learner, states = trained(name)
    state = states[0]
    out = np.array([0.9, 0.2, 0.7, 0.05, 0.4])
    asleep = np.array([False, True, False, True, False])
    w = learner.weights(state) * ~asleep
    expected = float(w @ np.where(asleep, 0.0, out) / w.sum())
    assert math.isclose(learner.predict_one(state, np.where(asleep, np.nan, out)), expected, abs_tol=1e-12)
    assert math.isclose(learner.predict_one(state, out, awake=~asleep), expected, abs_tol=1e-12)
    assert math.isnan(learner.predict_one(state, np.full(N, np.nan)))


def awake_learner_loss(learner: Any, state: np.ndarray, out: np.ndarray, y: float) -> float:
    awake = np.isfinite(out)
    w = learner.weights(state) * awake
    return float(w @ np.where(awake, np.square(out - y), 0.0) / w.sum())


@pytest.mark.parametrize("name", FULL_INFO)
@pytest.mark.parametrize("asleep", [(1,), (0, 3), (1, 2, 4)])
def test_sleeping_expert_is_updated_as_if_it_lost_the_learners_expected_loss(name: str, asleep: tuple) -> None:
    learner, states = trained(name, seed=len(asleep))
    state, y = states[0], 1.0 if len(asleep) % 2 else 0.0
    out = np.array([0.9, 0.2, 0.7, 0.05, 0.4])
    out[list(asleep)] = np.nan
    h = awake_learner_loss(learner, state, out, y)
    stand_in = np.where(np.isnan(out), realise(np.array(h), np.array(y)), out)
    slept = learner.learn_one(state, out, y)
    np.testing.assert_allclose(slept, learner.learn_one(state, stand_in, y), rtol=1e-12, atol=1e-12)
    mask = np.isfinite(out)
    np.testing.assert_allclose(learner.learn_one(state, stand_in, y, awake=mask), slept, rtol=0, atol=1e-15)


@pytest.mark.parametrize("name", ["hedge", "adahedge"])
def test_sleeping_expert_cumulative_loss_grows_by_exactly_the_learners_awake_loss(name: str) -> None:
    """Its regret to the learner (learner's loss minus its own) does not move while it sleeps."""
    learner, states = trained(name)
    state, y = states[0], 1.0
    out = np.array([0.9, np.nan, 0.7, 0.05, np.nan])
    h = awake_learner_loss(learner, state, out, y)
    new = learner.learn_one(state, out, y)
    np.testing.assert_allclose(new[[2, 5]] - state[[2, 5]], [h, h], rtol=0, atol=1e-12)
    np.testing.assert_allclose(new[[1, 3, 4]] - state[[1, 3, 4]], np.square(out[[0, 2, 3]] - y), rtol=0, atol=1e-12)


def test_adanormalhedge_sleeping_expert_regret_and_its_magnitude_do_not_move() -> None:
    learner, states = trained("adanormalhedge")
    state = states[0]
    for _ in range(20):
        new = learner.learn_one(state, [0.9, np.nan, 0.7, 0.05, 0.3], 0.0)
        np.testing.assert_allclose(new[[1, N + 1]], state[[1, N + 1]], rtol=0, atol=1e-12)
        state = new


@pytest.mark.parametrize("name", EVERY_LEARNER)
def test_row_with_nobody_awake_is_unchanged(name: str) -> None:
    learner, states = trained(name, rows=3)
    rng = np.random.default_rng(7)
    out = rng.random((3, N))
    out[1] = np.nan
    labels, props = np.array([1.0, 0.0, 0.3]), np.full((3, N), 0.4)
    new = learner.learn_many(states, out, labels, propensities=props)
    assert np.array_equal(new[1], states[1])
    for r in (0, 2):
        np.testing.assert_allclose(new[r], learner.learn_one(states[r], out[r], labels[r], propensities=props[r]))
    masked = learner.learn_many(states, rng.random((3, N)), labels, awake=np.zeros((3, N), bool), propensities=props)
    assert np.array_equal(masked, states)
    assert np.isnan(learner.predict_many(states, out)[1])


# -- batch equals one by one -------------------------------------------------------------------------------------
unit = st.floats(0.0, 1.0)
output = st.one_of(unit, unit, unit, st.just(math.nan))  # about one output in four asleep


@st.composite
def event_streams(draw: st.DrawFn, max_keys: int = 4, max_events: int = 30) -> dict[str, Any]:
    n_keys = draw(st.integers(1, max_keys))
    n = draw(st.integers(1, max_events))
    return {
        "n_keys": n_keys,
        "keys": np.array(draw(st.lists(st.integers(0, n_keys - 1), min_size=n, max_size=n)), dtype=np.int64),
        "outputs": np.array(draw(st.lists(st.lists(output, min_size=N, max_size=N), min_size=n, max_size=n))),
        "labels": np.array(draw(st.lists(st.one_of(st.sampled_from([0.0, 1.0]), unit), min_size=n, max_size=n))),
        "propensities": np.array(
            draw(st.lists(st.lists(st.floats(0.05, 1.0), min_size=N, max_size=N), min_size=n, max_size=n))
        ),
    }


SETTINGS = settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.mark.parametrize("name", EVERY_LEARNER)
@SETTINGS
@given(stream=event_streams())
def test_apply_events_equals_learn_one_in_order(name: str, stream: dict[str, Any]) -> None:
    learner = make_learner(name, N)
    _, warm = trained(name, rows=stream["n_keys"], rounds=3)
    table = apply_events(
        learner, warm, stream["keys"], stream["outputs"], stream["labels"], propensities=stream["propensities"]
    )
    expected = warm.copy()
    for key, out, y, props in zip(
        stream["keys"], stream["outputs"], stream["labels"], stream["propensities"], strict=True
    ):
        expected[key] = learner.learn_one(expected[key], out, y, propensities=props)
    np.testing.assert_allclose(table, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", EVERY_LEARNER)
@SETTINGS
@given(stream=event_streams(max_keys=1, max_events=8), seed=st.integers(0, 2**16))
def test_learn_many_on_b_rows_equals_b_separate_learn_one_calls(name: str, stream: dict[str, Any], seed: int) -> None:
    learner, states = trained(name, rows=len(stream["labels"]), rounds=5, seed=seed)
    new = learner.learn_many(states, stream["outputs"], stream["labels"], propensities=stream["propensities"])
    for r in range(len(states)):
        one = learner.learn_one(
            states[r], stream["outputs"][r], stream["labels"][r], propensities=stream["propensities"][r]
        )
        np.testing.assert_allclose(new[r], one, rtol=1e-12, atol=1e-12)


# -- input validation --------------------------------------------------------------------------------------------
def learn(learner: Any, state: np.ndarray, outputs: Any, label: Any) -> np.ndarray:
    return learner.learn_one(state, outputs, label, propensities=np.ones(learner.n_experts))


@pytest.mark.parametrize("name", EVERY_LEARNER)
@pytest.mark.parametrize("label", [-0.1, 1.5, math.nan, math.inf])
def test_label_outside_unit_interval_is_rejected(name: str, label: float) -> None:
    learner = make_learner(name, N)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 1\]"):
        learn(learner, learner.init_state(), [0.5] * N, label)


@pytest.mark.parametrize("name", EVERY_LEARNER)
@pytest.mark.parametrize("bad", [1.2, -0.3, math.inf, -math.inf])
def test_expert_output_outside_unit_interval_is_rejected(name: str, bad: float) -> None:
    learner = make_learner(name, N)
    with pytest.raises(ValueError, match=r"expert outputs must lie in \[0, 1\]"):
        learn(learner, learner.init_state(), [0.5, bad, 0.5, 0.5, 0.5], 1.0)


@pytest.mark.parametrize("name", EVERY_LEARNER)
def test_wrong_shapes_are_rejected(name: str) -> None:
    learner = make_learner(name, N)
    states, props = learner.init_states(2), np.ones((2, N))
    with pytest.raises(ValueError, match=r"outputs must have shape \(1, 5\)"):
        learn(learner, learner.init_state(), [0.5] * (N + 1), 1.0)
    with pytest.raises(ValueError, match=r"outputs must have shape \(2, 5\)"):
        learner.learn_many(states, np.full((3, N), 0.5), np.ones(2), propensities=props)
    with pytest.raises(ValueError, match=r"labels must have shape \(2,\)"):
        learner.learn_many(states, np.full((2, N), 0.5), np.ones(3), propensities=props)
    with pytest.raises(ValueError, match=r"states must have shape \(B, \d+\)"):
        learner.learn_many(states[:, :-1], np.full((2, N), 0.5), np.ones(2), propensities=props)
    with pytest.raises(ValueError, match=r"states must have shape"):
        learner.learn_many(states[0], np.full((2, N), 0.5), np.ones(2), propensities=props)


def test_exp3ix_rejects_missing_or_zero_propensities_and_bad_k() -> None:
    learner = Exp3IX(N)
    state, rng = learner.init_state(), np.random.default_rng(0)
    with pytest.raises(ValueError, match="propensities"):
        learner.learn_one(state, [0.5] + [math.nan] * (N - 1), 1.0)
    with pytest.raises(ValueError, match="selection probability > 0"):
        learner.learn_one(state, [0.5] + [math.nan] * (N - 1), 1.0, propensities=np.zeros(N))
    with pytest.raises(ValueError, match="k must lie"):
        learner.select(state, 0, rng)
    with pytest.raises(ValueError, match="exceed k"):
        learner.select(state, 1, rng, always=[0, 1])


def test_unknown_learner_name_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown learner"):
        make_learner("nope", N)

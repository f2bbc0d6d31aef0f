"""Hindsight comparators: the best fixed expert and the best sequence of experts with ``m`` switches.

Both are computed per stream, a stream being one (replica, tenant, category): that is what one learner key sees, so
it is the comparator its regret bound is about. The switching oracle runs the dynamic programme over
(round, switches used, current expert) for every stream at once (``(streams, m + 1, N)`` arrays, one numpy step per
round), then spends a total budget of switches across a replica's streams by min-plus convolution of the streams'
curves, so "m switches" means m in total, placed wherever they help most.

An expert that never answers on a stream is not a candidate there. Where an expert misses some rounds of a stream
(it timed out), it is charged the loss of the plain average of the experts that did answer, so a flaky expert is
neither rewarded nor excluded. Pure numpy.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from aegis_online.learn.batch import occurrence_rank
from aegis_online.learn.losses import squared_loss
from aegis_online.simulate.stream import Stream

#: Most switches per stream the dynamic programme tracks (a longer budget changes nothing on our scenarios).
MAX_SWITCHES_PER_STREAM = 64


def expert_losses(stream: Stream) -> np.ndarray:
    """Squared loss of every expert against the truth, ``(R, T, C, N)``; NaN where it did not answer or no truth."""
    return squared_loss(stream.outputs, stream.truth[..., None])


@dataclass(frozen=True)
class StreamLosses:
    """Expert losses regrouped per stream and padded: ``losses[s, k, i]`` is round ``k`` of stream ``s``.

    Padding rounds (past a stream's end) are zero for every expert, so they change no sum and no choice.
    ``names[s]`` is ``(replica, tenant index, category index)``; ``rounds[s]`` the stream's length.
    """

    losses: np.ndarray
    rounds: np.ndarray
    names: list[tuple[int, int, int]]


def stream_losses(stream: Stream, losses: np.ndarray | None = None) -> StreamLosses:
    """Group ``expert_losses(stream)`` by (replica, tenant, category), in request order."""
    losses = expert_losses(stream) if losses is None else losses
    R, _, C, N = losses.shape
    J = len(stream.tenants)
    awake = np.isfinite(losses)
    valid = stream.evaluated & awake.any(axis=3)
    r, t, c = np.nonzero(valid)
    sid = (r * J + stream.tenant[r, t]) * C + c
    rows = losses[r, t, c]
    # A partly asleep expert pays the plain average's loss on the rounds it missed.
    mean_prediction = np.nanmean(stream.outputs[r, t, c], axis=1)
    fallback = squared_loss(mean_prediction, stream.truth[r, t, c])
    rows = np.where(np.isfinite(rows), rows, fallback[:, None])
    n_streams = R * J * C
    position = occurrence_rank(sid)
    rounds = np.bincount(sid, minlength=n_streams)
    padded = np.zeros((n_streams, int(rounds.max(initial=0)), N))
    padded[sid, position] = rows
    never = np.ones((n_streams, N), dtype=bool)
    np.logical_and.at(never, sid, ~awake[r, t, c])
    padded[np.broadcast_to(never[:, None, :], padded.shape)] = np.inf
    names = [(s // (J * C), (s // C) % J, s % C) for s in range(n_streams)]
    return StreamLosses(losses=padded, rounds=rounds, names=names)


def best_fixed(grouped: StreamLosses) -> tuple[np.ndarray, np.ndarray]:
    """Per stream: the least cumulative loss of one expert, and which expert (-1 for an empty stream)."""
    totals = grouped.losses.sum(axis=1)
    best = np.where(grouped.rounds > 0, totals.min(axis=1, initial=np.inf), 0.0)
    which = np.where(grouped.rounds > 0, totals.argmin(axis=1), -1)
    return best, which


class SwitchingOracle:
    """Least cumulative loss of a sequence of experts with at most ``j`` switches, per stream, for ``j <= m``.

    >>> grouped = StreamLosses(np.array([[[0.0, 1.0], [0.0, 1.0], [1.0, 0.0], [1.0, 0.0]]]), np.array([4]), [(0, 0, 0)])
    >>> SwitchingOracle(max_switches=2).curves(grouped).tolist()
    [[2.0, 0.0, 0.0]]
    """

    def __init__(self, max_switches: int) -> None:
        if max_switches < 0:
            raise ValueError(f"max_switches must be >= 0, got {max_switches}")
        self.max_switches = min(max_switches, MAX_SWITCHES_PER_STREAM)

    def curves(self, grouped: StreamLosses) -> np.ndarray:
        """``(streams, m + 1)``: best loss with at most ``j`` switches on each stream."""
        losses = grouped.losses
        n_streams, length, n = losses.shape
        m = self.max_switches
        if length == 0:
            return np.zeros((n_streams, m + 1))
        cost = np.full((n_streams, m + 1, n), np.inf)
        cost[:, 0, :] = losses[:, 0, :]
        switch_in = np.full((n_streams, m + 1, 1), np.inf)
        for k in range(1, length):
            if m:
                # Entering any expert with one more switch, from the best path with one fewer.
                switch_in[:, 1:, 0] = cost[:, :-1, :].min(axis=2)
                np.minimum(cost, switch_in, out=cost)
            cost += losses[:, k, None, :]
        best = cost.min(axis=2)
        return np.minimum.accumulate(best, axis=1)

    @staticmethod
    def combine(curves: np.ndarray, budget: int) -> np.ndarray:
        """Best total loss over several streams with at most ``b`` switches in all, for ``b = 0..budget``.

        Min-plus convolution of the per-stream curves ``(streams, m + 1)``, each non-increasing.

        >>> SwitchingOracle.combine(np.array([[5.0, 1.0, 1.0], [4.0, 3.0, 0.0]]), 3).tolist()
        [9.0, 5.0, 4.0, 1.0]
        """
        total = np.full(budget + 1, np.inf)
        total[0] = 0.0
        for curve in curves:
            width = min(len(curve), budget + 1)
            shifted = np.full((width, budget + 1), np.inf)
            for j in range(width):
                shifted[j, j:] = total[: budget + 1 - j] + curve[j]
            total = shifted.min(axis=0)
        return np.minimum.accumulate(total)


@dataclass
class OracleReport:
    """Comparators of one stream, averaged over replicas (the per-replica values are kept too)."""

    best_fixed_loss: float
    best_fixed_per_replica: list[float]
    best_fixed_experts: dict[str, str]
    switches: int
    switches_per_stream: int
    best_switching_loss: float
    best_switching_per_replica: list[float]
    switching_curve: dict[int, float]
    per_stream_best_fixed: np.ndarray
    per_stream_best_expert: np.ndarray
    streams: StreamLosses

    def to_json(self) -> dict:
        return {
            "best_fixed_loss": self.best_fixed_loss,
            "best_fixed_experts": self.best_fixed_experts,
            "best_switching_loss": self.best_switching_loss,
            "switches": self.switches,
            "switches_per_stream": self.switches_per_stream,
            "switching_curve": {str(k): v for k, v in self.switching_curve.items()},
            "per_replica": {
                "best_fixed_loss": self.best_fixed_per_replica,
                "best_switching_loss": self.best_switching_per_replica,
            },
        }


def compute_oracles(stream: Stream, switches_per_stream: int) -> OracleReport:
    """Best fixed expert and best switching sequence (``switches_per_stream`` times the number of streams)."""
    grouped = stream_losses(stream)
    fixed, which = best_fixed(grouped)
    R = stream.replicas
    per_replica_streams = len(grouped.names) // R
    busy = grouped.rounds.reshape(R, per_replica_streams) > 0
    budget_streams = int(busy.sum(axis=1).max(initial=0))
    total_switches = switches_per_stream * budget_streams
    oracle = SwitchingOracle(max(total_switches, 8))
    curves = oracle.curves(grouped).reshape(R, per_replica_streams, -1)
    budget = max(total_switches, min(8 * budget_streams, oracle.max_switches * budget_streams))
    combined = np.array([SwitchingOracle.combine(curves[r][busy[r]], budget) for r in range(R)])
    fixed_r = fixed.reshape(R, per_replica_streams).sum(axis=1)
    switching_r = combined[:, total_switches]
    names = {}
    for s, (r, j, c) in enumerate(grouped.names):
        if r == 0 and grouped.rounds[s] > 0:
            names[f"{stream.tenants[j]}/{stream.categories[c]}"] = stream.experts[which[s]]
    marks = sorted({0, 1, 2, 4, total_switches, *range(0, budget + 1, max(budget // 16, 1)), budget})
    return OracleReport(
        best_fixed_loss=float(fixed_r.mean()),
        best_fixed_per_replica=fixed_r.tolist(),
        best_fixed_experts=names,
        switches=total_switches,
        switches_per_stream=switches_per_stream,
        best_switching_loss=float(switching_r.mean()),
        best_switching_per_replica=switching_r.tolist(),
        switching_curve={m: float(combined[:, m].mean()) for m in marks if m <= budget},
        per_stream_best_fixed=fixed,
        per_stream_best_expert=which,
        streams=grouped,
    )

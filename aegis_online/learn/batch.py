"""Apply a stream of feedback events for many keys with vectorised updates, in per-key order."""

from __future__ import annotations

import itertools

import numpy as np

from aegis_online.learn.base import Learner


def occurrence_rank(keys: np.ndarray) -> np.ndarray:
    """For each event, how many earlier events share its key (0 for a key's first event)."""
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    starts = np.flatnonzero(np.r_[True, sorted_keys[1:] != sorted_keys[:-1]])
    group_start = np.repeat(starts, np.diff(np.r_[starts, len(keys)]))
    rank = np.empty(len(keys), dtype=np.int64)
    rank[order] = np.arange(len(keys)) - group_start
    return rank


def apply_events(
    learner: Learner,
    states: np.ndarray,
    keys: np.ndarray,
    outputs: np.ndarray,
    labels: np.ndarray,
    awake: np.ndarray | None = None,
    propensities: np.ndarray | None = None,
) -> np.ndarray:
    """Apply ``T`` events to a table of key states ``(K, S)``; ``keys[t]`` is the row event ``t`` updates.

    Events are grouped into waves by their occurrence rank: wave ``r`` holds every key's ``r``-th event, so one
    vectorised ``learn_many`` call per wave gives exactly the states of applying the events one by one in order.
    Returns a new table.

    >>> from aegis_online.learn import Hedge
    >>> learner = Hedge(n_experts=2)
    >>> table = learner.init_states(2)
    >>> out = np.array([[0.9, 0.1], [0.2, 0.7], [0.8, 0.3]])
    >>> table = apply_events(learner, table, np.array([0, 1, 0]), out, np.array([1.0, 0.0, 1.0]))
    >>> table[:, 0].tolist()
    [2.0, 1.0]
    """
    keys = np.asarray(keys, dtype=np.int64)
    outputs = np.asarray(outputs, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.float64)
    table = np.array(states, dtype=np.float64, copy=True)
    if len(keys) == 0:
        return table
    rank = occurrence_rank(keys)
    order = np.argsort(rank, kind="stable")
    bounds = np.searchsorted(rank[order], np.arange(rank.max() + 2))
    for start, stop in itertools.pairwise(bounds):
        wave = order[start:stop]
        rows = keys[wave]
        table[rows] = learner.learn_many(
            table[rows],
            outputs[wave],
            labels[wave],
            None if awake is None else np.asarray(awake)[wave],
            None if propensities is None else np.asarray(propensities)[wave],
        )
    return table

"""Apply ordered key updates with a learner, vectorised across keys, exactly as applying them one by one would.

The compute half of ``LearnerStore.apply_batch``: the store decides which entries are pending and where the states
go; this module only runs the learner. Entries are grouped into *waves* (wave ``r`` holds every key's ``r``-th
entry), so one ``learn_many`` call per wave updates all keys at once, as ``learn.apply_events`` does.

One addition: a key with no record may start from another key's state (a tenant's learner starts from the global
one), and must start from that *parent* as it was just before the child's first entry. The wave loop provides it
by shifting the child's waves by the number of parent entries that precede it and copying the parent's row at the
start of that wave. Callers list a child's entry of an event before its parent's entry of the same event, and
give that parent entry in ``entry_parent``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from aegis_online.learn import Learner
from aegis_online.learn.batch import occurrence_rank
from aegis_online.state.base import LearnerRecord


@dataclass(frozen=True, eq=False)
class KeyUpdates:
    """Entries in application order: entry ``e`` updates key ``entry_key[e]`` with ``outputs[e]`` and label
    ``targets[e]``. ``key_parent[k]`` is the key a fresh key ``k`` starts from (-1: the learner's initial state);
    ``entry_parent[e]`` is the parent key's entry of the same event (-1: none)."""

    key_parent: np.ndarray
    entry_key: np.ndarray
    entry_parent: np.ndarray
    outputs: np.ndarray
    targets: np.ndarray
    propensities: np.ndarray | None = None


def replay(
    learner: Learner,
    updates: KeyUpdates,
    records: Sequence[LearnerRecord | None],
    mask: np.ndarray,
    wanted: frozenset[int],
) -> dict[int, np.ndarray]:
    """New states of the ``wanted`` keys (and of their parents, which they may need) after the entries in ``mask``."""
    n_keys = len(records)
    fresh = np.fromiter((r is None for r in records), dtype=bool, count=n_keys)
    need = np.zeros(n_keys, dtype=bool)
    need[list(wanted)] = True
    children = need & fresh & (updates.key_parent >= 0)
    need[updates.key_parent[children]] = True
    chosen = np.flatnonzero(mask & need[updates.entry_key])
    if chosen.size == 0:
        return {}
    keys = updates.entry_key[chosen]
    present, first = np.unique(keys, return_index=True)

    table = learner.init_states(n_keys)
    for k in np.flatnonzero(need & ~fresh):
        table[k] = records[k].state

    rank = occurrence_rank(keys)
    shift = np.zeros(n_keys, dtype=np.int64)
    starting = present[fresh[present] & (updates.key_parent[present] >= 0)]
    if starting.size:
        starting_first = first[np.searchsorted(present, starting)]
        shift[starting] = _parent_entries_before(updates, chosen, keys, rank, starting, starting_first)
    waves = rank + shift[keys]
    by_wave = np.argsort(waves, kind="stable")
    edges = np.searchsorted(waves[by_wave], np.arange(int(waves.max()) + 2))
    start_order = np.argsort(shift[starting], kind="stable")
    start_edges = np.searchsorted(shift[starting][start_order], np.arange(len(edges)))
    outputs, targets, props = updates.outputs, updates.targets, updates.propensities
    for wave in range(len(edges) - 1):
        begins = starting[start_order[start_edges[wave] : start_edges[wave + 1]]] if wave + 1 < len(start_edges) else ()
        if len(begins):
            table[begins] = table[updates.key_parent[begins]]
        members = chosen[by_wave[edges[wave] : edges[wave + 1]]]
        if members.size == 0:
            continue
        rows = updates.entry_key[members]
        table[rows] = learner.learn_many(
            table[rows], outputs[members], targets[members], propensities=None if props is None else props[members]
        )
    return dict(zip(present.tolist(), table[present], strict=True))


def _parent_entries_before(
    updates: KeyUpdates,
    chosen: np.ndarray,
    keys: np.ndarray,
    rank: np.ndarray,
    children: np.ndarray,
    first: np.ndarray,
) -> np.ndarray:
    """For each fresh child, how many chosen entries of its parent precede the child's first chosen entry."""
    position = np.full(len(updates.entry_key), -1, dtype=np.int64)
    position[chosen] = np.arange(len(chosen))
    sibling = updates.entry_parent[chosen[first]]
    at = np.where(sibling >= 0, position[np.maximum(sibling, 0)], -1)
    counts = np.where(at >= 0, rank[np.maximum(at, 0)], 0)
    for j in np.flatnonzero(at < 0):  # the parent's entry of that event is not chosen: count the slow way
        parent = updates.key_parent[children[j]]
        counts[j] = int(np.count_nonzero(keys[: first[j]] == parent))
    return counts

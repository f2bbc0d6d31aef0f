"""How feedback changes learner state, in one place: which keys an event updates (the scope rules), the learner's
math over many keys at once, and writing the result exactly once through the store's compare-and-set.

Scope rules. A labelled category of an event updates its tenant's key and, when the event is trusted, the global
key. A tenant's key with no record yet starts from the global state *as it was just before that event* (its
*parent*). The simulator (``simulate.runner``) calls ``scope_entries`` and ``replay`` too, so it cannot drift from
the service.

Replay. Entries are grouped into *waves* (wave ``r`` holds every key's ``r``-th entry), so one ``learn_many`` call
per wave updates all keys at once, exactly as applying them one by one would. A fresh child key is shifted by the
number of parent entries that precede it and copies the parent's row at the start of that wave.

Exactly once. Two paths, one loop (``apply_updates``):

* the stream path (Kafka partitions, the in-process queue): each key keeps a watermark per stream, the offset of
  the last entry applied to it, and an entry at or below it is skipped: a redelivered event changes nothing;
* the direct path (one event, no queue): each hash-tag group remembers the event id it applied.

Groups are written tenant keys first, global keys last (a fresh tenant key reads its start state from the global
one); a group that lost a race is re-read and recomputed.
"""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from aegis_online.errors import InvalidFeedbackError
from aegis_online.learn import Learner
from aegis_online.learn.batch import occurrence_rank
from aegis_online.schemas import FeedbackEvent
from aegis_online.state import (
    CONFLICT,
    SEEN,
    WRITTEN,
    GroupWrite,
    LearnerRecord,
    LearnerStore,
    PredictionRecord,
    StoreUnavailableError,
    hash_tag,
)
from aegis_online.state.codec import merged_marks
from aegis_online.weights.keyspace import readable

#: How many lost races per group before giving up (``StoreUnavailableError``: the caller retries later).
MAX_CONFLICTS = 32


class PlannedFeedback(NamedTuple):
    """A validated feedback event joined with its prediction: per labelled category (``rows`` of the prediction),
    the global key and the tenant's key, and the label. (A tuple: the worker makes one per event.)"""

    event: FeedbackEvent
    record: PredictionRecord
    labels: dict[str, float]
    rows: list[int]
    shared_keys: list[str]
    own_keys: list[str]
    trusted: bool = False
    #: The experts' whole-request scores (``overall_outputs``), the row after the categories (None: over all).
    overall: np.ndarray | None = None
    #: Whether the whole-request label was derived from category labels: it then trains the tenant's key only. (The
    #: global whole-request key is one key that every trusted event would update in turn; a batch of them is one
    #: learner step per event instead of one per wave, so only explicit verdicts train it.)
    derived_overall: bool = False

    @property
    def trained_keys(self) -> list[str]:
        """The store keys this event updates (what the scope rules make of its labels)."""
        local = len(self.shared_keys) - 1 if self.derived_overall else -1
        shared = [k for i, k in enumerate(self.shared_keys) if i != local] if self.trusted else []
        return shared + self.own_keys

    @property
    def scopes(self) -> list[str]:
        """Whose weights this event trains: the tenant's, and the global ones when trusted."""
        return (["tenant"] if self.own_keys else []) + (["global"] if self.trusted else [])


@dataclass(frozen=True, eq=False)
class KeyUpdates:
    """Entries in application order: entry ``e`` updates key ``entry_key[e]`` with ``outputs[e]`` and label
    ``targets[e]``. ``key_parent[k]`` is the key a fresh key ``k`` starts from (-1: the learner's initial state);
    ``entry_parent[e]`` is the parent key's entry of the same event (-1: none). ``entry_event[e]`` is the index of
    the event (plan) the entry came from; ``keys`` names the keys in the store (empty in the simulator)."""

    key_parent: np.ndarray
    entry_key: np.ndarray
    entry_parent: np.ndarray
    entry_event: np.ndarray
    outputs: np.ndarray
    targets: np.ndarray
    propensities: np.ndarray | None = None
    keys: tuple[str, ...] = ()

    @property
    def phases(self) -> tuple[np.ndarray, np.ndarray]:
        """Key indices in the order their writes must become visible: children (tenant keys), then the rest."""
        child = self.key_parent >= 0
        return np.flatnonzero(child), np.flatnonzero(~child)


class BatchOutcome(NamedTuple):
    """What applying a batch did: per event, applied now (False: it had been before); and how many write races it
    lost (each re-read and recomputed: concurrent writers of the same global keys)."""

    applied: list[bool]
    conflicts: int


@dataclass(frozen=True, eq=False)
class StreamPositions:
    """Where each entry's event sits in its ordered stream: ``streams[entry_stream[e]]`` at ``entry_offset[e]``."""

    streams: tuple[str, ...]
    entry_stream: np.ndarray
    entry_offset: np.ndarray


def overall_outputs(outputs: np.ndarray, acted: np.ndarray | None = None) -> np.ndarray:
    """Each expert's score of the whole request (``schemas.OVERALL``) from its category scores ``(C, N)``: its
    highest over the categories the tenant's policy acts on (``acted``; None: all), NaN where it scored none. A
    category the policy allows is reported, never acted on, so it never makes the request look unsafe. The moderator
    decides, and the applier learns, with the same row.

    >>> overall_outputs(np.array([[0.2, np.nan], [0.7, np.nan]])).tolist()
    [0.7, nan]
    >>> overall_outputs(np.array([[0.2, np.nan], [0.7, np.nan]]), np.array([True, False])).tolist()
    [0.2, nan]
    """
    if acted is not None:
        outputs = outputs[np.asarray(acted, dtype=bool)]
    finite = np.isfinite(outputs)
    top = np.where(finite, outputs, -np.inf).max(axis=0, initial=-np.inf)
    return np.where(finite.any(axis=0), top, np.nan)


# -- scope rules ---------------------------------------------------------------------------------------------------
def scope_entries(
    global_key: np.ndarray, own_key: np.ndarray, trusted: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Entries of labelled items (one category of one event each, in event order): item ``i`` updates the tenant's
    key ``own_key[i]`` (when >= 0) and, when ``trusted[i]``, the global key ``global_key[i]``. The tenant's entry
    comes first and names the global one as its parent's entry. Returns ``(entry_key, entry_parent, entry_item)``.

    >>> keys, parents, items = scope_entries(np.array([0, 1]), np.array([2, 3]), np.array([True, False]))
    >>> keys.tolist(), parents.tolist(), items.tolist()
    ([2, 0, 3], [1, -1, -1], [0, 0, 1])
    """
    has_own = own_key >= 0
    n = len(global_key)
    if trusted.all():
        if not has_own.any():  # one scope: the global keys only
            return global_key.astype(np.int64), np.full(n, -1, dtype=np.int64), np.arange(n)
        if has_own.all():  # every item in both scopes: own, global, own, global, ...
            entry_key = np.empty(2 * n, dtype=np.int64)
            entry_key[0::2], entry_key[1::2] = own_key, global_key
            entry_parent = np.full(2 * n, -1, dtype=np.int64)
            entry_parent[0::2] = np.arange(1, 2 * n, 2)
            return entry_key, entry_parent, np.repeat(np.arange(n), 2)
    own_slot = has_own.astype(np.int64)
    counts = own_slot + trusted.astype(np.int64)
    start = np.cumsum(counts) - counts
    total = int(counts.sum())
    entry_key = np.empty(total, dtype=np.int64)
    entry_item = np.empty(total, dtype=np.int64)
    entry_parent = np.full(total, -1, dtype=np.int64)
    own_at = start[has_own]
    entry_key[own_at] = own_key[has_own]
    entry_item[own_at] = np.flatnonzero(has_own)
    shared_at = start[trusted] + own_slot[trusted]
    entry_key[shared_at] = global_key[trusted]
    entry_item[shared_at] = np.flatnonzero(trusted)
    both = has_own & trusted
    entry_parent[start[both]] = start[both] + 1
    return entry_key, entry_parent, entry_item


def plan_updates(plans: Sequence[PlannedFeedback], learner: Learner) -> KeyUpdates:
    """The key updates of planned events, in order (``scope_entries`` per labelled category)."""
    index: dict[str, int] = {}
    parent: list[int] = []
    item_global: list[int] = []
    item_own: list[int] = []
    item_trusted: list[bool] = []
    item_event: list[int] = []
    item_row: list[int] = []
    targets: list[float] = []
    records: dict[int, int] = {}
    outputs: list[np.ndarray] = []
    props: list[np.ndarray | None] = []
    event_record: list[int] = []
    first_row: list[int] = []
    total_rows = 0
    for e, plan in enumerate(plans):
        record = plan.record
        r = records.get(id(record))
        if r is None:
            r = records[id(record)] = len(outputs)
            whole = overall_outputs(record.outputs) if plan.overall is None else plan.overall
            outputs.append(np.vstack([record.outputs, whole[None, :]]))
            props.append(record.propensities)
            first_row.append(total_rows)
            total_rows += record.outputs.shape[0] + 1
        event_record.append(r)
        for c, key in enumerate(plan.shared_keys):
            g = index.get(key)
            if g is None:
                g = index[key] = len(parent)
                parent.append(-1)
            o = -1
            if c < len(plan.own_keys):
                o = index.get(plan.own_keys[c], -1)
                if o < 0:
                    o = index[plan.own_keys[c]] = len(parent)
                    parent.append(g)
            item_global.append(g)
            item_own.append(o)
        n = len(plan.shared_keys)
        item_trusted += [plan.trusted] * n
        if plan.derived_overall and plan.trusted:
            item_trusted[-1] = False  # the derived whole-request label (last): the tenant's key only
        item_event += [e] * n
        item_row += [first_row[r] + row for row in plan.rows]
        targets += plan.labels.values()
    entry_key, entry_parent, entry_item = scope_entries(
        np.array(item_global, dtype=np.int64), np.array(item_own, dtype=np.int64), np.array(item_trusted, dtype=bool)
    )
    with_props = [p is not None for p in props]
    if any(with_props) and not all(with_props):
        raise InvalidFeedbackError("a batch mixes bandit and full-information predictions")
    entry_event = np.array(item_event, dtype=np.int64)[entry_item]
    rows = np.array(item_row, dtype=np.int64)[entry_item]
    entry_outputs = (np.concatenate(outputs) if outputs else np.zeros((0, learner.n_experts)))[rows]
    if np.any(np.abs(entry_outputs - 0.5) > 0.5):  # one check for the batch; NaN (asleep) compares False
        bad = int(np.flatnonzero(np.any(np.abs(entry_outputs - 0.5) > 0.5, axis=1))[0])
        request = plans[int(entry_event[bad])].event.request_id
        raise InvalidFeedbackError(f"request_id: the logged outputs of {request!r} are not probabilities")
    propensities = None
    if props and all(with_props):
        propensities = np.stack(props)[np.array(event_record, dtype=np.int64)[entry_event]]
    return KeyUpdates(
        key_parent=np.array(parent, dtype=np.int64),
        entry_key=entry_key,
        entry_parent=entry_parent,
        entry_event=entry_event,
        outputs=entry_outputs,
        targets=np.array(targets, dtype=np.float64)[entry_item],
        propensities=propensities,
        keys=tuple(index),
    )


# -- the learner's math ----------------------------------------------------------------------------------------------
def replay(
    learner: Learner,
    updates: KeyUpdates,
    states: np.ndarray,
    fresh: np.ndarray,
    mask: np.ndarray | None = None,
    wanted: np.ndarray | None = None,
) -> np.ndarray:
    """Apply the entries in ``mask`` (None: all) to ``states`` (one row per key, the learner's initial state for a
    ``fresh`` key), in place, for the keys in ``wanted`` (None: all) and the parents they start from. Returns the
    keys it changed."""
    n_keys = len(fresh)
    if mask is None and wanted is None:
        chosen, keys = np.arange(len(updates.entry_key)), updates.entry_key
    else:
        need = np.zeros(n_keys, dtype=bool)
        need[slice(None) if wanted is None else wanted] = True
        children = need & fresh & (updates.key_parent >= 0)
        need[updates.key_parent[children]] = True
        chosen = np.flatnonzero(need[updates.entry_key] if mask is None else mask & need[updates.entry_key])
        keys = updates.entry_key[chosen]
    if chosen.size == 0:
        return np.zeros(0, dtype=np.int64)
    counts = np.bincount(keys, minlength=n_keys)
    present = np.flatnonzero(counts)
    starting = present[fresh[present] & (updates.key_parent[present] >= 0)]
    if not starting.size and counts.max() == 1:  # every key once, none starting from another: one call
        states[keys] = learner.learn_many(
            states[keys], updates.outputs[chosen], updates.targets[chosen], propensities=_props(updates, chosen)
        )
        return present
    rank = occurrence_rank(keys)
    shift = np.zeros(n_keys, dtype=np.int64)
    if starting.size:
        _, first = np.unique(keys, return_index=True)
        starting_first = first[np.searchsorted(present, starting)]
        shift[starting] = _parent_entries_before(updates, chosen, keys, rank, starting, starting_first)
    waves = rank + shift[keys]
    by_wave = np.argsort(waves, kind="stable")
    edges = np.searchsorted(waves[by_wave], np.arange(int(waves.max()) + 2))
    start_order = np.argsort(shift[starting], kind="stable")
    start_edges = np.searchsorted(shift[starting][start_order], np.arange(len(edges)))
    for wave in range(len(edges) - 1):
        begins = starting[start_order[start_edges[wave] : start_edges[wave + 1]]] if wave + 1 < len(start_edges) else ()
        if len(begins):
            states[begins] = learner.inherit(states[updates.key_parent[begins]])
        members = chosen[by_wave[edges[wave] : edges[wave + 1]]]
        if members.size == 0:
            continue
        rows = updates.entry_key[members]
        states[rows] = learner.learn_many(
            states[rows], updates.outputs[members], updates.targets[members], propensities=_props(updates, members)
        )
    return present


def _props(updates: KeyUpdates, entries: np.ndarray) -> np.ndarray | None:
    return None if updates.propensities is None else updates.propensities[entries]


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


# -- exactly once ----------------------------------------------------------------------------------------------------
def apply_updates(
    store: LearnerStore,
    learner: Learner,
    updates: KeyUpdates,
    *,
    positions: StreamPositions | None = None,
    event_id: str | None = None,
) -> tuple[np.ndarray, int]:
    """Apply ``updates`` to ``store`` exactly once: by stream watermarks (``positions``) or by event id (the direct
    path). Returns, per entry, whether this call applied it, and how many write races it lost."""
    keys = updates.keys
    records = store.load(keys)
    pending = _pending(updates, positions, records)
    applied = pending.copy()
    conflicts = 0
    if not pending.any():
        return applied, conflicts
    states = _compute(learner, updates, records, pending, np.unique(updates.entry_key[pending]))
    for phase in updates.phases:
        todo = _groups(keys, [k for k in phase.tolist() if k in states])
        attempt = 0
        while todo:
            new = _finished(updates, positions, records, pending, states, [k for g in todo for k in g])
            writes = [
                GroupWrite(
                    tuple(keys[k] for k in g),
                    tuple(None if records[k] is None else records[k].updates for k in g),
                    tuple(new[k] for k in g),
                )
                for g in todo
            ]
            results = store.compare_and_set(writes, event_id)
            lost = []
            for group, result in zip(todo, results, strict=True):
                if result == WRITTEN:
                    for k in group:
                        records[k] = new[k]
                elif result == SEEN:
                    applied[np.isin(updates.entry_key, group)] = False
                else:
                    assert result == CONFLICT
                    lost.append(group)
            if not lost:
                break
            conflicts += len(lost)
            attempt += 1
            if attempt > MAX_CONFLICTS:
                raise StoreUnavailableError(f"{len(lost)} key groups kept changing: {MAX_CONFLICTS} tries")
            time.sleep(random.uniform(0, 0.002 * attempt))  # de-synchronise racing writers
            todo = _recompute(store, learner, updates, positions, records, pending, applied, states, lost)
    return applied, conflicts


def _pending(
    updates: KeyUpdates, positions: StreamPositions | None, records: Sequence[LearnerRecord | None]
) -> np.ndarray:
    """True for each entry not applied yet: above its key's watermark for its stream (the direct path: all)."""
    n = len(updates.entry_key)
    if positions is None or n == 0:
        return np.ones(n, dtype=bool)
    marks = np.full((len(updates.keys), len(positions.streams)), -1, dtype=np.int64)
    for k, record in enumerate(records):
        if record is not None and record.marks:
            for s, stream in enumerate(positions.streams):
                marks[k, s] = record.marks.get(stream, -1)
    return positions.entry_offset > marks[updates.entry_key, positions.entry_stream]


def _compute(
    learner: Learner,
    updates: KeyUpdates,
    records: Sequence[LearnerRecord | None],
    pending: np.ndarray,
    wanted: np.ndarray,
) -> dict[int, np.ndarray]:
    """New states of the ``wanted`` keys after their pending entries."""
    states = learner.init_states(len(records))
    fresh = np.ones(len(records), dtype=bool)
    for k, record in enumerate(records):
        if readable(record, learner) is not None:
            states[k], fresh[k] = record.state, False
    changed = replay(learner, updates, states, fresh, pending, wanted)
    return {k: states[k] for k in changed.tolist()}


def _finished(
    updates: KeyUpdates,
    positions: StreamPositions | None,
    records: Sequence[LearnerRecord | None],
    pending: np.ndarray,
    states: dict[int, np.ndarray],
    keys: Sequence[int],
) -> dict[int, LearnerRecord]:
    """Records of ``keys`` after their pending entries: new state, update count plus the number applied, and
    (stream path) watermarks advanced to the largest applied offset per stream."""
    keys = list(keys)
    n_keys = len(updates.keys)
    counts = np.bincount(updates.entry_key[pending], minlength=n_keys)
    new_marks: dict[int, dict[str, int]] = {}
    if positions is not None:
        top = np.full((n_keys, len(positions.streams)), -1, dtype=np.int64)
        np.maximum.at(
            top,
            (updates.entry_key[pending], positions.entry_stream[pending]),
            positions.entry_offset[pending],
        )
        mine = top[keys]
        rows, columns = np.nonzero(mine >= 0)
        streams = positions.streams
        for row, column, offset in zip(rows.tolist(), columns.tolist(), mine[rows, columns].tolist(), strict=True):
            new_marks.setdefault(keys[row], {})[streams[column]] = offset
    out: dict[int, LearnerRecord] = {}
    for k in keys:
        old = records[k]
        marks = new_marks.get(k, {})
        if old is not None and old.marks:
            marks = merged_marks(old.marks, marks) if marks else old.marks
        out[k] = LearnerRecord(
            state=np.asarray(states[k], dtype=np.float64),
            updates=(0 if old is None else old.updates) + int(counts[k]),
            marks=marks,
        )
    return out


def _recompute(
    store: LearnerStore,
    learner: Learner,
    updates: KeyUpdates,
    positions: StreamPositions | None,
    records: list[LearnerRecord | None],
    pending: np.ndarray,
    applied: np.ndarray,
    states: dict[int, np.ndarray],
    lost: list[list[int]],
) -> list[list[int]]:
    """Re-read the groups that lost a race, drop what the winner applied (stream path), recompute the rest."""
    lost_keys = [k for g in lost for k in g]
    for k, record in zip(lost_keys, store.load([updates.keys[k] for k in lost_keys]), strict=True):
        records[k] = record
    in_lost = np.isin(updates.entry_key, lost_keys)
    fresh = _pending(updates, positions, records)
    pending[in_lost] = fresh[in_lost]
    applied[in_lost] = fresh[in_lost]
    still = [g for g in lost if pending[np.isin(updates.entry_key, g)].any()]
    wanted = np.array([k for g in still for k in g], dtype=np.int64)
    if wanted.size:
        states.update(_compute(learner, updates, records, pending, wanted))
    return [[k for k in g if pending[updates.entry_key == k].any()] for g in still]


def _groups(keys: Sequence[str], indices: Sequence[int]) -> list[list[int]]:
    """Key indices grouped by hash tag, in order of first appearance."""
    groups: dict[str, list[int]] = {}
    for i in indices:
        groups.setdefault(hash_tag(keys[i]), []).append(i)
    return list(groups.values())

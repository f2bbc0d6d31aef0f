"""The bookkeeping of ``apply_batch`` that every store shares: which entries are above their key's watermark, the
records after applying them, and how keys group into atomic writes. No I/O here, so the memory and Redis stores
cannot disagree on what "applied once" means.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from aegis_online.state.base import LearnerRecord, UpdateBatch
from aegis_online.state.codec import merged_marks


def hash_tag(key: str) -> str:
    """The part of ``key`` that Redis Cluster hashes: the first non-empty ``{...}``, else the whole key.

    >>> hash_tag("default:1a2b3c4d:{acme}:S1")
    'acme'
    >>> hash_tag("plain-key")
    'plain-key'
    """
    start = key.find("{")
    if start >= 0:
        end = key.find("}", start + 1)
        if end > start + 1:
            return key[start + 1 : end]
    return key


def watermarks(batch: UpdateBatch, records: Sequence[LearnerRecord | None]) -> np.ndarray:
    """``(keys, streams)`` table of the last applied offset (-1: none)."""
    table = np.full((len(batch.keys), len(batch.streams)), -1, dtype=np.int64)
    for k, record in enumerate(records):
        if record is not None and record.marks:
            for s, stream in enumerate(batch.streams):
                table[k, s] = record.marks.get(stream, -1)
    return table


def pending_entries(batch: UpdateBatch, records: Sequence[LearnerRecord | None]) -> np.ndarray:
    """True for each entry above its key's watermark for its stream: not applied yet."""
    if len(batch.entry_key) == 0:
        return np.zeros(0, dtype=bool)
    marks = watermarks(batch, records)
    return batch.entry_offset > marks[batch.entry_key, batch.entry_stream]


def finished_records(
    batch: UpdateBatch,
    records: Sequence[LearnerRecord | None],
    pending: np.ndarray,
    states: Mapping[int, np.ndarray],
    keys: Iterable[int] | None = None,
) -> dict[int, LearnerRecord]:
    """Records of the keys with pending entries (restricted to ``keys``) after applying them: new state, update
    count plus the number applied, watermarks advanced to the largest applied offset per stream."""
    n_keys, n_streams = len(batch.keys), len(batch.streams)
    counts = np.bincount(batch.entry_key[pending], minlength=n_keys)
    top = np.full((n_keys, n_streams), -1, dtype=np.int64)
    np.maximum.at(top, (batch.entry_key[pending], batch.entry_stream[pending]), batch.entry_offset[pending])
    if keys is not None:
        chosen = np.zeros(n_keys, dtype=bool)
        chosen[list(keys)] = True
        counts = np.where(chosen, counts, 0)
    key_list, stream_list = np.nonzero((top >= 0) & (counts[:, None] > 0))
    new_marks: dict[int, dict[str, int]] = {}
    streams = batch.streams
    for k, s, offset in zip(key_list.tolist(), stream_list.tolist(), top[key_list, stream_list].tolist(), strict=True):
        new_marks.setdefault(k, {})[streams[s]] = offset
    out: dict[int, LearnerRecord] = {}
    for k, count in zip(np.flatnonzero(counts).tolist(), counts[counts > 0].tolist(), strict=True):
        old = records[k]
        marks = new_marks.get(k, {})
        if old is not None and old.marks:
            marks = merged_marks(old.marks, marks)
        out[k] = LearnerRecord(
            state=np.asarray(states[k], dtype=np.float64),
            updates=(0 if old is None else old.updates) + count,
            marks=marks,
        )
    return out


def groups_by_tag(keys: Sequence[str], indices: Iterable[int]) -> list[list[int]]:
    """Key indices grouped by hash tag, in order of first appearance."""
    groups: dict[str, list[int]] = {}
    for i in indices:
        groups.setdefault(hash_tag(keys[i]), []).append(i)
    return list(groups.values())

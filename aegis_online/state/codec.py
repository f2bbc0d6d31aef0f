"""Byte encodings of learner records and prediction records, shared by the Redis and the embedded SQLite stores.

Doubles are stored as raw IEEE-754 float64 bytes: every value, NaN, infinities and subnormals included, comes back
bit for bit (a decimal text form needs ``%.17g`` and costs about 2.5x the bytes). A learner record's first 8 bytes
are its update count, big-endian: the Redis compare-and-set script compares that prefix as the record's version,
so the version costs no extra field and can never go backwards.

Learner record, format 1::

    u64 BE updates | u8 format=1 | u16 LE n_state | u16 LE n_marks | f64 LE state[n_state]
    | n_marks x (u8 len, stream name utf-8, i64 LE offset)

Prediction record, format 2 (strings are utf-8; lists are joined with U+001F)::

    b"P" | u8 format=2 | u8 has_propensities | f64 LE created | u16 LE C | u16 LE N | 7 x u16 LE string length
    | request_id | tenant | check | experts | categories | flagged | input_digest
    | f64 LE outputs[C*N] | f64 LE scores[C] | f64 LE propensities[N] (when present)

Format 1, written before the input digest existed, is format 2 without the last string; it is still read (as an
empty digest), since logged predictions outlive an upgrade by their TTL.

The feedback worker decodes one per event, so the header is packed, not JSON (4x faster to read), and the expert
and category lists, the same in nearly every record, are decoded once and shared.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping

import numpy as np

from aegis_online.state.base import LearnerRecord, PredictionRecord

LEARNER_FORMAT = 1
PREDICTION_FORMAT = 2
VERSION_BYTES = 8
_LEARNER_HEAD = struct.Struct(">QBHH")
_HEAD_LE = struct.Struct("<BHH")
_MARK_OFFSET = struct.Struct("<q")
_PREDICTION_HEADS = {1: struct.Struct("<cB?dHH6H"), 2: struct.Struct("<cB?dHH7H")}
_U16 = struct.Struct("<H")
_SEP = "\x1f"
_F64 = np.dtype("<f8")


class CodecError(ValueError):
    """Bytes that are not a record of a known format (corrupt, or written by a newer version)."""


def version_bytes(updates: int) -> bytes:
    """The 8-byte prefix that a record with ``updates`` updates starts with (its compare-and-set version)."""
    return updates.to_bytes(VERSION_BYTES, "big")


def encode_learner(record: LearnerRecord) -> bytes:
    state = np.ascontiguousarray(record.state, dtype=_F64)
    marks = record.marks
    parts = [_LEARNER_HEAD.pack(record.updates, LEARNER_FORMAT, state.size, len(marks)), state.tobytes()]
    for stream, offset in marks.items():
        name = stream.encode()
        if len(name) > 255:
            raise ValueError(f"stream name longer than 255 bytes: {stream!r}")
        parts.append(bytes((len(name),)) + name + _MARK_OFFSET.pack(offset))
    return b"".join(parts)


def decode_learner(blob: bytes) -> LearnerRecord:
    if len(blob) < _LEARNER_HEAD.size:
        raise CodecError(f"learner record of {len(blob)} bytes is too short")
    updates, fmt, n_state, n_marks = _LEARNER_HEAD.unpack_from(blob)
    if fmt != LEARNER_FORMAT:
        raise CodecError(f"learner record format {fmt} is not {LEARNER_FORMAT}")
    start = _LEARNER_HEAD.size
    end = start + 8 * n_state
    state = np.frombuffer(blob, dtype=_F64, count=n_state, offset=start).astype(np.float64)
    marks: dict[str, int] = {}
    pos = end
    try:
        for _ in range(n_marks):
            size = blob[pos]
            name = blob[pos + 1 : pos + 1 + size].decode()
            (offset,) = _MARK_OFFSET.unpack_from(blob, pos + 1 + size)
            marks[name] = offset
            pos += 1 + size + 8
    except (IndexError, struct.error, UnicodeDecodeError) as error:
        raise CodecError(f"learner record marks are truncated: {error}") from None
    return LearnerRecord(state=state, updates=updates, marks=marks)


def encode_prediction(record: PredictionRecord) -> bytes:
    strings = [
        text.encode()
        for text in (
            record.request_id,
            record.tenant,
            record.check,
            _SEP.join(record.experts),
            _SEP.join(record.categories),
            _SEP.join(record.flagged),
            record.input_digest,
        )
    ]
    has_props = record.propensities is not None
    head = _PREDICTION_HEADS[PREDICTION_FORMAT].pack(
        b"P",
        PREDICTION_FORMAT,
        has_props,
        record.created,
        len(record.categories),
        len(record.experts),
        *(len(raw) for raw in strings),
    )
    parts = [head, *strings]
    parts.append(np.ascontiguousarray(record.outputs, dtype=_F64).tobytes())
    parts.append(np.ascontiguousarray(record.scores, dtype=_F64).tobytes())
    if has_props:
        parts.append(np.ascontiguousarray(record.propensities, dtype=_F64).tobytes())
    return b"".join(parts)


def decode_prediction(blob: bytes) -> PredictionRecord:
    head = _PREDICTION_HEADS.get(blob[1]) if len(blob) > 1 and blob[:1] == b"P" else None
    if head is None:
        raise CodecError(f"not a prediction record of format {', '.join(map(str, _PREDICTION_HEADS))}")
    try:
        _, _, has_props, created, n_cat, n_exp, *sizes = head.unpack_from(blob)
    except struct.error:
        raise CodecError(f"prediction record of {len(blob)} bytes is truncated") from None
    pos = head.size
    fields = []
    for size in sizes:
        fields.append(blob[pos : pos + size])
        pos += size
    n_values = n_cat * n_exp + n_cat + (n_exp if has_props else 0)
    if len(blob) != pos + 8 * n_values:
        raise CodecError(f"prediction record of {len(blob)} bytes is truncated")
    values = np.frombuffer(blob, dtype=_F64, count=n_values, offset=pos)
    return PredictionRecord(
        request_id=fields[0].decode(),
        tenant=fields[1].decode(),
        check=fields[2].decode(),
        created=created,
        experts=_names(fields[3]),
        categories=_names(fields[4]),
        outputs=values[: n_cat * n_exp].reshape(n_cat, n_exp),
        scores=values[n_cat * n_exp : n_cat * n_exp + n_cat],
        flagged=_names(fields[5]),
        propensities=values[n_cat * n_exp + n_cat :] if has_props else None,
        input_digest=fields[6].decode() if len(fields) > 6 else "",
    )


_NAMES: dict[bytes, tuple[str, ...]] = {}


def _names(raw: bytes) -> tuple[str, ...]:
    """A joined name list as a tuple, shared between records (bounded cache)."""
    found = _NAMES.get(raw)
    if found is None:
        found = tuple(raw.decode().split(_SEP)) if raw else ()
        if len(_NAMES) < 4096:
            _NAMES[raw] = found
    return found


def merged_marks(current: Mapping[str, int], new: Mapping[str, int]) -> dict[str, int]:
    """Watermarks after applying entries up to ``new`` offsets: the larger offset per stream wins."""
    merged = dict(current)
    for stream, offset in new.items():
        if offset > merged.get(stream, -1):
            merged[stream] = offset
    return merged

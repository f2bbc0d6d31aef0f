"""The snapshot file of the embedded learner store: learned weights, watermarks and remembered event ids on disk.

Records use the same byte encoding as Redis (``codec``), so doubles come back exactly. A snapshot is written to a
temporary file beside the target, fsynced, then renamed over it: a reader sees the old file or the new one, never
a torn one. Layout::

    b"AEGIS-SNAPSHOT\\x01" | u32 n_records | n x (u16 key length, key, u32 blob length, blob)
    | u32 n_event_ids | n x (u16 length, event id)
"""

from __future__ import annotations

import os
import struct
from collections.abc import Mapping, Sequence
from pathlib import Path

from aegis_online.state.base import LearnerRecord
from aegis_online.state.codec import CodecError, decode_learner, encode_learner

MAGIC = b"AEGIS-SNAPSHOT\x01"
_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")


def write_snapshot(path: Path, records: Mapping[str, LearnerRecord], event_ids: Sequence[str]) -> None:
    parts = [MAGIC, _U32.pack(len(records))]
    for key, record in records.items():
        name, blob = key.encode(), encode_learner(record)
        parts += [_U16.pack(len(name)), name, _U32.pack(len(blob)), blob]
    parts.append(_U32.pack(len(event_ids)))
    for event_id in event_ids:
        name = event_id.encode()
        parts += [_U16.pack(len(name)), name]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as out:
        out.write(b"".join(parts))
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, path)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def read_snapshot(path: Path) -> tuple[dict[str, LearnerRecord], list[str]]:
    data = path.read_bytes()
    if not data.startswith(MAGIC):
        raise CodecError(f"{path}: not an aegis-online snapshot")
    pos = len(MAGIC)
    try:
        (count,) = _U32.unpack_from(data, pos)
        pos += 4
        records: dict[str, LearnerRecord] = {}
        for _ in range(count):
            (size,) = _U16.unpack_from(data, pos)
            key = data[pos + 2 : pos + 2 + size].decode()
            pos += 2 + size
            (size,) = _U32.unpack_from(data, pos)
            records[key] = decode_learner(data[pos + 4 : pos + 4 + size])
            pos += 4 + size
        (count,) = _U32.unpack_from(data, pos)
        pos += 4
        event_ids = []
        for _ in range(count):
            (size,) = _U16.unpack_from(data, pos)
            event_ids.append(data[pos + 2 : pos + 2 + size].decode())
            pos += 2 + size
    except (struct.error, UnicodeDecodeError) as error:
        raise CodecError(f"{path}: truncated snapshot ({error})") from None
    return records, event_ids

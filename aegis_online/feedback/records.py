"""What the feedback path moves around: a consumed record, and a dead letter with its reason.

A ``FeedbackRecord`` is one feedback event as read from a stream (a Kafka partition or the in-process queue): the
raw bytes, where they came from, and when they were produced. A ``DeadLetter`` is an event the worker refused: it
carries the original payload, a machine-readable reason and a detail, so that nothing refused is lost and an
operator can see why.
"""

from __future__ import annotations

import base64
import json
import os
import socket
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import NamedTuple

#: Reasons of dead letters besides ``errors.AegisError.reason`` (unknown_request, wrong_tenant, invalid_feedback).
MALFORMED = "malformed"
OVERSIZED = "oversized"
#: processing the record failed in a way no retry cures (a bug, a corrupt logged prediction): set aside, not looped on
PROCESSING_ERROR = "processing_error"


class FeedbackRecord(NamedTuple):
    """One feedback event as read: ``value`` is the JSON of a ``FeedbackEvent``, ``key`` its tenant. (A tuple: the
    worker makes one per event.)"""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp_ms: int = -1

    @property
    def stream(self) -> str:
        """The watermark stream of this record: one per topic partition."""
        return f"{self.topic}:{self.partition}"


@dataclass(frozen=True)
class DeadLetter:
    record: FeedbackRecord
    reason: str
    detail: str

    def to_json(self, max_payload_bytes: int) -> bytes:
        """The dead-letter record: the original payload (text, or base64 when it is not UTF-8; cut at
        ``max_payload_bytes``), the reason, the detail, where it came from, and who refused it when."""
        raw = self.record.value or b""
        kept = raw[:max_payload_bytes]
        body: dict[str, object] = {"reason": self.reason, "detail": self.detail}
        try:
            body["payload"] = kept.decode()
        except UnicodeDecodeError:
            body["payload_base64"] = base64.b64encode(kept).decode()
        if len(kept) < len(raw):
            body["payload_truncated"] = True
        body["payload_bytes"] = len(raw)
        body["source"] = {
            "topic": self.record.topic,
            "partition": self.record.partition,
            "offset": self.record.offset,
            "key": None if self.record.key is None else self.record.key.decode(errors="replace"),
            "timestamp_ms": self.record.timestamp_ms,
        }
        body["worker"] = f"{socket.gethostname()}:{os.getpid()}"
        body["time"] = datetime.now(timezone.utc).isoformat()
        return json.dumps(body, separators=(",", ":")).encode()

"""One batch of feedback records -> validated, joined, applied: the transport-free core of every feedback worker.

The Kafka worker and the embedded queue's worker both call ``FeedbackProcessor.process`` and then do what the
report says: publish the dead letters, commit the offsets, hold back the blocked partitions. Keeping that decision
here means both transports refuse, wait for and apply events identically.

Per partition, records are handled in offset order and that order is kept in the store (each key's watermark per
partition only moves forward). So a record whose prediction is not logged yet *blocks its partition* there: the
records after it are left for the next poll, and the partition is retried until the prediction appears or the
wait (counted from the record's produce time) runs out, when the record becomes an ``unknown_request`` dead
letter. Other partitions carry on.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from pydantic import ValidationError

from aegis_online.errors import AegisError, UnknownRequestError
from aegis_online.feedback.records import MALFORMED, OVERSIZED, DeadLetter, FeedbackRecord
from aegis_online.schemas import FeedbackEvent
from aegis_online.weights import BatchOutcome, FeedbackApplier, PlannedFeedback

Partition = tuple[str, int]
DEFAULT_MAX_EVENT_BYTES = 16 * 1024


@dataclass(frozen=True)
class Blocked:
    """A partition held at ``offset`` (a record whose prediction is not logged yet), to retry at ``retry_at``."""

    offset: int
    retry_at: float


@dataclass
class BatchReport:
    """What one batch of records needs next (dead letters to publish, offsets to commit, partitions held), with the
    ``BatchOutcome`` of applying its events."""

    outcome: BatchOutcome = field(default_factory=lambda: BatchOutcome([], 0))
    dead_letters: list[DeadLetter] = field(default_factory=list)
    #: next offset to read per partition: commit these once the dead letters are published
    commit: dict[Partition, int] = field(default_factory=dict)
    blocked: dict[Partition, Blocked] = field(default_factory=dict)

    @property
    def applied(self) -> int:
        return sum(self.outcome.applied)

    @property
    def duplicates(self) -> int:
        """Events this batch found applied already (redeliveries)."""
        return len(self.outcome.applied) - self.applied

    @property
    def conflicts(self) -> int:
        return self.outcome.conflicts

    def add(self, other: BatchReport) -> None:
        """Fold a later report of the same records' partitions into this one."""
        self.outcome = BatchOutcome(
            self.outcome.applied + other.outcome.applied, self.outcome.conflicts + other.outcome.conflicts
        )
        self.dead_letters += other.dead_letters
        self.commit.update(other.commit)
        self.blocked.update(other.blocked)


class FeedbackProcessor:
    """Validates records, joins their predictions, and applies a batch through ``FeedbackApplier.apply_batch``.

    ``wait_for_prediction_s``: how long after it was produced a record may wait for its prediction to be logged.
    ``retry_interval_s``: how soon a blocked partition is tried again.
    """

    def __init__(
        self,
        applier: FeedbackApplier,
        *,
        max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES,
        wait_for_prediction_s: float = 5.0,
        retry_interval_s: float = 0.25,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.applier = applier
        self.max_event_bytes = max_event_bytes
        self.wait_for_prediction_s = wait_for_prediction_s
        self.retry_interval_s = retry_interval_s
        self.clock = clock
        self._first_seen: dict[Partition, tuple[int, float]] = {}

    def process(self, records: Sequence[FeedbackRecord]) -> BatchReport:
        """Handle ``records`` (any mix of partitions, each in offset order). Store errors propagate untouched:
        nothing is committed then, and the same records can be processed again."""
        report = BatchReport()
        events: dict[int, FeedbackEvent] = {}
        refused: dict[int, DeadLetter] = {}
        for i, record in enumerate(records):
            event = self._decode(record)
            if isinstance(event, DeadLetter):
                refused[i] = event
            else:
                events[i] = event
        ids = list(dict.fromkeys(e.request_id for e in events.values()))
        predictions = dict(zip(ids, self.applier.prediction_log.get_many(ids), strict=True))

        by_partition: dict[Partition, list[int]] = {}
        for i, record in enumerate(records):
            by_partition.setdefault((record.topic, record.partition), []).append(i)
        now = self.clock()
        planned: list[tuple[PlannedFeedback, str, int]] = []
        for partition, indices in by_partition.items():
            last = None
            for i in indices:
                record = records[i]
                if i in refused:
                    report.dead_letters.append(refused[i])
                    last = record.offset
                    continue
                event = events[i]
                prediction = predictions[event.request_id]
                if prediction is None:
                    deadline = self._waiting_since(partition, record, now) + self.wait_for_prediction_s
                    if now < deadline:
                        report.blocked[partition] = Blocked(record.offset, min(deadline, now + self.retry_interval_s))
                        break
                try:
                    planned.append((self.applier.plan(event, prediction), record.stream, record.offset))
                except AegisError as error:
                    detail = str(error)
                    if isinstance(error, UnknownRequestError):
                        detail += f"; waited {self.wait_for_prediction_s:g} s after it was produced"
                    report.dead_letters.append(DeadLetter(record, error.reason, detail))
                last = record.offset
            blocked = report.blocked.get(partition)
            if blocked is not None:
                report.commit[partition] = blocked.offset
            elif last is not None:
                report.commit[partition] = last + 1

        report.outcome = self.applier.apply_batch(planned)
        return report

    def _decode(self, record: FeedbackRecord) -> FeedbackEvent | DeadLetter:
        raw = record.value
        if raw is None:
            return DeadLetter(record, MALFORMED, "empty record (no value)")
        if len(raw) > self.max_event_bytes:
            return DeadLetter(record, OVERSIZED, f"{len(raw)} bytes, above the limit of {self.max_event_bytes}")
        try:
            event = FeedbackEvent.model_validate_json(raw)
        except ValidationError as error:
            return DeadLetter(record, MALFORMED, _summary(error))
        if record.key is not None and record.key != event.tenant.encode():
            key = record.key.decode(errors="replace")
            return DeadLetter(record, "wrong_tenant", f"record key {key!r} is not the event's tenant {event.tenant!r}")
        return event

    def _waiting_since(self, partition: Partition, record: FeedbackRecord, now: float) -> float:
        """When the wait for this record's prediction started: its produce time, or when this worker first saw it,
        whichever is earlier (a producer clock ahead of ours cannot stretch the wait; a backlog does not wait)."""
        seen = self._first_seen.get(partition)
        if seen is None or seen[0] != record.offset:
            seen = self._first_seen[partition] = (record.offset, now)
        produced = record.timestamp_ms / 1000 if record.timestamp_ms >= 0 else seen[1]
        return min(produced, seen[1])


def _summary(error: ValidationError, limit: int = 3) -> str:
    parts = []
    for e in error.errors()[:limit]:
        where = ".".join(str(p) for p in e["loc"]) or "(event)"
        parts.append(f"{where}: {e['msg']}")
    more = error.error_count() - limit
    return "; ".join(parts) + (f"; and {more} more" if more > 0 else "")

"""The feedback bus, as the service and the worker see it: publish events; read, hold back and commit records; park
refused ones. Two implementations: Kafka (``feedback.kafka``) and an in-process queue (``feedback.inprocess``).

The worker loop (``feedback.worker``) is written against these interfaces only, so the embedded service and a
Kafka deployment run the same validation, batching, retry and commit logic.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass

from aegis_online.feedback.records import DeadLetter, FeedbackRecord
from aegis_online.schemas import FeedbackEvent

Partition = tuple[str, int]


@dataclass(frozen=True)
class Published:
    """Where an event landed: its partition and offset."""

    topic: str
    partition: int
    offset: int


class Receipt(abc.ABC):
    @abc.abstractmethod
    def wait(self, timeout_s: float | None = None) -> Published:
        """Block until the bus has the event durably; raise when it could not take it."""


class FeedbackPublisher(abc.ABC):
    """What the feedback API calls: events are keyed by tenant, so one tenant's events stay in order."""

    @abc.abstractmethod
    def publish(self, event: FeedbackEvent) -> Receipt:
        """Send ``event``; ``wait`` on the receipt before acknowledging the caller."""

    def flush(self, timeout_s: float | None = None) -> None:
        """Wait until every published event is acknowledged."""
        return None

    def close(self) -> None:
        return None


class FeedbackSource(abc.ABC):
    """The consumer side: records of the partitions this worker owns, in offset order per partition."""

    @abc.abstractmethod
    def poll(self, max_records: int, timeout_s: float) -> list[FeedbackRecord]:
        """Up to ``max_records`` records from the current positions (possibly none after ``timeout_s``)."""

    @abc.abstractmethod
    def seek(self, partition: Partition, offset: int) -> None:
        """Read ``partition`` from ``offset`` again on the next polls."""

    @abc.abstractmethod
    def pause(self, partition: Partition) -> None:
        """Stop returning records of ``partition`` until ``resume``."""

    @abc.abstractmethod
    def resume(self, partition: Partition) -> None: ...

    @abc.abstractmethod
    def commit(self, offsets: dict[Partition, int]) -> bool:
        """Record the next offset to read per partition; False when the group moved on (a rebalance): harmless,
        the new owner re-reads from the last commit and the store's watermarks skip what was applied."""

    def owned(self) -> set[Partition] | None:
        """Partitions this worker owns now (None: unknown)."""
        return None

    def close(self) -> None:
        return None


class DeadLetterSink(abc.ABC):
    @abc.abstractmethod
    def publish(self, letters: Sequence[DeadLetter]) -> None:
        """Store ``letters`` durably before returning (the caller commits their offsets next)."""

    def close(self) -> None:
        return None

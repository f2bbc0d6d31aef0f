"""The embedded feedback bus: an in-process queue with Kafka's shape (partitions keyed by tenant, offsets, commits),
and a thread that drains it through the same ``FeedbackWorker`` as Kafka does.

With a ``QueueJournal`` (the embedded service's default: ``state.sqlite.SqliteQueueJournal``) the queue is durable
like a topic: an event is journalled before ``publish`` returns and survives a power loss once its receipt's
``wait`` returns (a group commit: one fsync for every event published before it); committed events are deleted;
after a restart the uncommitted ones are delivered again and offsets go on from the highest ever issued, so the
learner records' watermarks (which remember offsets) never mistake a new event for an applied one. Without a
journal, events live in memory until committed and a crash loses those not applied yet.

``publish`` blocks when ``max_pending`` events wait, so a burst slows the feedback API down instead of growing
memory without bound.
"""

from __future__ import annotations

import logging
import threading
import time
import zlib
from collections import deque
from collections.abc import Sequence

from aegis_online.feedback.bus import (
    DeadLetterSink,
    FeedbackPublisher,
    FeedbackSource,
    Partition,
    Published,
    Receipt,
)
from aegis_online.feedback.processor import FeedbackProcessor
from aegis_online.feedback.records import DeadLetter, FeedbackRecord
from aegis_online.feedback.worker import FeedbackWorker, WorkerStats
from aegis_online.schemas import FeedbackEvent
from aegis_online.state import EventKey, JournalEntry, QueueJournal, StoreUnavailableError
from aegis_online.weights import FeedbackApplier

log = logging.getLogger("aegis_online.feedback.inprocess")


class QueueFullError(RuntimeError):
    """The in-process queue stayed full for the whole publish timeout."""


class _Done(Receipt):
    def __init__(self, published: Published, journal: QueueJournal | None = None, ticket: int = 0) -> None:
        self.published = published
        self.journal = journal
        self.ticket = ticket

    def wait(self, timeout_s: float | None = None) -> Published:
        if self.journal is not None:
            self.journal.sync(self.ticket)
        return self.published


class InProcessFeedbackQueue(FeedbackPublisher, FeedbackSource):
    """Partitions of (offset, key, value) in memory, journalled when ``journal`` is given; one consumer; committed
    records are dropped.

    Partitions of an earlier run with more of them (``bus.partitions`` lowered) are kept until drained: their events
    keep their offsets, so the watermarks still recognise those already applied.
    """

    def __init__(
        self,
        partitions: int = 1,
        *,
        topic: str = "feedback",
        max_pending: int = 100_000,
        publish_timeout_s: float = 5,
        journal: QueueJournal | None = None,
    ) -> None:
        self.topic = topic
        self.partitions = partitions
        self.max_pending = max_pending
        self.publish_timeout_s = publish_timeout_s
        self.journal = journal
        next_offsets, entries = journal.load(topic) if journal is not None else ({}, [])
        count = max(partitions, 1 + max((*next_offsets, *(e.partition for e in entries)), default=-1))
        self._logs: list[deque[FeedbackRecord]] = [deque() for _ in range(count)]
        for e in entries:
            self._logs[e.partition].append(FeedbackRecord(topic, e.partition, e.offset, e.key, e.value, e.timestamp_ms))
        self._next_offset = [
            max(next_offsets.get(p, 0), self._logs[p][-1].offset + 1 if self._logs[p] else 0) for p in range(count)
        ]
        self._position = [0] * count
        self._paused: set[int] = set()
        self._pending = len(entries)
        self._cond = threading.Condition()
        if entries:
            log.info("%d feedback events from before the restart are queued again", len(entries))

    # -- publisher ------------------------------------------------------------------------------------------------
    def publish(self, event: FeedbackEvent) -> Receipt:
        value = event.model_dump_json().encode()
        return self._append(event.tenant.encode(), value, (event.tenant, event.idempotency_key))

    def publish_raw(self, key: bytes | None, value: bytes | None) -> Receipt:
        """Append raw bytes (tests use it to send what a broken producer would)."""
        return self._append(key, value, None)

    def _append(self, key: bytes | None, value: bytes | None, queued: EventKey | None) -> Receipt:
        p = 0 if key is None else zlib.crc32(key) % self.partitions
        with self._cond:
            if not self._cond.wait_for(lambda: self._pending < self.max_pending, self.publish_timeout_s):
                raise QueueFullError(f"{self._pending} feedback events wait in the in-process queue")
            offset = self._next_offset[p]
            record = FeedbackRecord(self.topic, p, offset, key, value, int(time.time() * 1000))
            ticket = 0
            if self.journal is not None:  # first: an offset is issued only once it is on disk
                entry = JournalEntry(p, offset, key, value, record.timestamp_ms)
                ticket = self.journal.append(self.topic, entry, queued)
            self._next_offset[p] += 1
            self._logs[p].append(record)
            self._pending += 1
            self._cond.notify_all()
        return _Done(Published(self.topic, p, offset), self.journal, ticket)

    # -- source ---------------------------------------------------------------------------------------------------
    def poll(self, max_records: int, timeout_s: float) -> list[FeedbackRecord]:
        with self._cond:
            self._cond.wait_for(self._readable, timeout_s)
            out: list[FeedbackRecord] = []
            for p, log in enumerate(self._logs):
                if p in self._paused or not log:
                    continue
                start = self._position[p] - log[0].offset
                for i in range(max(start, 0), len(log)):
                    if len(out) >= max_records:
                        break
                    out.append(log[i])
                if out and out[-1].partition == p:
                    self._position[p] = out[-1].offset + 1
            return out

    def _readable(self) -> bool:
        return any(
            p not in self._paused and log and log[-1].offset >= self._position[p] for p, log in enumerate(self._logs)
        )

    def seek(self, partition: Partition, offset: int) -> None:
        with self._cond:
            self._position[partition[1]] = offset

    def pause(self, partition: Partition) -> None:
        with self._cond:
            self._paused.add(partition[1])

    def resume(self, partition: Partition) -> None:
        with self._cond:
            self._paused.discard(partition[1])
            self._cond.notify_all()

    def commit(self, offsets: dict[Partition, int]) -> bool:
        if self.journal is not None:
            try:
                self.journal.commit(self.topic, {p: offset for (_, p), offset in offsets.items()})
            except StoreUnavailableError as error:  # harmless: applied events redelivered later are skipped
                log.warning("could not delete committed feedback from the journal (the next commit will): %s", error)
        with self._cond:
            for (_, p), offset in offsets.items():
                records = self._logs[p]
                while records and records[0].offset < offset:
                    records.popleft()
                    self._pending -= 1
            self._cond.notify_all()
        return True

    def pending(self) -> int:
        """Events published and not committed yet."""
        with self._cond:
            return self._pending


class MemoryDeadLetters(DeadLetterSink):
    """The last ``keep`` dead letters, in memory (the embedded service shows them; a real one has a topic)."""

    def __init__(self, keep: int = 10_000) -> None:
        self.letters: deque[DeadLetter] = deque(maxlen=keep)

    def publish(self, letters: Sequence[DeadLetter]) -> None:
        self.letters.extend(letters)


class EmbeddedFeedbackWorker:
    """A daemon thread applying the in-process queue's events through ``applier``: feedback with no servers."""

    def __init__(self, applier: FeedbackApplier, queue: InProcessFeedbackQueue, **worker_options: object) -> None:
        self.queue = queue
        self.dead_letters = MemoryDeadLetters()
        processor_options = {
            k: worker_options.pop(k) for k in ("max_event_bytes", "wait_for_prediction_s") if k in worker_options
        }
        self.worker = FeedbackWorker(
            queue, FeedbackProcessor(applier, **processor_options), self.dead_letters, **worker_options
        )
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def stats(self) -> WorkerStats:
        return self.worker.stats

    def start(self) -> EmbeddedFeedbackWorker:
        self._thread = threading.Thread(target=self.worker.run, args=(self._stop,), name="feedback-worker", daemon=True)
        self._thread.start()
        return self

    def drain(self, timeout_s: float = 10.0) -> bool:
        """Wait until every published event is applied or dead-lettered; False on timeout."""
        deadline = time.monotonic() + timeout_s
        while self.queue.pending() and time.monotonic() < deadline:
            time.sleep(0.005)
        return self.queue.pending() == 0

    def stop(self, timeout_s: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)

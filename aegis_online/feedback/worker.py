"""The feedback worker loop: poll a batch, process it, publish dead letters, commit, repeat.

The order of those steps is the exactly-once argument. Offsets are committed only after the store confirmed the
batch (and the dead letters are published), so a crash anywhere before the commit re-delivers the batch, and the
store's per-key watermarks make the re-delivered records change nothing. When the store is unreachable the worker
rewinds to the first record of the batch, commits nothing, and retries with exponential backoff (with jitter)
until it is back; it keeps polling meanwhile, so the consumer group does not evict it.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from aegis_online.feedback import failpoints
from aegis_online.feedback.bus import DeadLetterSink, FeedbackSource, Partition
from aegis_online.feedback.processor import BatchReport, FeedbackProcessor
from aegis_online.feedback.records import PROCESSING_ERROR, DeadLetter, FeedbackRecord
from aegis_online.state import StoreUnavailableError

log = logging.getLogger("aegis_online.feedback.worker")


class BusUnavailableError(RuntimeError):
    """The bus could not take dead letters (or another write the worker needs before it commits)."""


@dataclass
class WorkerStats:
    """The loop's counters: the CLI's summary at exit, and both modes' ``/metrics`` (``stats_collector``)."""

    records: int = 0
    applied: int = 0
    duplicates: int = 0
    dead_letters: int = 0
    #: dead letters per reason (``DeadLetter.reason``); they sum to ``dead_letters``
    dead_letter_reasons: dict[str, int] = field(default_factory=dict)
    batches: int = 0
    store_retries: int = 0
    commits_refused: int = 0
    write_conflicts: int = 0
    #: wall-clock times of the first record taken and of the last commit (benchmarks derive rates from them)
    first_record_at: float = 0.0
    last_commit_at: float = 0.0
    #: this process's CPU seconds when the first record was taken (so start-up is not counted per event)
    first_record_cpu_s: float = 0.0

    def as_dict(self) -> dict[str, object]:
        """A copy another thread (a metrics scrape) may read while the loop goes on counting."""
        return self.__dict__ | {"dead_letter_reasons": dict(self.dead_letter_reasons)}


class FeedbackWorker:
    """Drives a ``FeedbackSource`` through a ``FeedbackProcessor``; dead letters go to ``dead_letters``."""

    def __init__(
        self,
        source: FeedbackSource,
        processor: FeedbackProcessor,
        dead_letters: DeadLetterSink,
        *,
        batch_size: int = 2000,
        poll_timeout_s: float = 0.2,
        backoff_initial_s: float = 0.1,
        backoff_max_s: float = 5.0,
        max_dead_letter_payload: int | None = None,
        on_iteration: Callable[[FeedbackWorker], None] | None = None,
    ) -> None:
        self.source = source
        self.processor = processor
        self.dead_letters = dead_letters
        self.batch_size = batch_size
        self.poll_timeout_s = poll_timeout_s
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self.stats = WorkerStats()
        self._backoff = backoff_initial_s
        self._paused: dict[Partition, float] = {}
        self.max_dead_letter_payload = max_dead_letter_payload or processor.max_event_bytes
        #: called in the loop's thread after every round, idle polls and retries included (health probes)
        self.on_iteration = on_iteration
        #: why the last round with records was retried; None once a round went through (readiness)
        self.last_error: str | None = None

    def run(
        self, stop: threading.Event | None = None, *, max_records: int | None = None, idle_exit_s: float | None = None
    ) -> WorkerStats:
        """Loop until ``stop`` is set, ``max_records`` records were handled, or nothing came for ``idle_exit_s``
        while this worker owned partitions (joining a group takes seconds and does not count as idle)."""
        stop = stop or threading.Event()
        idle_since = time.monotonic()
        while not stop.is_set():
            handled = self.run_once()
            if self.on_iteration is not None:
                self.on_iteration(self)
            now = time.monotonic()
            owned = self.source.owned()
            if handled or self._paused or owned == set():  # idle only counts once partitions are assigned
                idle_since = now
            elif idle_exit_s is not None and now - idle_since >= idle_exit_s:
                break
            if max_records is not None and self.stats.records >= max_records:
                break
        return self.stats

    def run_once(self) -> int:
        """One poll-process-commit round; returns how many records it took care of (0 on a retry)."""
        self._resume_due()
        records = self.source.poll(self.batch_size, self.poll_timeout_s)
        if not records:
            return 0
        if not self.stats.first_record_at:
            self.stats.first_record_at = time.time()
            self.stats.first_record_cpu_s = time.process_time()
        try:
            try:
                report = self.processor.process(records)
            except (StoreUnavailableError, BusUnavailableError):
                raise
            except Exception:  # a bug or a poisoned record: find it rather than crash on it forever
                log.exception("a batch of %d records failed; retrying them one by one", len(records))
                report = self._one_by_one(records)
            failpoints.hit("after_store_write")
            if report.dead_letters:
                self.dead_letters.publish(report.dead_letters)
                failpoints.hit("after_dead_letters")
        except (StoreUnavailableError, BusUnavailableError) as error:
            self._retry_later(records, error)
            return 0
        self._backoff = self.backoff_initial_s
        self.last_error = None
        for partition, blocked in report.blocked.items():
            self.source.seek(partition, blocked.offset)
            self.source.pause(partition)
            self._paused[partition] = blocked.retry_at
        failpoints.hit("before_commit")
        if report.commit and not self.source.commit(report.commit):
            self.stats.commits_refused += 1
            log.warning("offset commit refused (the group is rebalancing); the new owner re-reads, harmlessly")
        failpoints.hit("after_commit")
        self.stats.last_commit_at = time.time()
        handled = sum(offset - self._first_offsets(records)[p] for p, offset in report.commit.items())
        self.stats.records += handled
        self.stats.applied += report.applied
        self.stats.duplicates += report.duplicates
        self.stats.dead_letters += len(report.dead_letters)
        reasons = self.stats.dead_letter_reasons
        for letter in report.dead_letters:
            reasons[letter.reason] = reasons.get(letter.reason, 0) + 1
        if report.duplicates:
            log.info("%d redelivered events had been applied already: skipped", report.duplicates)
        self.stats.write_conflicts += report.conflicts
        self.stats.batches += 1
        return max(handled, 1) if report.commit or report.blocked else 0

    def _one_by_one(self, records: list[FeedbackRecord]) -> BatchReport:
        """Process records singly, in order; one that still fails becomes a ``processing_error`` dead letter (the
        store's watermarks make re-running what the failed batch had written harmless)."""
        total = BatchReport()
        blocked: set[Partition] = set()
        for record in records:
            partition = (record.topic, record.partition)
            if partition in blocked:
                continue
            try:
                report = self.processor.process([record])
            except (StoreUnavailableError, BusUnavailableError):
                raise
            except Exception as error:
                log.exception("record %s@%d dead-lettered: processing failed", record.stream, record.offset)
                report = BatchReport(
                    dead_letters=[DeadLetter(record, PROCESSING_ERROR, f"{type(error).__name__}: {error}")],
                    commit={partition: record.offset + 1},
                )
            total.add(report)
            if partition in report.blocked:
                blocked.add(partition)
        return total

    def _retry_later(self, records: list[FeedbackRecord], error: Exception) -> None:
        for partition, offset in self._first_offsets(records).items():
            self.source.seek(partition, offset)
        delay = self._backoff * random.uniform(0.5, 1.0)
        self.stats.store_retries += 1
        self.last_error = f"{type(error).__name__}: {error}"
        log.warning("%s; nothing committed, retrying in %.2f s", error, delay)
        time.sleep(delay)
        self._backoff = min(self._backoff * 2, self.backoff_max_s)

    def _resume_due(self) -> None:
        if not self._paused:
            return
        now = time.time()
        owned = self.source.owned()
        for partition, at in list(self._paused.items()):
            if owned is not None and partition not in owned:
                del self._paused[partition]
            elif now >= at:
                del self._paused[partition]
                self.source.resume(partition)

    @staticmethod
    def _first_offsets(records: list[FeedbackRecord]) -> dict[Partition, int]:
        first: dict[Partition, int] = {}
        for r in records:
            first.setdefault((r.topic, r.partition), r.offset)
        return first

"""The embedded SQLite stores: what survives a reopen (records, watermarks, event ids, policies, predictions, queued
feedback and its offsets), the prediction log's TTL and cap, file permissions, and exactly-once across a crash
between a batch's write and its queue commit."""

from __future__ import annotations

import dataclasses
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from aegis_online.feedback import loadgen
from aegis_online.feedback.inprocess import EmbeddedFeedbackWorker, InProcessFeedbackQueue
from aegis_online.feedback.processor import FeedbackProcessor
from aegis_online.policy import TenantPolicy
from aegis_online.state import FeedbackLedger, MemoryLearnerStore, StoreUnavailableError
from aegis_online.state.sqlite import (
    Database,
    DataDirInUseError,
    SqlitePredictionLog,
    SqliteStores,
    open_sqlite_stores,
)
from aegis_online.state.sqlite import learner as sqlite_learner
from aegis_online.weights import FeedbackApplier

from .test_batch_apply import scenario

EXPERTS = ("a", "b", "c", "d")


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "deep" / "aegis-data"


@pytest.fixture
def opened(data_dir: Path) -> Iterator[list[SqliteStores]]:
    """Stores opened by a test; whatever it left open is closed at the end."""
    stores: list[SqliteStores] = []
    yield stores
    for s in stores:
        s.close()


def open_in(data_dir: Path, opened: list[SqliteStores], **options: float) -> SqliteStores:
    stores = open_sqlite_stores(data_dir, **options)  # type: ignore[arg-type]
    opened.append(stores)
    return stores


def engine_on(stores: SqliteStores) -> FeedbackApplier:
    return FeedbackApplier(EXPERTS, store=stores.learner, prediction_log=stores.predictions, policies=stores.policies)


def snapshot(store: MemoryLearnerStore) -> dict[str, tuple[int, bytes, dict[str, int]]]:
    keys = store.keys()
    return {k: (r.updates, r.state.tobytes(), dict(r.marks)) for k, r in zip(keys, store.load(keys), strict=True)}


def test_records_watermarks_and_event_ids_survive_a_reopen(data_dir: Path, opened: list[SqliteStores]) -> None:
    records, events = scenario(8, n=150)
    stores = open_in(data_dir, opened)
    engine = engine_on(stores)
    for r in records:
        engine.prediction_log.put(r)
    assert engine.apply(events[0]).applied  # the direct path: remembered by event id
    planned = [(engine.plan(e, r), "q:0", i) for i, (e, r) in enumerate(zip(events, records, strict=True)) if i > 0]
    engine.apply_batch(planned)  # the queue's path: remembered by watermarks
    before = snapshot(stores.learner)
    stores.close()

    again = engine_on(open_in(data_dir, opened))
    assert snapshot(again.store) == before  # bit for bit, watermarks included
    assert not any(again.apply_batch(planned).applied)  # a replay after the restart changes nothing
    assert not again.apply(events[0]).applied
    assert snapshot(again.store) == before


def test_a_batch_is_all_or_nothing(data_dir: Path, opened: list[SqliteStores], monkeypatch) -> None:
    records, events = scenario(9, n=60)
    stores = open_in(data_dir, opened)
    engine = engine_on(stores)
    planned = [(engine.plan(e, r), "q:0", i) for i, (e, r) in enumerate(zip(events, records, strict=True))]
    engine.apply_batch(planned[:20])
    before = snapshot(stores.learner)
    encode, calls = sqlite_learner.encode_learner, []

    def failing(record):  # the disk fills up halfway through the batch's records
        calls.append(1)
        if len(calls) > 3:
            raise StoreUnavailableError("disk full")
        return encode(record)

    monkeypatch.setattr(sqlite_learner, "encode_learner", failing)
    with pytest.raises(StoreUnavailableError):
        engine.apply_batch(planned[20:])
    assert snapshot(stores.learner) == before  # the in-memory copy did not move either
    stores.close()
    monkeypatch.setattr(sqlite_learner, "encode_learner", encode)
    again = open_in(data_dir, opened)
    assert snapshot(again.learner) == before
    assert all(engine_on(again).apply_batch(planned[20:]).applied)  # retried: applied, once


def journalled_queue(stores: SqliteStores, partitions: int = 2) -> InProcessFeedbackQueue:
    return InProcessFeedbackQueue(partitions, topic="aegis.feedback", journal=stores.journal)


def test_a_crash_between_the_batch_and_its_queue_commit_applies_nothing_twice(
    data_dir: Path, opened: list[SqliteStores]
) -> None:
    """The worker's batch commits (records and watermarks, one transaction), the process dies before the queue's
    commit: after the restart the journal redelivers the batch and the watermarks skip every event of it."""
    rng = np.random.default_rng(4)
    stores = open_in(data_dir, opened)
    engine = engine_on(stores)
    records = loadgen.predictions(80, ["acme", "globex"], EXPERTS, rng)
    for r in records:
        engine.prediction_log.put(r)
    queue = journalled_queue(stores)
    for event in loadgen.feedback(records, rng):
        queue.publish(event).wait()
    polled = queue.poll(1000, 0.1)
    report = FeedbackProcessor(engine).process(polled)  # applied; the crash comes before queue.commit(...)
    assert report.applied == 80 and len(polled) == 80
    applied = snapshot(stores.learner)
    stores.close()  # as SIGKILL would leave it: closing writes nothing more

    stores = open_in(data_dir, opened)
    engine = engine_on(stores)
    queue = journalled_queue(stores)
    assert queue.pending() == 80  # redelivered
    worker = EmbeddedFeedbackWorker(engine, queue).start()
    assert worker.drain(10)
    worker.stop()
    assert (worker.stats.applied, worker.stats.duplicates) == (0, 80)
    assert snapshot(stores.learner) == applied


def test_queue_offsets_never_restart_even_when_everything_was_committed(
    data_dir: Path, opened: list[SqliteStores]
) -> None:
    """Issue 11, item 3: offsets restarting at 0 after a restart made every new event look applied."""
    rng = np.random.default_rng(5)
    records = loadgen.predictions(40, ["acme"], EXPERTS, rng)
    first = loadgen.feedback(records[:20], rng, categories=["S1"])
    second = loadgen.feedback(records[20:], rng, categories=["S1"], first_id=20)
    stores = open_in(data_dir, opened)
    engine = engine_on(stores)
    for r in records:
        engine.prediction_log.put(r)
    queue = journalled_queue(stores, partitions=1)
    worker = EmbeddedFeedbackWorker(engine, queue).start()
    offsets = [queue.publish(e).wait().offset for e in first]
    assert worker.drain(10)
    worker.stop()
    assert worker.stats.applied == 20 and queue.pending() == 0
    stores.close()

    stores = open_in(data_dir, opened)
    engine = engine_on(stores)
    queue = journalled_queue(stores, partitions=1)
    worker = EmbeddedFeedbackWorker(engine, queue).start()
    new_offsets = [queue.publish(e).wait().offset for e in second]
    assert worker.drain(10)
    worker.stop()
    assert new_offsets[0] == offsets[-1] + 1
    assert (worker.stats.applied, worker.stats.duplicates) == (20, 0)
    assert stores.learner.load([engine.keyspace.key("acme", "S1")])[0].updates == 40  # each event once


def test_a_published_event_is_queued_in_the_ledger_with_its_journal_entry(
    data_dir: Path, opened: list[SqliteStores]
) -> None:
    """A crash after the journal write and before ``confirm`` leaves the event queued, never claimable again; a
    claim that never reached the queue is dropped at the restart (its call got no answer: the retry claims it)."""
    rng = np.random.default_rng(6)
    records = loadgen.predictions(2, ["acme"], EXPERTS, rng)
    published, lost = loadgen.feedback(records, rng)
    stores = open_in(data_dir, opened)
    keys = [(e.tenant, e.idempotency_key) for e in (published, lost)]
    assert stores.ledger.reserve(keys, ["d1", "d2"]) == [FeedbackLedger.NEW] * 2
    journalled_queue(stores).publish(published).wait()  # and the process dies before confirm
    stores.close()

    stores = open_in(data_dir, opened)
    assert stores.ledger.reserve(keys, ["d1", "d2"]) == [FeedbackLedger.QUEUED, FeedbackLedger.NEW]
    assert stores.ledger.reserve(keys[:1], ["other labels"]) == [FeedbackLedger.CONFLICT]


def test_the_prediction_log_keeps_its_ttl_and_its_cap_across_a_reopen(tmp_path: Path) -> None:
    now = [1_000_000.0]
    db = Database(tmp_path / "predictions.db")
    log = SqlitePredictionLog(db, ttl_s=100, max_records=5, clock=lambda: now[0])
    records = loadgen.predictions(8, ["acme"], EXPERTS, np.random.default_rng(7))
    for i, r in enumerate(records):
        log.put(dataclasses.replace(r, created=now[0] - 10 + i, input_digest=f"digest-{i}"))
    assert log.count() == 5
    got = log.get_many([r.request_id for r in records])
    assert [g is not None for g in got] == [False] * 3 + [True] * 5  # the oldest went first
    assert got[7].input_digest == "digest-7" and got[7].outputs.tobytes() == records[7].outputs.tobytes()
    log.put(dataclasses.replace(records[7], created=now[0]))  # the same request id again replaces, does not add
    assert log.count() == 5
    db.close()

    now[0] += 95  # records created before now - 100 have expired
    db = Database(tmp_path / "predictions.db")
    log = SqlitePredictionLog(db, ttl_s=100, max_records=5, clock=lambda: now[0])
    assert log.count() == 5
    assert [log.get(r.request_id) is not None for r in records[3:]] == [False, False, True, True, True]
    log.put(dataclasses.replace(records[0], created=now[0]))  # a write purges what expired
    assert log.count() == 4
    db.close()


def test_policies_survive_a_reopen(data_dir: Path, opened: list[SqliteStores]) -> None:
    stores = open_in(data_dir, opened)
    stores.policies.put(TenantPolicy(tenant="acme", threshold=0.3))
    stores.policies.put(TenantPolicy(tenant="acme", threshold=0.2))
    stores.close()
    again = open_in(data_dir, opened)
    assert again.policies.get("acme") == TenantPolicy(tenant="acme", threshold=0.2)
    assert again.policies.get("globex") is None


def test_the_folder_is_private_and_so_is_every_file_in_it(data_dir: Path, opened: list[SqliteStores]) -> None:
    previous = os.umask(0)  # whatever the umask, the modes are exact
    try:
        stores = open_in(data_dir, opened)
        engine = engine_on(stores)
        record = loadgen.predictions(1, ["acme"], EXPERTS, np.random.default_rng(8))[0]
        engine.prediction_log.put(record)
        journalled_queue(stores).publish(loadgen.feedback([record], np.random.default_rng(8))[0]).wait()
        stores.policies.put(TenantPolicy(tenant="acme"))
    finally:
        os.umask(previous)
    assert stat.S_IMODE(data_dir.stat().st_mode) == 0o700
    files = {p.name: stat.S_IMODE(p.stat().st_mode) for p in data_dir.iterdir()}
    for name in ("state.db", "state.db-wal", "state.db-shm", "predictions.db", "predictions.db-wal", "lock"):
        assert files.get(name) == 0o600, (name, files)
    assert set(files.values()) == {0o600}


def test_a_second_process_on_the_same_folder_is_refused(data_dir: Path, opened: list[SqliteStores]) -> None:
    first = open_in(data_dir, opened)
    with pytest.raises(DataDirInUseError, match=f"pid {os.getpid()}"):
        open_sqlite_stores(data_dir)
    first.close()
    open_in(data_dir, opened)  # released at close (and by the kernel when a process dies)


def test_sync_is_a_group_commit(tmp_path: Path) -> None:
    """One FULL commit makes every earlier NORMAL commit durable; a ticket already covered costs nothing."""
    db = Database(tmp_path / "x.db")
    db.create("CREATE TABLE t (x INTEGER)")
    tickets = []
    for i in range(5):
        with db.transaction() as conn:
            conn.execute("INSERT INTO t VALUES (?)", (i,))
        tickets.append(db.commits)
    db.sync(tickets[-1])
    synced = db.commits
    for ticket in tickets:
        db.sync(ticket)
    assert db.commits == synced  # no further marker commits
    db.close()


def test_partitions_of_an_earlier_run_drain_with_their_own_offsets(data_dir: Path, opened: list[SqliteStores]) -> None:
    """``bus.partitions`` lowered across a restart: the journalled events keep their partitions and offsets (so the
    watermarks still know them), new ones go to the partitions configured now, after the highest offset issued."""
    rng = np.random.default_rng(10)
    records = loadgen.predictions(30, [f"t{i}" for i in range(9)], EXPERTS, rng)
    stores = open_in(data_dir, opened)
    queue = journalled_queue(stores, partitions=3)
    published = [queue.publish(e).wait() for e in loadgen.feedback(records, rng)]
    assert len({p.partition for p in published}) == 3
    stores.close()

    stores = open_in(data_dir, opened)
    queue = journalled_queue(stores, partitions=1)
    again = queue.poll(100, 0.1)
    assert sorted((r.partition, r.offset) for r in again) == sorted((p.partition, p.offset) for p in published)
    last = max(p.offset for p in published if p.partition == 0)
    assert queue.publish(loadgen.feedback(records[:1], rng, first_id=99)[0]).wait().offset == last + 1


def test_a_publish_that_fails_after_the_journal_write_is_not_released(
    data_dir: Path, opened: list[SqliteStores], monkeypatch
) -> None:
    """The sync behind a 202 fails (the disk), the API answers 503 and releases the claim: the event is journalled
    all the same and will be applied, so the client's retry must be a duplicate, not a second event."""
    rng = np.random.default_rng(11)
    event = loadgen.feedback(loadgen.predictions(1, ["acme"], EXPERTS, rng), rng)[0]
    stores = open_in(data_dir, opened)
    key = (event.tenant, event.idempotency_key)
    assert stores.ledger.reserve([key]) == [FeedbackLedger.NEW]
    receipt = journalled_queue(stores).publish(event)

    def broken(ticket: int | None = None) -> None:
        raise StoreUnavailableError("disk I/O error")

    monkeypatch.setattr(stores.journal.db, "sync", broken)
    with pytest.raises(StoreUnavailableError):
        receipt.wait()
    stores.ledger.release([key])
    assert stores.ledger.reserve([key]) == [FeedbackLedger.QUEUED]

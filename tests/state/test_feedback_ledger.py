"""The feedback ledger, in memory, in SQLite and on a real Redis: atomic claims, confirm, release, lapses, tenants
apart, and the same event id with other content refused as a conflict."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from aegis_online.state import FeedbackLedger, MemoryFeedbackLedger
from tests.helpers import wait_until

NEW, PENDING, QUEUED, CONFLICT = FeedbackLedger.NEW, FeedbackLedger.PENDING, FeedbackLedger.QUEUED, "conflict"


@pytest.fixture(params=["memory", "sqlite", "redis"])
def make_ledger(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[object]:
    if request.param == "memory":
        yield lambda **kw: MemoryFeedbackLedger(**kw)
        return
    if request.param == "sqlite":
        from aegis_online.state.sqlite import Database, SqliteFeedbackLedger

        db = Database(tmp_path / "state.db")
        yield lambda **kw: SqliteFeedbackLedger(db, **kw)
        db.close()
        return
    from aegis_online.state.redis_store import RedisFeedbackLedger

    client = request.getfixturevalue("redis_client")
    prefix = request.getfixturevalue("prefix")
    yield lambda **kw: RedisFeedbackLedger(client, prefix, **kw)


def test_a_claim_is_new_once_then_pending_then_queued(make_ledger: object) -> None:
    ledger = make_ledger(ttl_s=60)
    keys = [("acme", "e1"), ("acme", "e2")]
    assert ledger.reserve(keys) == [NEW, NEW]
    assert ledger.reserve(keys) == [PENDING, PENDING]
    ledger.confirm(keys[:1])
    assert ledger.reserve(keys) == [QUEUED, PENDING]


def test_a_released_claim_can_be_taken_again(make_ledger: object) -> None:
    ledger = make_ledger(ttl_s=60)
    assert ledger.reserve([("acme", "e1")]) == [NEW]
    ledger.release([("acme", "e1")])
    assert ledger.reserve([("acme", "e1")]) == [NEW]


def reserve_until_changed(ledger: object, keys: list[tuple[str, str]], statuses: list[str]) -> list[str]:
    """``ledger.reserve(keys)`` again and again (polls that find the same statuses change nothing) until it answers
    something other than ``statuses``; that answer. Fails after 5 s."""
    answers: list[list[str]] = []

    def changed() -> bool:
        answers.append(ledger.reserve(keys))
        return answers[-1] != statuses

    assert wait_until(changed, 5), f"{keys} still {statuses} after 5 s"
    return answers[-1]


def test_claims_lapse_and_queued_events_expire(make_ledger: object) -> None:
    ledger = make_ledger(ttl_s=1.0, pending_ttl_s=0.2)
    lapsed, kept = ("acme", "lapsed"), ("acme", "kept")
    assert ledger.reserve([lapsed, kept]) == [NEW, NEW]
    ledger.confirm([kept])
    assert reserve_until_changed(ledger, [lapsed, kept], [PENDING, QUEUED]) == [NEW, QUEUED]  # the claim lapsed
    assert reserve_until_changed(ledger, [kept], [QUEUED]) == [NEW]  # the queued event expired


def test_tenants_are_apart(make_ledger: object) -> None:
    ledger = make_ledger(ttl_s=60)
    assert ledger.reserve([("acme", "same-id"), ("globex", "same-id")]) == [NEW, NEW]


def test_racing_claims_get_exactly_one_new(make_ledger: object) -> None:
    """Sixteen callers (replicas) claim the same 50 events at once: each event is new for exactly one of them."""
    ledger = make_ledger(ttl_s=60)
    keys = [("acme", f"race-{i}") for i in range(50)]
    results: list[list[str]] = []
    barrier = threading.Barrier(16)

    def claim() -> None:
        barrier.wait()
        results.append(ledger.reserve(keys))

    threads = [threading.Thread(target=claim) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for i in range(len(keys)):
        assert sorted(r[i] for r in results) == [NEW] + [PENDING] * 15


def test_the_same_key_with_other_content_is_a_conflict(make_ledger: object) -> None:
    ledger = make_ledger(ttl_s=60)
    keys = [("acme", "e1"), ("acme", "e2"), ("globex", "e1")]
    assert ledger.reserve(keys, ["d1", "d2", "d3"]) == [NEW, NEW, NEW]
    assert ledger.reserve(keys, ["d1", "other", "d3"]) == [PENDING, CONFLICT, PENDING]
    ledger.release(keys[1:2])
    assert ledger.reserve(keys[1:2], ["other"]) == [NEW]  # released: the key is free for any content
    ledger.confirm(keys)
    assert ledger.reserve(keys, ["d1", "d2", "other"]) == [QUEUED, CONFLICT, CONFLICT]
    assert ledger.reserve(keys) == [QUEUED] * 3  # no digests: nothing to compare


def test_a_claim_without_digest_never_conflicts(make_ledger: object) -> None:
    ledger = make_ledger(ttl_s=60)
    assert ledger.reserve([("acme", "e1")]) == [NEW]
    assert ledger.reserve([("acme", "e1")], ["d1"]) == [PENDING]


def test_memory_ledger_forgets_the_oldest_past_its_capacity() -> None:
    ledger = MemoryFeedbackLedger(capacity=2)
    ledger.reserve([("a", "1"), ("a", "2"), ("a", "3")])
    assert ledger.reserve([("a", "1"), ("a", "3")]) == [NEW, PENDING]


def test_redis_reads_the_values_written_before_digests(redis_client: object, prefix: str) -> None:
    """Keys of an older release hold the bare status ('queued'); they stay duplicates, never conflicts."""
    from aegis_online.state.redis_store import RedisFeedbackLedger

    ledger = RedisFeedbackLedger(redis_client, prefix, ttl_s=60)
    redis_client.set(ledger.key(("acme", "old")), "queued", px=60_000)
    assert ledger.reserve([("acme", "old")], ["d1"]) == [QUEUED]
    ledger.reserve([("acme", "new")], ["d1"])
    ledger.confirm([("acme", "new")])
    assert redis_client.get(ledger.key(("acme", "new"))) == b"queued:d1"

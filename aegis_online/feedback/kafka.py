"""Kafka implementations of the feedback bus, on kafka-python (the ``kafka`` extra; imported only here).

* ``KafkaFeedbackPublisher``: what the feedback API uses. Events are the JSON of ``FeedbackEvent``, keyed by
  tenant (one tenant's events stay in one partition, in order), sent with ``acks=all`` and the idempotent producer.
* ``KafkaFeedbackSource``: a consumer-group member with manual commits (``enable_auto_commit=False``) and the group
  timings of field notes section 5 (``session_timeout_ms=6000``, ``heartbeat_interval_ms=2000``: a join takes
  seconds, not the default 23 s, and a dead worker's partitions move in about 6 s).
* ``KafkaDeadLetterSink``: dead letters to their own topic, flushed before the worker commits.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Mapping, Sequence
from typing import Any

from aegis_online.feedback.bus import (
    DeadLetterSink,
    FeedbackPublisher,
    FeedbackSource,
    Partition,
    Published,
    Receipt,
)
from aegis_online.feedback.records import DeadLetter, FeedbackRecord
from aegis_online.feedback.worker import BusUnavailableError
from aegis_online.schemas import FeedbackEvent

log = logging.getLogger("aegis_online.feedback.kafka")

#: Consumer-group timings (field notes, section 5); valid on real Kafka too (its minimum session timeout is 6 s).
GROUP_SETTINGS: dict[str, Any] = {
    "session_timeout_ms": 6000,
    "heartbeat_interval_ms": 2000,
    "max_poll_interval_ms": 60000,
    "enable_auto_commit": False,
    "auto_offset_reset": "earliest",
}


def producer_settings(**overrides: Any) -> dict[str, Any]:
    return {"acks": "all", "linger_ms": 5, "batch_size": 256 * 1024, "enable_idempotence": True} | overrides


class _KafkaReceipt(Receipt):
    def __init__(self, future: Any) -> None:
        self.future = future

    def wait(self, timeout_s: float | None = None) -> Published:
        meta = self.future.get(timeout=timeout_s)
        return Published(meta.topic, meta.partition, meta.offset)


class KafkaFeedbackPublisher(FeedbackPublisher):
    def __init__(self, bootstrap_servers: str, topic: str, **producer_options: Any) -> None:
        from kafka import KafkaProducer

        self.topic = topic
        self.producer = KafkaProducer(bootstrap_servers=bootstrap_servers, **producer_settings(**producer_options))

    def publish(self, event: FeedbackEvent) -> Receipt:
        return self.publish_raw(event.tenant.encode(), event.model_dump_json().encode())

    def publish_raw(self, key: bytes | None, value: bytes | None) -> Receipt:
        """Send raw bytes: for replays, load generators and tests of what a broken producer sends."""
        return _KafkaReceipt(self.producer.send(self.topic, key=key, value=value))

    def flush(self, timeout_s: float | None = None) -> None:
        self.producer.flush(timeout=timeout_s)

    def close(self) -> None:
        self.producer.close()


class KafkaFeedbackSource(FeedbackSource):
    """One member of ``group_id`` reading ``topic``; ``consumer_options`` override the defaults (fetch sizes...)."""

    def __init__(
        self,
        bootstrap_servers: str,
        topic: str,
        group_id: str,
        *,
        max_poll_records: int = 2000,
        **consumer_options: Any,
    ) -> None:
        from kafka import ConsumerRebalanceListener, KafkaConsumer

        source = self

        class Listener(ConsumerRebalanceListener):
            def on_partitions_revoked(self, revoked: Any) -> None:
                log.info("partitions revoked: %s", sorted((tp.topic, tp.partition) for tp in revoked))
                source._owned -= {(tp.topic, tp.partition) for tp in revoked}

            def on_partitions_assigned(self, assigned: Any) -> None:
                log.info("partitions assigned: %s", sorted((tp.topic, tp.partition) for tp in assigned))
                source._owned |= {(tp.topic, tp.partition) for tp in assigned}

        settings = GROUP_SETTINGS | {
            "max_poll_records": max_poll_records,
            "fetch_max_bytes": 32 * 1024 * 1024,
            "max_partition_fetch_bytes": 4 * 1024 * 1024,
        }
        self._owned: set[Partition] = set()
        self.topic = topic
        self.consumer = KafkaConsumer(
            bootstrap_servers=bootstrap_servers, group_id=group_id, **(settings | consumer_options)
        )
        self.consumer.subscribe([topic], listener=Listener())

    def poll(self, max_records: int, timeout_s: float) -> list[FeedbackRecord]:
        polled = self.consumer.poll(timeout_ms=int(timeout_s * 1000), max_records=max_records)
        out: list[FeedbackRecord] = []
        for tp, records in polled.items():
            topic, partition = tp.topic, tp.partition
            out.extend(FeedbackRecord(topic, partition, r.offset, r.key, r.value, r.timestamp) for r in records)
        return out

    def seek(self, partition: Partition, offset: int) -> None:
        from kafka import TopicPartition

        tp = TopicPartition(*partition)
        if tp in self.consumer.assignment():
            self.consumer.seek(tp, offset)

    def pause(self, partition: Partition) -> None:
        from kafka import TopicPartition

        tp = TopicPartition(*partition)
        if tp in self.consumer.assignment():
            self.consumer.pause(tp)

    def resume(self, partition: Partition) -> None:
        from kafka import TopicPartition

        self.consumer.resume(TopicPartition(*partition))

    def commit(self, offsets: dict[Partition, int]) -> bool:
        from kafka import TopicPartition
        from kafka.errors import CommitFailedError, KafkaError
        from kafka.structs import OffsetAndMetadata

        try:
            self.consumer.commit({TopicPartition(*p): OffsetAndMetadata(o, "", -1) for p, o in offsets.items()})
        except CommitFailedError:
            return False
        except KafkaError as error:  # e.g. the coordinator moved: the next commit will carry these offsets too
            log.warning("offset commit failed: %r", error)
            return False
        return True

    def owned(self) -> set[Partition] | None:
        return set(self._owned)

    def close(self) -> None:
        self.consumer.close()


class KafkaDeadLetterSink(DeadLetterSink):
    def __init__(self, bootstrap_servers: str, topic: str, *, max_payload_bytes: int, **producer_options: Any) -> None:
        from kafka import KafkaProducer

        self.topic = topic
        self.max_payload_bytes = max_payload_bytes
        self.producer = KafkaProducer(bootstrap_servers=bootstrap_servers, **producer_settings(**producer_options))

    def publish(self, letters: Sequence[DeadLetter]) -> None:
        from kafka.errors import KafkaError

        try:
            futures = [
                self.producer.send(self.topic, key=letter.record.key, value=letter.to_json(self.max_payload_bytes))
                for letter in letters
            ]
            self.producer.flush(timeout=30)
            for future in futures:
                future.get(timeout=30)
        except KafkaError as error:
            raise BusUnavailableError(f"dead letters not stored: {error!r}") from error

    def close(self) -> None:
        self.producer.close()


def ensure_topics(bootstrap_servers: str, partitions: Mapping[str, int]) -> None:
    """Create the topics that do not exist yet (``{name: partitions}``); existing ones are left alone."""
    from kafka.admin import KafkaAdminClient, NewTopic
    from kafka.errors import TopicAlreadyExistsError

    admin = KafkaAdminClient(bootstrap_servers=bootstrap_servers)
    try:
        existing = set(admin.list_topics())
        new = [NewTopic(name, n, 1) for name, n in partitions.items() if name not in existing]
        if new:
            with contextlib.suppress(TopicAlreadyExistsError):  # another worker created it meanwhile
                admin.create_topics(new)
    finally:
        admin.close()

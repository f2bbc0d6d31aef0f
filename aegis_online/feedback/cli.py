"""``aegis-online feedback-worker``: a Kafka consumer-group member that applies feedback to the Redis learner store.

Run as many as the topic has partitions; they share the partitions. SIGTERM or SIGINT stops a worker after its
current batch is committed, and it leaves the group at once so its partitions move without waiting for the
session timeout. ``python -m aegis_online.feedback.cli`` runs the same command.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path

import typer


def resident_bytes() -> int:
    """This process's resident memory now (Linux), else its peak."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def feedback_worker_command(
    experts: str = typer.Option(
        ..., envvar="AEGIS_EXPERTS", help="The service's expert names, comma-separated, in the service's order."
    ),
    redis_url: str = typer.Option("redis://127.0.0.1:6379/0", envvar="AEGIS_REDIS_URL", help="Redis of the stores."),
    bootstrap_servers: str = typer.Option("127.0.0.1:9092", envvar="AEGIS_KAFKA_BOOTSTRAP", help="Kafka brokers."),
    topic: str = typer.Option("aegis.feedback", envvar="AEGIS_FEEDBACK_TOPIC", help="Feedback topic to read."),
    dead_letter_topic: str = typer.Option(
        "aegis.feedback.dead-letter", envvar="AEGIS_DEAD_LETTER_TOPIC", help="Where refused events go."
    ),
    group_id: str = typer.Option("aegis-feedback", envvar="AEGIS_FEEDBACK_GROUP", help="Consumer group."),
    learner: str = typer.Option("default", help="Learner name: must match the service's."),
    prefix: str = typer.Option("aegis:", help="Redis key prefix: must match the service's."),
    batch_size: int = typer.Option(2000, min=1, help="Most records per batch (one store round per batch)."),
    max_event_bytes: int = typer.Option(16 * 1024, min=256, help="Larger events are dead-lettered as oversized."),
    wait_for_prediction_s: float = typer.Option(
        5.0, min=0.0, help="How long after it was produced an event may wait for its prediction to be logged."
    ),
    wait_replicas: int = typer.Option(0, min=0, help="Redis replicas that must acknowledge a batch before commit."),
    create_topics: int = typer.Option(0, min=0, help="Create missing topics with this many partitions (0: don't)."),
    max_records: int | None = typer.Option(None, min=1, help="Exit after this many records (tests, benchmarks)."),
    idle_exit_s: float | None = typer.Option(None, min=0.0, help="Exit after this long with nothing to read."),
    stats_json: Path | None = typer.Option(None, dir_okay=False, help="Write the final counters here as JSON."),
    log_level: str = typer.Option("INFO", help="Logging level."),
) -> None:
    """Apply feedback events from Kafka to the Redis learner store, exactly once; refused events to dead letters."""
    from aegis_online.feedback.kafka import KafkaDeadLetterSink, KafkaFeedbackSource, ensure_topics
    from aegis_online.feedback.processor import FeedbackProcessor
    from aegis_online.feedback.service import redis_engine
    from aegis_online.feedback.worker import FeedbackWorker

    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("kafka").setLevel(max(logging.WARNING, logging.getLogger().level))
    names = [n.strip() for n in experts.split(",") if n.strip()]
    if not names:
        raise typer.BadParameter("give at least one expert name", param_hint="--experts")
    if create_topics:
        ensure_topics(bootstrap_servers, {topic: create_topics, dead_letter_topic: create_topics})
    engine = redis_engine(redis_url, names, learner=learner, prefix=prefix, wait_replicas=wait_replicas)
    source = KafkaFeedbackSource(bootstrap_servers, topic, group_id, max_poll_records=batch_size)
    sink = KafkaDeadLetterSink(bootstrap_servers, dead_letter_topic, max_payload_bytes=max_event_bytes)
    processor = FeedbackProcessor(engine, max_event_bytes=max_event_bytes, wait_for_prediction_s=wait_for_prediction_s)
    worker = FeedbackWorker(source, processor, sink, batch_size=batch_size)

    # The loop allocates many short-lived, acyclic objects per event: collect cycles rarely (10% less CPU per event).
    gc.freeze()
    gc.set_threshold(100_000, 50, 100)
    stop = threading.Event()

    def request_stop(signum: int, _frame: object) -> None:
        logging.getLogger("aegis_online.feedback").info("signal %d: stopping after this batch", signum)
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    logging.getLogger("aegis_online.feedback").info(
        "feedback worker: topic %s, group %s, %d experts, learner %s", topic, group_id, len(names), learner
    )
    try:
        stats = worker.run(stop, max_records=max_records, idle_exit_s=idle_exit_s)
    finally:
        source.close()
        sink.close()
        engine.store.close()
    summary = stats.as_dict() | {"rss_bytes": resident_bytes(), "cpu_s": time.process_time(), "pid": os.getpid()}
    if stats_json is not None:
        stats_json.write_text(json.dumps(summary))
    print(json.dumps(summary), file=sys.stdout, flush=True)


def main() -> None:
    typer.run(feedback_worker_command)


if __name__ == "__main__":
    main()

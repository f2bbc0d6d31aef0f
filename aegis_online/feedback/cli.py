"""``aegis-online feedback-worker``: a Kafka consumer-group member that applies feedback to the Redis learner store.

Run as many as the topic has partitions; they share the partitions. SIGTERM or SIGINT stops a worker after its
current batch is committed, and it leaves the group at once so its partitions move without waiting for the
session timeout. ``python -m aegis_online.feedback.cli`` runs the same command.

``--config FILE`` reads the service's own configuration (``aegis_online.config``, ``AEGIS_SERVE_*`` overrides
included), so the worker takes the service's experts, learner, key prefix, Redis and topics from the one file that
configures the service and the two cannot diverge. An option given on the command line or in its own environment
variable still wins over the file. ``--health-port`` serves ``/healthz``, ``/readyz`` and ``/metrics``
(``feedback.health``).
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
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from aegis_online.feedback.health import HealthServer, WorkerHealth

if TYPE_CHECKING:
    from aegis_online.feedback.worker import WorkerStats


def defaults() -> dict[str, str]:
    """What a worker uses when neither an option nor ``--config`` says otherwise: local servers, and the service
    config's own defaults for what must match the service (read from its model, so the two cannot drift)."""
    from aegis_online.config import BusSection, LearnerSection, StoreSection

    bus = BusSection()
    return {
        "redis_url": "redis://127.0.0.1:6379/0",
        "bootstrap_servers": "127.0.0.1:9092",
        "topic": bus.topic,
        "dead_letter_topic": bus.dead_letter_topic,
        "learner": LearnerSection().name,
        "prefix": StoreSection().prefix,
    }


def resident_bytes() -> int:
    """This process's resident memory now (Linux), else its peak."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


@dataclass(frozen=True)
class WorkerSettings:
    """What must match the service: resolved from the options, then ``--config``, then ``defaults()``."""

    experts: tuple[str, ...]
    redis_url: str
    bootstrap_servers: str
    topic: str
    dead_letter_topic: str
    learner: str
    prefix: str
    cluster: bool = False
    source: str = "options"


def resolve_settings(
    config_path: Path | None,
    *,
    experts: str | None = None,
    redis_url: str | None = None,
    bootstrap_servers: str | None = None,
    topic: str | None = None,
    dead_letter_topic: str | None = None,
    learner: str | None = None,
    prefix: str | None = None,
) -> WorkerSettings:
    """Each setting from its option when given (not None), else from the service config at ``config_path``, else
    from ``defaults()``. Raises ``ConfigError`` when the config is invalid or is not one a worker serves (its store
    must be Redis and its bus Kafka); ``typer.BadParameter`` when no expert is named anywhere."""
    from aegis_online.config import ConfigError, load_config

    explicit = {
        "redis_url": redis_url,
        "bootstrap_servers": bootstrap_servers,
        "topic": topic,
        "dead_letter_topic": dead_letter_topic,
        "learner": learner,
        "prefix": prefix,
    }
    from_config: dict[str, str] = {}
    names: list[str] = []
    cluster, source = False, "options"
    if config_path is not None:
        config = load_config(config_path)
        source = str(config_path)
        if config.store.kind != "redis":
            raise ConfigError(
                f"{source}: store.kind: a feedback worker applies feedback to the Redis store, but this config's "
                f"is {config.store.kind!r} (with it the service learns in its own process and needs no worker); "
                "set store.kind: redis"
            )
        if config.bus.kind != "kafka":
            raise ConfigError(
                f"{source}: bus.kind: a feedback worker reads feedback from Kafka, but this config's bus is "
                f"{config.bus.kind!r} (the service drains its in-process queue itself); set bus.kind: kafka"
            )
        try:
            names = [spec.name for spec, _ in config.expert_plan()]
            learner_name = config.learner_name(names)
        except ConfigError as error:
            raise ConfigError(f"{source}: {error}") from None
        from_config = {
            "redis_url": config.store.redis_url or "",
            "bootstrap_servers": config.bus.bootstrap_servers or "",
            "topic": config.bus.topic,
            "dead_letter_topic": config.bus.dead_letter_topic,
            "learner": learner_name,
            "prefix": config.store.prefix,
        }
        cluster = config.store.cluster
    if experts is not None:
        names = [n.strip() for n in experts.split(",") if n.strip()]
    if not names:
        hint = "give at least one expert name" + ("" if config_path is not None else " (or --config)")
        raise typer.BadParameter(hint, param_hint="--experts")
    fallback = defaults()
    values = {k: v if v is not None else from_config.get(k, fallback[k]) for k, v in explicit.items()}
    return WorkerSettings(tuple(names), **values, cluster=cluster, source=source)


def feedback_worker_command(
    config: Path | None = typer.Option(
        None,
        "--config",
        envvar="AEGIS_SERVE_CONFIG",
        dir_okay=False,
        help="The service's config file: experts, learner, prefix, Redis and topics come from it (AEGIS_SERVE_* "
        "overrides included); options given here still win.",
    ),
    experts: str | None = typer.Option(
        None,
        envvar="AEGIS_EXPERTS",
        help="The service's expert names, comma-separated, in the service's order (default: the config's).",
    ),
    redis_url: str | None = typer.Option(
        None,
        envvar="AEGIS_REDIS_URL",
        help="Redis of the stores (default: the config's, else redis://127.0.0.1:6379/0).",
    ),
    bootstrap_servers: str | None = typer.Option(
        None, envvar="AEGIS_KAFKA_BOOTSTRAP", help="Kafka brokers (default: the config's, else 127.0.0.1:9092)."
    ),
    topic: str | None = typer.Option(
        None, envvar="AEGIS_FEEDBACK_TOPIC", help="Feedback topic to read (default: the config's, else aegis.feedback)."
    ),
    dead_letter_topic: str | None = typer.Option(
        None,
        envvar="AEGIS_DEAD_LETTER_TOPIC",
        help="Where refused events go (default: the config's, else aegis.feedback.dead-letter).",
    ),
    group_id: str = typer.Option("aegis-feedback", envvar="AEGIS_FEEDBACK_GROUP", help="Consumer group."),
    learner: str | None = typer.Option(
        None, help="Learner name: must match the service's (default: the config's, else default)."
    ),
    prefix: str | None = typer.Option(
        None, help="Redis key prefix: must match the service's (default: the config's, else aegis:)."
    ),
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
    health_port: int = typer.Option(
        0,
        min=0,
        max=65535,
        envvar="AEGIS_HEALTH_PORT",
        help="Serve /healthz, /readyz and /metrics on this port (0: no server).",
    ),
    health_host: str = typer.Option("0.0.0.0", envvar="AEGIS_HEALTH_HOST", help="Address of the health server."),
    stall_s: float = typer.Option(
        60.0, min=1.0, help="/healthz fails when the loop has not gone round for this long (seconds)."
    ),
    log_level: str = typer.Option("INFO", help="Logging level."),
) -> None:
    """Apply feedback events from Kafka to the Redis learner store, exactly once; refused events to dead letters."""
    from aegis_online.config import ConfigError

    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("kafka").setLevel(max(logging.WARNING, logging.getLogger().level))
    log = logging.getLogger("aegis_online.feedback")
    try:
        settings = resolve_settings(
            config,
            experts=experts,
            redis_url=redis_url,
            bootstrap_servers=bootstrap_servers,
            topic=topic,
            dead_letter_topic=dead_letter_topic,
            learner=learner,
            prefix=prefix,
        )
    except ConfigError as error:
        typer.echo(f"feedback-worker: invalid configuration:\n{error}", err=True)
        raise typer.Exit(code=2) from None

    health: WorkerHealth | None = None
    server: HealthServer | None = None
    if health_port:
        health = WorkerHealth(stall_s=stall_s)
        try:
            server = HealthServer(health, health_host, health_port)
        except OSError as error:
            typer.echo(f"feedback-worker: cannot serve health on {health_host}:{health_port}: {error}", err=True)
            raise typer.Exit(code=1) from None
        log.info("health endpoints on %s:%d: /healthz /readyz /metrics", health_host, server.port)
    try:
        stats = _run(
            settings,
            health,
            group_id=group_id,
            batch_size=batch_size,
            max_event_bytes=max_event_bytes,
            wait_for_prediction_s=wait_for_prediction_s,
            wait_replicas=wait_replicas,
            create_topics=create_topics,
            max_records=max_records,
            idle_exit_s=idle_exit_s,
        )
    finally:
        if server is not None:
            server.close()  # the endpoints stop with the worker
    summary = stats.as_dict() | {"rss_bytes": resident_bytes(), "cpu_s": time.process_time(), "pid": os.getpid()}
    if stats_json is not None:
        stats_json.write_text(json.dumps(summary))
    print(json.dumps(summary), file=sys.stdout, flush=True)


def _run(
    settings: WorkerSettings,
    health: WorkerHealth | None,
    *,
    group_id: str,
    batch_size: int,
    max_event_bytes: int,
    wait_for_prediction_s: float,
    wait_replicas: int,
    create_topics: int,
    max_records: int | None,
    idle_exit_s: float | None,
) -> WorkerStats:
    """Build the clients, run the loop until a signal or a limit stops it, close the clients."""
    from aegis_online.feedback.kafka import KafkaDeadLetterSink, KafkaFeedbackSource, ensure_topics
    from aegis_online.feedback.processor import FeedbackProcessor
    from aegis_online.feedback.redis_applier import redis_applier
    from aegis_online.feedback.worker import FeedbackWorker

    log = logging.getLogger("aegis_online.feedback")
    s = settings
    if create_topics:
        ensure_topics(s.bootstrap_servers, {s.topic: create_topics, s.dead_letter_topic: create_topics})
    applier = redis_applier(
        s.redis_url, s.experts, learner=s.learner, prefix=s.prefix, wait_replicas=wait_replicas, cluster=s.cluster
    )
    source = KafkaFeedbackSource(s.bootstrap_servers, s.topic, group_id, max_poll_records=batch_size)
    sink = KafkaDeadLetterSink(s.bootstrap_servers, s.dead_letter_topic, max_payload_bytes=max_event_bytes)
    processor = FeedbackProcessor(applier, max_event_bytes=max_event_bytes, wait_for_prediction_s=wait_for_prediction_s)
    worker = FeedbackWorker(
        source, processor, sink, batch_size=batch_size, on_iteration=None if health is None else health.record
    )

    # The loop allocates many short-lived, acyclic objects per event: collect cycles rarely (10% less CPU per event).
    gc.freeze()
    gc.set_threshold(100_000, 50, 100)
    stop = threading.Event()

    def request_stop(signum: int, _frame: object) -> None:
        log.info("signal %d: stopping after this batch", signum)
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    log.info(
        "feedback worker (settings from %s): topic %s, group %s, experts %s, learner %s, prefix %s",
        s.source,
        s.topic,
        group_id,
        ",".join(s.experts),
        s.learner,
        s.prefix,
    )
    try:
        return worker.run(stop, max_records=max_records, idle_exit_s=idle_exit_s)
    finally:
        source.close()
        sink.close()
        applier.store.close()


def main() -> None:
    typer.run(feedback_worker_command)


if __name__ == "__main__":
    main()

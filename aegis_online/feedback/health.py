"""Liveness, readiness and Prometheus metrics of a feedback worker, over a small HTTP server of its own.

A worker is a Kafka consumer with no HTTP stack, yet Kubernetes probes it and Prometheus scrapes it. The probes
must answer while the loop is inside a batch or backing off, so a stdlib ``ThreadingHTTPServer`` runs in a daemon
thread and only *reads* a ``WorkerHealth``: a snapshot the loop writes after every round (``FeedbackWorker``'s
``on_iteration`` hook). No request touches Redis or Kafka and the loop never waits for a request: a probe can
neither slow the worker nor be slowed by a dependency that hangs.

* ``/healthz`` (liveness) asks "is the loop still going round?": a heartbeat younger than ``stall_s``. The loop beats
  on idle polls and after every retry too, so Redis or Kafka being down does not fail it: the worker backs off and
  keeps polling then, and restarting it would not bring the dependency back. Only a stuck loop fails it.
* ``/readyz`` (readiness) asks "is the worker doing its job?": at least one poll completed, and the last round with
  records went through (it was not retried because the store or the bus refused it), and the loop is not stalled.
  The worker reports what it last saw: an idle worker does not probe Redis.
* ``/metrics``: the worker's counters (``WorkerStats``) through ``stats_collector`` (the collector the embedded
  service exports them with too: one naming in both modes), plus what only a worker process has (its loop's
  iterations and heartbeat, readiness, partitions owned), rendered by prometheus_client.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry
    from prometheus_client.core import Metric

    from aegis_online.feedback.worker import FeedbackWorker

log = logging.getLogger("aegis_online.feedback.health")


@dataclass(frozen=True)
class Snapshot:
    """What the loop last reported, and when (monotonic seconds)."""

    beat: float
    iterations: int = 0
    last_error: str | None = None
    partitions: int | None = None
    stats: Mapping[str, Any] = field(default_factory=dict)


class WorkerHealth:
    """The state the probes read: written by the worker's thread (``record``), read by the server's threads.

    Every update replaces one immutable ``Snapshot`` under a lock, so a reader never sees half a round.
    """

    def __init__(self, stall_s: float = 60.0, *, clock: Callable[[], float] = time.monotonic) -> None:
        if stall_s <= 0:
            raise ValueError("stall_s must be positive")
        self.stall_s = stall_s
        self._clock = clock
        self._lock = threading.Lock()
        self._snapshot = Snapshot(beat=clock())  # start-up counts as alive until stall_s has passed
        self._registry: CollectorRegistry | None = None  # built at the first scrape (``metrics``)

    def record(self, worker: FeedbackWorker) -> None:
        """The ``on_iteration`` hook of ``FeedbackWorker``: one beat per round, idle polls and retries included."""
        owned = worker.source.owned()
        self.update(worker.stats.as_dict(), worker.last_error, None if owned is None else len(owned))

    def update(self, stats: Mapping[str, Any], last_error: str | None, partitions: int | None = None) -> None:
        with self._lock:
            self._snapshot = Snapshot(
                beat=self._clock(),
                iterations=self._snapshot.iterations + 1,
                last_error=last_error,
                partitions=partitions,
                stats=dict(stats),
            )

    def snapshot(self) -> Snapshot:
        with self._lock:
            return self._snapshot

    def heartbeat_age(self, snapshot: Snapshot | None = None) -> float:
        return max(0.0, self._clock() - (snapshot or self.snapshot()).beat)

    def liveness(self) -> tuple[int, dict[str, Any]]:
        """``/healthz``: 200 while the loop beats, 503 once its heartbeat is older than ``stall_s``."""
        age = round(self.heartbeat_age(), 3)
        if age > self.stall_s:
            return 503, {"status": "stalled", "heartbeat_age_s": age, "stall_s": self.stall_s}
        return 200, {"status": "ok", "heartbeat_age_s": age}

    def readiness(self) -> tuple[int, dict[str, Any]]:
        """``/readyz``: 200 after a first poll while the last round with records went through; 503 with a reason."""
        snap = self.snapshot()
        age = round(self.heartbeat_age(snap), 3)
        reason = None
        if snap.iterations == 0:
            reason = "starting: no poll completed yet"
        elif age > self.stall_s:
            reason = f"stalled: no loop iteration for {age} s"
        elif snap.last_error is not None:
            reason = f"store or bus unavailable, retrying: {snap.last_error}"
        if reason is not None:
            return 503, {"status": "not_ready", "reason": reason, "heartbeat_age_s": age}
        body: dict[str, Any] = {"status": "ready", "heartbeat_age_s": age, "partitions": snap.partitions}
        body |= {name: int(snap.stats.get(name, 0)) for name in ("records", "applied", "dead_letters")}
        return 200, body

    def metrics(self) -> tuple[bytes, str]:
        """The Prometheus text exposition and its content type (the service's ``/metrics`` uses the same).

        prometheus_client (the ``metrics`` extra) is imported at the first scrape, so that the ``aegis-online``
        command, which registers this module's command, loads in an install without it."""
        from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

        with self._lock:
            if self._registry is None:
                self._registry = CollectorRegistry(auto_describe=False)
                self._registry.register(self)  # type: ignore[arg-type]  # a collector by its ``collect``
            registry = self._registry
        return generate_latest(registry), CONTENT_TYPE_LATEST

    def collect(self) -> Iterator[Metric]:
        """One snapshot per scrape: the statistics families both modes share (``stats_collector``), then what only a
        worker process reports (its loop, readiness and partitions)."""
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        from aegis_online.feedback.stats_collector import PREFIX, stats_families

        snap = self.snapshot()
        yield from stats_families(snap.stats)
        yield CounterMetricFamily(
            PREFIX + "iterations", "Rounds of the worker loop (polls, idle ones included).", value=snap.iterations
        )
        yield GaugeMetricFamily(
            PREFIX + "heartbeat_age_seconds", "Seconds since the loop last went round.", value=self.heartbeat_age(snap)
        )
        yield GaugeMetricFamily(
            PREFIX + "ready", "1 when /readyz answers 200.", value=float(self.readiness()[0] == 200)
        )
        if snap.partitions is not None:
            yield GaugeMetricFamily(
                PREFIX + "partitions_owned", "Partitions this worker owns now.", value=float(snap.partitions)
            )


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:
        health = self.server.health
        path = urlsplit(self.path).path
        try:
            if path == "/healthz":
                self._json(*health.liveness())
            elif path == "/readyz":
                self._json(*health.readiness())
            elif path == "/metrics":
                body, content_type = health.metrics()
                self._send(200, body, content_type)
            else:
                self._json(404, {"status": "not_found", "paths": ["/healthz", "/readyz", "/metrics"]})
        except Exception:  # a bug here must answer, not hang the probe
            log.exception("health endpoint %s failed", path)
            self._json(500, {"status": "error"})

    def _json(self, status: int, body: dict[str, Any]) -> None:
        self._send(status, json.dumps(body).encode(), "application/json")

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), format % args)  # probes every few seconds: never at INFO


class _Server(ThreadingHTTPServer):
    daemon_threads = True  # a slow client never keeps the worker from exiting

    def __init__(self, address: tuple[str, int], health: WorkerHealth) -> None:
        self.health = health
        if ":" in address[0]:
            self.address_family = socket.AF_INET6  # "::" for IPv6-only clusters
        super().__init__(address, _Handler)


class HealthServer:
    """``/healthz``, ``/readyz`` and ``/metrics`` of ``health`` on ``host:port`` (port 0: any free port), served
    from a daemon thread until ``close``. ``port`` is the port actually bound."""

    def __init__(self, health: WorkerHealth, host: str = "0.0.0.0", port: int = 0) -> None:
        self._server = _Server((host, port), health)
        self.host = host
        self.port: int = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.2}, name="feedback-health", daemon=True
        )
        self._thread.start()

    @property
    def url(self) -> str:
        """Where this machine reaches the server (the loopback address when bound to every address)."""
        host = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(self.host, self.host)
        return f"http://[{host}]:{self.port}" if ":" in host else f"http://{host}:{self.port}"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> HealthServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

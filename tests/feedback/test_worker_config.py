"""``feedback-worker --config``: the worker takes the service's experts, learner, prefix, Redis and topics from the
service's own config file (options still win), refuses configs it cannot serve with exit code 2, and with
``--health-port`` answers its probes and Prometheus over real HTTP. Real redis-server and tansu broker."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import typer
import yaml

from aegis_online.config import ConfigError, load_config
from aegis_online.feedback import loadgen
from aegis_online.feedback.cli import defaults, resolve_settings
from aegis_online.feedback.kafka import ensure_topics
from aegis_online.feedback.processor import FeedbackProcessor
from aegis_online.feedback.records import FeedbackRecord
from aegis_online.feedback.redis_applier import redis_applier
from aegis_online.learn import DEFAULT_LEARNER
from aegis_online.weights import FeedbackApplier, KeySpace
from tests.state.services import spare_port, unique

from .kafka_helpers import ROOT, expected_updates, produce, start_worker, summary

#: Two catalog experts, in the service's order (the worker only needs their names: it loads no model).
SERVED = ["profanity-check", "minilm-embedding"]
#: The worker's applied-events sample on /metrics (docs/metrics.md).
APPLIED = 'aegis_feedback_applied_total{outcome="applied"}'


def write_config(path: Path, servers: Any, prefix: str, topic: str, **sections: dict) -> Path:
    document = {
        "experts": {"use": SERVED},
        "learner": {"name": DEFAULT_LEARNER},
        "store": {"kind": "redis", "redis_url": servers.redis_url, "prefix": prefix},
        "bus": {
            "kind": "kafka",
            "bootstrap_servers": servers.kafka,
            "topic": topic,
            "dead_letter_topic": topic + ".dead-letter",
        },
    }
    for name, section in sections.items():
        document[name] = document.get(name, {}) | section
    path.write_text(yaml.safe_dump(document))
    return path


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without any AEGIS_* variable: the worker's settings come from what the test gives."""
    return {k: v for k, v in os.environ.items() if not k.startswith("AEGIS_")} | extra


def worker(*args: str) -> list[str]:
    return [sys.executable, "-m", "aegis_online.feedback.cli", *args]


def traffic(servers: Any, prefix: str, topic: str, n: int, seed: int) -> tuple[FeedbackApplier, list, list]:
    """``n`` predictions logged the way the service of ``SERVED`` logs them, and their feedback produced."""
    engine = redis_applier(servers.redis_url, SERVED, prefix=prefix)
    rng = np.random.default_rng(seed)
    records = loadgen.predictions(n, ["acme", "globex"], SERVED, rng, asleep=0.0)
    engine.prediction_log.put_many(records)
    events = loadgen.feedback(records, rng, labels_per_event=2)
    produce(servers.kafka, topic, events)
    return engine, records, events


def assert_learned(engine: FeedbackApplier, records: list, events: list) -> None:
    """Every key the events touch was updated exactly as often as they touch it, under the service's namespace."""
    counts = expected_updates(engine, events, records)
    keys = sorted(counts)
    got = engine.store.load(keys)
    assert {k: g.updates if g else 0 for k, g in zip(keys, got, strict=True)} == counts


def test_a_worker_started_with_only_the_service_config_applies_feedback_and_answers_its_probes(
    servers, redis_client, prefix, tmp_path
) -> None:
    topic, group, n = unique("feedback"), unique("group"), 60
    ensure_topics(servers.kafka, {topic: 2, topic + ".dead-letter": 1})
    config = write_config(tmp_path / "serve-config.yaml", servers, prefix, topic)
    assert [spec.name for spec, _ in load_config(config).expert_plan()] == SERVED
    engine, records, events = traffic(servers, prefix, topic, n, seed=11)
    port = spare_port()
    proc = start_worker(
        worker("--config", str(config), "--health-port", str(port)),
        tmp_path / "worker.log",
        env=clean_env(AEGIS_FEEDBACK_GROUP=group),  # a group of its own; everything else from the file
    )
    base = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(base_url=base, timeout=2.0) as http:
            deadline, applied = time.monotonic() + 30, -1.0
            while applied < n:
                assert proc.poll() is None, (tmp_path / "worker.log").read_text()
                assert time.monotonic() < deadline, f"applied {applied} of {n}"
                with contextlib.suppress(httpx.TransportError):  # not listening yet
                    applied = metric(http.get("/metrics").text, APPLIED)
                time.sleep(0.1)
            live, ready, metrics = http.get("/healthz"), http.get("/readyz"), http.get("/metrics")
            missing = http.get("/nope")
        assert live.status_code == 200 and live.json()["status"] == "ok"
        assert ready.status_code == 200 and ready.json()["status"] == "ready" and ready.json()["applied"] == n
        assert metrics.headers["content-type"].startswith("text/plain")
        assert metric(metrics.text, APPLIED) == n
        assert metric(metrics.text, 'aegis_feedback_applied_total{outcome="dead_letter"}') == 0
        assert metric(metrics.text, "aegis_feedback_records_total") == n
        assert missing.status_code == 404 and missing.json()["status"] == "not_found"
    finally:
        proc.send_signal(signal.SIGTERM)
    stats = summary(proc, timeout=30)
    assert stats["applied"] == n and stats["records"] == n and stats["dead_letters"] == 0
    assert_learned(engine, records, events)  # the keys the service (same experts, learner, prefix) reads
    log = (tmp_path / "worker.log").read_text()
    assert f"health endpoints on 0.0.0.0:{port}" in log and f"settings from {config}" in log
    assert "GET /healthz" not in log  # probes are not logged at INFO
    with pytest.raises(httpx.TransportError):  # the endpoints stopped with the worker
        httpx.get(base + "/healthz", timeout=1.0)


def metric(text: str, name: str) -> float:
    """The value of the sample written exactly ``name`` (with its labels, as prometheus_client writes them)."""
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics")


def test_options_and_their_env_vars_win_over_the_config_and_aegis_serve_env_over_the_file(
    servers, redis_client, prefix, tmp_path
) -> None:
    topic, group, n = unique("feedback"), unique("group"), 30
    ensure_topics(servers.kafka, {topic: 1, topic + ".dead-letter": 1})
    # The file names a topic nobody writes to and another prefix; --topic and AEGIS_SERVE_STORE__PREFIX fix them.
    config = write_config(tmp_path / "serve-config.yaml", servers, "elsewhere:", unique("unused-topic"))
    engine, records, events = traffic(servers, prefix, topic, n, seed=12)
    proc = start_worker(
        worker("--config", str(config), "--topic", topic, "--max-records", str(n)),
        tmp_path / "worker.log",
        env=clean_env(AEGIS_FEEDBACK_GROUP=group, AEGIS_SERVE_STORE__PREFIX=prefix),
    )
    stats = summary(proc, timeout=60)
    assert stats["applied"] == n and stats["dead_letters"] == 0
    assert_learned(engine, records, events)
    assert not list(redis_client.scan_iter(match="elsewhere:*", count=1000))


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"store": {"kind": "memory", "redis_url": None}}, "store.kind"),
        ({"store": {"prefx": "typo:"}}, "store.prefx"),
    ],
    ids=["memory-store", "misspelt-field"],
)
def test_a_config_the_worker_cannot_serve_exits_2_naming_the_field(tmp_path, change: dict, named: str, servers) -> None:
    config = write_config(tmp_path / "serve-config.yaml", servers, "p:", "t", **change)
    done = subprocess.run(
        worker("--config", str(config)),
        cwd=ROOT,
        env=clean_env(PYTHONPATH=str(ROOT)),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    assert named in done.stderr and str(config) in done.stderr
    assert "Traceback" not in done.stderr and done.stdout == ""


def test_settings_resolve_option_then_config_then_default(servers, tmp_path, monkeypatch) -> None:
    for name in [k for k in os.environ if k.startswith("AEGIS_SERVE_")]:
        monkeypatch.delenv(name)
    config = write_config(tmp_path / "c.yaml", servers, "svc:", "fb.topic", learner={"name": "hedge"})
    settings = resolve_settings(config)
    assert settings.experts == tuple(SERVED) and settings.learner == "hedge" and settings.prefix == "svc:"
    assert (settings.redis_url, settings.bootstrap_servers) == (servers.redis_url, servers.kafka)
    assert (settings.topic, settings.dead_letter_topic) == ("fb.topic", "fb.topic.dead-letter")
    assert not settings.cluster

    explicit = resolve_settings(config, experts="x,y", topic="other", learner="default", prefix="mine:")
    assert explicit.experts == ("x", "y") and explicit.topic == "other" and explicit.prefix == "mine:"
    assert explicit.learner == "default" and explicit.dead_letter_topic == "fb.topic.dead-letter"

    monkeypatch.setenv("AEGIS_SERVE_STORE__REDIS_URL", "redis://redis.example:6379/3")
    assert resolve_settings(config).redis_url == "redis://redis.example:6379/3"

    plain = resolve_settings(None, experts="a,b")  # no config: today's defaults
    assert plain.experts == ("a", "b")
    assert {k: getattr(plain, k) for k in defaults()} == defaults()
    assert (plain.topic, plain.dead_letter_topic, plain.learner, plain.prefix) == (
        "aegis.feedback",
        "aegis.feedback.dead-letter",
        "default+adaptive",
        "aegis:",
    )
    with pytest.raises(typer.BadParameter, match="expert"):
        resolve_settings(None)


def test_a_cascade_services_worker_updates_the_cascade_learners_keys(servers, tmp_path, monkeypatch) -> None:
    """In cascade mode the service's learner also learns the cheap tier's loss (another state layout, other keys):
    the worker must build the same one from the same file, or the service would never see its feedback."""
    for name in [k for k in os.environ if k.startswith("AEGIS_SERVE_")]:
        monkeypatch.delenv(name)
    config = write_config(tmp_path / "c.yaml", servers, "svc:", "fb.topic", cascade={"expensive": [SERVED[1]]})
    assert resolve_settings(config).learner == "default+cascade-1+adaptive"


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"bus": {"kind": "inprocess", "bootstrap_servers": None}}, "bus.kind"),
        ({"experts": {"use": ["profanity-check", "no-such-expert"]}}, "experts.use.1"),
        ({"learner": {"name": "exp3-ix", "bandit": {"k": 3}}}, "learner.bandit.k"),
    ],
    ids=["inprocess-bus", "unknown-expert", "bandit-k"],
)
def test_invalid_configs_raise_config_error_naming_the_field(servers, tmp_path, change: dict, named: str) -> None:
    config = write_config(tmp_path / "c.yaml", servers, "p:", "t", **change)
    with pytest.raises(ConfigError, match=named.replace(".", r"\.")):
        resolve_settings(config)


def test_a_bandit_service_config_makes_the_worker_learn_under_the_service_s_bandit_learner(
    servers, redis_client, prefix, tmp_path
) -> None:
    config = write_config(tmp_path / "c.yaml", servers, prefix, "t", learner={"name": "exp3-ix", "bandit": {"k": 1}})
    settings = resolve_settings(config)
    # The keys the service's moderator reads (serve.service.build_service: its learner is learner.name).
    service = KeySpace(load_config(config).learner.name, SERVED)
    engine = redis_applier(settings.redis_url, settings.experts, learner=settings.learner, prefix=settings.prefix)
    assert engine.keyspace == service and engine.learner.name == "exp3-ix"

    rng = np.random.default_rng(13)
    records = [  # as logged in bandit mode: one expert queried, with its selection probability
        replace(r, outputs=np.where([True, False], r.outputs, np.nan), propensities=np.array([0.6, 0.4]))
        for r in loadgen.predictions(10, ["acme"], SERVED, rng)
    ]
    engine.prediction_log.put_many(records)
    events = loadgen.feedback(records, rng)
    feedback = [
        FeedbackRecord("t", 0, i, e.tenant.encode(), e.model_dump_json().encode()) for i, e in enumerate(events)
    ]
    report = FeedbackProcessor(engine).process(feedback)
    assert report.applied == len(events) and not report.dead_letters
    assert_learned(engine, records, events)
    assert any(b":exp3-ix:" in key for key in redis_client.scan_iter(match=prefix + "*", count=1000))

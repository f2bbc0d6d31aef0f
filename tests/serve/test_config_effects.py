"""Every service-config field does something (issue 12, section 4): for the fields no other test changed, a test that
changing the field changes what the service does. The audit that maps each field to its test: /tmp/config_audit.md
(kept with the issue's closing note). Ray is imported for the deployment options, never started."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from ray.serve._private.build_app import build_app as flatten

from aegis_online.catalog import default_catalog_dir, load_catalog
from aegis_online.config import ConfigError, ServiceConfig, config_from_document
from aegis_online.rayserve.deployments import ExpertDeployment, build_app
from aegis_online.serve.admission import AdmissionControl
from aegis_online.serve.app import create_app
from aegis_online.serve.auth import KeyTable, load_key_table
from aegis_online.serve.errors import ApiError
from tests.helpers import wait_until

from .helpers import ACME_KEY, bearer, conversation, make_service

ACME = bearer(ACME_KEY)
REDIS = {"kind": "redis", "redis_url": "redis://127.0.0.1:6379/0"}  # never connected to: only built


def moderate(client: TestClient, text: str) -> dict[str, Any]:
    response = client.post("/v1/moderate", json=conversation(text), headers=ACME)
    assert response.status_code == 200, response.text
    return response.json()


# -- limits and server -------------------------------------------------------------------------------------------------


def test_max_input_chars_limits_moderate_messages_as_it_limits_moderations_inputs(
    service_factory: Callable[..., TestClient],
) -> None:
    client = service_factory(limits={"max_input_chars": 10})
    assert moderate(client, "x" * 10)["request_id"]
    body = {"messages": [{"role": "system", "content": "short"}, {"role": "user", "content": "x" * 11}]}
    response = client.post("/v1/moderate", json=body, headers=ACME)
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["field"] == "messages.1.content" and error["code"] == "input_too_long"
    assert "limits.max_input_chars" in error["message"] and "10" in error["message"]
    openai = client.post("/v1/moderations", json={"input": "x" * 11}, headers=ACME)
    assert openai.status_code == 400 and openai.json()["error"]["param"] == "input"
    default = service_factory()  # the schema's own cap is the default: 11 characters pass
    assert default.post("/v1/moderate", json=body, headers=ACME).status_code == 200


def test_max_inputs_and_model_name_shape_the_openai_route(service_factory: Callable[..., TestClient]) -> None:
    client = service_factory(limits={"max_inputs": 2}, server={"model_name": "house-moderation"})
    ok = client.post("/v1/moderations", json={"input": ["a", "b"]}, headers=ACME)
    assert ok.status_code == 200 and ok.json()["model"] == "house-moderation"
    refused = client.post("/v1/moderations", json={"input": ["a", "b", "c"]}, headers=ACME)
    assert refused.status_code == 400 and "at most 2 inputs" in refused.json()["error"]["message"]


# -- admission control -------------------------------------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _limit_after_one_slow_request(**admission: Any) -> float:
    """The concurrency limit after one request that took 0.5 s of a 1 s deadline."""
    settings = ServiceConfig.model_validate({"limits": {"admission": admission}}).limits.admission
    clock = FakeClock()
    control = AdmissionControl(settings, deadline_s=1.0, clock=clock)

    async def run() -> None:
        async with control.slot(clock.now):
            clock.now += 0.5

    asyncio.run(run())
    return control.limiter.limit


def test_target_share_backoff_and_min_limit_steer_the_concurrency_limit() -> None:
    base = {"initial_limit": 4, "min_limit": 1, "max_limit": 8}
    assert _limit_after_one_slow_request(**base, target_share=0.75) == 4  # 0.5 s is under 0.75 of the deadline
    assert _limit_after_one_slow_request(**base, target_share=0.25, backoff=0.5) == 2  # over 0.25: x backoff
    assert _limit_after_one_slow_request(**base, target_share=0.25, backoff=0.9) == pytest.approx(3.6)
    assert _limit_after_one_slow_request(**base | {"min_limit": 3}, target_share=0.25, backoff=0.5) == 3  # floor


@pytest.mark.parametrize("reserve_share", [0.1, 0.4])
def test_reserve_share_is_kept_from_the_experts_budget(reserve_share: float) -> None:
    settings = ServiceConfig.model_validate({"limits": {"admission": {"reserve_share": reserve_share}}})
    clock = FakeClock()
    control = AdmissionControl(settings.limits.admission, deadline_s=2.0, clock=clock)

    async def budget() -> float:
        async with control.slot(clock.now) as seconds:
            return seconds

    assert asyncio.run(budget()) == pytest.approx(2.0 * (1 - reserve_share))


@pytest.mark.parametrize(("queue_target_share", "refused"), [(0.1, True), (0.3, False)])
def test_queue_target_share_bounds_the_wait_of_a_standing_queue(queue_target_share: float, refused: bool) -> None:
    """As ``test_admission``'s standing-queue test: with the queue standing, a fourth request that would start in
    ~1.8 s of a 10 s deadline is refused under a 1 s queueing target and queued under a 3 s one."""
    admission = {"initial_limit": 1, "max_limit": 1, "queue_target_share": queue_target_share}
    settings = ServiceConfig.model_validate({"limits": {"admission": admission}}).limits.admission

    async def run() -> tuple[bool, int]:
        control = AdmissionControl(settings, deadline_s=10.0)
        control.latency.mean_s = 0.6
        now = time.monotonic()
        async with control.slot(now):
            waiting = [asyncio.create_task(control.slot(now).__aenter__()) for _ in range(2)]
            await asyncio.sleep(0.01)
            control.standing.left(1.5, now - 6.0)  # everything that left the queue for a round trip waited long
            fourth = asyncio.create_task(control.slot(now).__aenter__())
            await asyncio.sleep(0.01)
            error = fourth.exception() if fourth.done() else None
            queued = control.queued
            for task in [*waiting, fourth]:
                task.cancel()
            await asyncio.gather(*waiting, fourth, return_exceptions=True)
        return isinstance(error, ApiError) and error.status == 503, queued

    assert asyncio.run(run()) == (refused, 2 if refused else 3)


# -- Ray Serve deployment options --------------------------------------------------------------------------------------


def _deployments(config: ServiceConfig) -> dict[str, Any]:
    return {d.name: d for d in flatten(build_app(config, KeyTable({})), name="aegis-online").deployments}


def test_ingress_and_expert_serving_options_reach_ray_serve() -> None:
    config = ServiceConfig.model_validate(
        {
            "store": REDIS,
            "ingress": {"replicas": 3, "num_cpus": 1.5, "max_ongoing_requests": 300, "max_queued_requests": 7},
            "experts": {
                "use": [
                    {"name": "minilm-embedding", "replicas": 2, "max_ongoing_requests": 9, "max_batch_size": 9},
                    {
                        "name": "profanity-check",
                        "placement": "replica",
                        "num_cpus": 0.7,
                        "autoscaling": {"min_replicas": 1, "max_replicas": 5, "target_ongoing_requests": 3},
                    },
                ]
            },
        }
    )
    built = _deployments(config)
    ingress = built["ingress"]
    assert (ingress.num_replicas, ingress.max_ongoing_requests, ingress.max_queued_requests) == (3, 300, 7)
    assert ingress.ray_actor_options["num_cpus"] == 1.5
    minilm = built["expert-minilm-embedding"]
    assert (minilm.num_replicas, minilm.max_ongoing_requests) == (2, 9)
    profanity = built["expert-profanity-check"]._deployment_config
    assert built["expert-profanity-check"].ray_actor_options["num_cpus"] == 0.7
    scaling = profanity.autoscaling_config
    assert (scaling.min_replicas, scaling.max_replicas, scaling.target_ongoing_requests) == (1, 5, 3)


def test_batching_and_threads_are_set_in_the_expert_replica(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("MKL_NUM_THREADS", "1")
    spec = next(s for s in load_catalog(default_catalog_dir()) if s.name == "profanity-check")
    serving = {"name": spec.name, "max_batch_size": 7, "batch_wait_timeout_ms": 12, "threads": 3}
    cls = ExpertDeployment.func_or_class
    replica = cls.__new__(cls)
    asyncio.run(cls.__init__(replica, spec.model_dump(mode="json"), serving))
    assert replica.batcher.max_batch_size == 7
    assert replica.batcher.batch_wait_s == pytest.approx(0.012)
    assert os.environ["OMP_NUM_THREADS"] == os.environ["MKL_NUM_THREADS"] == "3"


# -- learner, store, bus -----------------------------------------------------------------------------------------------


def test_bandit_mode_needs_the_bandit_learner_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as refused:
        config_from_document({"learner": {"bandit": {"k": 1}}}, source="c.yaml", environ=False)
    message = str(refused.value)
    assert "c.yaml: learner.name:" in message and "set learner.name: exp3-ix" in message
    assert "'default+adaptive'" in message
    with pytest.raises(ConfigError, match=r"learner\.bandit: exp3-ix is a bandit learner"):
        config_from_document({"learner": {"name": "exp3-ix"}}, source="c.yaml", environ=False)


def test_the_named_learner_and_the_bandit_k_run_the_engine(service_factory: Callable[..., TestClient]) -> None:
    client = service_factory(learner={"name": "exp3-ix", "bandit": {"k": 1, "always": ["words-b"]}})
    assert client.app.state.service.engine.learner.name == "exp3-ix"
    missing = moderate(client, "kill")["missing_experts"]
    assert [(m["expert"], m["kind"]) for m in missing] == [("words-a", "not_queried")]  # k=1: only the "always" one
    hedge = service_factory(learner={"name": "hedge"})
    assert hedge.app.state.service.engine.learner.name == "hedge" and not moderate(hedge, "kill")["missing_experts"]


def test_floors_act_whatever_the_tenants_policy_says(service_factory: Callable[..., TestClient]) -> None:
    lenient = {"tenant": "acme", "categories": {"violence": {"action": "allow"}}}
    plain = service_factory(policies=[lenient])
    assert moderate(plain, "kill")["action"] == "allow"
    floored = service_factory(policies=[lenient], floors={"violence": {"threshold": 0.4, "action": "flag"}})
    decision = moderate(floored, "kill")
    s1 = next(c for c in decision["categories"] if c["category"] == "S1")
    assert decision["action"] == "flag" and s1["threshold_source"] == "floor" and s1["threshold"] == 0.4
    with pytest.raises(ConfigError, match=r"floors\.nope: unknown category"):
        config_from_document({"floors": {"nope": {"threshold": 0.5}}}, source="c.yaml", environ=False)


def test_the_default_learner_is_adaptive_and_plain_learners_stay_available(
    service_factory: Callable[..., TestClient],
) -> None:
    adaptive = moderate(service_factory(), "kill")
    assert adaptive["overall"]["threshold_source"] == "fixed" and adaptive["overall"]["score"] > 0.5
    assert service_factory().app.state.service.engine.learner.name == "default+adaptive"
    with pytest.raises(ConfigError, match="exp3-ix\\+adaptive"):
        config_from_document(
            {"learner": {"name": "exp3-ix+adaptive", "bandit": {"k": 1}}}, source="c.yaml", environ=False
        )


def test_max_predictions_and_prediction_ttl_bound_what_feedback_can_join(
    service_factory: Callable[..., TestClient],
) -> None:
    capped = service_factory(store={"max_predictions": 2})
    first, *_, last = [moderate(capped, text)["request_id"] for text in ("kill", "hello", "stab")]
    assert capped.post("/v1/feedback", json={"request_id": first, "label": "safe"}, headers=ACME).status_code == 404
    assert capped.post("/v1/feedback", json={"request_id": last, "label": "safe"}, headers=ACME).status_code == 202
    brief = service_factory(store={"prediction_ttl_s": 0.05})
    request_id = moderate(brief, "kill")["request_id"]
    log = brief.app.state.service.engine.prediction_log
    assert wait_until(lambda: log.get(request_id) is None, 5)
    response = brief.post("/v1/feedback", json={"request_id": request_id, "label": "safe"}, headers=ACME)
    assert response.status_code == 404 and response.json()["error"]["code"] == "unknown_request"


@pytest.mark.parametrize("ack_timeout_s", [0.05, 0.6])
def test_a_full_queue_answers_503_after_the_ack_timeout(ack_timeout_s: float) -> None:
    """``bus.max_pending`` events wait unapplied (no lifespan here: the embedded worker never starts); the next one
    waits ``limits.feedback_ack_timeout_s`` for room, then gets 503."""
    service = make_service(bus={"max_pending": 1, "partitions": 3}, limits={"feedback_ack_timeout_s": ack_timeout_s})
    assert service.publisher.partitions == 3
    client = TestClient(create_app(service), raise_server_exceptions=False)
    ids = [moderate(client, text)["request_id"] for text in ("kill", "hello")]
    assert client.post("/v1/feedback", json={"request_id": ids[0], "label": "safe"}, headers=ACME).status_code == 202
    started = time.monotonic()
    full = client.post("/v1/feedback", json={"request_id": ids[1], "label": "safe"}, headers=ACME)
    waited = time.monotonic() - started
    assert full.status_code == 503 and full.headers["Retry-After"]
    assert ack_timeout_s <= waited < ack_timeout_s + 2.0


# -- auth, rate limits, ray --------------------------------------------------------------------------------------------


def test_a_keys_name_labels_its_principal_and_its_errors(tmp_path: Path) -> None:
    key = {"name": "acme-app", "key": "k" * 20, "tenant": "acme"}
    config = ServiceConfig.model_validate({"auth": {"keys": [key]}})
    assert load_key_table(config.auth).authenticate("k" * 20).name == "acme-app"
    twice = ServiceConfig.model_validate({"auth": {"keys": [key, key | {"name": "again"}]}})
    with pytest.raises(ConfigError, match=r"\(again\) is configured twice"):
        load_key_table(twice.auth)


def test_a_buckets_burst_is_what_passes_at_once(service_factory: Callable[..., TestClient]) -> None:
    client = service_factory(rate_limits={"default": {"moderate": [{"rate": 100, "per": "hour", "burst": 2}]}})
    statuses = [client.post("/v1/moderate", json=conversation("hi"), headers=ACME).status_code for _ in range(3)]
    assert statuses == [200, 200, 429]


def test_tenant_ids_in_rate_limits_and_contributors_are_checked_as_everywhere() -> None:
    for document, field in (
        ({"rate_limits": {"tenants": {"no spaces": {}}}}, "rate_limits.tenants.no spaces"),
        ({"global_learning": {"contributors": ["acme", "no spaces"]}}, "global_learning.contributors.1"),
    ):
        with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
            config_from_document(document, source="c.yaml", environ=False)
    config = config_from_document(
        {"rate_limits": {"tenants": {"acme.eu": {}}}, "global_learning": {"contributors": ["acme.eu"]}},
        source="c.yaml",
        environ=False,
    )
    assert config.global_learning.contributors == ["acme.eu"] and "acme.eu" in config.rate_limits.tenants


@pytest.fixture
def ray_calls(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    """``runtime.local_service`` with Ray, Serve and the deployment replaced by recorders."""
    from aegis_online.rayserve import runtime

    calls: dict[str, Any] = {}
    monkeypatch.setattr(runtime, "start_ray", lambda **kw: calls.setdefault("ray", kw))
    monkeypatch.setattr(runtime, "start_serve", lambda host, port: calls.setdefault("serve", (host, port)))
    monkeypatch.setattr(runtime, "deploy", lambda config, keys: None)
    monkeypatch.setattr(runtime, "stop_ray", lambda *a: None)
    yield calls


def test_the_ray_section_and_the_server_address_start_ray_and_serve(ray_calls: dict[str, Any], tmp_path: Path) -> None:
    from aegis_online.rayserve.runtime import local_service

    config = ServiceConfig.model_validate(
        {"ray": {"num_cpus": 3, "temp_dir": str(tmp_path)}, "server": {"port": 8765}, "store": {"persist": False}}
    )
    with local_service(config, KeyTable({})) as url:
        assert url == "http://127.0.0.1:8765"
        assert Path(ray_calls["ray"]["temp_dir"]).parent == tmp_path  # the session folder, made in ray.temp_dir
    assert ray_calls["ray"]["address"] == "local" and ray_calls["ray"]["num_cpus"] == 3
    assert ray_calls["serve"] == ("127.0.0.1", 8765)
    joined = ServiceConfig.model_validate({"ray": {"address": "auto"}, "store": {"persist": False}})
    ray_calls.clear()
    with local_service(joined, KeyTable({})):
        assert ray_calls["ray"] == {"address": "auto", "temp_dir": None, "num_cpus": None}

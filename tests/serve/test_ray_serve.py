"""The real Ray Serve application, started locally with the catalog's CPU experts and called over HTTP."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from aegis_online.client import AegisClient
from aegis_online.config import ServiceConfig
from aegis_online.demos.scripted_llm import BENIGN, HARMFUL, ScriptedLLM
from aegis_online.schemas import FeedbackEvent, Message, ModerationRequest
from aegis_online.serve.auth import KeyTable
from tests.helpers import wait_until

from .helpers import ACME_KEY, ADMIN_KEY, GLOBEX_KEY, KEYS, bearer, conversation, uvicorn_server

# Ray's own config models use pydantic features deprecated in v2: not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:Using extra keyword arguments on `Field`:DeprecationWarning")


#: The catalog's CPU experts (the default tier), in the engine's order.
TIER = ["lexical-heads", "minilm-embedding", "minilm-heads", "profanity-check"]


@pytest.fixture(scope="module")
def service(ray_session: dict[str, Any]) -> Iterator[str]:
    from ray import serve

    from aegis_online.rayserve.runtime import APP_NAME, deploy

    llm = ScriptedLLM(tokens_per_s=200)  # the chat proxy's upstream, on a loopback port of this process
    with uvicorn_server(llm.app()) as upstream:
        config = ServiceConfig.model_validate(
            {
                "limits": {"deadline_ms": 10_000},  # 2 shared cores: generous, the first batches warm caches up
                "ingress": {"num_cpus": 0.2},
                "store": {"persist": False},  # nothing written where Ray's workers happen to run
                "policies": [{"tenant": "acme", "personalise_after": 0}],
                "chat": {
                    "upstream": {"base_url": f"{upstream}/v1"},
                    # check_first: no text reaches the client before it is checked, so the cut comes before the
                    # harmful sentence whatever the load (stream_first's lag behind the tokens is timing, and is
                    # tested without Ray in tests/serve/test_chat_proxy.py)
                    "mode": "check_first",
                    "window_chars": 60,
                    "cut_on": "flag",
                },
            }
        )
        deploy(config, KeyTable.from_keys(KEYS))
        try:
            yield ray_session["url"]
        finally:
            serve.delete(APP_NAME)


def post(url: str, path: str, body: object, key: str = ACME_KEY) -> httpx.Response:
    return httpx.post(f"{url}{path}", json=body, headers=bearer(key), timeout=30)


def test_the_app_is_ready_with_every_cpu_expert(service: str) -> None:
    ready = httpx.get(f"{service}/readyz", timeout=10)
    assert ready.status_code == 200 and ready.json()["status"] == "ready"
    weights = httpx.get(f"{service}/v1/tenants/acme/weights", headers=bearer(ACME_KEY), timeout=10).json()
    assert weights["experts"] == TIER


def test_moderate_fans_out_to_the_expert_deployments_and_decides(service: str) -> None:
    response = post(service, "/v1/moderate", conversation("Shut up, you fucking idiot"))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["tenant"] == "acme" and body["missing_experts"] == []
    experts = {e["expert"]: e for e in body["experts"]}
    assert set(experts) == set(TIER)
    assert experts["profanity-check"]["scores"]["S12"] > 0.8
    assert experts["minilm-embedding"]["latency_ms"] > 0
    assert {c["category"]: c for c in body["categories"]}["S12"]["flagged"]
    benign = post(service, "/v1/moderate", conversation("What is the capital of France?")).json()
    assert benign["action"] == "allow"


def test_a_cpu_light_expert_answers_from_inside_the_ingress(service: str) -> None:
    from ray import serve

    from aegis_online.rayserve.runtime import APP_NAME

    # profanity-check and lexical-heads (catalog cost cpu-light) have no deployment: the ingress built them and
    # calls them in process; minilm-heads is served by minilm-embedding's deployment (one embedding per text)
    assert set(serve.status().applications[APP_NAME].deployments) == {"ingress", "expert-minilm-embedding"}
    body = post(service, "/v1/moderate", conversation("what the fuck is this shit")).json()
    experts = {e["expert"]: e for e in body["experts"]}
    assert body["missing_experts"] == [] and experts["profanity-check"]["scores"]["S12"] > 0.8
    assert experts["minilm-heads"]["scores"]["S12"] > 0.5 and experts["lexical-heads"]["scores"]["S12"] > 0.5
    assert "aegis_admission_limit" in httpx.get(f"{service}/metrics", timeout=10).text


def test_concurrent_requests_are_batched_and_all_answered(service: str) -> None:
    from ray import serve

    from aegis_online.rayserve.deployments import deployment_name
    from aegis_online.rayserve.runtime import APP_NAME

    replica = serve.get_deployment_handle(deployment_name("minilm-embedding"), app_name=APP_NAME)
    before = replica.batching.remote().result()
    texts = [f"message number {i}: have a lovely day" for i in range(24)]

    async def run() -> list[int]:
        async with httpx.AsyncClient(base_url=service, headers=bearer(ACME_KEY), timeout=60) as client:
            responses = await asyncio.gather(*(client.post("/v1/moderate", json=conversation(t)) for t in texts))
        return [r.status_code for r in responses]

    assert asyncio.run(run()) == [200] * len(texts)
    after = replica.batching.remote().result()
    items, batches = after["items"] - before["items"], after["batches"] - before["batches"]
    # each request calls the replica twice (minilm-embedding and its guest minilm-heads), through its batcher
    assert items >= 2 * len(texts), (items, batches)
    if before["batch_pays"] and after["batch_pays"]:  # calls that queued while a batch ran were scored together
        assert batches < items, (items, batches)
    elif not before["batch_pays"] and not after["batch_pays"]:  # it measured that MiniLM batches cost more
        assert batches == items and after["fixed_ms"] <= 0, after


def test_perspective_clients_work_through_ray_serve(service: str) -> None:
    """A Perspective-shaped request with the key in the URL, scored by the real CPU tier."""
    scores = {}
    for text in ("You are a stupid idiot and a loser", "Have a lovely day, see you tomorrow"):
        body = {"comment": {"text": text}, "languages": ["en"], "requestedAttributes": {"TOXICITY": {}, "INSULT": {}}}
        response = httpx.post(f"{service}/v1alpha1/comments:analyze", params={"key": ACME_KEY}, json=body, timeout=30)
        assert response.status_code == 200, response.text
        answer = response.json()
        assert set(answer["attributeScores"]) == {"TOXICITY", "INSULT"} and not answer["aegis"]["degraded"]
        scores[text] = answer["attributeScores"]["TOXICITY"]["summaryScore"]["value"]
    toxic, kind = scores.values()
    assert toxic > 0.5 > kind, scores


def test_the_chat_proxy_streams_through_ray_serve_and_cuts_a_harmful_answer(service: str) -> None:
    client = openai.OpenAI(base_url=f"{service}/v1", api_key=ACME_KEY, max_retries=0, timeout=60)
    for model, expected in (("benign", BENIGN), ("harmful", HARMFUL)):
        text, finishes = "", []
        messages = [{"role": "user", "content": "Tell me about your weekend."}]
        for chunk in client.chat.completions.create(model=model, messages=messages, stream=True):
            for choice in chunk.choices:
                text += choice.delta.content or ""
                finishes += [choice.finish_reason] if choice.finish_reason else []
        if model == "benign":
            assert text == expected and finishes == ["stop"]
        else:
            assert finishes == ["content_filter"] and expected.startswith(text) and len(text) < len(expected)


def test_the_openai_sdk_works_through_ray_serve(service: str) -> None:
    client = openai.OpenAI(base_url=f"{service}/v1", api_key=ACME_KEY, max_retries=0, timeout=30)
    response = client.moderations.create(input=["I will kill you", "Thanks for your help!"])
    assert [r.flagged for r in response.results] == [True, False]


def test_feedback_through_the_service_moves_the_tenants_weights(service: str) -> None:
    def weights() -> dict[str, float]:
        body = httpx.get(
            f"{service}/v1/tenants/acme/weights", params={"category": "S12"}, headers=bearer(ACME_KEY), timeout=10
        ).json()
        return body["categories"]["S12"]["weights"]

    before = weights()
    events = []
    for text in ("fuck this shit", "you damn bastard", "what the fuck"):
        decision = post(service, "/v1/moderate", conversation(text)).json()
        events.append({"request_id": decision["request_id"], "labels": {"S12": 1.0}})
    receipt = post(service, "/v1/feedback", {"events": events})
    assert receipt.status_code == 202 and receipt.json()["accepted"] == 3
    assert wait_until(lambda: weights() != before, 20)
    assert weights()["profanity-check"] > before["profanity-check"]


def test_tenants_stay_isolated_through_ray_serve(service: str) -> None:
    other = httpx.get(f"{service}/v1/tenants/acme/policy", headers=bearer(GLOBEX_KEY), timeout=10)
    assert other.status_code == 403
    assert httpx.get(f"{service}/v1/tenants/acme/policy", headers=bearer(ADMIN_KEY), timeout=10).status_code == 200
    assert post(service, "/v1/moderate", conversation("hi"), key="unknown-key-00000000000").status_code == 401
    metrics = httpx.get(f"{service}/metrics", timeout=10).text
    assert 'aegis_expert_latency_seconds_count{expert="profanity-check"}' in metrics


def test_metrics_show_the_expert_replicas_batching(service: str) -> None:
    """The ingress asks each expert deployment for its batching at each scrape; a guest (minilm-heads) is its host's
    deployment, not one of its own."""
    from prometheus_client.parser import text_string_to_metric_families

    from aegis_online.rayserve.deployments import deployment_name
    from aegis_online.serve.metrics import REPLICA_POLL_INTERVAL_S

    assert post(service, "/v1/moderate", conversation("hello there")).status_code == 200
    time.sleep(REPLICA_POLL_INTERVAL_S)  # an earlier test's scrape may have polled the replicas just now
    text = httpx.get(f"{service}/metrics", timeout=10).text
    families = {f.name: f.samples for f in text_string_to_metric_families(text)}
    batches = {s.labels["deployment"]: s for s in families["aegis_replica_batches"]}
    assert deployment_name("minilm-embedding") in batches and deployment_name("minilm-heads") not in batches
    assert all(s.value >= 1 and s.labels["replica"] for s in batches.values())
    calls = {s.labels["deployment"]: s.value for s in families["aegis_replica_batched_calls"]}
    assert all(calls[name] >= s.value for name, s in batches.items())
    assert {s.value for s in families["aegis_replica_batching"]} <= {0.0, 1.0}


def test_the_projects_client_works_through_ray_serve(service: str) -> None:
    with AegisClient(service, api_key=ACME_KEY, timeout=30) as client:
        assert client.ready().status == "ready"
        text = [Message(role="user", content="Shut up, you fucking idiot")]
        decision = client.moderate(ModerationRequest(messages=text))
        assert decision.tenant == "acme" and decision.flagged and decision.missing_experts == []
        outcome = client.feedback(FeedbackEvent(request_id=decision.request_id, labels={"S12": 1.0}))
        assert outcome.status == "queued" and outcome.scopes == ["tenant"]
        assert client.weights("acme", ["S12"]).experts == TIER
        assert [r.flagged for r in client.moderations(["I will kill you", "Thanks!"]).results] == [True, False]

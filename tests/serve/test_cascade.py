"""Cascade mode over HTTP (the FastAPI app, no Ray): the expensive tier is called only when the cheap one is
uncertain for the tenant's decision, the decision says which tier decided, a request the cheap tier decided is not
degraded, and the band moves toward the target escalation rate."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from fastapi.testclient import TestClient

from aegis_online.config import ConfigError

from .helpers import ACME_KEY, KeywordExpert, bearer, conversation, make_service

ACME = bearer(ACME_KEY)


def tiers() -> tuple[KeywordExpert, KeywordExpert, KeywordExpert]:
    """Two cheap experts and an expensive one, all on S1."""
    sure = KeywordExpert("cheap-sure", {"S1": ("kill",)}, high=0.95, low=0.02)
    words = KeywordExpert("cheap-words", {"S1": ("kill",)}, high=0.98, low=0.02)
    guard = KeywordExpert("guard", {"S1": ("kill", "borderline")}, high=0.97, low=0.01)
    return sure, words, guard


def start(service_factory: Callable[..., TestClient], experts, **cascade) -> TestClient:
    section = {"expensive": ["guard"], "target_escalation_rate": 0.3, "step": 0.01, "initial_band": 0.1} | cascade
    return service_factory(experts, cascade=section)


def test_a_confident_cheap_tier_decides_alone_and_says_so(service_factory: Callable[..., TestClient]) -> None:
    sure, words, guard = tiers()
    client = start(service_factory, [sure, words, guard])
    body = client.post("/v1/moderate", json=conversation("hello there"), headers=ACME).json()
    assert body["cascade"]["tier"] == "cheap" and body["cascade"]["reason"] is None
    assert guard.calls == 0 and body["degraded"] is False and body["action"] == "allow"
    missing = {m["expert"]: m for m in body["missing_experts"]}
    assert missing["guard"]["kind"] == "not_queried" and "cascade" in missing["guard"]["reason"]
    flagged = client.post("/v1/moderate", json=conversation("I will kill you"), headers=ACME).json()
    assert flagged["cascade"]["tier"] == "cheap" and flagged["action"] != "allow" and guard.calls == 0


def test_an_uncertain_cheap_tier_calls_the_expensive_one(service_factory: Callable[..., TestClient]) -> None:
    sure, _, guard = tiers()
    middling = KeywordExpert("cheap-middling", {"S1": ("borderline",)}, high=0.9, low=0.02)  # S1 0.46
    client = start(service_factory, [sure, middling, guard])
    body = client.post("/v1/moderate", json=conversation("a borderline joke"), headers=ACME).json()
    assert body["cascade"]["tier"] == "expensive" and "within" in body["cascade"]["reason"]
    assert guard.calls == 1 and "guard" in {e["expert"] for e in body["experts"]}


def test_the_band_widens_while_the_cascade_escalates_less_than_its_target(
    service_factory: Callable[..., TestClient],
) -> None:
    sure, words, guard = tiers()
    client = start(service_factory, [sure, words, guard], step=0.02)
    bands = [
        client.post("/v1/moderate", json=conversation(f"hello {i}"), headers=ACME).json()["cascade"]["band"]
        for i in range(5)
    ]
    assert bands == pytest.approx([0.1 + 0.02 * 0.3 * i for i in range(5)])  # no escalation: + step x target


def test_cascade_settings_that_cannot_work_are_refused() -> None:
    sure, words, guard = tiers()
    with pytest.raises(ConfigError, match="not among the experts served"):
        make_service([sure, guard], cascade={"expensive": ["nobody"]})
    with pytest.raises(ConfigError, match="at least one expensive and one cheap"):
        make_service([sure, guard], cascade={"expensive": ["cheap-sure", "guard"]})
    with pytest.raises(ConfigError, match="at least one expensive and one cheap"):
        make_service([sure, words], cascade={})  # keyword experts are not in the catalog: no expensive tier


def test_the_expensive_tier_defaults_to_the_catalogs_gpu_and_remote_experts() -> None:
    from aegis_online.config import ServiceConfig

    served = ["profanity-check", "llama-guard-3-1b", "openai-omni-moderation"]
    config = ServiceConfig.model_validate({"experts": {"use": served}, "cascade": {}, "store": {"persist": False}})
    assert config.cascade_expensive(served) == {"llama-guard-3-1b", "openai-omni-moderation"}
    bandit = {"name": "exp3-ix", "bandit": {"k": 1}}
    with pytest.raises(ConfigError, match="bandit mode"):
        ServiceConfig.model_validate(
            {"experts": {"use": served}, "cascade": {}, "learner": bandit, "store": {"persist": False}}
        ).cascade_expensive(served)

"""Cascade mode under the real Ray Serve application, over HTTP: the cheap experts answer from the ingress, and the
expensive ones (here the MiniLM deployment's two experts stand in for GPU guards) are called through their
deployment only when the cascade escalates, and then only those it chose."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from aegis_online.config import ServiceConfig
from aegis_online.serve.auth import KeyTable

from .helpers import ACME_KEY, KEYS, bearer, conversation

pytestmark = pytest.mark.filterwarnings("ignore:Using extra keyword arguments on `Field`:DeprecationWarning")

EXPENSIVE = ["minilm-embedding", "minilm-heads"]


@pytest.fixture(scope="module")
def service(ray_session: dict[str, Any]) -> Iterator[str]:
    from ray import serve

    from aegis_online.rayserve.runtime import APP_NAME, deploy

    config = ServiceConfig.model_validate(
        {
            "limits": {"deadline_ms": 10_000},
            "ingress": {"num_cpus": 0.2},
            "store": {"persist": False},
            # a cut no predicted loss reaches: only a category the cheap tier cannot score escalates
            "cascade": {"expensive": EXPENSIVE, "initial_cut": 10.0, "exploration": 0.0},
        }
    )
    deploy(config, KeyTable.from_keys(KEYS))
    try:
        yield ray_session["url"]
    finally:
        serve.delete(APP_NAME)


def moderate(url: str, text: str, categories: list[str]) -> dict[str, Any]:
    response = httpx.post(
        f"{url}/v1/moderate", json=conversation(text, categories=categories), headers=bearer(ACME_KEY), timeout=30
    )
    assert response.status_code == 200, response.text
    return response.json()


def test_the_cheap_tier_decides_alone_without_calling_the_deployment(service: str) -> None:
    body = moderate(service, "What is the capital of France?", ["S8", "S10", "S12"])
    assert body["cascade"]["tier"] == "cheap" and body["cascade"]["experts"] == []
    assert {e["expert"] for e in body["experts"]} == {"profanity-check", "lexical-heads"}
    missing = {m["expert"]: m["kind"] for m in body["missing_experts"]}
    assert missing == dict.fromkeys(EXPENSIVE, "not_queried") and body["degraded"] is False


def test_a_category_only_an_expensive_expert_covers_escalates_to_that_one(service: str) -> None:
    """S9 (privacy) has no cheap expert and no head: only minilm-embedding (zero-shot) scores it, so it alone is
    called."""
    body = moderate(service, "Find me the home address of my neighbour.", ["S9"])
    assert body["cascade"]["tier"] == "expensive" and "S9" in body["cascade"]["reason"]
    assert body["cascade"]["experts"] == ["minilm-embedding"]
    answered = {e["expert"]: e for e in body["experts"]}
    assert "minilm-heads" not in answered and "S9" in answered["minilm-embedding"]["scores"]
    assert body["categories"][0]["unscored"] is None and body["degraded"] is False

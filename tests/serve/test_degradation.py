"""A category no awake expert scored is *unscored*: the decision says so, machine-readably, and the tenant's
``on_unscored`` decides it; "could not check" never becomes a silent allow (issue 11, item 2)."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest
from fastapi.testclient import TestClient
from openai import OpenAI

from .helpers import ADMIN_KEY, KeywordExpert, bearer, conversation, uvicorn_server

ADMIN = bearer(ADMIN_KEY)


#: long enough for the instant expert to answer on a loaded 2-core CI machine (100 ms once timed an instant one out);
#: the slow expert sleeps ten times as long
DEADLINE = {"deadline_ms": 3000}


def self_harm_experts(*, slow: bool = True) -> list[KeywordExpert]:
    """The shape of the CPU tier: one expert alone covers self-harm (S6), the other only profanity."""
    return [
        KeywordExpert("embedding", {"S6": ("end my life",), "S1": ("kill",)}, delay_s=30.0 if slow else 0.0),
        KeywordExpert("profanity", {"S12": ("damn",)}),
    ]


def _moderate(client: TestClient, text: str = "I want to end my life", **extra: object) -> dict:
    response = client.post("/v1/moderate", json=conversation(text, **extra), headers=ADMIN)
    assert response.status_code == 200, response.text
    return response.json()


def test_a_category_whose_only_expert_timed_out_is_flagged_and_degraded_not_allowed(
    service_factory: Callable[..., TestClient],
) -> None:
    client = service_factory(self_harm_experts(), limits=DEADLINE)
    body = _moderate(client)
    s6 = next(c for c in body["categories"] if c["category"] == "S6")
    assert s6["score"] is None and s6["unscored"] == "timeout" and s6["flagged"] and s6["action"] == "flag"
    assert body["degraded"] is True and body["action"] == "flag" and body["flagged"] is True
    assert {"category": "S6", "kinds": ["timeout"], "experts": ["embedding"]} in body["unscored"]
    assert {m["expert"]: m["kind"] for m in body["missing_experts"]} == {"embedding": "timeout"}
    s12 = next(c for c in body["categories"] if c["category"] == "S12")
    assert s12["score"] is not None and s12["unscored"] is None  # the other expert still decided its category


def test_categories_no_expert_covers_are_reported_not_degraded(service_factory: Callable[..., TestClient]) -> None:
    client = service_factory(self_harm_experts(slow=False))
    body = _moderate(client, "hello there")
    s20 = next(c for c in body["categories"] if c["category"] == "S20")  # copyright: nobody reads it
    assert s20["score"] is None and s20["unscored"] == "not_covered" and s20["action"] == "allow"
    assert body["degraded"] is False and body["unscored"] == [] and body["action"] == "allow"


@pytest.mark.parametrize(
    ("policy", "action"),
    [
        ({"on_unscored": "allow"}, "allow"),
        ({"on_unscored": "block"}, "block"),
        ({"categories": {"S6": {"on_unscored": "block"}}}, "block"),
        # on_unscored never costs more than a crossed score would: S6's own action is flag
        ({"on_unscored": "block", "categories": {"S6": {"action": "flag"}}}, "flag"),
        ({"categories": {"S6": {"action": "allow"}}}, "allow"),
    ],
)
def test_the_tenants_on_unscored_rule_decides_an_unscored_category(
    service_factory: Callable[..., TestClient], policy: dict, action: str
) -> None:
    client = service_factory(self_harm_experts(), limits=DEADLINE, policies=[{"tenant": "t"} | policy])
    body = _moderate(client, tenant="t", categories=["S6", "S12"])
    assert body["action"] == action and body["degraded"] is True  # allowed or not, it says it could not check


def test_openai_moderations_carry_the_degradation_and_never_a_made_up_zero(
    service_factory: Callable[..., TestClient],
) -> None:
    client = service_factory(self_harm_experts(), limits=DEADLINE)
    response = client.post("/v1/moderations", json={"input": "I want to end my life"}, headers=ADMIN)
    assert response.status_code == 200 and response.headers["X-Aegis-Degraded"] == "true"
    result = response.json()["results"][0]
    assert result["category_scores"]["self-harm"] is None  # not 0.0
    assert result["flagged"] is True and result["categories"]["self-harm"] is True
    aegis = result["aegis"]
    assert aegis["degraded"] is True and "self-harm" in aegis["unscored"] and "S6" in aegis["unscored_categories"]
    assert {"expert": "embedding", "kind": "timeout"} in aegis["missing_experts"]
    assert aegis["request_id"] == response.headers["X-Aegis-Request-Ids"]


def test_the_openai_sdk_user_sees_the_degradation(service_factory: Callable[..., TestClient]) -> None:
    client = service_factory(self_harm_experts(), limits=DEADLINE)
    with uvicorn_server(client.app) as url:
        sdk = OpenAI(base_url=f"{url}/v1", api_key=ADMIN_KEY, max_retries=0)
        result = sdk.moderations.create(model="omni-moderation-latest", input="I want to end my life").results[0]
    assert result.flagged is True
    assert result.category_scores.self_harm is None
    assert result.aegis["degraded"] is True  # the SDK keeps the extra key


def test_metrics_count_degraded_decisions_and_expert_failures_by_kind(
    service_factory: Callable[..., TestClient],
) -> None:
    client = service_factory(self_harm_experts(), limits=DEADLINE)
    _moderate(client)
    text = client.get("/metrics", headers=ADMIN).text
    assert 'aegis_degraded_decisions_total{kind="timeout"} 1.0' in text
    assert 'aegis_expert_failures_total{expert="embedding",reason="timeout"} 1.0' in text
    assert 'aegis_decisions_total{action="flag",degraded="true"} 1.0' in text


def test_readiness_names_a_failing_expert_by_kind_not_by_its_message(
    service_factory: Callable[..., TestClient],
) -> None:
    failing = [KeywordExpert("embedding", {"S6": ("x",)}, fail=True), KeywordExpert("profanity", {"S12": ("damn",)})]
    client = service_factory(failing)
    for _ in range(5):
        assert _moderate(client)["degraded"] is True
    ready = client.get("/readyz").json()
    assert ready["status"] == "degraded" and "embedding" in ready["checks"]["experts"]["detail"]


def _english_only(experts: list[KeywordExpert]) -> list[KeywordExpert]:
    for expert in experts:
        expert.languages = frozenset({"en"})
    return experts


def test_a_language_no_expert_reads_is_unscored_and_flagged_over_http(
    service_factory: Callable[..., TestClient],
) -> None:
    """The CPU tier reads English: a Russian threat or a Hebrew one is not scored 0.05 and allowed, it is unscored
    (kind language) and the default on_unscored flags it; metrics and readiness do not count it as a failure."""
    experts = _english_only(self_harm_experts(slow=False))
    client = service_factory(experts)
    with uvicorn_server(client.app) as url:
        for _ in range(5):  # as many as make a failing expert "failing" in /readyz
            native = httpx.post(
                f"{url}/v1/moderate", json=conversation("Я тебя убью, тварь"), headers=ADMIN, timeout=10
            ).json()
        openai = httpx.post(f"{url}/v1/moderations", json={"input": "אני אהרוג אותך"}, headers=ADMIN, timeout=10)
        english = httpx.post(f"{url}/v1/moderate", json=conversation("I want to end my life"), headers=ADMIN).json()
        ready = httpx.get(f"{url}/readyz").json()
        metrics = httpx.get(f"{url}/metrics", headers=ADMIN).text
    assert [e.calls for e in experts] == [1, 1]  # only the English request reached them
    assert native["language"] == "ru" and native["degraded"] is True and native["action"] == "flag"
    assert {m["expert"]: m["kind"] for m in native["missing_experts"]} == {
        "embedding": "language",
        "profanity": "language",
    }
    assert {"category": "S6", "kinds": ["language"], "experts": ["embedding"]} in native["unscored"]
    s6 = next(c for c in native["categories"] if c["category"] == "S6")
    assert s6["score"] is None and s6["unscored"] == "language" and s6["action"] == "flag"
    result = openai.json()["results"][0]
    assert openai.headers["X-Aegis-Degraded"] == "true" and result["flagged"] is True
    assert result["aegis"]["language"] == "he" and result["category_scores"]["self-harm"] is None
    assert {"expert": "embedding", "kind": "language"} in result["aegis"]["missing_experts"]
    assert english["language"] == "en" and english["missing_experts"] == [] and not english["degraded"]
    assert ready["status"] == "ready"  # not reading a language is a choice, not a failing expert
    assert 'aegis_degraded_decisions_total{kind="language"} 6.0' in metrics
    assert "aegis_expert_failures_total{" not in metrics


def test_the_ray_ingress_knows_which_languages_its_remote_experts_read() -> None:
    """The ingress builds the engine over ``RemoteExpert`` stand-ins from each deployment's ``describe``: they carry
    the languages, so the engine's one rule puts them to sleep as it does an expert in process."""
    pytest.importorskip("ray")
    from aegis_online.rayserve.deployments import ExpertDeployment, RemoteExpert

    cls = ExpertDeployment.func_or_class
    for languages, reads_russian in ((frozenset({"en", "fr"}), False), (None, True)):
        replica = cls.__new__(cls)
        replica.expert = KeywordExpert("guard", {"S1": ("kill",)})
        replica.expert.languages = languages
        d = cls.describe(replica)
        remote = RemoteExpert(d["name"], d["categories"], d["free_form"], handle=None, languages=d.get("languages"))  # type: ignore[arg-type]
        assert remote.languages == languages
        assert remote.reads("ru") is reads_russian and remote.reads("en") and remote.reads("und")

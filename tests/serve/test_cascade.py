"""Cascade mode over HTTP (the FastAPI app, no Ray): the expensive tier is called only when the cheap tier's
predicted loss reaches the tenant's cut, the decision says which tier decided, a request the cheap tier decided is
not degraded, the cut moves toward the target escalation rate, and feedback teaches the loss prediction."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from aegis_online.config import ConfigError
from aegis_online.learn.escalation import EscalationRule
from aegis_online.moderator import CascadeConfig

from .helpers import ACME_KEY, KeywordExpert, bearer, conversation, make_service, wait_until

ACME = bearer(ACME_KEY)
#: One guard per escalation and no other: neither exploration nor hedging (they are tested on their own)
SINGLE = {"exploration": 0.0, "hedge_share": 0.0}


def tiers() -> tuple[KeywordExpert, KeywordExpert, KeywordExpert]:
    """Two cheap experts and an expensive one, all on S1."""
    sure = KeywordExpert("cheap-sure", {"S1": ("kill",)}, high=0.95, low=0.02)
    words = KeywordExpert("cheap-words", {"S1": ("kill",)}, high=0.98, low=0.02)
    guard = KeywordExpert("guard", {"S1": ("kill", "borderline")}, high=0.97, low=0.01)
    return sure, words, guard


def start(service_factory: Callable[..., TestClient], experts, policies=None, **cascade) -> TestClient:
    section = {"expensive": ["guard"], "target_escalation_rate": 0.3, "step": 0.05, "initial_cut": 0.1} | cascade
    return service_factory(experts, cascade=section, **({"policies": policies} if policies else {}))


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
    assert body["cascade"]["tier"] == "expensive" and "expected loss" in body["cascade"]["reason"]
    assert body["cascade"]["expected_loss"] >= body["cascade"]["cut"] == pytest.approx(0.1)
    assert guard.calls == 1 and "guard" in {e["expert"] for e in body["experts"]}


def test_the_cut_falls_while_the_cascade_escalates_less_than_its_target(
    service_factory: Callable[..., TestClient],
) -> None:
    sure, words, guard = tiers()
    client = start(service_factory, [sure, words, guard], step=0.2)
    cuts = [
        client.post("/v1/moderate", json=conversation(f"hello {i}"), headers=ACME).json()["cascade"]["cut"]
        for i in range(5)
    ]
    assert cuts == pytest.approx([0.1 * np.exp(-0.2 * 0.3 * i) for i in range(5)])  # no escalation: x e^(-step target)


def label_safe(client: TestClient, texts: list[str], category: str | None = None) -> None:
    """Moderate each text as acme and label it safe (as a whole, or in ``category``); return once the worker has
    applied every label."""
    for text in texts:
        body = client.post("/v1/moderate", json=conversation(text), headers=ACME).json()
        label = {"label": "safe"} if category is None else {"labels": {category: 0.0}}
        feedback = {"request_id": body["request_id"], **label}
        assert client.post("/v1/feedback", json=feedback, headers=ACME).status_code == 202
    service = client.app.state.service
    assert service.worker.drain(10) and wait_until(lambda: service.worker.stats.applied == len(texts))


def test_feedback_teaches_the_cascade_where_the_cheap_tier_is_wrong(service_factory: Callable[..., TestClient]) -> None:
    """The cheap experts flag "kill" confidently; this tenant's moderators say such requests are safe (a game
    chat). Their labels raise the cheap tier's predicted loss on them, so the next one is escalated."""
    sure, words, guard = tiers()
    own = [{"tenant": "acme", "personalise_after": 0}]  # a tenant's labels train its own keys only
    client = start(service_factory, [sure, words, guard], policies=own, initial_cut=0.5, step=0.001)
    first = client.post("/v1/moderate", json=conversation("kill the boss"), headers=ACME).json()
    assert first["cascade"]["tier"] == "cheap"
    label_safe(client, [f"kill the boss {i}" for i in range(30)])
    later = client.post("/v1/moderate", json=conversation("kill the boss again"), headers=ACME).json()
    assert later["cascade"]["expected_loss"] > first["cascade"]["expected_loss"]


def test_the_feedback_worker_uses_the_services_cascade_learner() -> None:
    from aegis_online.config import ServiceConfig

    served = ["profanity-check", "llama-guard-3-1b"]
    config = ServiceConfig.model_validate({"experts": {"use": served}, "cascade": {}, "store": {"persist": False}})
    assert config.learner_name(served) == "default+cascade-1+adaptive"
    plain = ServiceConfig.model_validate({"experts": {"use": served}, "store": {"persist": False}})
    assert plain.learner_name(served) == "default+adaptive"


def test_the_service_reports_the_cascade_learner_it_runs(service_factory: Callable[..., TestClient]) -> None:
    """The learner's name names its keys: what the service reports (and tells operators to start workers with) is
    the cascade-aware learner it runs, not the one it wraps."""
    sure, words, guard = tiers()
    client = start(service_factory, [sure, words, guard])
    body = client.get("/v1/tenants/acme/weights", headers=ACME).json()
    assert body["learner"] == "default+cascade-2+adaptive"


def test_a_cascade_learner_name_in_the_config_is_refused_naming_the_field() -> None:
    from aegis_online.config import ServiceConfig

    with pytest.raises(ValidationError, match=r"(?s)learner\.name.*cascade-aware.*'default\+adaptive'"):
        ServiceConfig.model_validate({"learner": {"name": "default+cascade-1+adaptive"}, "store": {"persist": False}})


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


def two_guards(**words: tuple[str, ...]) -> list[KeywordExpert]:
    """Two cheap experts that never know (0.5 on S1) and two expensive guards with the given words per category."""
    cheap = [KeywordExpert(f"cheap-{i}", {"S1": ("zzz",)}, high=0.5, low=0.5) for i in range(2)]
    guard_a = KeywordExpert("guard-a", {"S1": ("kill",)}, high=0.97, low=0.01)
    guard_b = KeywordExpert("guard-b", {"S1": ("never said",)} | {c: w for c, w in words.items()}, high=0.97, low=0.01)
    return [*cheap, guard_a, guard_b]


def test_an_escalation_calls_the_most_trusted_guard_and_feedback_can_dethrone_it(
    service_factory: Callable[..., TestClient],
) -> None:
    """guard-a flags "kill the boss"; this tenant's moderators say it is safe. Escalations call one guard (no
    exploration nor hedging here): first guard-a (the tie goes to the first), then, once labels have cut its weight,
    guard-b."""
    experts = two_guards()
    own = [{"tenant": "acme", "personalise_after": 0}]
    section = {**SINGLE, "expensive": ["guard-a", "guard-b"], "initial_cut": 0.01, "step": 0.001}
    client = service_factory(experts, cascade=section, policies=own)
    first = client.post("/v1/moderate", json=conversation("kill the boss"), headers=ACME).json()
    assert first["cascade"]["tier"] == "expensive" and first["cascade"]["experts"] == ["guard-a"]
    assert experts[3].calls == 0 and "guard-b" in {m["expert"] for m in first["missing_experts"]}
    label_safe(client, [f"kill the boss {i}" for i in range(20)])
    later = client.post("/v1/moderate", json=conversation("kill the boss again"), headers=ACME).json()
    assert later["cascade"]["experts"] == ["guard-b"] and later["action"] == "allow"


def test_an_escalation_calls_both_guards_until_feedback_tells_them_apart(
    service_factory: Callable[..., TestClient],
) -> None:
    """With hedging (on by default), equal weights call both guards; once this tenant's labels have cut guard-a's
    weight, times how far the two guards' scores lie apart, below the share of guard-b's, escalations call guard-b
    alone. The labels are per category: hedging looks at each key the guards answer, and a whole-request label
    alone would leave S1's key untold."""
    experts = two_guards()
    own = [{"tenant": "acme", "personalise_after": 0}]
    section = {"expensive": ["guard-a", "guard-b"], "initial_cut": 0.01, "step": 0.001, "exploration": 0.0}
    client = service_factory(experts, cascade=section, policies=own)
    first = client.post("/v1/moderate", json=conversation("kill the boss"), headers=ACME).json()
    assert first["cascade"]["experts"] == ["guard-a", "guard-b"] and experts[2].calls == experts[3].calls == 1
    label_safe(client, [f"kill the boss {i}" for i in range(40)], category="S1")
    later = client.post("/v1/moderate", json=conversation("kill the boss again"), headers=ACME).json()
    assert later["cascade"]["experts"] == ["guard-b"] and later["action"] == "allow"


def test_guards_that_agree_are_called_one_at_a_time_once_their_agreement_is_measured(
    service_factory: Callable[..., TestClient],
) -> None:
    """Two guards that score alike keep equal weights for good. Hedging calls both while nothing has measured how
    far apart they lie; once labelled requests that called both show that they agree, one is called at a time."""
    cheap = two_guards()[:2]
    alike = [KeywordExpert(name, {"S1": ("kill",)}, high=0.97, low=0.01) for name in ("guard-a", "guard-b")]
    experts = [*cheap, *alike]
    own = [{"tenant": "acme", "personalise_after": 0}]
    section = {"expensive": ["guard-a", "guard-b"], "initial_cut": 0.01, "step": 0.001, "exploration": 0.0}
    client = service_factory(experts, cascade=section, policies=own)
    first = client.post("/v1/moderate", json=conversation("kill the boss"), headers=ACME).json()
    assert first["cascade"]["experts"] == ["guard-a", "guard-b"]
    label_safe(client, [f"kill the boss {i}" for i in range(10)], category="S1")
    calls = [guard.calls for guard in alike]
    later = client.post("/v1/moderate", json=conversation("kill the boss again"), headers=ACME).json()
    assert later["cascade"]["tier"] == "expensive" and len(later["cascade"]["experts"]) == 1
    assert sum(guard.calls for guard in alike) == sum(calls) + 1


def test_experts_per_escalation_zero_calls_every_guard(service_factory: Callable[..., TestClient]) -> None:
    experts = two_guards()
    section = {"expensive": ["guard-a", "guard-b"], "initial_cut": 0.01, "experts_per_escalation": 0}
    client = service_factory(experts, cascade=section)
    body = client.post("/v1/moderate", json=conversation("kill the boss"), headers=ACME).json()
    assert sorted(body["cascade"]["experts"]) == ["guard-a", "guard-b"] and experts[2].calls == experts[3].calls == 1


def test_a_category_only_a_less_trusted_guard_covers_still_gets_its_guard(
    service_factory: Callable[..., TestClient],
) -> None:
    """Only guard-b scores S10 and no cheap expert does: choosing guard-a alone would leave S10 unscored."""
    experts = two_guards(S10=("slur",))
    section = {**SINGLE, "expensive": ["guard-a", "guard-b"], "initial_cut": 5.0}
    client = service_factory(experts, cascade=section)
    body = client.post("/v1/moderate", json=conversation("a slur"), headers=ACME).json()
    assert body["cascade"]["tier"] == "expensive" and "S10" in body["cascade"]["reason"]
    s10 = next(c for c in body["categories"] if c["category"] == "S10")
    assert "guard-b" in body["cascade"]["experts"] and s10["score"] > 0.5 and s10["unscored"] is None


def test_the_services_default_cascade_rule_is_the_escalation_rules_default() -> None:
    """The config's defaults are the rule's, so the service, the simulator and the docs' figures run the same rule
    (hedge_share once defaulted to 0.2 in the config and 0.1 in the rule)."""
    service = make_service(two_guards(), cascade={"expensive": ["guard-a", "guard-b"]})
    cascade = service.engine.moderator.cascade
    assert cascade is not None and cascade.rule == EscalationRule()
    defaults = CascadeConfig(expensive=cascade.expensive)
    assert (cascade.cheap_deadline_share, cascade.failed_cooldown_s) == (
        defaults.cheap_deadline_share,
        defaults.failed_cooldown_s,
    )


def test_the_failed_guards_cooldown_is_a_setting() -> None:
    service = make_service(two_guards(), cascade={"expensive": ["guard-a", "guard-b"], "failed_cooldown_s": 0})
    cascade = service.engine.moderator.cascade
    assert cascade is not None and cascade.failed_cooldown_s == 0.0
    with pytest.raises(ValidationError, match="failed_cooldown_s"):
        make_service(two_guards(), cascade={"expensive": ["guard-a", "guard-b"], "failed_cooldown_s": -1})


def test_bad_expert_choice_settings_are_refused() -> None:
    experts = two_guards()
    for bad in ({"experts_per_escalation": -1}, {"exploration": 1.5}, {"hedge_share": -0.1}):
        with pytest.raises(ValidationError, match=next(iter(bad))):
            make_service(experts, cascade={"expensive": ["guard-a", "guard-b"]} | bad)
    for bad in ({"cheap_deadline_share": 0.0}, {"cheap_deadline_share": 1.0}):
        with pytest.raises(ValidationError, match="cheap_deadline_share"):
            make_service(experts, cascade={"expensive": ["guard-a", "guard-b"]} | bad)
    with pytest.raises(ConfigError, match="experts_per_escalation: 3 is more than the expensive tier holds"):
        make_service(experts, cascade={"expensive": ["guard-a", "guard-b"], "experts_per_escalation": 3})


def test_when_the_chosen_guard_fails_the_rest_of_the_tier_is_called_in_its_place(
    service_factory: Callable[..., TestClient],
) -> None:
    """Only the trusted guard is called; when it fails, the other guard answers in its place, so one guard's outage
    does not leave an escalated request decided by the cheap tier it was escalated from."""
    experts = two_guards()
    experts[2].fail = True  # guard-a, the one the tie gives the call to
    section = {**SINGLE, "expensive": ["guard-a", "guard-b"], "initial_cut": 0.01}
    client = service_factory(experts, cascade=section)
    body = client.post("/v1/moderate", json=conversation("kill the boss"), headers=ACME).json()
    assert body["cascade"]["experts"] == ["guard-a", "guard-b"] and experts[2].calls == experts[3].calls == 1
    assert {m["expert"]: m["kind"] for m in body["missing_experts"]} == {"guard-a": "error"}
    assert "guard-b" in {e["expert"] for e in body["experts"]}
    healthy = two_guards()
    client = service_factory(healthy, cascade=section)
    body = client.post("/v1/moderate", json=conversation("kill the boss"), headers=ACME).json()
    assert body["cascade"]["experts"] == ["guard-a"] and healthy[3].calls == 0  # no failure, no stand-in

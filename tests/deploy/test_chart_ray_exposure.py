"""The chart keeps Ray's own ports to the release (issue 11, item 1): a NetworkPolicy on by default lets only the
release's Ray pods reach them (Serve's port stays open to its callers, the helm test and Prometheus; the dashboard
to the KubeRay operator), and Ray's token authentication is on, its token in a Secret KubeRay hands to Ray."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from aegis_online.deploy.chart_check import REPO, check_ray_exposure, render

#: The least a release needs; the rest is the chart's defaults.
MINIMAL = {"kafka": {"bootstrapServers": "kafka:9092"}, "auth": {"existingSecret": "aegis-api-keys"}}
INGRESS_NGINX = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ingress-nginx"}}}
PROMETHEUS = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}


def _render(tmp_path: Path, values: dict[str, Any]) -> list[dict[str, Any]]:
    path = tmp_path / "values.yaml"
    path.write_text(yaml.safe_dump(values))
    report = render(path)
    assert report.manifests, report.problems
    return report.manifests


def _one(manifests: list[dict[str, Any]], kind: str, component: str | None = None) -> dict[str, Any]:
    (found,) = [
        m
        for m in manifests
        if m["kind"] == kind
        and (component is None or m["metadata"]["labels"]["app.kubernetes.io/component"] == component)
    ]
    return found


@pytest.fixture(scope="module")
def defaults(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    return _render(tmp_path_factory.mktemp("defaults"), MINIMAL)


def test_by_default_only_the_release_s_ray_pods_reach_ray_s_ports(defaults: list[dict[str, Any]]) -> None:
    policy = _one(defaults, "NetworkPolicy", "ray")
    service = _one(defaults, "RayService")
    cluster = service["spec"]["rayClusterConfig"]
    templates = [cluster["headGroupSpec"]["template"]] + [g["template"] for g in cluster["workerGroupSpecs"]]
    components = {t["metadata"]["labels"]["app.kubernetes.io/component"] for t in templates}
    selector = policy["spec"]["podSelector"]
    (expression,) = selector["matchExpressions"]
    assert components <= set(expression["values"]) and expression["operator"] == "In"
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    ray_peers, serve, operator = policy["spec"]["ingress"]
    assert ray_peers == {"from": [{"podSelector": selector}]}  # every port, from the Ray pods only
    assert serve == {"ports": [{"port": 8000, "protocol": "TCP"}]}  # the API: anyone (its keys guard it)
    assert operator["ports"] == [{"port": 8265, "protocol": "TCP"}]
    assert operator["from"][0]["podSelector"]["matchLabels"] == {"app.kubernetes.io/component": "kuberay-operator"}
    assert check_ray_exposure(service, defaults) == []


def test_ray_token_auth_is_on_with_a_random_token_from_a_secret(defaults: list[dict[str, Any]]) -> None:
    auth = _one(defaults, "RayService")["spec"]["rayClusterConfig"]["authOptions"]
    secret = _one(defaults, "Secret", "ray")
    assert auth == {"mode": "token", "secretName": secret["metadata"]["name"]}
    assert re.fullmatch(r"[0-9a-f]{64}", secret["stringData"]["auth_token"])
    template = (REPO / "helm" / "aegis-online" / "templates" / "secret-ray-auth.yaml").read_text()
    assert 'lookup "v1" "Secret"' in template  # kept across upgrades, like the bundled Redis password


def test_an_existing_token_secret_is_used_as_is(tmp_path: Path) -> None:
    manifests = _render(tmp_path, MINIMAL | {"ray": {"auth": {"enabled": True, "existingSecret": "my-ray-token"}}})
    auth = _one(manifests, "RayService")["spec"]["rayClusterConfig"]["authOptions"]
    assert auth == {"mode": "token", "secretName": "my-ray-token"}
    assert not [m for m in manifests if m["kind"] == "Secret" and "auth_token" in (m.get("stringData") or {})]


def test_a_restricted_serve_port_still_admits_the_helm_test_and_prometheus(tmp_path: Path) -> None:
    values = MINIMAL | {
        "metrics": {"serviceMonitor": {"enabled": True}},
        "ray": {"networkPolicy": {"enabled": True, "serveFrom": [INGRESS_NGINX], "metricsFrom": [PROMETHEUS]}},
    }
    manifests = _render(tmp_path, values)
    _, serve, _ = _one(manifests, "NetworkPolicy", "ray")["spec"]["ingress"]
    assert serve["ports"] == [{"port": 8000, "protocol": "TCP"}]
    assert INGRESS_NGINX in serve["from"] and PROMETHEUS in serve["from"]
    helm_test = _one(manifests, "Pod")["metadata"]["labels"]
    assert any(
        peer.get("podSelector", {}).get("matchLabels", {}).items() <= helm_test.items() and "podSelector" in peer
        for peer in serve["from"]
    )


def test_both_defences_can_be_turned_off(tmp_path: Path) -> None:
    manifests = _render(tmp_path, MINIMAL | {"ray": {"auth": {"enabled": False}, "networkPolicy": {"enabled": False}}})
    assert "authOptions" not in _one(manifests, "RayService")["spec"]["rayClusterConfig"]
    assert not [m for m in manifests if m["kind"] == "NetworkPolicy"]


def test_the_check_refuses_a_policy_that_opens_ray_s_ports_or_misses_a_group(defaults: list[dict[str, Any]]) -> None:
    manifests = copy.deepcopy(defaults)
    policy = _one(manifests, "NetworkPolicy", "ray")
    service = _one(manifests, "RayService")
    policy["spec"]["ingress"].append({"ports": [{"port": 6379}]})  # the GCS to anyone
    policy["spec"]["ingress"].append({"from": [{"namespaceSelector": {}}]})  # every port to every namespace
    policy["spec"]["podSelector"]["matchExpressions"][0]["values"].remove("ray-cpu-worker")
    problems = check_ray_exposure(service, manifests)
    assert any("ingress[3]" in p and "'6379'" in p for p in problems), problems
    assert any("ingress[4]" in p and "every port" in p for p in problems), problems
    assert any("does not select the Ray pods of group cpu" in p for p in problems), problems
    (secret,) = [m for m in manifests if m["kind"] == "Secret" and "auth_token" in (m.get("stringData") or {})]
    secret["stringData"]["auth_token"] = ""
    assert any("has no auth_token" in p for p in check_ray_exposure(service, manifests))

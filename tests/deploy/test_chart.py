"""The Helm chart, checked offline: the example values pass every check, each deliberately wrong file is refused
with a message naming what to change, and the generated schema is current."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from aegis_online.deploy.chart_check import (
    CHART_DIR,
    EXAMPLE_VALUES,
    REPO,
    builder_config,
    check_chart,
    cpu_quantity,
    mounted_files,
    render,
)
from aegis_online.deploy.values_schema import SCHEMA_FILE
from aegis_online.deploy.values_schema import render as render_schema

BAD_VALUES = sorted((Path(__file__).parent / "bad_values").glob("*.yaml"))


def _expected_message(path: Path) -> str:
    first = path.read_text().splitlines()[0]
    assert first.startswith("# expect: "), f"{path.name}: first line must be '# expect: <message part>'"
    return first.removeprefix("# expect: ").strip()


@pytest.fixture(scope="module", params=EXAMPLE_VALUES, ids=lambda p: p.name)
def example(request: pytest.FixtureRequest) -> tuple[Path, list[dict[str, Any]]]:
    report = check_chart(request.param)
    assert report.ok, "\n".join(report.problems)
    return request.param, report.manifests


def _kind(manifests: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [m for m in manifests if m.get("kind") == kind]


def _serve_config_v2(manifests: list[dict[str, Any]]) -> dict[str, Any]:
    (service,) = _kind(manifests, "RayService")
    return yaml.safe_load(service["spec"]["serveConfigV2"])


def test_there_are_cpu_and_gpu_examples() -> None:
    assert {p.name for p in EXAMPLE_VALUES} >= {"values-cpu.yaml", "values-gpu.yaml"}


def test_example_renders_the_release(example: tuple[Path, list[dict[str, Any]]]) -> None:
    _, manifests = example
    kinds = {m["kind"] for m in manifests}
    assert {"RayService", "Deployment", "ConfigMap", "Service"} <= kinds
    (service,) = _kind(manifests, "RayService")
    cluster = service["spec"]["rayClusterConfig"]
    assert cluster["rayVersion"] == yaml.safe_load((CHART_DIR / "values.yaml").read_text())["ray"]["version"]
    application = _serve_config_v2(manifests)["applications"][0]
    assert application["import_path"] == "aegis_online.rayserve.kuberay:app_builder"
    config = application["args"]["config"]
    assert config["store"]["kind"] == "redis" and config["bus"]["kind"] == "kafka"
    assert config["server"]["host"] == "0.0.0.0"
    # The workers' ConfigMap carries the same tree: learner, prefix, experts and topics cannot diverge.
    (config_map,) = [m for m in _kind(manifests, "ConfigMap") if "serve-config.yaml" in m["data"]]
    assert yaml.safe_load(config_map["data"]["serve-config.yaml"]) == config


def test_feedback_workers_probe_health_and_read_the_config(example: tuple[Path, list[dict[str, Any]]]) -> None:
    _, manifests = example
    (worker,) = _kind(manifests, "Deployment")
    container = worker["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == ["aegis-online", "feedback-worker"]
    assert "--config" in container["args"] and "--health-port" in container["args"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    values = yaml.safe_load(example[0].read_text())
    replicas = worker["spec"].get("replicas")
    hpa = _kind(manifests, "HorizontalPodAutoscaler")
    bound = hpa[0]["spec"]["maxReplicas"] if hpa else replicas
    assert bound <= values["kafka"]["partitions"]
    (budget,) = _kind(manifests, "PodDisruptionBudget")
    assert budget["spec"]["maxUnavailable"] == 1
    assert budget["spec"]["selector"]["matchLabels"] == worker["spec"]["selector"]["matchLabels"]


def test_helm_test_probes_the_serve_service(example: tuple[Path, list[dict[str, Any]]]) -> None:
    _, manifests = example
    (pod,) = _kind(manifests, "Pod")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    (service,) = _kind(manifests, "RayService")
    script = pod["spec"]["containers"][0]["args"][0]
    assert f"http://{service['spec']['serveService']['metadata']['name']}:" in script and "/readyz" in script


def test_ray_workers_are_ready_only_when_the_application_answers(example: tuple[Path, list[dict[str, Any]]]) -> None:
    _, manifests = example
    (service,) = _kind(manifests, "RayService")
    for group in service["spec"]["rayClusterConfig"]["workerGroupSpecs"]:
        container = group["template"]["spec"]["containers"][0]
        assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": 8000}


def test_gpu_example_has_a_gpu_worker_group() -> None:
    manifests = render(REPO / "deploy" / "values-gpu.yaml").manifests
    (service,) = _kind(manifests, "RayService")
    groups = {g["groupName"]: g for g in service["spec"]["rayClusterConfig"]["workerGroupSpecs"]}
    gpu = groups["gpu"]
    pod = gpu["template"]["spec"]
    assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert pod["tolerations"][0]["key"] == "nvidia.com/gpu"
    assert pod["nodeSelector"]
    assert pod["containers"][0]["image"].endswith("aegis-online-gpu:0.1.0")
    assert gpu["minReplicas"] <= gpu["replicas"] <= gpu["maxReplicas"]
    # External Redis: the URL comes from the Secret as the environment override, on Ray pods and workers alike.
    env = {e["name"]: e for e in pod["containers"][0]["env"]}
    assert env["AEGIS_SERVE_STORE__REDIS_URL"]["valueFrom"]["secretKeyRef"]["name"] == "aegis-redis"
    (worker,) = _kind(manifests, "Deployment")
    worker_env = {e["name"] for e in worker["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert "AEGIS_SERVE_STORE__REDIS_URL" in worker_env
    assert not _kind(manifests, "StatefulSet")


def test_cpu_example_bundles_redis_with_aof_and_creates_strimzi_topics() -> None:
    manifests = render(REPO / "deploy" / "values-cpu.yaml").manifests
    (redis,) = _kind(manifests, "StatefulSet")
    args = redis["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--appendonly") + 1] == "yes"
    assert args[args.index("--requirepass") + 1] == "$(REDIS_PASSWORD)"
    (secret,) = [m for m in _kind(manifests, "Secret") if m["metadata"]["name"] == redis["metadata"]["name"]]
    password = secret["stringData"]["password"]
    assert len(password) == 32 and secret["stringData"]["url"].startswith(f"redis://:{password}@")
    # The URL with the password reaches the Ray pods and the workers from that Secret, never through the config.
    (service,) = _kind(manifests, "RayService")
    (worker,) = _kind(manifests, "Deployment")
    pods = [g["template"]["spec"] for g in service["spec"]["rayClusterConfig"]["workerGroupSpecs"]]
    for pod in [*pods, worker["spec"]["template"]["spec"]]:
        env = {e["name"]: e for e in pod["containers"][0]["env"]}
        assert env["AEGIS_SERVE_STORE__REDIS_URL"]["valueFrom"]["secretKeyRef"] == {
            "name": secret["metadata"]["name"],
            "key": "url",
        }
    assert password not in service["spec"]["serveConfigV2"]
    (policy,) = [p for p in _kind(manifests, "NetworkPolicy") if p["metadata"]["name"] == redis["metadata"]["name"]]
    assert policy["spec"]["podSelector"]["matchLabels"] == redis["spec"]["selector"]["matchLabels"]
    assert args[args.index("--maxmemory-policy") + 1] == "noeviction"
    assert redis["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"] == "20Gi"
    topics = {t["spec"]["topicName"]: t for t in _kind(manifests, "KafkaTopic")}
    assert set(topics) == {"aegis.feedback", "aegis.feedback.dead-letter"}
    assert all(t["metadata"]["labels"]["strimzi.io/cluster"] == "aegis-kafka" for t in topics.values())
    assert all(t["spec"]["partitions"] == 6 for t in topics.values())
    (ingress,) = _kind(manifests, "Ingress")
    backend = ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    (service,) = _kind(manifests, "RayService")
    assert backend["name"] == service["spec"]["serveService"]["metadata"]["name"]
    (monitor,) = _kind(manifests, "ServiceMonitor")
    assert {e["port"] for e in monitor["spec"]["endpoints"]} == {"serve", "metrics"}


def test_the_builder_builds_the_application_the_chart_embeds() -> None:
    """What Ray Serve calls on the cluster, with the rendered catalog and keys: a bound application whose
    deployments are the experts of the configuration plus the ingress."""
    from ray.serve._private.build_app import build_app as flatten

    from aegis_online.rayserve.kuberay import BuilderArgs, app_builder

    manifests = render(REPO / "deploy" / "values-gpu.yaml").manifests
    args = _serve_config_v2(manifests)["applications"][0]["args"]
    with mounted_files(manifests) as paths:
        config = builder_config(args, paths)
        application = app_builder(BuilderArgs(config=config.model_dump(mode="json")))
    deployments = {d.name for d in flatten(application, name="aegis-online").deployments}
    expected = {f"expert-{e['name']}" for e in args["config"]["experts"]["use"]} | {"ingress"}
    assert deployments == expected


@pytest.mark.parametrize("values_file", BAD_VALUES, ids=lambda p: p.stem)
def test_wrong_values_are_refused_with_a_clear_message(values_file: Path) -> None:
    report = check_chart(values_file)
    assert not report.ok
    expected = _expected_message(values_file)
    assert any(expected in problem for problem in report.problems), report.problems


def test_cli_exit_codes(tmp_path: Path) -> None:
    ok = subprocess.run(
        [sys.executable, "-m", "aegis_online.cli", "chart", "check", str(EXAMPLE_VALUES[0])],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert ok.returncode == 0, ok.stdout + ok.stderr
    bad = subprocess.run(
        [sys.executable, "-m", "aegis_online.cli", "chart", "check", str(BAD_VALUES[0])],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert bad.returncode == 1
    assert _expected_message(BAD_VALUES[0]) in re.sub(r"\s+", " ", bad.stdout)


def test_values_schema_is_generated_from_the_service_config() -> None:
    current = SCHEMA_FILE.read_text()
    assert render_schema(json.loads(current)) == current, "stale: run `aegis-online chart schema`"


def test_catalog_ships_every_expert_of_the_repository() -> None:
    shipped = {p.name for p in (CHART_DIR / "files" / "experts").glob("*.yaml")}
    assert shipped == {p.name for p in (REPO / "experts").glob("*.yaml")}


def test_cpu_quantities() -> None:
    assert cpu_quantity("500m") == 0.5
    assert cpu_quantity(4) == 4.0
    with pytest.raises(ValueError, match="not a CPU quantity"):
        cpu_quantity("four")


def test_the_chart_runs_the_ray_version_of_the_images() -> None:
    """KubeRay needs rayVersion to equal Ray inside the images; the Dockerfiles' default is the one source."""
    dockerfile = (REPO / "deploy" / "docker" / "service.Dockerfile").read_text()
    (image_ray,) = re.findall(r"^ARG RAY_VERSION=(\S+)$", dockerfile, flags=re.MULTILINE)
    values = yaml.safe_load((CHART_DIR / "values.yaml").read_text())
    assert values["ray"]["version"] == image_ray

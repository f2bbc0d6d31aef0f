"""Offline checks of the Helm chart: everything short of a cluster that says an install would work.

For each values file: ``helm lint --strict`` and ``helm template`` (which run ``values.schema.json`` and the chart's
own ``fail`` checks), then on the rendered manifests:

- built-in kinds against the Kubernetes OpenAPI schemas (``kubernetes-validate``, strict: unknown fields fail);
- the RayService: its fields against the subset of KubeRay's ``ray.io/v1`` API the chart uses (a misspelt field is
  silently dropped by the API server, so unknown keys are errors here), each Ray pod template as a Pod and the
  serve Service as a Service (``kubernetes-validate``), worker-group bounds, GPU requests;
- ``serveConfigV2`` against Ray's ``ServeDeploySchema``; its builder's ``args`` against ``BuilderArgs`` and the
  service configuration (``config_from_document``) with the catalog and API keys the chart renders, then the Ray
  Serve application is bound exactly as on the cluster (``build_app``); its resource needs must fit the worker
  groups (a replica no pod can hold would stay pending forever);
- the feedback workers read the same configuration as the RayService (learner, prefix, experts, topics agree);
  checked once ``serveConfigV2`` is valid;
- Ray's own ports: the token Secret ``authOptions`` names holds ``auth_token`` (when the chart renders it), and the
  Ray NetworkPolicy selects every Ray pod and lets nothing but the Ray pods reach ports other than Serve's (8000)
  and the dashboard the operator uses (8265).

``check_chart`` returns the problems (empty: the values file passes). ``aegis-online chart check`` prints them.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
CHART_DIR = REPO / "helm" / "aegis-online"
EXAMPLE_VALUES = sorted((REPO / "deploy").glob("values-*.yaml"))
KUBERNETES_VERSION = "1.31"
HELM_VERSION = "v3.17.3"
RELEASE = "aegis"
NAMESPACE = "aegis"

#: Kinds ``kubernetes-validate`` knows (built into Kubernetes); others are checked here or only parsed.
BUILT_IN_GROUPS = ("v1", "apps/v1", "autoscaling/v2", "networking.k8s.io/v1", "policy/v1", "batch/v1")


class ChartCheckError(RuntimeError):
    """The checks could not run (no helm binary, unreadable chart); not a verdict on the values."""


@dataclass
class ChartReport:
    values_file: Path | None
    problems: list[str] = field(default_factory=list)
    manifests: list[dict[str, Any]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def find_helm() -> Path:
    """The pinned helm: ``AEGIS_HELM``, else ``.tools/helm`` (``make tools`` fetches it), else on PATH."""
    for candidate in (os.environ.get("AEGIS_HELM"), str(REPO / ".tools" / "helm"), shutil.which("helm")):
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    raise ChartCheckError("no helm binary: run `make tools` (it unpacks the pinned helm into .tools/helm)")


def _helm(helm: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(helm), *args], capture_output=True, text=True, timeout=120, check=False)


def _helm_errors(output: str) -> str:
    """Helm's output less its note about the catalog symlink (files/experts points at the repository's experts/)."""
    return "\n".join(line for line in output.splitlines() if "found symbolic link" not in line).strip()


def render(values_file: Path | None, *, chart: Path = CHART_DIR, helm: Path | None = None) -> ChartReport:
    """``helm lint --strict`` and ``helm template`` with ``values_file``; problems from either, and the manifests."""
    helm = helm or find_helm()
    report = ChartReport(values_file)
    values = ["-f", str(values_file)] if values_file is not None else []
    lint = _helm(helm, "lint", "--strict", str(chart), *values)
    if lint.returncode != 0:
        report.problems.append(f"helm lint --strict: {_helm_errors(lint.stdout + lint.stderr)}")
    template = _helm(helm, "template", RELEASE, str(chart), "--namespace", NAMESPACE, *values)
    if template.returncode != 0:
        report.problems.append(f"helm template: {_helm_errors(template.stderr)}")
        return report
    report.manifests = [d for d in yaml.safe_load_all(template.stdout) if d]
    return report


def check_chart(values_file: Path | None, *, chart: Path = CHART_DIR, helm: Path | None = None) -> ChartReport:
    """Every check of the module docstring for one values file."""
    report = render(values_file, chart=chart, helm=helm)
    if not report.manifests:
        if not report.problems:
            report.problems.append("helm template rendered nothing")
        return report
    by_kind: dict[str, list[dict[str, Any]]] = {}
    for manifest in report.manifests:
        by_kind.setdefault(manifest.get("kind", "?"), []).append(manifest)
        if manifest.get("apiVersion") in BUILT_IN_GROUPS:
            report.problems += validate_built_in(manifest)
    services = by_kind.get("RayService", [])
    if len(services) != 1:
        report.problems.append(f"expected one RayService, rendered {len(services)}")
        return report
    report.problems += check_rayservice(services[0], report.manifests)
    if not _schema_problems(services[0], RAYSERVICE_SCHEMA, ""):  # its groups are where the checks expect them
        report.problems += check_ray_exposure(services[0], report.manifests)
    report.problems += check_kafka_topics(by_kind.get("KafkaTopic", []), report.manifests)
    report.problems += check_service_monitor(by_kind.get("ServiceMonitor", []), report.manifests)
    return report


def _where(manifest: dict[str, Any]) -> str:
    return f"{manifest.get('kind')}/{manifest.get('metadata', {}).get('name')}"


def validate_built_in(manifest: dict[str, Any], where: str | None = None) -> list[str]:
    """Strict OpenAPI validation of a built-in kind; one line per problem."""
    import kubernetes_validate

    try:
        kubernetes_validate.validate(manifest, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as error:
        path = ".".join(str(p) for p in error.path) or "(root)"
        return [f"{where or _where(manifest)}: {path}: {error.message}"]
    except kubernetes_validate.SchemaNotFoundError:
        version = manifest.get("apiVersion")
        return [f"{where or _where(manifest)}: no Kubernetes {KUBERNETES_VERSION} schema for {version}"]
    return []


# The part of KubeRay's ray.io/v1 RayService the chart uses; additionalProperties false catches misspelt fields.
_GROUP_COMMON = {
    "rayStartParams": {"type": "object", "additionalProperties": {"type": "string"}},
    "template": {"type": "object", "required": ["spec"]},
}
RAYSERVICE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "ray.io/v1"},
        "kind": {"const": "RayService"},
        "metadata": {"type": "object", "required": ["name"]},
        "spec": {
            "type": "object",
            "additionalProperties": False,
            "required": ["serveConfigV2", "rayClusterConfig"],
            "properties": {
                "serveConfigV2": {"type": "string", "minLength": 1},
                "serveService": {"type": "object", "required": ["metadata", "spec"]},
                "upgradeStrategy": {"type": "object"},
                "rayClusterConfig": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["rayVersion", "headGroupSpec"],
                    "properties": {
                        "rayVersion": {"type": "string", "pattern": r"^\d+\.\d+\.\d+$"},
                        "enableInTreeAutoscaling": {"type": "boolean"},
                        # KubeRay >= 1.5.1 (mode), >= 1.6.0 (secretName): raycluster_types.go AuthOptions.
                        "authOptions": {
                            "type": "object",
                            "additionalProperties": False,
                            "properties": {
                                "mode": {"enum": ["token", "disabled"]},
                                "secretName": {"type": "string", "minLength": 1},
                                "enableK8sTokenAuth": {"type": "boolean"},
                            },
                        },
                        "autoscalerOptions": {
                            "type": "object",
                            "additionalProperties": False,
                            "properties": {
                                "idleTimeoutSeconds": {"type": "integer", "minimum": 0},
                                "upscalingMode": {"enum": ["Default", "Aggressive", "Conservative"]},
                                "resources": {"type": "object"},
                                "image": {"type": "string"},
                            },
                        },
                        "headGroupSpec": {
                            "type": "object",
                            "additionalProperties": False,
                            "required": ["rayStartParams", "template"],
                            "properties": {**_GROUP_COMMON, "serviceType": {"type": "string"}},
                        },
                        "workerGroupSpecs": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "additionalProperties": False,
                                "required": ["groupName", "replicas", "minReplicas", "maxReplicas", "template"],
                                "properties": {
                                    **_GROUP_COMMON,
                                    "groupName": {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"},
                                    "replicas": {"type": "integer", "minimum": 0},
                                    "minReplicas": {"type": "integer", "minimum": 0},
                                    "maxReplicas": {"type": "integer", "minimum": 1},
                                },
                            },
                        },
                    },
                },
            },
        },
    },
}


def _schema_problems(document: Any, schema: dict[str, Any], where: str) -> list[str]:
    import jsonschema

    validator = jsonschema.Draft202012Validator(schema)
    return [
        f"{where}: {'.'.join(str(p) for p in e.absolute_path) or '(root)'}: {e.message}"
        for e in sorted(validator.iter_errors(document), key=lambda e: list(map(str, e.absolute_path)))
    ]


def _pod(template: dict[str, Any], name: str) -> dict[str, Any]:
    metadata = dict(template.get("metadata") or {}) | {"name": name}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": template.get("spec", {})}


def _groups(service: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    cluster = service["spec"]["rayClusterConfig"]
    groups = [("head", cluster["headGroupSpec"])]
    groups += [(g["groupName"], g) for g in cluster.get("workerGroupSpecs", [])]
    return groups


def check_rayservice(service: dict[str, Any], manifests: list[dict[str, Any]]) -> list[str]:
    where = _where(service)
    problems = _schema_problems(service, RAYSERVICE_SCHEMA, where)
    if problems:
        return problems
    names = [name for name, _ in _groups(service)]
    if len(set(names)) != len(names):
        problems.append(f"{where}: worker group names repeat: {names}")
    for name, group in _groups(service):
        problems += validate_built_in(_pod(group["template"], f"ray-{name}"), f"{where} group {name} pod template")
        if name != "head" and not group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]:
            problems.append(f"{where} group {name}: replicas must lie between minReplicas and maxReplicas")
    serve_service = service["spec"].get("serveService")
    if serve_service is not None:
        wrapped = {"apiVersion": "v1", "kind": "Service"} | serve_service
        problems += validate_built_in(wrapped, f"{where} serveService")
    problems += check_serve_config(service, manifests)
    return problems


def _serve_config(service: dict[str, Any]) -> tuple[dict[str, Any] | None, list[str]]:
    where = f"{_where(service)} serveConfigV2"
    try:
        document = yaml.safe_load(service["spec"]["serveConfigV2"])
    except yaml.YAMLError as error:
        return None, [f"{where}: not YAML: {error}"]
    from ray.serve.schema import ServeDeploySchema

    try:
        ServeDeploySchema.model_validate(document)
    except Exception as error:  # pydantic's ValidationError, as Ray's pinned pydantic raises it
        return None, [f"{where}: Ray's ServeDeploySchema refuses it: {error}"]
    return document, []


def check_serve_config(service: dict[str, Any], manifests: list[dict[str, Any]]) -> list[str]:
    """serveConfigV2 as Ray validates it, then the application built from it as the cluster would."""
    from aegis_online.rayserve.kuberay import IMPORT_PATH

    document, problems = _serve_config(service)
    if document is None:
        return problems
    where = f"{_where(service)} serveConfigV2"
    applications = document.get("applications") or []
    if len(applications) != 1 or applications[0].get("import_path") != IMPORT_PATH:
        return [f"{where}: expected one application with import_path {IMPORT_PATH}"]
    problems += check_feedback_workers((applications[0].get("args") or {}).get("config"), manifests)
    with mounted_files(manifests) as paths:
        try:
            config = builder_config(applications[0].get("args"), paths)
            from aegis_online.rayserve.deployments import build_app
            from aegis_online.serve.auth import KeyTable, load_key_table

            keys_file = config.auth.keys_file
            if keys_file is not None and Path(keys_file).is_file():
                keys = load_key_table(config.auth)  # rendered from auth.keys: checked like the service reads them
            else:
                keys = KeyTable.from_keys([])  # auth.existingSecret: its keys live in the cluster only
            build_app(config, keys)
            problems += check_capacity(service, config)
        except Exception as error:  # ConfigError or Ray's refusal of a deployment option: the message says which
            message = str(error)
            for mount, local in paths.items():  # name files where the pods see them, not the temporary copies
                message = message.replace(str(local), mount)
            problems.append(f"{where}: {message}")
    return problems


def builder_config(args: Any, paths: dict[str, Path]) -> Any:
    """The service configuration ``app_builder`` would build from ``args``, its mounted paths mapped to ``paths``."""
    from aegis_online.config import config_from_document
    from aegis_online.rayserve.kuberay import ARGS_SOURCE, BuilderArgs

    config = dict(BuilderArgs.model_validate(args).config)
    for section, key in (("experts", "catalog"), ("auth", "keys_file")):
        value = (config.get(section) or {}).get(key)
        for mount, local in paths.items():
            if isinstance(value, str) and value.startswith(mount):
                config[section] = dict(config[section]) | {key: str(local) + value[len(mount) :]}
    parsed = config_from_document(config, source=ARGS_SOURCE, environ=False)
    parsed.expert_plan()  # every expert named must be in the rendered catalog, every entry valid
    return parsed


@contextlib.contextmanager
def mounted_files(manifests: list[dict[str, Any]]) -> Iterator[dict[str, Path]]:
    """The chart's ConfigMaps and Secrets written out where the Ray pods mount them: mount path -> local folder."""
    with tempfile.TemporaryDirectory(prefix="aegis-chart-") as tmp:
        volumes: dict[str, dict[str, Any]] = {}
        for manifest in manifests:
            if manifest.get("kind") in ("ConfigMap", "Secret"):
                volumes[manifest["metadata"]["name"]] = manifest.get("data") or manifest.get("stringData") or {}
        paths: dict[str, Path] = {}
        for manifest in manifests:
            if manifest.get("kind") != "RayService":
                continue
            head = manifest["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]
            sources = {}
            for volume in head.get("volumes", []):
                name = (volume.get("configMap") or {}).get("name") or (volume.get("secret") or {}).get("secretName")
                sources[volume["name"]] = name
            for mount in head["containers"][0].get("volumeMounts", []):
                data = volumes.get(sources.get(mount["name"]) or "")
                if data is None:
                    continue
                local = Path(tmp) / mount["name"]
                local.mkdir()
                for file_name, content in data.items():
                    (local / file_name).write_text(content)
                paths[mount["mountPath"]] = local
        yield paths


_QUANTITY = re.compile(r"^(\d+(?:\.\d+)?)(m?)$")


def cpu_quantity(value: Any) -> float:
    """Kubernetes CPU quantity -> cores ("500m" -> 0.5, "4" -> 4.0)."""
    match = _QUANTITY.match(str(value))
    if match is None:
        raise ValueError(f"not a CPU quantity: {value!r}")
    return float(match.group(1)) / (1000.0 if match.group(2) else 1.0)


def check_capacity(service: dict[str, Any], config: Any) -> list[str]:
    """The Serve replicas the configuration starts with must fit the worker groups at their ceiling, and every
    expert must fit in one pod of some group (else Ray leaves it pending and the application never runs)."""
    from aegis_online.rayserve.deployments import ingress_replica_needs, placements, resource_needs

    where = f"{_where(service)} serveConfigV2"
    cluster = service["spec"]["rayClusterConfig"]
    pods: list[tuple[str, float, float, int]] = []  # group, cpus, gpus, max pods
    for name, group in _groups(service):
        container = group["template"]["spec"]["containers"][0]
        resources = container.get("resources") or {}
        limits = resources.get("limits") or resources.get("requests") or {}
        cpus = float(group["rayStartParams"].get("num-cpus", cpu_quantity(limits.get("cpu", "0"))))
        gpus = float(group["rayStartParams"].get("num-gpus", limits.get("nvidia.com/gpu", 0)))
        count = 1 if name == "head" else group["maxReplicas"]
        pods.append((name, cpus, gpus, count))
    problems = []
    ingress_cpus = ingress_replica_needs(config)["CPU"]
    if not any(c >= ingress_cpus for _, c, _, _ in pods):
        problems.append(
            f"{where}: an ingress replica needs {ingress_cpus:g} CPU (its own and its in-ingress experts'); no Ray "
            "pod has that; lower ingress.num_cpus or resize the groups"
        )
    for place in placements(config):
        if place.where != "replica":
            continue  # counted with the ingress replica, or with the deployment that hosts it
        spec, serving = place.spec, place.serving
        cpus = serving.num_cpus if serving.num_cpus is not None else spec.hardware.cpus
        gpus = serving.num_gpus if serving.num_gpus is not None else spec.hardware.gpus
        if not any(c >= cpus and g >= gpus for _, c, g, _ in pods):
            kinds = ", ".join(f"{n}: {c:g} CPU {g:g} GPU" for n, c, g, _ in pods)
            problems.append(
                f"{where}: expert {spec.name} needs {cpus:g} CPU and {gpus:g} GPU per replica; no Ray pod has that "
                f"({kinds}); enable ray.gpuWorkers or resize the groups"
            )
    have = {"CPU": sum(c * n for _, c, _, n in pods), "GPU": sum(g * n for _, _, g, n in pods)}
    for resource, need in resource_needs(config, "min").items():
        if need > have[resource] + 1e-9:
            problems.append(
                f"{where}: the application starts with {need:g} {resource} of replicas but the Ray cluster has at "
                f"most {have[resource]:g} (worker groups at maxReplicas); raise maxReplicas or lower replicas"
            )
    if not cluster.get("enableInTreeAutoscaling"):
        for resource, need in resource_needs(config, "max").items():
            if need > have[resource] + 1e-9:
                problems.append(
                    f"{where}: Serve autoscaling can reach {need:g} {resource} but without the Ray autoscaler the "
                    f"cluster stays at its starting size; enable ray.autoscaling or lower max_replicas"
                )
    return problems


def check_feedback_workers(embedded: Any, manifests: list[dict[str, Any]]) -> list[str]:
    """The workers' ConfigMap holds the very configuration the RayService embeds (``embedded``)."""
    configs = [m for m in manifests if m.get("kind") == "ConfigMap" and "serve-config.yaml" in (m.get("data") or {})]
    if len(configs) != 1:
        return [f"expected one ConfigMap with serve-config.yaml for the feedback workers, found {len(configs)}"]
    if yaml.safe_load(configs[0]["data"]["serve-config.yaml"]) != embedded:
        return [f"{_where(configs[0])}: differs from the configuration embedded in the RayService"]
    workers = [m for m in manifests if m.get("kind") == "Deployment"]
    mounted = {
        v.get("configMap", {}).get("name") for w in workers for v in w["spec"]["template"]["spec"].get("volumes", [])
    }
    if configs[0]["metadata"]["name"] not in mounted:
        return ["the feedback-worker Deployment does not mount the serve-config ConfigMap"]
    return []


#: Ports of the Ray pods that peers other than the release's Ray pods may reach: Serve's HTTP proxy, and the head's
#: dashboard for the KubeRay operator. Everything else (GCS, raylet, object manager, workers, agents, metrics) is Ray's.
RAY_OPEN_PORTS = {8000, 8265}
_RAY_POLICY = "ray"


def _selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """A Kubernetes label selector (matchLabels, matchExpressions) applied to ``labels``."""
    if not selector.get("matchLabels", {}).items() <= labels.items():
        return False
    for expression in selector.get("matchExpressions", []):
        key, operator, values = expression["key"], expression["operator"], expression.get("values", [])
        present = key in labels
        if (
            (operator == "In" and labels.get(key) not in values)
            or (operator == "NotIn" and labels.get(key) in values)
            or (operator == "Exists" and not present)
            or (operator == "DoesNotExist" and present)
        ):
            return False
    return True


def check_ray_exposure(service: dict[str, Any], manifests: list[dict[str, Any]]) -> list[str]:
    """Ray's token Secret and the NetworkPolicy that keeps Ray's ports to the release's Ray pods."""
    problems = []
    cluster = service["spec"].get("rayClusterConfig") or {}
    auth = cluster.get("authOptions") or {}
    secrets = {m["metadata"]["name"]: m for m in manifests if m.get("kind") == "Secret"}
    if auth.get("mode", "token") == "token" and auth.get("secretName") in secrets:
        secret = secrets[auth["secretName"]]
        if not ((secret.get("stringData") or {}).get("auth_token") or (secret.get("data") or {}).get("auth_token")):
            problems.append(f"{_where(secret)}: authOptions.secretName names it, but it has no auth_token")
    policies = [
        m
        for m in manifests
        if m.get("kind") == "NetworkPolicy"
        and (m["metadata"].get("labels") or {}).get("app.kubernetes.io/component") == _RAY_POLICY
    ]
    for policy in policies:
        selector = policy["spec"].get("podSelector") or {}
        for name, group in _groups(service):
            labels = (group["template"].get("metadata") or {}).get("labels") or {}
            if not _selects(selector, labels):
                problems.append(f"{_where(policy)}: does not select the Ray pods of group {name}")
        for index, rule in enumerate(policy["spec"].get("ingress", [])):
            peers = rule.get("from") or []
            ray_only = bool(peers) and all((peer.get("podSelector") == selector and len(peer) == 1) for peer in peers)
            ports = {p.get("port") for p in rule.get("ports") or []}
            if not ray_only and (not ports or not ports <= RAY_OPEN_PORTS):
                shown = sorted(map(str, ports)) or "every port"
                problems.append(
                    f"{_where(policy)}: ingress[{index}] lets peers other than the Ray pods reach {shown}; only "
                    f"{sorted(RAY_OPEN_PORTS)} may be open beyond them"
                )
    return problems


def check_kafka_topics(topics: list[dict[str, Any]], manifests: list[dict[str, Any]]) -> list[str]:
    problems = []
    workers = [m for m in manifests if m.get("kind") == "Deployment"]
    for topic in topics:
        where = _where(topic)
        if topic.get("apiVersion") != "kafka.strimzi.io/v1beta2":
            problems.append(f"{where}: apiVersion must be kafka.strimzi.io/v1beta2")
        if not topic.get("metadata", {}).get("labels", {}).get("strimzi.io/cluster"):
            problems.append(f"{where}: the strimzi.io/cluster label names the Kafka cluster; it is missing")
        spec = topic.get("spec") or {}
        for key in ("topicName", "partitions", "replicas"):
            if key not in spec:
                problems.append(f"{where}: spec.{key} is missing")
        for worker in workers:
            if worker["spec"].get("replicas", 1) > spec.get("partitions", 0):
                problems.append(f"{where}: fewer partitions than feedback workers")
    return problems


def check_service_monitor(monitors: list[dict[str, Any]], manifests: list[dict[str, Any]]) -> list[str]:
    """Each endpoint's port name is a port of some Service the monitor selects (the serve Service included)."""
    problems = []
    services = [m for m in manifests if m.get("kind") == "Service"]
    services += [m["spec"]["serveService"] for m in manifests if m.get("kind") == "RayService"]
    for monitor in monitors:
        selector = monitor["spec"]["selector"].get("matchLabels", {})
        selected = [s for s in services if selector.items() <= (s["metadata"].get("labels") or {}).items()]
        ports = {p.get("name") for s in selected for p in s["spec"].get("ports", [])}
        for endpoint in monitor["spec"].get("endpoints", []):
            if endpoint.get("port") not in ports:
                problems.append(f"{_where(monitor)}: no selected Service has a port named {endpoint.get('port')!r}")
    return problems

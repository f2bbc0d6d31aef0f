"""The application as a KubeRay RayService starts it: the chart's serveConfigV2, deployed through the Serve
controller's config path (``import_path`` + ``args``, built by a Ray task as on the cluster), against the real
Redis and Kafka-protocol broker, then called over HTTP."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from aegis_online.config import ConfigError
from aegis_online.rayserve.kuberay import ARGS_SOURCE, BuilderArgs, app_builder
from aegis_online.serve.auth import key_digest

from .helpers import ACME_KEY, bearer, conversation

pytestmark = pytest.mark.filterwarnings("ignore:Using extra keyword arguments on `Field`:DeprecationWarning")
APP = "aegis-k8s"


def test_the_builder_refuses_an_exposed_service_without_keys() -> None:
    config = {"server": {"host": "0.0.0.0"}}
    with pytest.raises(ConfigError, match=r"refusing to serve 0\.0\.0\.0 without API keys"):
        app_builder(BuilderArgs(config=config))


def test_the_builder_names_the_embedded_field_that_is_wrong() -> None:
    with pytest.raises(ConfigError, match=f"{ARGS_SOURCE}.*limits.deadline_ms"):
        app_builder(BuilderArgs(config={"limits": {"deadline_ms": 0}}))


def test_the_builder_takes_ray_serves_plain_dict_and_refuses_other_keys() -> None:
    with pytest.raises(ConfigError, match="serveConfigV2 args"):
        app_builder({"config": {}, "replicas": 3})


@pytest.fixture(scope="module")
def k8s_app(ray_session: dict[str, Any], servers: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    from ray.serve.context import _get_global_client
    from ray.serve.schema import ServeDeploySchema

    from aegis_online.deploy.chart_check import mounted_files, render

    prefix = f"k8s-{tmp_path_factory.getbasetemp().name}:"
    values = {
        "kafka": {"bootstrapServers": servers.kafka, "partitions": 1},
        "redis": {"bundled": {"enabled": False}, "external": {"url": servers.redis_url}},
        "auth": {"keys": [{"name": "acme", "key_sha256": key_digest(ACME_KEY), "tenant": "acme"}]},
        "feedbackWorker": {"replicas": 1},
        "serve": {
            "limits": {"deadline_ms": 10_000},
            "ingress": {"replicas": 1, "num_cpus": 0.2},
            "experts": {"use": [{"name": "profanity-check", "replicas": 1}]},
            "store": {"prefix": prefix},
            "policies": [{"tenant": "acme", "strictness": "strict"}],
        },
    }
    values_file = tmp_path_factory.mktemp("chart") / "values.yaml"
    values_file.write_text(yaml.safe_dump(values))
    report = render(values_file)
    assert not report.problems, report.problems
    (service,) = [m for m in report.manifests if m["kind"] == "RayService"]
    document = yaml.safe_load(service["spec"]["serveConfigV2"])
    (application,) = document["applications"]
    # As on a pod: the catalog and the keys where the chart mounts them (here: the rendered files, copied).
    with mounted_files(report.manifests) as paths:
        config = application["args"]["config"]
        for mount, local in paths.items():
            for section, key in (("experts", "catalog"), ("auth", "keys_file")):
                if config[section][key].startswith(mount):
                    config[section][key] = str(local) + config[section][key][len(mount) :]
        application |= {"name": APP, "route_prefix": "/k8s"}
        document.pop("http_options")  # the local Serve already listens; KubeRay's pods bind 0.0.0.0:8000
        client = _get_global_client()
        client.deploy_apps(ServeDeploySchema.model_validate(document), _blocking=True)
        try:
            yield f"{ray_session['url']}/k8s"
        finally:
            from ray import serve

            serve.delete(APP)


def test_the_embedded_config_serves_over_http(k8s_app: str) -> None:
    ready = httpx.get(f"{k8s_app}/readyz", timeout=10).json()
    assert ready["status"] == "ready", ready
    assert ready["checks"]["store"]["detail"] == "redis"
    assert httpx.post(f"{k8s_app}/v1/moderate", json=conversation("hello"), timeout=30).status_code == 401
    response = httpx.post(
        f"{k8s_app}/v1/moderate", json=conversation("Shut up, you fucking idiot"), headers=bearer(ACME_KEY), timeout=30
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert [e["expert"] for e in body["experts"]] == ["profanity-check"]
    assert body["action"] != "allow"  # the acme policy seeded from the embedded config is strict


def test_feedback_goes_to_kafka(k8s_app: str) -> None:
    decision = httpx.post(
        f"{k8s_app}/v1/moderate", json=conversation("you idiot"), headers=bearer(ACME_KEY), timeout=30
    ).json()
    event = {"request_id": decision["request_id"], "tenant": "acme", "label": "unsafe", "source": "moderator"}
    response = httpx.post(f"{k8s_app}/v1/feedback", json=event, headers=bearer(ACME_KEY), timeout=30)
    assert response.status_code == 202, response.text


def test_chart_builder_paths_exist_in_the_repository() -> None:
    """The import path the chart writes is this module's builder."""
    chart_helpers = (Path(__file__).resolve().parents[2] / "helm/aegis-online/templates/_helpers.tpl").read_text()
    assert '"import_path" "aegis_online.rayserve.kuberay:app_builder"' in chart_helpers

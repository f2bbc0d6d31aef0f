"""The application a KubeRay RayService builds: ``import_path: aegis_online.rayserve.kuberay:app_builder``.

The Helm chart (``helm/aegis-online``) embeds the service configuration itself (the tree ``aegis-online serve
--config`` reads) in the RayService's ``serveConfigV2`` as this builder's ``args.config``. Ray Serve calls the
builder on the cluster; it validates the tree exactly as the local service does (under the pods' ``AEGIS_SERVE_*``
environment, which is how Secrets such as a Redis URL with a password reach it), reads the API keys from the
mounted Secret, refuses an exposed service without keys, and binds the same deployments ``serve`` would. Embedding
the tree rather than pointing at a mounted file means a changed configuration changes ``serveConfigV2``, which
KubeRay applies in place, and never races the kubelet's refresh of a mounted ConfigMap.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError
from ray import serve

from aegis_online.config import ConfigError, config_from_document
from aegis_online.rayserve.deployments import build_app
from aegis_online.serve.auth import load_key_table, require_safe_exposure

IMPORT_PATH = "aegis_online.rayserve.kuberay:app_builder"
ARGS_SOURCE = "serveConfigV2 args.config"


class BuilderArgs(BaseModel):
    """What ``serveConfigV2`` passes to the builder as ``args``: the service configuration, nothing else."""

    model_config = ConfigDict(extra="forbid")

    config: dict[str, Any]


def app_builder(args: dict[str, Any] | BuilderArgs) -> serve.Application:
    """The Ray Serve application of the embedded configuration; ``ConfigError`` names any wrong field.

    Ray Serve hands ``args`` over as a plain dict (it recognises a pydantic model only from a live annotation, and
    this module's annotations are strings), so they are validated here.
    """
    if not isinstance(args, BuilderArgs):
        try:
            args = BuilderArgs.model_validate(args)
        except ValidationError as error:
            raise ConfigError(f"serveConfigV2 args: expected {{config: {{...}}}}: {error}") from None
    config = config_from_document(args.config, source=ARGS_SOURCE)
    keys = load_key_table(config.auth)
    require_safe_exposure(config, keys)
    return build_app(config, keys)

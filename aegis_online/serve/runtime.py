"""Start and stop a local Ray + Serve for the service, the tests and the benchmark, tuned for small machines.

Field notes, section 6: Ray 2.60 writes ``~/.ray/auth_token`` unless ``RAY_AUTH_MODE=disabled``; the dashboard is
not needed; the session folder goes under /tmp (its socket paths must stay short); access logs cost throughput;
``serve`` binds 0.0.0.0:8000 unless told otherwise. ``stop_ray`` always shuts Serve and Ray down, whatever failed
before, and removes the session folder it was given.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from aegis_online.config import ConfigError, ServiceConfig
from aegis_online.serve.auth import KeyTable

log = logging.getLogger("aegis_online.serve")
APP_NAME = "aegis-online"
#: Serve's per-request access lines cost throughput (field notes, section 6); the service logs what matters itself.
LOGGING = {"enable_access_log": False, "log_level": "WARNING"}


def start_ray(*, address: str = "local", temp_dir: Path | None = None, num_cpus: float | None = None) -> None:
    """``ray.init`` without dashboard or auth token, its session under ``temp_dir``, Ray's chatter at WARNING."""
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray

    options: dict[str, object] = {"include_dashboard": False, "logging_level": logging.WARNING}
    if address == "local":
        options["_temp_dir"] = str(temp_dir) if temp_dir is not None else None
        if num_cpus is not None:
            options["num_cpus"] = num_cpus
    ray.init(address=address, **{k: v for k, v in options.items() if v is not None})


def start_serve(host: str, port: int) -> None:
    from ray import serve

    serve.start(
        http_options={"host": host, "port": port},
        logging_config=LOGGING,
    )


def check_resources(config: ServiceConfig) -> None:
    """Fail with a clear message when the cluster cannot place the application (it would wait forever)."""
    import ray

    from aegis_online.serve.deployments import resource_needs

    have = ray.cluster_resources()
    for resource, need in resource_needs(config).items():
        if need > have.get(resource, 0.0) + 1e-9:
            raise ConfigError(
                f"experts: the application reserves {need:g} {resource} but the Ray cluster has "
                f"{have.get(resource, 0.0):g}; lower replicas or num_cpus/num_gpus, or serve experts that fit"
            )


def deploy(config: ServiceConfig, keys: KeyTable) -> None:
    """Run the application and wait until every replica is ready (models loaded and warmed up)."""
    from ray import serve

    from aegis_online.serve.deployments import build_app

    check_resources(config)
    serve.run(build_app(config, keys), name=APP_NAME, route_prefix="/", blocking=False, logging_config=LOGGING)


def stop_ray(temp_dir: Path | None = None) -> None:
    """Shut Serve and Ray down (each step even if the previous failed); remove ``temp_dir``."""
    with contextlib.suppress(Exception):
        from ray import serve

        serve.shutdown()
    with contextlib.suppress(Exception):
        import ray

        ray.shutdown()
    if temp_dir is not None:
        shutil.rmtree(temp_dir, ignore_errors=True)


@contextlib.contextmanager
def local_service(config: ServiceConfig, keys: KeyTable) -> Iterator[str]:
    """Ray (local, or the configured address), Serve and the application; yields the base URL; stops everything."""
    owned = config.ray.temp_dir is None and config.ray.address == "local"
    temp_dir = Path(tempfile.mkdtemp(prefix="aegis-ray-", dir="/tmp")) if owned else config.ray.temp_dir
    try:
        start_ray(address=config.ray.address, temp_dir=temp_dir, num_cpus=config.ray.num_cpus)
        start_serve(config.server.host, config.server.port)
        deploy(config, keys)
        host = config.server.host
        shown = f"[{host}]" if ":" in host else host
        yield f"http://{shown}:{config.server.port}"
    finally:
        stop_ray(temp_dir if owned else None)

"""Start and stop a local Ray + Serve for the service, the tests and the benchmark, tuned for small machines.

A local Ray is closed to everyone but this user (field notes, section 11): an open GCS or dashboard is remote code
execution for whoever reaches it (ShadowRay, CVE-2023-48022). So ``start_ray``

* binds every Ray listener to 127.0.0.1: ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` is, in Ray 2.60, the one setting
  that does (node address, GCS, raylet, object manager, workers, agents, metrics); ``_node_ip_address`` does not;
  Serve's replicas bind their own gRPC server to every interface regardless, so a worker setup hook
  (``loopback``) moves it to 127.0.0.1;
* turns Ray's token authentication on with a token generated at each start, in a 0600 file of the session's private
  folder (never ``~/.ray/auth_token``), so another local user who reaches a port still cannot join;
* keeps the dashboard off, and checks after ``ray.init`` that Ray did as told (else it stops and fails).

Joining a cluster (``ray.address`` not ``local``: KubeRay, ``ray start``) keeps the cluster's own settings: KubeRay
puts ``RAY_AUTH_MODE`` and the token in the pods' environment. Access logs cost throughput; ``serve`` binds
0.0.0.0:8000 unless told otherwise (field notes, section 6). ``stop_ray`` always shuts Serve and Ray down, whatever
failed before, kills what Ray left of the session, and removes the folder it was given.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import secrets
import shutil
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from aegis_online.config import ConfigError, ServiceConfig
from aegis_online.rayserve import loopback, sessions
from aegis_online.serve.auth import KeyTable

log = logging.getLogger("aegis_online.serve")
APP_NAME = "aegis-online"
#: Serve's per-request access lines cost throughput (field notes, section 6); the service logs what matters itself.
LOGGING = {"enable_access_log": False, "log_level": "WARNING"}
TOKEN_FILE = "auth_token"
#: Ray's own files inside the session folder: with the socket paths under it, well within Linux's 107 characters.
RAY_FILES = "ray"


@dataclass
class _LocalRay:
    """The local Ray this process started: its session folder and the environment it changed."""

    session: Path
    saved_env: dict[str, str | None] = field(default_factory=dict)


_local: _LocalRay | None = None


def write_token(folder: Path) -> Path:
    """A fresh random token in ``folder``, readable by this user only (created 0600, never through a link)."""
    path = folder / TOKEN_FILE
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
    with os.fdopen(descriptor, "w") as file:
        file.write(secrets.token_hex(32))
    return path


def local_ray_environment(session: Path, token: Path) -> dict[str, str]:
    """What a local Ray reads from the environment (its processes inherit it): loopback only, token auth on."""
    return {
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",  # node address 127.0.0.1: every listener on loopback
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN_PATH": str(token),
        sessions.MARKER: str(session),
    }


def _apply_to_imported_ray() -> None:
    """Ray reads these settings when it is imported; when it already is (a test session, a notebook), refresh them
    the way Ray itself does when it turns token auth on (``authentication_token_setup._enable_token_auth``)."""
    if "ray" not in sys.modules:
        return
    from ray._private import ray_constants
    from ray._raylet import AuthenticationTokenLoader, Config

    ray_constants.ENABLE_RAY_CLUSTER = False
    Config.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()


def _is_loopback_ip(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check_local_ray() -> None:
    """Fail closed: a local Ray that is not on loopback, or not checking tokens, must not serve."""
    import ray
    from ray._private.authentication.authentication_utils import is_token_auth_enabled

    host = ray.get_runtime_context().gcs_address.rpartition(":")[0].strip("[]")
    problems = [] if _is_loopback_ip(host) else [f"its GCS listens on {host}, not loopback"]
    if not is_token_auth_enabled():
        problems.append("token authentication is off")
    if problems:
        raise RuntimeError(f"the local Ray is not closed to other users: {'; '.join(problems)}")


def start_ray(*, address: str = "local", temp_dir: Path | None = None, num_cpus: float | None = None) -> None:
    """``ray.init`` without dashboard, Ray's chatter at WARNING. A local Ray needs ``temp_dir``, a private session
    folder (``sessions.create``): the token goes there, and Ray's files in ``temp_dir/ray`` (Ray makes its own folder
    world-writable; the 0700 folder around it keeps other users out)."""
    global _local
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    options: dict[str, object] = {"include_dashboard": False, "logging_level": logging.WARNING}
    if address == "local":
        if temp_dir is None:
            raise ValueError("a local Ray needs a private session folder (temp_dir) for its auth token")
        settings = local_ray_environment(temp_dir, write_token(temp_dir))
        _local = _LocalRay(temp_dir, {name: os.environ.get(name) for name in [*settings, "RAY_AUTH_TOKEN"]})
        os.environ.pop("RAY_AUTH_TOKEN", None)  # it would win over the token file
        os.environ.update(settings)
        _apply_to_imported_ray()
        options["_temp_dir"] = str(temp_dir / RAY_FILES)
        options["runtime_env"] = {"worker_process_setup_hook": loopback.HOOK}  # Serve's replicas on loopback too
        if num_cpus is not None:
            options["num_cpus"] = num_cpus
    import ray

    ray.init(address=address, **{k: v for k, v in options.items() if v is not None})
    if address == "local":
        try:
            _check_local_ray()
        except RuntimeError:
            stop_ray()
            raise


def start_serve(host: str, port: int) -> None:
    from ray import serve

    serve.start(
        http_options={"host": host, "port": port},
        logging_config=LOGGING,
    )


def check_resources(config: ServiceConfig) -> None:
    """Fail with a clear message when the cluster cannot place the application (it would wait forever)."""
    import ray

    from aegis_online.rayserve.deployments import resource_needs

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

    from aegis_online.rayserve.deployments import build_app

    check_resources(config)
    serve.run(build_app(config, keys), name=APP_NAME, route_prefix="/", blocking=False, logging_config=LOGGING)


def stop_ray(temp_dir: Path | None = None) -> None:
    """Shut Serve and Ray down (each step even if the previous failed), kill what a local Ray left of its session
    (agents and workers outlive an interrupted start), restore the environment; remove ``temp_dir``."""
    global _local
    with contextlib.suppress(Exception):
        from ray import serve

        serve.shutdown()
    with contextlib.suppress(Exception):
        import ray

        ray.shutdown()
    if _local is not None:
        local, _local = _local, None
        with contextlib.suppress(Exception):
            sessions.kill_processes(local.session)
        for name, value in local.saved_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    if temp_dir is not None:
        shutil.rmtree(temp_dir, ignore_errors=True)


@contextlib.contextmanager
def local_service(config: ServiceConfig, keys: KeyTable, session: Path | None = None) -> Iterator[str]:
    """Ray (local, or the configured address), Serve and the application; yields the base URL; stops everything.

    A local Ray's session folder is ``session`` (``aegis-online serve``'s supervisor makes it) or a new one in
    ``ray.temp_dir``; it is removed at the end either way.
    """
    if config.ray.address == "local" and session is None:
        session = sessions.create(config.ray.temp_dir or sessions.ROOT)
    try:
        start_ray(address=config.ray.address, temp_dir=session, num_cpus=config.ray.num_cpus)
        start_serve(config.server.host, config.server.port)
        deploy(config, keys)
        host = config.server.host
        shown = f"[{host}]" if ":" in host else host
        yield f"http://{shown}:{config.server.port}"
    finally:
        stop_ray()
        if session is not None:
            sessions.remove(session)

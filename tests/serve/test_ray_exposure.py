"""The local service's Ray is closed to everyone but its user (issue 11, item 1), and nothing of it outlives a
SIGKILL of ``aegis-online serve`` (item 7).

One real ``aegis-online serve`` with API keys on 127.0.0.1, as the issue ran it: every socket its whole process tree
listens on is on loopback; a foreign ``ray.init`` to its GCS is refused without the token, or with a wrong one,
while the same call with the right token connects (so the refusal is the token's doing). Last, the main process is
SIGKILLed: every process of the tree and the session folder must go.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
import yaml

from aegis_online.rayserve import sessions

from .helpers import ADMIN_KEY
from .serve_process import ServeProcess, is_loopback

FOREIGN_DRIVER = """
import sys
import ray
try:
    ray.init(address=sys.argv[1], logging_level="ERROR", log_to_driver=False)
except Exception as error:
    print("REFUSED", type(error).__name__, error)
    sys.exit(3)
print("CONNECTED", len(ray.nodes()))
"""


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    folder = tmp_path_factory.mktemp("exposure")
    keys = folder / "keys.yaml"
    keys.touch(mode=0o600)
    keys.write_text(yaml.safe_dump({"keys": [{"name": "ops", "key": ADMIN_KEY, "role": "admin"}]}))
    config = folder / "service.yaml"
    config.write_text(yaml.safe_dump({"ingress": {"num_cpus": 0.2}, "auth": {"keys_file": str(keys)}}))
    home = folder / "home"
    home.mkdir()
    served = ServeProcess(
        "--host", "127.0.0.1", "--config", str(config), "--data-dir", "state", cwd=folder, env={"HOME": str(home)}
    )
    try:
        assert served.wait_for("aegis-online serve: ready in"), served.output
        yield served
    finally:
        served.close()


def test_every_socket_of_the_service_tree_is_on_loopback(service: ServeProcess) -> None:
    listeners = service.listeners()
    names = {name for name, _, _ in listeners}
    assert {"gcs_server", "raylet"} <= names, listeners  # the tree was found, Ray's daemons included
    assert any(port == service.port for _, _, port in listeners)  # and the Serve proxy
    exposed = [(name, ip, port) for name, ip, port in listeners if not is_loopback(ip)]
    assert exposed == [], f"listening beyond loopback: {exposed}"


def test_the_banner_says_where_state_lives_and_the_token_is_private(service: ServeProcess) -> None:
    assert service.cwd is not None and service.session is not None
    state = (service.cwd / "state").resolve()  # --data-dir state, relative to where serve was started
    assert f"aegis-online serve: state: memory store persisted in {state}\n" in service.stdout
    assert state.is_dir()
    assert service.session.stat().st_mode & 0o777 == 0o700
    assert (service.session / "auth_token").stat().st_mode & 0o777 == 0o600
    assert not (service.cwd / "home" / ".ray").exists()  # Ray's default token file is never written


def _foreign_ray_init(address: str, env: dict[str, str]) -> tuple[int, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("RAY_") and k != sessions.MARKER}
    # RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 makes the client dial 127.0.0.1 itself: the strongest local attacker.
    env = clean | {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"} | env
    result = subprocess.run(
        [sys.executable, "-c", FOREIGN_DRIVER, address], env=env, capture_output=True, text=True, timeout=240
    )
    return result.returncode, result.stdout + result.stderr[-2000:]


def test_a_foreign_ray_init_without_the_token_is_refused(service: ServeProcess) -> None:
    gcs = [port for name, _, port in service.listeners() if name == "gcs_server"]
    assert len(gcs) == 1, service.listeners()
    address = f"127.0.0.1:{gcs[0]}"
    assert service.session is not None
    token_file = service.session / "auth_token"
    token = token_file.read_text() if token_file.exists() else "none"
    attempts = {
        "no token": {},
        "wrong token": {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "0" * 64},
        "the token": {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token},
    }
    with ThreadPoolExecutor(len(attempts)) as pool:  # a refusal takes Ray ~20 s of retries: in parallel
        futures = {name: pool.submit(_foreign_ray_init, address, env) for name, env in attempts.items()}
        results = {name: future.result() for name, future in futures.items()}
    assert results["no token"][0] == 3 and "REFUSED" in results["no token"][1], results["no token"]
    assert results["wrong token"][0] == 3 and "REFUSED" in results["wrong token"][1], results["wrong token"]
    assert results["the token"][0] == 0 and "CONNECTED" in results["the token"][1], results["the token"]


def test_after_a_sigkill_of_the_main_process_nothing_of_the_service_remains(service: ServeProcess) -> None:
    service.signal(signal.SIGKILL)
    assert service.wait(timeout_s=10) == -signal.SIGKILL
    left = service.wait_gone(timeout_s=90)
    assert left == [], f"still there after the main process was killed: {left}"

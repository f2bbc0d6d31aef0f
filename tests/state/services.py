"""The real servers the state and feedback tests run against: from the environment that ``.ci/services.sh start``
wrote, or, when it is absent (``make test`` on a dev machine), started here by that same script, once per session.

Never the machine's own Redis on 6379: the script picks spare ports, and tests keep to their own key prefix.
"""

from __future__ import annotations

import atexit
import os
import socket
import subprocess
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / ".ci" / "services.sh"
VARS = ("AEGIS_TEST_REDIS_URL", "AEGIS_TEST_KAFKA", "AEGIS_TEST_REDIS_SERVER", "AEGIS_TEST_TANSU")


@dataclass(frozen=True)
class Services:
    redis_url: str
    kafka: str
    redis_server: str
    tansu: str


_started: Services | None = None


def services() -> Services:
    """The servers' addresses; starts them (and schedules their stop) on first use when the env has none."""
    global _started
    if all(os.environ.get(v) for v in VARS[:2]):
        return Services(
            os.environ["AEGIS_TEST_REDIS_URL"],
            os.environ["AEGIS_TEST_KAFKA"],
            os.environ.get("AEGIS_TEST_REDIS_SERVER") or "redis-server",
            os.environ.get("AEGIS_TEST_TANSU") or "",
        )
    if _started is None:
        state = tempfile.mkdtemp(prefix="aegis-test-services-")
        env = os.environ | {"AEGIS_SERVICES_DIR": state}
        subprocess.run(["bash", str(SCRIPT), "start"], env=env, check=True, timeout=300)
        atexit.register(subprocess.run, ["bash", str(SCRIPT), "stop"], env=env, check=False, timeout=60)
        values = dict(
            line.split("=", 1) for line in (Path(state) / "services.env").read_text().splitlines() if "=" in line
        )
        _started = Services(*(values[v] for v in VARS))
    return _started


def unique(name: str) -> str:
    """A name no other test (or earlier run against the same servers) uses: topics, groups, key prefixes."""
    return f"{name}-{uuid.uuid4().hex[:10]}"


def spare_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]

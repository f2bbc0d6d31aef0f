"""``aegis-online serve`` stops cleanly on a signal at any moment, start-up included, and leaves nothing behind
(issue 11, item 7): no serving after a SIGINT during start-up, no Ray native stack dump after a SIGTERM, and when the
Ray driver itself dies the supervisor removes what is left. (A SIGKILL of the main process once the service is
ready: ``test_ray_exposure``; Ray's own listeners and token: there too.)

Each test starts the real service and signals it once Ray's raylet runs, well before the application is ready.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

from aegis_online.rayserve import sessions

from .serve_process import ServeProcess

#: What Ray's native failure handler prints when its driver gets a SIGTERM.
NATIVE_DUMP = ("SIGTERM received", "PC: @ ")


@pytest.fixture
def starting(tmp_path: Path) -> Iterator[ServeProcess]:
    """The service, caught in the middle of its start-up (the raylet runs; nothing is deployed yet)."""
    served = ServeProcess("--data-dir", str(tmp_path / "state"), cwd=tmp_path)
    try:
        assert served.wait_for_process("raylet"), served.output
        assert "ready in" not in served.output
        yield served
    finally:
        served.close()


def test_sigint_during_start_up_stops_the_service_before_it_serves(starting: ServeProcess) -> None:
    starting.signal(signal.SIGINT)
    assert starting.wait() == 0, starting.output
    assert "aegis-online serve: stopped" in starting.output
    assert "ready in" not in starting.output
    left = starting.wait_gone(timeout_s=60)
    assert left == [], f"still there after the stop: {left}"


def test_sigterm_during_start_up_stops_quietly(starting: ServeProcess) -> None:
    starting.signal(signal.SIGTERM)
    assert starting.wait() == 0, starting.output
    errors = "".join(starting.stderr)
    assert not [marker for marker in NATIVE_DUMP if marker in errors], errors
    assert "ready in" not in starting.output
    assert starting.wait_gone(timeout_s=60) == []


def test_when_the_ray_driver_dies_the_supervisor_removes_what_is_left(starting: ServeProcess) -> None:
    drivers = [p for p in starting.tree() if "aegis_online.rayserve.driver" in " ".join(p.cmdline())]
    assert len(drivers) == 1, [p.cmdline() for p in starting.tree()]
    drivers[0].kill()
    assert starting.wait(timeout_s=60) == 1
    assert "the Ray driver died" in starting.output
    left = starting.wait_gone(timeout_s=60)
    assert left == [], f"still there after the driver died: {left}"


Sleeper = Callable[[Path], psutil.Process]


@pytest.fixture
def sleeper() -> Iterator[Sleeper]:
    """Starts processes marked as belonging to a session folder; kills what is left of them at the end."""
    started: list[subprocess.Popen] = []

    def start(folder: Path) -> psutil.Process:
        env = os.environ | {sessions.MARKER: str(folder)}
        process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"], env=env)
        started.append(process)
        return psutil.Process(process.pid)

    yield start
    for process in started:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        process.wait()


def test_a_stale_session_is_removed_with_its_processes_and_a_live_one_is_kept(tmp_path: Path, sleeper: Sleeper) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = sessions.create(tmp_path)
    (stale / sessions.OWNER_FILE).write_text(json.dumps({"pid": int(dead.stdout), "started": 1.0}))
    live = sessions.create(tmp_path)  # owned by this process
    unowned = tmp_path / f"{sessions.PREFIX}unowned"
    unowned.mkdir()
    leftover, kept = sleeper(stale), sleeper(live)

    assert sessions.clean_stale(tmp_path) == [stale]
    assert not stale.exists() and live.exists() and unowned.exists()
    with contextlib.suppress(psutil.NoSuchProcess):
        assert leftover.status() == psutil.STATUS_ZOMBIE  # killed; its parent (this test) has not reaped it yet
    assert kept.is_running() and kept.status() != psutil.STATUS_ZOMBIE

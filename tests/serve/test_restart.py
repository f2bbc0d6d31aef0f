"""The embedded service keeps its state across restarts, over real HTTP and real processes (issue 11, items 3 and 4):
feedback sent after a restart is applied (offsets used to restart at 0 and every new event was skipped as a
duplicate), every event exactly once whether the process stopped (SIGTERM) or died (SIGKILL at a random moment, or
between a batch's write and its queue commit), and policies and logged predictions survive.

The service runs as ``restart_server.py`` (uvicorn, the instant keyword experts, the store in a temporary data
dir). What counts is read from the store itself once the last process has stopped: the ``updates`` of the tenant's
learner record for the labelled category, one per applied event.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from aegis_online.state.sqlite import open_sqlite_stores
from tests.helpers import wait_until

from .helpers import ACME_ADMIN_KEY, ACME_KEY, bearer, conversation, spare_port

#: Run as a module from the repository root, so that it imports the test helpers as the tests do.
ROOT = Path(__file__).resolve().parents[2]


class Server:
    """One ``restart_server.py`` process after another on the same data dir and port."""

    def __init__(self, data_dir: Path, logs: Path) -> None:
        self.data_dir = data_dir
        self.logs = logs
        self.port = spare_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self, **env: str) -> None:
        self.starts += 1
        log = open(self.logs / f"server-{self.starts}.log", "wb")  # noqa: SIM115 (the process owns it)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.serve.restart_server", str(self.data_dir), str(self.port)],
            cwd=ROOT,
            env=os.environ | env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        if not wait_until(lambda: self._up() or self.proc.poll() is not None, 30) or self.proc.poll() is not None:
            raise AssertionError(f"the service did not start:\n{self.log()}")

    def _up(self) -> bool:
        try:
            return httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self, sig: signal.Signals = signal.SIGTERM) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)
        code = self.proc.wait(30)
        # uvicorn re-raises SIGTERM once its graceful shutdown (the app's lifespan included) is done
        assert code in ((-sig,) if sig == signal.SIGKILL else (0, -sig)), f"exit code {code}:\n{self.log()}"

    def log(self) -> str:
        return (self.logs / f"server-{self.starts}.log").read_text(errors="replace")[-5000:]


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    s = Server(tmp_path / "aegis-data", tmp_path)
    yield s
    if s.proc is not None and s.proc.poll() is None:
        s.proc.kill()
        s.proc.wait(10)


def moderate(client: httpx.Client, text: str) -> str:
    response = client.post("/v1/moderate", json=conversation(text), headers=bearer(ACME_KEY))
    assert response.status_code == 200, response.text
    return response.json()["request_id"]


def send_feedback(client: httpx.Client, request_id: str, event_id: str) -> str:
    """One labelled event; the outcome ('queued', 'duplicate'); raises when the call got no answer."""
    body = {"request_id": request_id, "labels": {"S1": 1.0}, "event_id": event_id}
    response = client.post("/v1/feedback", json=body, headers=bearer(ACME_KEY))
    assert response.status_code == 202, response.text
    return response.json()["results"][0]["status"]


def applied_updates(data_dir: Path) -> int:
    """How many events the tenant's S1 learner record has absorbed (read once no service holds the folder)."""
    stores = open_sqlite_stores(data_dir)
    try:
        keys = stores.learner.keys()
        (key,) = [k for k in keys if k.endswith(":{acme}:S1")]
        return stores.learner.load([key])[0].updates
    finally:
        stores.close()


N = 40


def test_feedback_after_a_sigterm_restart_is_applied_and_state_survives(server: Server) -> None:
    server.start()
    with httpx.Client(base_url=server.url, timeout=10) as client:
        policy = {"threshold": 0.3, "personalise_after": 5}
        put = client.put("/v1/tenants/acme/policy", json=policy, headers=bearer(ACME_ADMIN_KEY))
        assert put.status_code == 200, put.text
        before = [moderate(client, f"I will kill you, number {i}") for i in range(N + 1)]
        assert [send_feedback(client, r, f"before-{i}") for i, r in enumerate(before[:N])] == ["queued"] * N
    server.stop(signal.SIGTERM)

    server.start()
    with httpx.Client(base_url=server.url, timeout=10) as client:
        got = client.get("/v1/tenants/acme/policy", headers=bearer(ACME_KEY)).json()
        assert (got["threshold"], got["personalise_after"]) == (0.3, 5)  # the PUT survived
        assert send_feedback(client, before[N], "late") == "queued"  # its prediction was logged before the restart
        after = [moderate(client, f"I will stab you, number {i}") for i in range(N)]
        assert [send_feedback(client, r, f"after-{i}") for i, r in enumerate(after)] == ["queued"] * N
        assert send_feedback(client, before[0], "before-0") == "duplicate"  # the ledger survived too
    server.stop(signal.SIGTERM)
    assert applied_updates(server.data_dir) == 2 * N + 1


@pytest.mark.parametrize("crash", ["random", "after_store_write"])
def test_every_event_is_applied_exactly_once_across_a_sigkill(server: Server, crash: str) -> None:
    """SIGKILL at a random moment while feedback flows, or at the failpoint between a batch's store write and its
    queue commit; the client retries, after the restart, every call that got no answer (same event ids)."""
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    server.start(**({"AEGIS_FAILPOINTS": f"after_store_write:{rng.randint(2, 10)}"} if crash != "random" else {}))
    events = 3 * N
    answered: dict[int, str] = {}
    unanswered: list[int] = []
    with httpx.Client(base_url=server.url, timeout=10) as client:
        requests = [moderate(client, f"I will shoot you, number {i}") for i in range(events)]

        def sender() -> None:
            for i in range(events):
                try:
                    answered[i] = send_feedback(client, requests[i], f"event-{i}")
                except httpx.HTTPError:
                    unanswered.append(i)

        thread = threading.Thread(target=sender)
        thread.start()
        if crash == "random":
            kill_after = rng.randint(5, events - 5)
            assert wait_until(lambda: len(answered) >= kill_after, 30)
            server.stop(signal.SIGKILL)
        thread.join(60)
    if crash != "random":
        assert server.proc is not None and server.proc.wait(30) == -signal.SIGKILL, f"seed {seed}: failpoint not hit"
    assert unanswered, f"seed {seed}: the crash came after the last call"

    server.start()
    with httpx.Client(base_url=server.url, timeout=10) as client:
        retried = [send_feedback(client, requests[i], f"event-{i}") for i in unanswered]
    assert set(retried) <= {"queued", "duplicate"}
    server.stop(signal.SIGTERM)
    assert set(answered.values()) == {"queued"}
    assert applied_updates(server.data_dir) == events, f"seed {seed}: {len(unanswered)} calls retried"

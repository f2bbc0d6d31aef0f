"""``aegis-online serve`` as a light supervisor: it never imports Ray, it runs the Ray driver as a child process and
turns every way of ending into an orderly stop and a clean machine.

Why a separate process: inside the process that calls ``ray.init``, a signal during start-up lands in Ray's code
(a SIGINT can be swallowed and the service comes up anyway; a SIGTERM prints Ray's native stack dump), and a
SIGKILL leaves Ray's agents running and the session folder behind. Here

* SIGINT, SIGTERM and SIGHUP, at any moment, become a ``stop`` line on the control socket; the driver stops Serve
  and Ray and removes its session; a second signal, or a driver still running after ``grace_s``, is killed;
* the driver runs in its own session, so a terminal's Ctrl-C reaches this process only;
* if this process is killed (SIGKILL), the driver reads the end of the socket and stops by itself;
* if the driver dies, this process kills what is left of the session (``sessions``) and removes its folder;
* at start, folders of services that were killed outright (both processes) are removed with their processes.

Exit status: 0 stopped on request (start-up included); 1 the application did not start, the driver died, or it
had to be killed; 2 a configuration error.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import FrameType

from aegis_online.rayserve import sessions
from aegis_online.rayserve.driver import READY, STOP
from aegis_online.rayserve.launch import Launch

#: How long a requested stop may take (Serve and Ray stop in 4-7 s on two cores) before the driver is killed.
STOP_GRACE_S = 60.0
_POLL_S = 0.2
_STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name))


def say(message: str, *, error: bool = False) -> None:
    print(f"aegis-online serve: {message}", file=sys.stderr if error else sys.stdout, flush=True)


class Signals:
    """The stop signals received, recorded by the handler and acted on by the loop (printing in a handler is not
    safe: the main thread may be inside a print)."""

    def __init__(self) -> None:
        self.received: list[int] = []
        self._previous: dict[int, object] = {}

    def _record(self, signum: int, _frame: FrameType | None) -> None:
        self.received.append(signum)

    def __enter__(self) -> Signals:
        for signum in _STOP_SIGNALS:
            self._previous[signum] = signal.signal(signum, self._record)
        return self

    def __exit__(self, *_exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)  # type: ignore[arg-type]


class Driver:
    """The driver process, its control socket and its session folder."""

    def __init__(self, launch: Launch, session: Path) -> None:
        self.session = session
        self.control, theirs = socket.socketpair()
        command = [
            sys.executable,
            "-m",
            "aegis_online.rayserve.driver",
            "--session",
            str(session),
            "--control-fd",
            str(theirs.fileno()),
            *launch.argv(),
        ]
        env = os.environ | {sessions.MARKER: str(session), "PYTHONUNBUFFERED": "1"}
        try:
            self.process = subprocess.Popen(command, pass_fds=[theirs.fileno()], start_new_session=True, env=env)
        finally:
            theirs.close()
        self._pending = b""
        self._open = True

    def read_ready(self, timeout_s: float) -> str | None:
        """Wait up to ``timeout_s`` for the driver's message; the URL once it says it is ready."""
        if not self._open:
            time.sleep(timeout_s)
            return None
        readable, _, _ = select.select([self.control], [], [], timeout_s)
        if not readable:
            return None
        data = self.control.recv(4096)
        if not data:
            self._open = False
            return None
        self._pending += data
        while b"\n" in self._pending:
            line, self._pending = self._pending.split(b"\n", 1)
            if line.startswith(READY):
                return line[len(READY) :].decode()
        return None

    def ask_to_stop(self) -> None:
        with contextlib.suppress(OSError):  # already gone: the loop sees it exit
            self.control.sendall(STOP)

    def kill(self) -> None:
        """SIGKILL the driver's process group (the GCS, the raylet and its agents live there)."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()

    def clean_up(self) -> None:
        """After the driver ended: whatever of the session still runs (workers have their own groups), the folder."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)
        sessions.remove(self.session)
        self.control.close()


def run(launch: Launch, root: Path = sessions.ROOT, *, grace_s: float = STOP_GRACE_S) -> int:
    """Run the service until a stop signal or the driver's end, its Ray session in a new folder under ``root``
    (``ray.temp_dir``); clean everything; return the exit status."""
    started = time.monotonic()
    with Signals() as signals:  # from here on a signal is a stop request, handled by the loop
        removed = sessions.clean_stale(root)
        if removed:
            names = ", ".join(str(folder) for folder in removed)
            say(f"removed {len(removed)} Ray session(s) left by a service that was killed: {names}")
        session = sessions.create(root)
        try:
            driver = Driver(launch, session)
        except BaseException:
            sessions.remove(session)
            raise
        try:
            return _supervise(driver, signals, started, grace_s)
        finally:
            driver.clean_up()


def _supervise(driver: Driver, signals: Signals, started: float, grace_s: float) -> int:
    stop_asked_at: float | None = None
    handled = 0
    while driver.process.poll() is None:
        if len(signals.received) > handled:
            signum, handled = signals.received[handled], handled + 1
            if stop_asked_at is not None:
                say(f"signal {signum} again: killing the Ray driver")
                driver.kill()
                return 1
            say(f"signal {signum}, stopping")
            driver.ask_to_stop()
            stop_asked_at = time.monotonic()
        if stop_asked_at is not None and time.monotonic() - stop_asked_at > grace_s:
            say(f"the Ray driver did not stop within {grace_s:.0f} s: killing it", error=True)
            driver.kill()
            return 1
        url = driver.read_ready(_POLL_S)
        if url is not None and stop_asked_at is None:
            say(
                f"ready in {time.monotonic() - started:.0f} s at {url} "
                f"(OpenAPI docs {url}/docs, OpenAI-compatible {url}/v1/moderations)"
            )
    code = driver.process.returncode
    if stop_asked_at is not None and code == 0:
        say("stopped")
        return 0
    if code < 0:
        say(f"the Ray driver died (signal {-code}); removed what was left of it", error=True)
        return 1
    if code == 0:
        say("the Ray driver ended by itself; removed what was left of it", error=True)
        return 1
    return code

"""``aegis-online serve`` run as a user runs it, in a subprocess: its output, its whole process tree (every process
it started, however deep, and any process that names or is marked with its Ray session folder), the sockets that
tree listens on, and whether anything of it outlives the service."""

from __future__ import annotations

import contextlib
import ipaddress
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterable
from pathlib import Path

import psutil

from aegis_online.rayserve import sessions

from .helpers import spare_port

SESSION = re.compile(r"(/tmp/aegis-ray-[A-Za-z0-9_]+)")
#: A start-up on two shared cores takes 15-25 s; a loaded CI machine more.
READY_TIMEOUT_S = 180.0


class ServeProcess:
    def __init__(self, *args: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> None:
        self.port = spare_port()
        self.cwd = cwd
        command = [sys.executable, "-m", "aegis_online.rayserve.cli", "serve", "--port", str(self.port), *args]
        environ = {k: v for k, v in os.environ.items() if k != sessions.MARKER} | {"PYTHONUNBUFFERED": "1"}
        self.process = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=cwd,
            env=environ | (env or {}),
            start_new_session=True,  # a signal is sent to it alone, as by `kill`
        )
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self._readers = [
            threading.Thread(target=self._read, args=(stream, lines), daemon=True)
            for stream, lines in ((self.process.stdout, self.stdout), (self.process.stderr, self.stderr))
        ]
        for reader in self._readers:
            reader.start()
        self.seen: dict[int, psutil.Process] = {}
        self.session: Path | None = None

    @staticmethod
    def _read(stream: Iterable[str], lines: list[str]) -> None:
        for line in stream:
            lines.append(line)

    @property
    def output(self) -> str:
        return "".join(self.stdout) + "".join(self.stderr)

    def wait_for(self, text: str, timeout_s: float = READY_TIMEOUT_S) -> bool:
        """Until ``text`` is in the output (True), the process exits or the time is up (False)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if text in self.output:
                return True
            if self.process.poll() is not None:
                time.sleep(0.2)  # the readers drain what is left
                return text in self.output
            time.sleep(0.1)
        return False

    def tree(self) -> list[psutil.Process]:
        """Every live process of the service now; each one is also remembered in ``seen``."""
        found: dict[int, psutil.Process] = {}
        with contextlib.suppress(psutil.Error):
            root = psutil.Process(self.process.pid)
            found[root.pid] = root
            for child in root.children(recursive=True):
                found[child.pid] = child
        for process in list(found.values()):
            with contextlib.suppress(psutil.Error):
                match = SESSION.search(" ".join(process.cmdline()))
                if match and self.session is None:
                    self.session = Path(match.group(1))
        if self.session is not None:
            found |= {p.pid: p for p in sessions.processes(self.session)}
        self.seen |= found
        return list(found.values())

    def wait_for_process(self, name: str, timeout_s: float = READY_TIMEOUT_S) -> bool:
        """Until a process called ``name`` runs in the tree (start-up has reached it)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and self.process.poll() is None:
            if any(_name(p) == name for p in self.tree()):
                return True
            time.sleep(0.1)
        return False

    def listeners(self) -> list[tuple[str, str, int]]:
        """(process, address, port) of every listening TCP socket and bound UDP socket of the tree."""
        found = []
        for process in self.tree():
            with contextlib.suppress(psutil.Error):
                for conn in process.net_connections(kind="inet"):
                    bound_udp = conn.type == 2 and not conn.raddr  # SOCK_DGRAM
                    if conn.status == psutil.CONN_LISTEN or bound_udp:
                        found.append((_name(process), conn.laddr.ip, conn.laddr.port))
        return found

    def survivors(self) -> list[str]:
        """What still runs of every process the service ever had (zombies waiting for a reaper do not run)."""
        alive = []
        for process in self.seen.values():
            with contextlib.suppress(psutil.Error):
                if process.is_running() and process.status() != psutil.STATUS_ZOMBIE:
                    alive.append(f"{process.pid} {_name(process)}")
        if self.session is not None:
            alive += [
                f"{p.pid} {_name(p)} (marked)" for p in sessions.processes(self.session) if p.pid not in self.seen
            ]
        return alive

    def wait_gone(self, timeout_s: float = 60.0) -> list[str]:
        """Until nothing of the service runs and its folder is gone; what is left when the time is up."""
        deadline = time.monotonic() + timeout_s
        while True:
            left = self.survivors()
            if self.session is not None and self.session.exists():
                left.append(f"folder {self.session}")
            if not left or time.monotonic() > deadline:
                return left
            time.sleep(0.5)

    def signal(self, signum: int) -> None:
        self.tree()  # remember everything that runs at this moment
        self.process.send_signal(signum)

    def wait(self, timeout_s: float = 120.0) -> int:
        return self.process.wait(timeout=timeout_s)

    def close(self) -> None:
        """Whatever happened: nothing of the service stays (the test has already said what it found)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=60)
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        for process in self.seen.values():
            with contextlib.suppress(psutil.Error):
                process.kill()
        if self.session is not None:
            sessions.remove(self.session)


def _name(process: psutil.Process) -> str:
    try:
        return process.name()
    except psutil.Error:
        return "?"


def is_loopback(address: str) -> bool:
    """127.0.0.0/8, ::1, and IPv4 loopback mapped into IPv6 (how gRPC shows its sockets: ::ffff:127.0.0.1)."""
    ip = ipaddress.ip_address(address.split("%")[0])
    mapped = getattr(ip, "ipv4_mapped", None)
    return ip.is_loopback or (mapped is not None and mapped.is_loopback)

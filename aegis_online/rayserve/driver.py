"""The Ray driver of ``aegis-online serve``: the child process that owns Ray, run by ``supervisor``.

``python -m aegis_online.rayserve.driver --session DIR --control-fd N [serve's options]`` starts the local Ray, Serve
and the application (``runtime.local_service``), writes ``ready <url>`` on the control socket, and stops when the
supervisor asks (``stop``) or disappears (end of file: the supervisor died, even by SIGKILL). A watcher thread reads
the socket. During start-up a stop interrupts the main thread (KeyboardInterrupt at its next Python instruction),
so a start-up never turns into serving after a stop; the clean-up (serve.shutdown, ray.shutdown, the session's
leftover processes, the folder) runs in every case. It runs in its own session, so a terminal's Ctrl-C reaches the
supervisor only, never Ray's processes half-way.

Exit status: 0 stopped on request, 1 the application did not start, 2 a configuration error.
"""

from __future__ import annotations

import _thread
import argparse
import contextlib
import logging
import os
import signal
import socket
import sys
import threading
from pathlib import Path
from types import FrameType

from aegis_online.rayserve.launch import Launch

READY = b"ready "
STOP = b"stop\n"


class StopRequests:
    """A stop asked for by the supervisor (or a signal): ends the wait, and during start-up the start-up itself.

    No lock: the signal handler runs in the main thread, which may hold any lock at that moment; the flags are
    plain attributes and each reader re-checks them (``starting`` is read by the handler when it runs).
    """

    def __init__(self) -> None:
        self.event = threading.Event()
        self.starting = True

    def request(self) -> None:
        """From the watcher thread: stop; during start-up, interrupt the main thread through the handler below."""
        self.event.set()
        if self.starting:
            _thread.interrupt_main(signal.SIGINT)

    def on_signal(self, _signum: int, _frame: FrameType | None) -> None:
        """SIGINT (also what ``request`` simulates) and SIGTERM: stop; raise once during start-up."""
        self.event.set()
        if self.starting:
            self.starting = False  # the clean-up that follows must not be interrupted in turn
            raise KeyboardInterrupt

    def started(self) -> bool:
        """Start-up is over; False when a stop came first (then the service must not be announced)."""
        self.starting = False
        return not self.event.is_set()

    def install(self) -> None:
        # Ray's ray.init replaces the SIGTERM handler (with sys.exit): install again once Ray is up.
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, self.on_signal)


def watch(control: socket.socket, stops: StopRequests) -> None:
    """Until a stop request or the end of the socket (the supervisor is gone), then ask for a stop."""
    with control.makefile("rb") as lines:
        for line in lines:
            if line == STOP:
                break
    stops.request()


def parse(argv: list[str] | None) -> tuple[argparse.Namespace, Launch]:
    parser = argparse.ArgumentParser(prog="python -m aegis_online.rayserve.driver")
    parser.add_argument("--session", type=Path, required=True)
    parser.add_argument("--control-fd", type=int, required=True)
    parser.add_argument("--config", type=Path)
    parser.add_argument("--host")
    parser.add_argument("--port", type=int)
    parser.add_argument("--data-dir", type=Path)
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    return args, Launch(args.config, args.host, args.port, args.data_dir, args.log_level)


def fail(message: str, code: int) -> int:
    print(f"aegis-online serve: {message}", file=sys.stderr, flush=True)
    return code


def main(argv: list[str] | None = None) -> int:
    from aegis_online.config import ConfigError

    args, launch = parse(argv)
    logging.basicConfig(level=launch.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    os.set_inheritable(args.control_fd, False)  # Ray's processes must not hold the supervisor's line open
    control = socket.socket(fileno=args.control_fd)
    stops = StopRequests()
    stops.install()
    threading.Thread(target=watch, args=(control, stops), name="aegis-stop-watcher", daemon=True).start()
    try:
        settings, keys = launch.resolve()
        from aegis_online.rayserve.runtime import local_service

        with local_service(settings, keys, session=args.session) as url:
            stops.install()
            if stops.started():
                with contextlib.suppress(OSError):  # the supervisor is gone: the watcher asks for the stop
                    control.sendall(READY + url.encode() + b"\n")
                stops.event.wait()
    except KeyboardInterrupt:
        pass
    except (ConfigError, ValueError) as error:
        return fail(str(error), 2)
    except RuntimeError as error:  # a deployment that cannot start (missing model, failed warm-up...)
        if stops.event.is_set():  # or Ray's start-up turned the interruption into an error of its own
            return 0
        return fail(f"the application did not start: {error}", 1)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Helpers shared by the test packages (standard library only): waiting for a condition instead of sleeping."""

from __future__ import annotations

import time
from collections.abc import Callable


def wait_until(predicate: Callable[[], object], timeout: float = 10.0, interval: float = 0.02) -> bool:
    """Call ``predicate`` until it returns a true value or ``timeout`` seconds have passed; its last value as a bool.

    Use as ``assert wait_until(lambda: ..., 5)``: a fixed sleep either wastes time or, on a slow machine, is too short.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())

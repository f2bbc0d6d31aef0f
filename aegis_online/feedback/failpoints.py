"""Named crash points for fault tests: ``AEGIS_FAILPOINTS=after_store_write:3`` kills the process with SIGKILL the
3rd time it passes ``after_store_write``. Unset (production), ``hit`` is a dictionary lookup.

Random kill times exercise whatever the process happens to be doing; failpoints make sure the narrow windows that
matter (state written but offsets not committed; dead letters published but not committed) are hit too.
"""

from __future__ import annotations

import os
import signal


def _parse(spec: str) -> dict[str, int]:
    points = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        name, _, count = item.partition(":")
        points[name] = int(count or 1)
    return points


_armed = _parse(os.environ.get("AEGIS_FAILPOINTS", ""))


def hit(name: str) -> None:
    """Count a pass through ``name``; die at the armed count."""
    if not _armed or name not in _armed:
        return
    _armed[name] -= 1
    if _armed[name] <= 0:
        os.kill(os.getpid(), signal.SIGKILL)

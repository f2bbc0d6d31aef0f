"""The local service's Ray session folders (``/tmp/aegis-ray-*``) and the processes that belong to them.

A local Ray leaves processes behind when its driver dies without ``ray.shutdown``: the dashboard and runtime-env
agents outlive the raylet. Its processes rename themselves (``ray::DashboardAgent``, ``ray::ServeReplica...``), so
their command line no longer names the folder, and the agents' new title overwrites their environment too. A
process belongs to a session when its environment says so (the driver's carries ``AEGIS_RAY_SESSION=<folder>``,
which Ray hands down), or when it runs under a ``ray::`` title and holds a file of the folder open (every Ray process
writes its output to the session's log files). Someone's ``tail -f`` of a log is neither, and is left alone.

A folder records its owner (pid and start time); once the owner is gone the folder is stale, and the next
``aegis-online serve`` removes it together with whatever of it still runs. Only this user's processes are ever
signalled.

The folder is private (0700): it holds the session's Ray auth token, and Ray's own files in ``ray/``, a folder Ray
makes world-writable (``runtime.start_ray``). It lies under /tmp (or ``ray.temp_dir``), not the user's temp
directory, because Ray's socket paths inside it must stay short (field notes, section 6).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import psutil

#: The environment variable that marks every process of a session with the session's folder.
MARKER = "AEGIS_RAY_SESSION"
PREFIX = "aegis-ray-"
ROOT = Path("/tmp")
OWNER_FILE = "owner.json"
#: Start times of one process read twice differ by rounding only; a reused pid started at another time.
_SAME_START_S = 1.0


def create(root: Path = ROOT) -> Path:
    """A new private session folder owned by this process."""
    root.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix=PREFIX, dir=root))  # mode 0700
    record = {"pid": os.getpid(), "started": _start_time(os.getpid())}
    (folder / OWNER_FILE).write_text(json.dumps(record))
    return folder


def _start_time(pid: int) -> float | None:
    import psutil

    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return None


def owner_alive(folder: Path) -> bool | None:
    """Whether the process that created ``folder`` still runs; None when the folder records no owner."""
    try:
        record = json.loads((folder / OWNER_FILE).read_text())
        pid, started = int(record["pid"]), record.get("started")
    except (OSError, ValueError, KeyError, TypeError):
        return None
    now = _start_time(pid)
    return now is not None and (started is None or abs(now - float(started)) < _SAME_START_S)


def processes(folder: Path) -> list[psutil.Process]:
    """This user's processes of the session (marked, or a ``ray::`` process holding its files), not this one."""
    import psutil

    name, uid = str(folder), os.getuid()
    found = []
    for process in psutil.process_iter(["pid", "name", "uids", "environ", "status"]):
        info = process.info
        if info["pid"] == os.getpid() or info["status"] == psutil.STATUS_ZOMBIE:
            continue
        if info["uids"] is None or info["uids"].real != uid:
            continue
        renamed = (info["name"] or "").startswith("ray::")  # a Ray process under its title: look at its files
        if (info["environ"] or {}).get(MARKER) == name or (renamed and _holds(process, name)):
            found.append(process)
    return found


def _holds(process: psutil.Process, folder: str) -> bool:
    """Whether the process has a file of the folder open (a deleted one included: its path keeps the folder)."""
    import psutil

    try:
        return any(_inside(file.path, folder) for file in process.open_files())
    except psutil.Error:
        return False


def _inside(path: str, folder: str) -> bool:
    """``/tmp/aegis-ray-x/ray/session_.../logs/raylet.out``, not ``/tmp/aegis-ray-xy/...``."""
    return path == folder or path.startswith(folder + os.sep)


def kill_processes(folder: Path, timeout_s: float = 10.0) -> int:
    """SIGKILL what still runs of the session (leftovers: the orderly stop is Ray's own); returns how many."""
    import psutil

    victims = processes(folder)
    for process in victims:
        with contextlib.suppress(psutil.Error):
            process.send_signal(signal.SIGKILL)
    psutil.wait_procs(victims, timeout=timeout_s)
    return len(victims)


def remove(folder: Path) -> None:
    """Kill the session's leftover processes, then delete its folder."""
    kill_processes(folder)
    shutil.rmtree(folder, ignore_errors=True)


def clean_stale(root: Path = ROOT) -> list[Path]:
    """Remove this user's session folders whose owner is gone, with their processes; returns the folders removed.

    A folder that records no owner (made by an older version, or by hand) is left alone: nothing says it is unused.
    """
    removed = []
    for folder in sorted(root.glob(f"{PREFIX}*")):
        try:
            if not folder.is_dir() or folder.is_symlink() or folder.stat().st_uid != os.getuid():
                continue
        except OSError:
            continue
        if owner_alive(folder) is False:
            remove(folder)
            removed.append(folder)
    return removed

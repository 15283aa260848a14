"""Fate-sharing for the local Ray cluster a driver starts (`ray.address=local`): when the driver dies,
even by SIGKILL, nothing it started outlives it.

Ray tears most of a local cluster down itself when its driver dies, but not all of it: its per-node
agents (DashboardAgent, RuntimeEnvAgent) wait for a GCS that is gone and linger for about a minute. This
watcher runs in its own session (a kill of the driver's process group does not reach it), records the
driver's descendants while the driver lives, and once the driver is gone gives Ray `GRACE_S` to stop on
its own, then kills every recorded process still running (the same pid with the same start time, so a
reused pid is never hit). Linux only (/proc); elsewhere `start` does nothing.

    python -m rlaif_ray.reaper <driver pid>
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

POLL_S = 0.5
GRACE_S = 3.0


def _stat(pid: int) -> tuple[int, int] | None:
    """(parent pid, start time in clock ticks) of a live process, None when it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (None if fields[0] == "Z" else (int(fields[1]), int(fields[19])))


def descendants(root: int) -> dict[int, int]:
    """pid -> start time of every live descendant of `root`."""
    children: dict[int, list[int]] = {}
    starts: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (st := _stat(int(entry.name))) is not None:
            children.setdefault(st[0], []).append(int(entry.name))
            starts[int(entry.name)] = st[1]
    out, todo = {}, [root]
    while todo:
        for child in children.get(todo.pop(), []):
            out[child] = starts[child]
            todo.append(child)
    return out


def watch(driver: int) -> list[int]:
    """Block until `driver` is gone, then kill what it left; returns the pids killed."""
    me = os.getpid()
    born = _stat(driver)
    seen: dict[int, int] = {}
    while (st := _stat(driver)) is not None and born is not None and st[1] == born[1]:
        seen.update(descendants(driver))
        time.sleep(POLL_S)
    time.sleep(GRACE_S)
    killed = []
    for pid, start in seen.items():
        st = _stat(pid)
        if pid != me and st is not None and st[1] == start:
            try:
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
            except OSError:
                pass
    return killed


def start() -> subprocess.Popen | None:
    """Watch this process from a detached helper (a no-op where there is no /proc)."""
    if not Path("/proc/self/stat").exists():
        return None
    return subprocess.Popen([sys.executable, "-m", "rlaif_ray.reaper", str(os.getpid())], start_new_session=True,
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


if __name__ == "__main__":
    watch(int(sys.argv[1]))

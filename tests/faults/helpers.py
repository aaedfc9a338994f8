"""Process bookkeeping for the fault tests: which processes are alive, and waiting for them to go."""

from __future__ import annotations

import os
import time
from collections.abc import Iterable

import psutil


def is_alive(proc: psutil.Process) -> bool:
    """True while the process runs (a zombie, dead but not yet reaped, counts as gone)."""
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def live_descendants(pid: int | None = None) -> list[psutil.Process]:
    """Live children of `pid` (default: this process), recursively."""
    try:
        root = psutil.Process(pid if pid is not None else os.getpid())
        kids = root.children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    return [p for p in kids if is_alive(p)]


def child_pids() -> set[int]:
    return {p.pid for p in live_descendants()}


def wait_gone(procs: Iterable[psutil.Process], timeout: float) -> list[psutil.Process]:
    """Wait up to `timeout` seconds for the processes to end; returns those still alive."""
    procs = list(procs)
    deadline = time.monotonic() + timeout
    while True:
        alive = [p for p in procs if is_alive(p)]
        if not alive or time.monotonic() >= deadline:
            return alive
        time.sleep(0.02)


def new_children(before: set[int], grace: float = 0.0) -> list[psutil.Process]:
    """Descendants of this process that did not exist in `before` and are still alive after `grace` seconds."""
    deadline = time.monotonic() + grace
    while True:
        extra = [p for p in live_descendants() if p.pid not in before]
        if not extra or time.monotonic() >= deadline:
            return extra
        time.sleep(0.02)


def describe(procs: Iterable[psutil.Process]) -> str:
    out = []
    for p in procs:
        try:
            out.append(f"pid {p.pid} {p.status()} {' '.join(p.cmdline())[:120]!r}")
        except psutil.Error:
            out.append(f"pid {p.pid} (gone)")
    return "; ".join(out)


def wait_for_files(paths: Iterable[str], timeout: float) -> bool:
    paths = list(paths)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(os.path.exists(p) for p in paths):
            return True
        time.sleep(0.01)
    return False


# How Linux shows a segment: a memfd, or (the simulated macOS-like and Windows-like modes, manycore._segment)
# a POSIX shared-memory object, named or already unlinked ("... (deleted)").
SEGMENT_PATHS = ("/memfd:manycore", "/dev/shm/mc")


def manycore_segments(pids: Iterable[int] | None = None) -> dict[int, set[int]]:
    """pid -> inodes of manycore's shared-memory segments that the process has open or mapped.

    Segments are memfds named "manycore..." (the data segments and each worker's status page). The kernel frees
    a memfd once no process has it open or mapped, so "no segment outlives its use" means: once their users are
    gone, no process anywhere holds these inodes. `pids=None` scans every process on the machine.
    """
    found: dict[int, set[int]] = {}
    for pid in psutil.pids() if pids is None else pids:
        inodes: set[int] = set()
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                link = f"/proc/{pid}/fd/{fd}"
                try:
                    if os.readlink(link).startswith(SEGMENT_PATHS):
                        inodes.add(os.stat(link).st_ino)
                except OSError:  # closed meanwhile
                    continue
            with open(f"/proc/{pid}/maps", encoding="utf-8", errors="replace") as maps:
                for line in maps:
                    fields = line.split(None, 5)
                    if len(fields) == 6 and fields[5].startswith(SEGMENT_PATHS):
                        inodes.add(int(fields[4]))
        except OSError:  # gone, or not ours to read
            continue
        if inodes:
            found[pid] = inodes
    return found


def still_held(inodes: set[int], grace: float = 2.0) -> dict[int, set[int]]:
    """Processes anywhere that still hold any of `inodes` after up to `grace` seconds (empty: all freed)."""
    deadline = time.monotonic() + grace
    while True:
        held = {pid: got & inodes for pid, got in manycore_segments().items() if got & inodes}
        if not held or time.monotonic() >= deadline:
            return held
        time.sleep(0.05)


def shm_dir() -> set[str]:
    """Every entry under /dev/shm (manycore creates none: its segments are memfds)."""
    found = set()
    for folder, _dirs, names in os.walk("/dev/shm"):
        found.update(os.path.join(folder, name) for name in names)
    return found

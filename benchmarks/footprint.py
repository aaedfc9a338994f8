"""Memory footprint of a process tree, counting shared memory exactly once (workload W8).

footprint = sum of PSS over the processes + allocated size of the /dev/shm files created during the run.

PSS already splits pages shared between processes (fork copy-on-write, shared libraries) among them, so
summing it over processes counts every such page once. The one trap is a /dev/shm file: its pages appear in
the PSS of every process that maps it *and* in the file's own size. We count such a file once, by its
allocated size (a file that is truncated to 1 GiB but holds 1 MiB of data costs 1 MiB), and leave its
mappings out of the PSS sum. Shared memory that has no visible name (memfd, anonymous MAP_SHARED, unlinked
files) is only visible through PSS, so it stays in the PSS sum.

Linux only: it reads /proc/PID/{maps,smaps,smaps_rollup}.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Collection, Iterable

SHM_DIR = "/dev/shm"
MIB = 1024 * 1024


def shm_files() -> dict[str, int]:
    """Every file under /dev/shm (subfolders included, joblib uses them) -> allocated bytes."""
    found: dict[str, int] = {}
    for folder, _dirs, names in os.walk(SHM_DIR):
        for name in names:
            path = os.path.join(folder, name)
            try:
                # st_blocks, not st_size: a sparse ring buffer only costs the pages actually written.
                found[path] = os.lstat(path).st_blocks * 512
            except OSError:  # removed while we walked
                continue
    return found


def new_shm_files(before: Collection[str]) -> dict[str, int]:
    """The /dev/shm files that did not exist when `before` was taken."""
    return {path: size for path, size in shm_files().items() if path not in before}


def _mapped_paths(pid: int) -> set[str]:
    with open(f"/proc/{pid}/maps", encoding="utf-8", errors="replace") as maps:
        return {fields[5] for line in maps if len(fields := line.split(None, 5)) == 6}


def _rollup_pss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/smaps_rollup", encoding="ascii", errors="replace") as rollup:
        for line in rollup:
            if line.startswith("Pss:"):
                return int(line.split()[1])
    return 0


def _pss_kib_excluding(pid: int, excluded: Collection[str]) -> int:
    """PSS of every mapping of `pid` except those of the files in `excluded` (parses the full smaps)."""
    total = 0
    skip = False
    with open(f"/proc/{pid}/smaps", encoding="utf-8", errors="replace") as smaps:
        for line in smaps:
            if line.startswith("Pss:"):
                if not skip:
                    total += int(line.split()[1])
            elif "-" in line.split(" ", 1)[0]:  # a mapping header such as "7f00-7f80 r--s 0 00:1a 12 /path"
                fields = line.rstrip("\n").split(None, 5)
                skip = len(fields) == 6 and fields[5] in excluded
    return total


def pss_bytes(pid: int, excluded: Collection[str]) -> int:
    """PSS of one process without its mappings of `excluded` files; 0 if the process is gone."""
    try:
        # The full smaps costs ~5 ms a process against ~0.5 ms for the rollup, so only pay for it
        # when the process really maps one of the files counted separately.
        if excluded and not _mapped_paths(pid).isdisjoint(excluded):
            return _pss_kib_excluding(pid, excluded) * 1024
        return _rollup_pss_kib(pid) * 1024
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return 0


def footprint_bytes(pids: Iterable[int], shm_before: Collection[str]) -> int:
    """PSS of `pids` + the /dev/shm files created since `shm_before`, each byte counted once."""
    files = new_shm_files(shm_before)
    return sum(files.values()) + sum(pss_bytes(pid, files.keys()) for pid in pids)


def process_tree(root: int, include_root: bool = True) -> list[int]:
    """`root` and all its descendants (psutil is only needed here)."""
    import psutil

    try:
        children = [child.pid for child in psutil.Process(root).children(recursive=True)]
    except psutil.NoSuchProcess:
        return []
    return [root, *children] if include_root else children


class PeakSampler:
    """Samples footprint_bytes(pids()) every `interval` seconds in a thread and keeps the maximum.

    The orchestrator runs it over its own descendants while a W8 child runs: being another process, it
    takes no GIL from the measured one.
    """

    def __init__(self, pids: Callable[[], list[int]], shm_before: Collection[str], interval: float = 0.02):
        self._pids = pids
        self._shm_before = frozenset(shm_before)
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="footprint-sampler", daemon=True)
        self.peak = 0

    def _loop(self) -> None:
        while not self._stop.is_set():
            started = time.perf_counter()
            self.peak = max(self.peak, footprint_bytes(self._pids(), self._shm_before))
            self._stop.wait(max(0.0, self._interval - (time.perf_counter() - started)))

    def __enter__(self) -> PeakSampler:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()

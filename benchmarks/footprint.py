"""Memory footprint of a process tree, counting shared memory exactly once (workload W8).

footprint = sum of PSS over the processes
            + allocated size of every shared-memory file they hold: /dev/shm files created during the run
              (unless only other programs hold them), and memfd or unlinked /dev/shm files that one of
              the processes has open.

PSS already splits pages shared between processes (fork copy-on-write, shared libraries) among them, so
summing it over processes counts every such page once. The trap is a shared-memory file: its pages appear in
the PSS of every process that maps it *and* in the file's own size, while the pages nobody maps appear in no
PSS at all (a pool of buffers kept open but unmapped, for example). Such a file is counted once, by its
allocated size (a file truncated to 1 GiB that holds 1 MiB of data costs 1 MiB), and its mappings are left
out of the PSS sum. Files are told apart by (device, inode), which /proc/PID/maps shows for every mapping.
Shared memory with no file to see (anonymous MAP_SHARED, or a memfd that is mapped but no longer open)
is only visible through PSS, so it stays in the PSS sum. A new /dev/shm file that only processes outside
the tree hold belongs to another program on the machine and is left out.

Linux only: it reads /proc/PID/{fd,maps,smaps,smaps_rollup}.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Collection, Iterable

SHM_DIR = "/dev/shm"
MIB = 1024 * 1024

FileKey = tuple[int, int]  # (st_dev, st_ino)


def shm_files() -> dict[str, int]:
    """Every file under /dev/shm (subfolders included, joblib uses them) -> allocated bytes."""
    return {path: size for path, (_key, size) in _shm_entries().items()}


def new_shm_files(before: Collection[str]) -> dict[str, int]:
    """The /dev/shm files that did not exist when `before` was taken -> allocated bytes."""
    return {path: size for path, size in shm_files().items() if path not in before}


def _shm_entries() -> dict[str, tuple[FileKey, int]]:
    found: dict[str, tuple[FileKey, int]] = {}
    for folder, _dirs, names in os.walk(SHM_DIR):
        for name in names:
            path = os.path.join(folder, name)
            try:
                info = os.lstat(path)
            except OSError:  # removed while we walked
                continue
            # st_blocks, not st_size: a sparse ring buffer only costs the pages actually written.
            found[path] = ((info.st_dev, info.st_ino), info.st_blocks * 512)
    return found


def _open_shared_files(pid: int) -> dict[FileKey, int]:
    """memfd and /dev/shm files (unlinked ones included) that `pid` has open -> allocated bytes."""
    found: dict[FileKey, int] = {}
    fd_dir = f"/proc/{pid}/fd"
    try:
        names = os.listdir(fd_dir)
    except OSError:
        return found
    for name in names:
        link = f"{fd_dir}/{name}"
        try:
            if os.readlink(link).startswith(("/memfd:", SHM_DIR + "/")):
                info = os.stat(link)  # follows the magic link to the open file itself
                found[(info.st_dev, info.st_ino)] = info.st_blocks * 512
        except OSError:  # closed meanwhile
            continue
    return found


def _mapping_key(fields: list[str]) -> FileKey:
    """(device, inode) of a maps/smaps mapping line split into at least 5 fields."""
    major, minor = fields[3].split(":")
    return os.makedev(int(major, 16), int(minor, 16)), int(fields[4])


def _mapped_shared_files(pid: int) -> set[FileKey]:
    """memfd and /dev/shm files that `pid` maps (from /proc/PID/maps, ~0.3 ms)."""
    found = set()
    with open(f"/proc/{pid}/maps", encoding="utf-8", errors="replace") as maps:
        for line in maps:
            fields = line.split(None, 5)
            if len(fields) == 6 and fields[5].startswith(("/memfd:", SHM_DIR + "/")):
                found.add(_mapping_key(fields))
    return found


def _held_shared_files(pid: int) -> tuple[dict[FileKey, int], set[FileKey]]:
    """(files `pid` has open -> allocated bytes, files it maps); empty if it is gone."""
    try:
        return _open_shared_files(pid), _mapped_shared_files(pid)
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return {}, set()


def _held_by_others(mine: Collection[int]) -> set[FileKey]:
    """Shared-memory files open or mapped by processes outside `mine` (a scan of every process)."""
    import psutil

    others: set[FileKey] = set()
    for pid in psutil.pids():
        if pid not in mine and pid != os.getpid():
            opened, mapped = _held_shared_files(pid)
            others.update(opened, mapped)
    return others


def _rollup_pss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/smaps_rollup", encoding="ascii", errors="replace") as rollup:
        for line in rollup:
            if line.startswith("Pss:"):
                return int(line.split()[1])
    return 0


def _pss_kib_excluding(pid: int, keys: Collection[FileKey]) -> int:
    """PSS of every mapping of `pid` except those of the files in `keys` (parses the full smaps)."""
    total = 0
    skip = False
    with open(f"/proc/{pid}/smaps", encoding="utf-8", errors="replace") as smaps:
        for line in smaps:
            if line.startswith("Pss:"):
                if not skip:
                    total += int(line.split()[1])
            elif "-" in line.split(" ", 1)[0]:  # a mapping header: "7f00-7f80 rw-s 0 00:01 1234 /memfd:x"
                fields = line.split(None, 5)
                skip = len(fields) >= 5 and fields[4] != "0" and _mapping_key(fields) in keys
    return total


def pss_bytes(pid: int, excluded: Collection[FileKey], mapped: Collection[FileKey]) -> int:
    """PSS of one process without its mappings of the `excluded` files; 0 if the process is gone.

    `mapped` is what _mapped_shared_files(pid) found: the full smaps costs ~5 ms a process against
    ~0.5 ms for the rollup, so it is only read when the process maps one of the excluded files.
    """
    try:
        if not excluded or set(mapped).isdisjoint(excluded):
            return _rollup_pss_kib(pid) * 1024
        return _pss_kib_excluding(pid, excluded) * 1024
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return 0


def footprint_bytes(pids: Iterable[int], shm_before: Collection[str]) -> int:
    """PSS of `pids` + their shared-memory files (see the module docstring), each byte counted once.

    A /dev/shm file created during the run counts when the processes hold it, or when nobody does (a
    file left for workers to open later); one held only by other processes on the machine does not.
    """
    pids = list(pids)
    opened: dict[FileKey, int] = {}
    mapped: dict[int, set[FileKey]] = {}
    for pid in pids:
        pid_opened, mapped[pid] = _held_shared_files(pid)
        opened.update(pid_opened)
    held = set(opened).union(*mapped.values())
    new = {key: size for path, (key, size) in _shm_entries().items() if path not in shm_before}
    unheld = new.keys() - held
    foreign = _held_by_others(pids) if unheld else set()
    files = {**opened, **{key: size for key, size in new.items() if key in held or key not in foreign}}
    return sum(files.values()) + sum(pss_bytes(pid, files.keys(), mapped[pid]) for pid in pids)


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

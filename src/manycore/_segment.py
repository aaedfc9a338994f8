"""Shared-memory segments: how this platform makes one, names or passes it, maps it, and lets it go.

Its reason to change is the platform (see ``_platform``): a memfd on Linux, an ``shm_open`` segment unlinked at
once where descriptors can be passed (macOS, the BSDs), a named segment elsewhere (Windows: a named file mapping;
a POSIX name in the simulated windows-like mode). A segment's ``handle`` is what travels with a frame: its
descriptor, or its name. What goes into segments, and their reuse, is ``_shm``'s.
"""

from __future__ import annotations

import itertools
import mmap
import os
import sys

from . import _platform

TYPE_CHECKING = False  # workers import this module: see manycore/__init__.py
if TYPE_CHECKING:
    from collections.abc import Iterable
    from typing import Any

# From Python 3.13 a mapping need not keep a duplicate of its file's descriptor; before, each mapping costs one.
_UNTRACKED: dict[str, bool] = {"trackfd": False} if sys.version_info >= (3, 13) else {}


def _kind() -> str:
    """How segments are made here: ``memfd`` (Linux), ``shm`` (``shm_open``, unlinked at once: a descriptor with
    no name, macOS and the BSDs) where descriptors can be passed, else ``named`` (found by name: Windows)."""
    if _platform.has("memfd"):
        return "memfd"
    if _platform.has("fd_passing") and _platform.has("shm_open"):
        return "shm"
    return "named"


KIND = _kind()
# Asked (and the module loaded) once, at import: a process out of descriptors cannot import an extension module,
# and must not conclude then that the platform has no shm_open.
POSIX_SHM = KIND != "memfd" and _platform.has("shm_open")
if POSIX_SHM:
    import _posixshmem  # type: ignore[import-not-found,unused-ignore]  # noqa: F401 (loaded while descriptors are free)
# The part of a named segment's name that is this process's, so that two processes never pick the same name.
_PREFIX = [f"mc{os.getpid():x}{os.urandom(4).hex()}"]


def _new_prefix_in_child() -> None:
    # A forked child must not make the names its parent makes (same prefix, same counter), and the names the
    # parent holds are not the child's to unlink.
    _PREFIX[0] = f"mc{os.getpid():x}{os.urandom(4).hex()}"
    _NAMED.clear()
    _GIVEN.clear()
    RECEIVED.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_new_prefix_in_child)


def _new_name(sid: int) -> str:
    # At most 30 characters: macOS refuses longer shm_open names (PSHMNAMLEN 31).
    return f"/{_PREFIX[0]}_{sid:x}"[:30] if KIND != "named" or POSIX_SHM else f"{_PREFIX[0]}_{sid:x}"


# Names this process created and has not unlinked yet (POSIX named segments only). A process that ends without
# closing its segments unlinks them here: a worker on its way out (``_worker._entry``), the parent at exit. On
# Windows the system frees a named mapping with its last handle, and nothing is recorded.
_NAMED: set[str] = set()
# Names a worker has given its parent, or received from it: if the parent dies (SIGKILL), nobody else would unlink
# them, so the worker does on its way out (``unlink_all(parent_gone=True)``).
_GIVEN: set[str] = set()
RECEIVED: set[str] = set()


def _shm_create(name: str) -> int:
    import _posixshmem  # type: ignore[import-not-found,unused-ignore]

    fd = int(_posixshmem.shm_open(name, os.O_CREAT | os.O_EXCL | os.O_RDWR, mode=0o600))
    if KIND == "named":
        _NAMED.add(name)
    return fd


def given_away(segment: Segment) -> None:
    """The receiver of this segment unlinks its name from now on (see ``unlink_names``); this process never."""
    if segment.name is not None:
        _NAMED.discard(segment.name)
        _GIVEN.add(segment.name)


def unlink_all(parent_gone: bool = False) -> None:
    """Unlink every named segment this process made and still holds (its mappings stay valid); with
    ``parent_gone`` (a worker whose parent died), also those it gave the parent and those it got from it."""
    for name in [*_NAMED, *(_GIVEN | RECEIVED if parent_gone else ())]:
        _shm_unlink(name)


if KIND == "named" and POSIX_SHM:
    import atexit

    # Registered at import, before the scheduler's own hook (``_process._lifecycle`` imports this module first):
    # hooks run last-in first-out, so the pools stop (and their workers have mapped what they need) before this.
    atexit.register(unlink_all)


def unlink_names(names: Iterable[str]) -> None:
    """Unlink segments a worker made, once it is gone: a killed worker cannot unlink its own (named only)."""
    if POSIX_SHM:
        for name in names:
            _shm_unlink(name)


def unlink_name(name: str) -> None:
    """Unlink one named segment (a worker's status page, once mapped); Windows has nothing to unlink."""
    if POSIX_SHM:
        _shm_unlink(name)


def _shm_unlink(name: str) -> None:
    import _posixshmem  # type: ignore[import-not-found,unused-ignore]

    _NAMED.discard(name)
    _GIVEN.discard(name)
    try:  # noqa: SIM105 (no contextlib: workers import as little as they can)
        _posixshmem.shm_unlink(name)
    except FileNotFoundError:
        pass


class Segment:
    """A shared-memory segment and this process's mapping of it.

    ``handle`` is what travels with a frame: the segment's descriptor where descriptors can be passed (``KIND``
    memfd or shm), its name otherwise (named: the receiver opens it by name, see ``open_handle``).
    """

    __slots__ = ("fd", "map", "name", "sid", "size")

    _ids = itertools.count(1)

    def __init__(self, size: int, label: str = "manycore") -> None:
        self.sid = next(self._ids)
        self.size = max(size, 1)
        self.fd = -1
        self.name: str | None = None
        try:
            if KIND == "memfd":
                self.fd = os.memfd_create(label, os.MFD_CLOEXEC)
            elif KIND == "shm":
                # Unlinked as soon as it exists: from then on the descriptor is all there is, as with a memfd,
                # so no crash can leave it behind.
                name = _new_name(self.sid)
                self.fd = _shm_create(name)
                _shm_unlink(name)
            elif POSIX_SHM:
                self.name = _new_name(self.sid)
                self.fd = _shm_create(self.name)
            else:  # Windows: a named file mapping, freed by the system when its last handle closes
                self.name = _new_name(self.sid)
                self.map = mmap.mmap(-1, self.size, tagname=self.name)  # type: ignore[call-arg,unused-ignore]
                return
        except OSError as exc:
            raise limit_error(exc, "a shared-memory segment") from exc
        try:
            os.ftruncate(self.fd, self.size)
            self.map = mmap.mmap(self.fd, self.size, **_UNTRACKED)
        except BaseException as exc:
            self._close_fd()
            self._unlink()
            if isinstance(exc, OSError):
                raise limit_error(exc, "a shared-memory segment") from exc
            raise
        if self.name is not None:
            self._close_fd()  # named: the mapping and the name are enough

    @property
    def handle(self) -> int | str:
        """What a frame carries for this segment: its descriptor, or its name."""
        return self.name if self.name is not None else self.fd

    @property
    def open(self) -> bool:
        return self.fd >= 0 or self.name is not None

    def _close_fd(self) -> None:
        if self.fd >= 0:
            # The number is forgotten before it is closed: a child forked meanwhile by another thread must not
            # find it still recorded here once it may name another file (see _process._lifecycle._forked_away),
            # nor __del__ close it again.
            fd, self.fd = self.fd, -1
            os.close(fd)

    def _unlink(self) -> None:
        name, self.name = self.name, None
        if name is not None and POSIX_SHM:
            _shm_unlink(name)

    def __del__(self) -> None:
        # A safety net, like an unclosed file's: the mapping goes with the object, but the fd would stay open
        # for the life of the process, and the kernel frees a memfd only once no fd refers to it.
        if getattr(self, "fd", -1) >= 0 or getattr(self, "name", None) is not None:
            import warnings

            warnings.warn(f"unclosed shared-memory segment of {self.size} bytes", ResourceWarning, 2)
            self.close()

    def forget_handle(self) -> None:
        """Close the descriptor (or unlink the name) and keep the mapping."""
        self._close_fd()
        self._unlink()

    def detach(self) -> tuple[mmap.mmap, str | None]:
        """The mapping, for good, and the name if any: the descriptor is closed, and the name left to the one
        process that opens it (a worker's status page: the worker unlinks it once mapped; the parent, once the
        worker is gone, in case it never did)."""
        self._close_fd()
        name, self.name = self.name, None
        if name is not None:
            _NAMED.discard(name)
        return self.map, name

    def close(self) -> None:
        self._close_fd()
        self._unlink()
        try:  # noqa: SIM105 (no contextlib: workers import as little as they can)
            self.map.close()
        except BufferError:
            pass  # views still exported: the mapping goes when they do


def open_handle(handle: int | str, size: int, readonly: bool = False) -> mmap.mmap:
    """Map a segment that arrived with a frame: a descriptor (closed by the caller) or a name."""
    if isinstance(handle, str) and not POSIX_SHM:
        # A tagname mapping is created when none exists: make sure it does, or a segment whose owner is gone
        # would read as zeros instead of failing (as multiprocessing.shared_memory checks on Windows).
        winapi: Any = __import__("_winapi")
        winapi.CloseHandle(winapi.OpenFileMapping(winapi.FILE_MAP_READ, False, handle))
        access = mmap.ACCESS_READ if readonly else mmap.ACCESS_WRITE
        return mmap.mmap(-1, size, tagname=handle, access=access)  # type: ignore[call-arg,unused-ignore]
    named = isinstance(handle, str)
    if named:
        import _posixshmem  # type: ignore[import-not-found,unused-ignore]

        fd = int(_posixshmem.shm_open(handle, os.O_RDONLY if readonly else os.O_RDWR, mode=0o600))
    else:
        fd = int(handle)
    try:
        if readonly:
            return mmap.mmap(fd, size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ, **_UNTRACKED)
        return mmap.mmap(fd, size, **_UNTRACKED)
    finally:
        if named:
            os.close(fd)


def close_handle(handle: int | str | None) -> None:
    """Let go of a segment's handle that nobody will map (a name needs nothing: its owner unlinks it)."""
    if isinstance(handle, int):
        try:  # noqa: SIM105 (no contextlib: workers import as little as they can)
            os.close(handle)
        except OSError:
            pass


def limit_error(exc: OSError, what: str) -> OSError:
    """``exc`` with a message that names the limit reached, when it is one, and what to do about it."""
    import errno

    if exc.errno in (errno.EMFILE, errno.ENFILE):
        import resource

        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        return OSError(
            exc.errno,
            f"manycore could not open {what}: too many open files in process {os.getpid()} "
            f"(RLIMIT_NOFILE soft limit {soft}). Raise the limit (ulimit -n, or resource.setrlimit("
            "resource.RLIMIT_NOFILE, ...)), or close files the program keeps open",
        )
    if exc.errno == errno.ENOMEM:
        return OSError(
            exc.errno,
            f"manycore could not map {what} in process {os.getpid()}: out of memory or of memory mappings "
            "(sysctl vm.max_map_count). Hold fewer large results at once, or raise vm.max_map_count",
        )
    return exc

"""What this platform offers manycore, detected at run time, and the switch that hides Linux's fast paths.

Every mechanism with a Linux-only fast path asks ``has(feature)`` here and takes a portable path when the answer
is no: ``select.epoll`` or the ``selectors`` module, memfds or named shared memory, descriptors passed over Unix
sockets or handles found by name, ``PR_SET_PDEATHSIG`` or a watchdog thread, ``/proc`` or nothing. The answers
come from what the interpreter and kernel have (``hasattr(os, "memfd_create")``), never from ``sys.platform``
alone, so a BSD or a new macOS gets whatever it actually has.

``MANYCORE_PLATFORM`` makes manycore believe features are absent, so that Linux runs exactly the code paths the
other platforms run (the test suite runs once more in each mode, see ``.ci/run`` and ``docs/platforms.md``):

- ``windows-like``: no epoll/kqueue/poll (``select`` only), no memfd, no descriptor passing (shared memory by
  name, the worker's socket by connecting back over loopback with a key), no fork (spawn only), no
  ``PR_SET_PDEATHSIG``, no ``/proc``, no scheduler or affinity calls;
- ``macos-like``: no epoll (poll here; kqueue on a Mac), no memfd (``shm_open`` then unlinked at once, the
  descriptor passed), no SOCK_SEQPACKET fork server, no ``PR_SET_PDEATHSIG``, no ``/proc``, no scheduler or
  affinity calls; spawn by default, fork on request.

Workers import this module (a spawned worker inherits the environment, so it makes the same choices): it
imports only ``os``, ``sys`` and C modules.
"""

from __future__ import annotations

import os
import sys

TYPE_CHECKING = False  # see manycore/__init__.py: workers avoid importing typing
if TYPE_CHECKING:
    import select
    import signal
else:  # C modules: no enum classes to build at start-up
    import _signal as signal
    import select

VARIABLE = "MANYCORE_PLATFORM"

# What each simulated platform lacks. Everything else it has as Linux has it.
SIMULATED: dict[str, frozenset[str]] = {
    "windows-like": frozenset(
        {
            "epoll",
            "kqueue",
            "poll",
            "memfd",
            "fd_passing",
            "seqpacket",
            "fork",
            "pdeathsig",
            "proc",
            "sched",
        }
    ),
    "macos-like": frozenset({"epoll", "memfd", "seqpacket", "pdeathsig", "proc", "sched"}),
}


def _real(feature: str) -> bool:
    if feature == "epoll":
        return hasattr(select, "epoll")
    if feature == "kqueue":
        return hasattr(select, "kqueue")
    if feature == "poll":
        return hasattr(select, "poll")
    if feature == "memfd":
        return hasattr(os, "memfd_create")
    if feature == "fd_passing":
        import _socket

        return all(hasattr(_socket, name) for name in ("AF_UNIX", "SCM_RIGHTS", "CMSG_SPACE")) and hasattr(
            _socket.socket, "sendmsg"
        )
    if feature == "seqpacket":
        import _socket

        if not hasattr(_socket, "SOCK_SEQPACKET") or not hasattr(_socket, "AF_UNIX"):
            return False
        try:  # the constant exists on platforms whose Unix sockets refuse the type: ask the kernel
            a = _socket.socket(_socket.AF_UNIX, _socket.SOCK_SEQPACKET)
        except OSError:
            return False
        a.close()
        return True
    if feature == "fork":
        return hasattr(os, "fork") and hasattr(os, "register_at_fork")
    if feature == "pdeathsig":
        # prctl(2) is Linux's own system call: no attribute tells it is there short of loading libc (ctypes,
        # several ms), which the worker side does only when it needs it.
        return sys.platform.startswith("linux")
    if feature == "proc":
        return os.path.isdir("/proc/self/task")
    if feature == "sched":
        return all(hasattr(os, name) for name in ("sched_setscheduler", "sched_getaffinity", "SCHED_IDLE"))
    if feature == "shm_open":
        try:
            import _posixshmem  # type: ignore[import-not-found,unused-ignore]  # noqa: F401 (POSIX only)
        except ImportError:
            return False
        return True
    raise ValueError(f"unknown platform feature {feature!r}")


_SIMULATED: list[str | None] = []  # read once per process: every choice made here must stay the same


def simulated() -> str | None:
    """The simulated platform named by ``MANYCORE_PLATFORM`` (None: the real one), as first read here."""
    if not _SIMULATED:
        _SIMULATED.append(_read_switch())
    return _SIMULATED[0]


def _read_switch() -> str | None:
    name = os.environ.get(VARIABLE, "").strip()
    if not name or name == "native":
        return None
    if name not in SIMULATED:
        raise ValueError(
            f"{VARIABLE}={name!r} is not a platform manycore can simulate: use one of "
            f"{', '.join(['native', *SIMULATED])} (or leave it unset)"
        )
    return name


_CACHE: dict[str, bool] = {}


def has(feature: str) -> bool:
    """Whether this platform (or the simulated one) offers ``feature``; answers are cached per process."""
    known = _CACHE.get(feature)
    if known is None:
        sim = simulated()
        known = _CACHE[feature] = _real(feature) and not (sim is not None and feature in SIMULATED[sim])
    return known


def describe() -> str:
    """The platform as the errors name it: ``"linux"``, or ``"linux (simulating windows-like)"``."""
    sim = simulated()
    return sys.platform if sim is None else f"{sys.platform} (simulating {sim})"


def lacks(*features: str) -> str:
    """The part of an error message that says which of ``features`` this platform lacks."""
    missing = [f for f in features if not has(f)]
    return f"{describe()} lacks {', '.join(_WORDS.get(f, f) for f in missing)}"


_WORDS = {
    "fork": "os.fork()",
    "fd_passing": "descriptor passing over Unix sockets",
    "seqpacket": "SOCK_SEQPACKET Unix sockets",
    "pdeathsig": "PR_SET_PDEATHSIG",
    "memfd": "memfd_create",
}

#: How manycore stops a worker: SIGKILL where signals exist; elsewhere ``os.kill`` terminates the process
#: (TerminateProcess on Windows) whatever number it is given.
KILL_SIGNAL: int = getattr(signal, "SIGKILL", signal.SIGTERM)


def physical_memory() -> int:
    """This machine's memory in bytes (a bound on any frame's length); a large constant where unknown."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        pass
    try:
        import psutil  # type: ignore[import-untyped,unused-ignore]

        return int(psutil.virtual_memory().total)
    except ImportError:
        return 1 << 44

"""Starting worker processes and learning how they ended: one launcher per start method.

Every launcher hands a worker the child end of a socket pair and a status page (a memfd), and reports exit
codes as ``(pid, exitcode)`` pairs, negative for a signal as in ``multiprocessing``.

- ``forkserver`` (the default on Linux): a zygote (see ``_zygote``) forks each worker. It is forked from the
  user's process when ``may_fork_server`` finds that safe (W6: no interpreter start), a fresh interpreter
  otherwise.
- ``fork``: ``os.fork()`` of the user's process. Fastest, shares the parent's memory copy-on-write, but unsafe
  if the parent runs other threads (Python 3.12+ warns about that), and the supervisor thread is one.
- ``spawn``: a fresh interpreter per worker. Slowest to start; nothing is inherited.

Workers never re-import the user's ``__main__`` (functions travel by value with cloudpickle), so scripts without
an ``if __name__ == "__main__":`` guard work with every method.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterable
from typing import Any

from . import _mpstate
from ._worker import _blas, _entry
from ._zygote import MESSAGE

START_METHODS = ("forkserver", "fork", "spawn")


def default_start_method() -> str:
    return "forkserver" if sys.platform.startswith("linux") else "spawn"


def _clean_path(path: list[str]) -> str:
    """Source that gives a new interpreter (``python -c``) the parent's ``sys.path`` before it imports anything.

    ``-c`` puts the current directory first on ``sys.path``, so a ``struct.py`` or ``json.py`` in the
    directory the user runs from would run in the fork server or a spawned worker at its first import; ``-P``
    (which leaves it out) exists only from Python 3.11. ``sys`` is built in, so importing it reads no file.
    The paths travel as a literal: nothing may be imported to decode them.
    """
    return f"import sys; sys.path[:] = {path!r}; "


# Held while manycore forks a worker from the user's process, while it starts an interpreter (a fork server or
# a spawned worker) with subprocess, and while a pool makes a worker's descriptors until it has recorded them
# (``Scheduler._start_worker_locked``). A worker forked by one pool's supervisor copies whatever descriptors the
# program holds at that instant, and the at-fork hook can close only those the program's pools have recorded:
# - ``Popen`` waits until the new program has exec'd, which it learns when the last copy of an internal pipe's
#   write end closes; a worker forked meanwhile kept a copy for its whole life, and the ``Popen`` (another pool's
#   fork server) waited as long (seen in the soak run: the main thread stuck in ``Popen._execute_child``);
# - a worker socket pair being made by another pool: the copy kept that pool from ever seeing its worker's EOF
#   (CPython's test_hang_gh94440 with fork: shutdown() waited its 5 s deadline).
# A program's own ``subprocess`` calls from other threads can meet the first fate with ``start_method="fork"``,
# as with any fork in a threaded program. Reentrant: a pool starting a worker holds it around the launcher's own.
_LAUNCH_LOCK = threading.RLock()


def launching() -> Any:
    """The lock above (replaced in every forked child, so always look it up through this function)."""
    return _LAUNCH_LOCK


def _new_launch_lock() -> None:
    # A child of any fork (a forked worker, or the program's own os.fork()) may have copied the lock held: a
    # pool it creates needs a free one.
    global _LAUNCH_LOCK
    _LAUNCH_LOCK = threading.RLock()


os.register_at_fork(after_in_child=_new_launch_lock)


class Launcher:
    """Base: start(worker id, child socket, status fd) and the exit codes gathered so far."""

    #: A file descriptor the supervisor must watch and pass to ``on_readable`` (None when there is none).
    control_fd: int | None = None

    def __init__(self) -> None:
        self.exits: dict[int, int] = {}

    def start(
        self, wid: int, child: socket.socket, status_fd: int, close_in_child: Iterable[int]
    ) -> int | None:
        raise NotImplementedError

    def poll(self, pid: int) -> int | None:
        """The exit code of a finished worker, or None while it is still running (never blocks)."""
        raise NotImplementedError

    def on_readable(self) -> list[tuple[int, int]]:
        """Read the control channel; returns ``(worker id, pid)`` for workers forked since last time."""
        return []

    def close(self) -> None:
        pass

    def forget(self) -> None:
        """In a child of ``os.fork()``: drop this process's copies of the launcher's descriptors, stop nothing."""


class ForkLauncher(Launcher):
    def __init__(self, env: dict[str, str] | None = None) -> None:
        super().__init__()
        _entry.set_parent_death_signal.prepare()
        self._limits = bool(env and "OMP_NUM_THREADS" in env)
        #: (initializer, initargs): forked workers inherit them instead of unpickling them (see _initdata)
        self.inherit: tuple[Any, tuple[Any, ...]] = (None, ())

    def start(
        self, wid: int, child: socket.socket, status_fd: int, close_in_child: Iterable[int]
    ) -> int | None:
        if self._limits:
            _blas.loaded_blas.prepare()  # again each time: the user may have loaded a BLAS meanwhile
        with _LAUNCH_LOCK:
            pid = os.fork()
        if pid == 0:
            # The child must not hold other workers' parent ends, or their EOF would never be seen.
            for fd in close_in_child:
                with contextlib.suppress(OSError):
                    os.close(fd)
            _entry.set_parent_death_signal()
            _mpstate.inherited_init = self.inherit
            _entry.run_in_child(child.detach(), status_fd)
        return pid

    def poll(self, pid: int) -> int | None:
        if pid in self.exits:
            return self.exits.pop(pid)
        try:
            done, status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            return -9
        return os.waitstatus_to_exitcode(status) if done else None


class SpawnLauncher(Launcher):
    def __init__(self, env: dict[str, str] | None = None, preload: list[str] | None = None) -> None:
        super().__init__()
        self._procs: dict[int, subprocess.Popen[bytes]] = {}
        # The worker environment (BLAS thread limits) is the interpreter's from the start, so that a
        # preloaded numpy starts with it.
        self._env = {**os.environ, **env} if env else None
        self._preload = preload or []

    def start(
        self, wid: int, child: socket.socket, status_fd: int, close_in_child: Iterable[int]
    ) -> int | None:
        # sys.path is set before any import: ``python -c`` puts the current directory first on it, and a
        # struct.py or json.py there would otherwise run in the worker (see ``_clean_path``).
        code = (
            f"{_clean_path(sys.path)}from manycore._worker._entry import spawn_main; "
            f"spawn_main({child.fileno()}, {status_fd}, sys.path[:], {self._preload!r})"
        )
        with _LAUNCH_LOCK:
            proc = subprocess.Popen(
                [sys.executable, "-c", code], pass_fds=(child.fileno(), status_fd), env=self._env
            )
        self._procs[proc.pid] = proc
        return proc.pid

    def poll(self, pid: int) -> int | None:
        proc = self._procs.get(pid)
        if proc is None:
            return -9
        code = proc.poll()
        if code is not None:
            del self._procs[pid]
        return code


#: Fork the fork server from this process when ``may_fork_server`` allows it (tests turn it off to compare).
FORK_SERVER_FROM_PARENT = True
#: Above this resident size the fork server is exec'd: what it would hold of the parent's memory (pages the parent
#: frees or rewrites stay with it) and the page tables a fork copies grow with it.
FORK_SERVER_MAX_RSS = 128 << 20
# Libraries that read their thread count from the environment when they load: the workers' limits
# (OMP_NUM_THREADS...) reach them only in a fresh interpreter.
_THREADED_LIBRARIES = ("blas", "lapack", "mkl", "libgomp", "libiomp", "libomp")


def may_fork_server(*own: int) -> bool:
    """Whether the fork server may be forked from this process now, rather than exec'd (see ``_fork_server``).

    A fork copies everything; it gives what a fresh interpreter would only when there is nothing here that a
    fork gets wrong: one thread (no lock held by another thread, no thread to lose), no descriptor opened by
    this program but stdio and ``own`` (no file, socket or connection object that a worker would share with
    the parent or find dead), no module half imported, no BLAS or OpenMP runtime loaded (it fixed its thread
    count when it loaded), and a small heap (see ``FORK_SERVER_MAX_RSS``).
    """
    if not FORK_SERVER_FROM_PARENT or not sys.platform.startswith("linux"):
        return False
    try:
        with open("/proc/self/stat", "rb") as file:
            fields = file.read().rpartition(b")")[2].split()
        threads, rss = int(fields[17]), int(fields[21]) * os.sysconf("SC_PAGE_SIZE")
        if threads != 1 or rss > FORK_SERVER_MAX_RSS:
            return False
        for name in os.listdir("/proc/self/fd"):
            fd = int(name)
            if fd > 2 and fd not in own and _opened_here(fd):
                return False
        with open("/proc/self/maps") as file:
            maps = file.read()
    except (OSError, ValueError, IndexError):
        return False
    if any(library in maps for library in _THREADED_LIBRARIES):
        return False
    return not any(
        getattr(getattr(m, "__spec__", None), "_initializing", False) for m in list(sys.modules.values())
    )


def _opened_here(fd: int) -> bool:
    """Whether ``fd`` is open and close-on-exec: opened by this program (Python opens every descriptor so),
    so a Python object (a file, a socket, a connection) may stand for it. One that this process inherited
    across exec is inheritable, and no object of this program's stands for it: the fork server drops it."""
    try:
        return not os.get_inheritable(fd)
    except OSError:  # closed: the listing's own descriptor
        return False


def _fork_server(ctrl_fd: int, env: dict[str, str]) -> int:
    """Fork the fork server from this process (which ``may_fork_server`` found single-threaded): no exec.

    Saves the interpreter's start and the fork server's imports (W6's largest cost), and workers start with
    the modules the program has imported, as with ``fork``. What would differ from a fresh interpreter is
    undone in the child: stdin is /dev/null, every descriptor but stdio and the control socket (the parent's
    end included) becomes /dev/null, close-on-exec (numbers stay taken: an object of the parent's that still
    names one can never reach another file), Python signal handlers are reset, and the worker environment is
    set. ``os.fork()`` runs the at-fork hooks, manycore's among them (other pools' descriptors are let go).
    """
    flush_std_streams()  # the parent's buffered text must not be written again by the fork server's workers
    pid = os.fork()
    if pid:
        return pid
    code = 1
    try:
        _scrub_descriptors(keep=ctrl_fd)
        for signum in signal.valid_signals():
            if callable(signal.getsignal(signum)):  # exec resets caught signals; ignored ones stay ignored
                with contextlib.suppress(OSError, ValueError):
                    signal.signal(signum, signal.SIG_DFL)
        os.environ.update(env)
        from ._zygote import main

        main(ctrl_fd, sys.path[:], [])
        code = 0
    except BaseException:
        import traceback

        traceback.print_exc()
    finally:
        os._exit(code)


def _scrub_descriptors(keep: int) -> None:
    null = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
    for fd in {0, *map(int, os.listdir("/proc/self/fd"))}:
        if fd not in (1, 2, keep, null):
            with contextlib.suppress(OSError):
                os.dup2(null, fd, inheritable=fd == 0)  # stdin as subprocess.DEVNULL gives it
    os.close(null)


def flush_std_streams() -> None:
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):  # closed, replaced by None, or an object without flush
            stream.flush()


def _exec_server(ctrl_fd: int, env: dict[str, str], preload: list[str]) -> subprocess.Popen[bytes]:
    """Start the fork server as a fresh interpreter (``_zygote.main``) on the control socket ``ctrl_fd``."""
    code = (
        f"{_clean_path(sys.path)}from manycore._zygote import main; import os; "
        f"main(int(sys.argv[1]), sys.path[:], {preload!r}); os._exit(0)"
    )
    return subprocess.Popen(
        [sys.executable, "-c", code, str(ctrl_fd)],
        env={**os.environ, **env},
        pass_fds=(ctrl_fd,),
        stdin=subprocess.DEVNULL,
    )


class ForkServerLauncher(Launcher):
    def __init__(self, env: dict[str, str] | None = None, preload: list[str] | None = None) -> None:
        super().__init__()
        self._proc: subprocess.Popen[bytes] | None = None
        self._pid: int | None = None  # the fork server's pid when forked from this process (no Popen)
        # Under the lock until the fork server's end is closed here: a worker forked meanwhile by another pool
        # would keep it, and this fork server would outlive this pool (see _LAUNCH_LOCK).
        with _LAUNCH_LOCK:
            self._ctrl, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            try:
                if not preload and may_fork_server(self._ctrl.fileno(), theirs.fileno()):
                    # Imported here, before the fork, though the first task would import it anyway: the fork
                    # server and its workers inherit it, and a task from __main__ (by value) needs it in the
                    # worker too. First manycore.map of a __main__ function: 0.159 -> 0.083 s (medians of 12).
                    import cloudpickle  # noqa: F401

                    self._pid = _fork_server(theirs.fileno(), env or {})
                else:
                    self._proc = _exec_server(theirs.fileno(), env or {}, preload or [])
            finally:
                theirs.close()
        self._ctrl.setblocking(False)
        self.control_fd = self._ctrl.fileno()

    def start(
        self, wid: int, child: socket.socket, status_fd: int, close_in_child: Iterable[int]
    ) -> int | None:
        self._ctrl.setblocking(True)
        try:
            socket.send_fds(
                self._ctrl, [b"W" + wid.to_bytes(8, "little", signed=True)], [child.fileno(), status_fd]
            )
        finally:
            self._ctrl.setblocking(False)
        return None  # the pid arrives later as an "F" message

    def on_readable(self) -> list[tuple[int, int]]:
        forked: list[tuple[int, int]] = []
        while True:
            try:
                msg = self._ctrl.recv(MESSAGE.size)
            except (BlockingIOError, InterruptedError):
                return forked
            except OSError:
                msg = b""
            if not msg:
                # The zygote is gone; the workers it forked die with it (PDEATHSIG) and report EOF themselves.
                self.control_fd = None
                return forked
            tag, a, b = MESSAGE.unpack(msg)
            if tag == b"F":
                forked.append((a, b))
            else:
                self.exits[a] = b

    def poll(self, pid: int) -> int | None:
        return self.exits.pop(pid, None) if self.control_fd is not None else self.exits.pop(pid, -9)

    def forget(self) -> None:
        # The fork server must see EOF when the parent goes, whatever this child does.
        self._ctrl.close()
        self.control_fd = None
        self._pid = None  # the parent's child, not this process's to reap

    def close(self) -> None:
        # Closing the control socket is the zygote's signal to kill any worker left and exit; once it has
        # exited, every worker it forked is reaped, which poll() then reports.
        self._ctrl.close()
        self.control_fd = None
        if self._proc is not None:
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        elif self._pid is not None:
            pid, self._pid = self._pid, None
            _wait_or_kill(pid, 5)


def _wait_or_kill(pid: int, timeout: float) -> None:
    """Reap a fork server forked from this process (SIGKILLed after ``timeout``): no zombie, no orphan."""
    deadline = time.monotonic() + timeout
    # Woken the moment it exits (a pidfd is readable then), not at the next tick of a sleep loop: the fork
    # server's exit is on the path of every pool's close (W6).
    with contextlib.suppress(AttributeError, OSError):
        pidfd = os.pidfd_open(pid)
        try:
            select.select([pidfd], [], [], timeout)
        finally:
            os.close(pidfd)
    delay = 0.0005
    while True:
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:  # reaped by someone else (a SIGCHLD handler of the program's)
            return
        if done:
            return
        if time.monotonic() > deadline:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
            return
        time.sleep(delay)
        delay = min(delay * 2, 0.01)


def make_launcher(start_method: str, env: dict[str, str] | None = None) -> Launcher:
    # Preload numpy in new interpreters when the parent uses it: data-heavy tasks need it in every worker,
    # and importing it at start-up, while the parent is busy elsewhere, keeps it off the first task's time
    # (W8 with spawn: 0.31 s without, most of it two numpy imports on the clock).
    preload = ["numpy"] if "numpy" in sys.modules else []
    if start_method == "forkserver":
        return ForkServerLauncher(env, preload)
    if start_method == "fork":
        return ForkLauncher(env)
    if start_method == "spawn":
        return SpawnLauncher(env, preload)
    raise ValueError(f"start_method must be one of {', '.join(START_METHODS)}, not {start_method!r}")

"""Starting worker processes and learning how they ended: one launcher per start method.

Every launcher hands a worker the child end of a socket pair and a status page (a memfd), and reports exit
codes as ``(pid, exitcode)`` pairs, negative for a signal as in ``multiprocessing``.

- ``forkserver`` (the default on Linux): a zygote (see ``_zygote``), a fresh interpreter, forks each worker.
- ``fork``: ``os.fork()`` of the user's process. Fastest, shares the parent's memory copy-on-write, but unsafe
  if the parent runs other threads (Python 3.12+ warns about that), and the supervisor thread is one.
- ``spawn``: a fresh interpreter per worker. Slowest to start; nothing is inherited.

Workers never re-import the user's ``__main__`` (functions travel by value with cloudpickle), so scripts without
an ``if __name__ == "__main__":`` guard work with every method.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterable
from typing import Any

from . import _mpstate
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


def _interpreter_args() -> list[str]:
    """The running interpreter and the options it was started with (``-O``, ``-W error``, ``-X dev``...), for
    the fresh interpreters started here, as ``multiprocessing`` gives its spawned and fork-server processes:
    the standard library's own ``subprocess._args_from_interpreter_flags``."""
    return [sys.executable, *subprocess._args_from_interpreter_flags()]  # type: ignore[attr-defined]


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
        # Imported here, not with this module: only forking from the user's process needs the worker's code
        # (3-4 ms off the path of a first forkserver Pool(), W6).
        from ._worker import _entry

        _entry.set_parent_death_signal.prepare()
        self._limits = bool(env and "OMP_NUM_THREADS" in env)
        #: (initializer, initargs): forked workers inherit them instead of unpickling them (see _initdata)
        self.inherit: tuple[Any, tuple[Any, ...]] = (None, ())

    def start(
        self, wid: int, child: socket.socket, status_fd: int, close_in_child: Iterable[int]
    ) -> int | None:
        from ._worker import _blas, _entry

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
                [*_interpreter_args(), "-c", code], pass_fds=(child.fileno(), status_fd), env=self._env
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


def _exec_server(ctrl_fd: int, env: dict[str, str], preload: list[str]) -> subprocess.Popen[bytes]:
    """Start the fork server as a fresh interpreter (``_zygote.main``) on the control socket ``ctrl_fd``."""
    code = (
        f"{_clean_path(sys.path)}from manycore._zygote import main; import os; "
        f"main(int(sys.argv[1]), sys.path[:], {preload!r}); os._exit(0)"
    )
    return subprocess.Popen(
        [*_interpreter_args(), "-c", code, str(ctrl_fd)],
        env={**os.environ, **env},
        pass_fds=(ctrl_fd,),
        stdin=subprocess.DEVNULL,
    )


class ForkServerLauncher(Launcher):
    def __init__(self, env: dict[str, str] | None = None, preload: list[str] | None = None) -> None:
        super().__init__()
        self._proc: subprocess.Popen[bytes] | None = None
        # Under the lock until the fork server's end is closed here: a worker forked meanwhile by another pool
        # would keep it, and this fork server would outlive this pool (see _LAUNCH_LOCK).
        with _LAUNCH_LOCK:
            self._ctrl, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            try:
                # Always a fresh interpreter. A fork server forked from the program when it was single-threaded
                # (no exec: W6 2.2-3.1x multiprocessing's fork instead of 3.4-4.9x) was tried and taken out: it
                # gave every worker the program's random-generator states (the same numbers in every worker), a
                # lock the program held (deadlock), its redirected stdout and its stdin buffer
                # (tests/test_fork_server.py), and which server a program got hung on its threads and heap.
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

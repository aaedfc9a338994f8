"""Starting worker processes and learning how they ended: one launcher per start method.

Every launcher gives a worker a socket to the parent and a status page (a shared-memory segment, see ``_shm``),
and reports exit codes as ``(pid, exitcode)`` pairs, negative for a signal as in ``multiprocessing``. The
socket is the child end of a socket pair, inherited or passed as a descriptor; where descriptors cannot be
passed (Windows), a spawned worker connects back to the parent over loopback and proves with a one-time key,
read from its stdin, that it is the process the parent started (``SpawnLauncher._connect_back``).

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

from . import _mpstate, _platform
from ._protocol import KEY_SIZE
from ._zygote import MESSAGE

START_METHODS = ("forkserver", "fork", "spawn")
# What each start method needs of the platform (see _platform): the fork server forks workers that die with it
# (PR_SET_PDEATHSIG), from requests on a SOCK_SEQPACKET socket that carry their descriptors.
_NEEDS = {"forkserver": ("fork", "fd_passing", "seqpacket", "pdeathsig"), "fork": ("fork",), "spawn": ()}
SOCKET_BUFFER = 4 << 20
# Seconds a spawned worker has to connect back (a cold interpreter on a loaded machine).
CONNECT_TIMEOUT = 60.0
KEY_WAIT = 5.0  # seconds a connection to the connect-back listener has to present its key


def available_start_methods() -> list[str]:
    return [m for m in START_METHODS if all(_platform.has(f) for f in _NEEDS[m])]


def default_start_method() -> str:
    # multiprocessing's defaults: forkserver where it is safe, spawn elsewhere (fork with threads is not).
    return "forkserver" if "forkserver" in available_start_methods() else "spawn"


def require_start_method(method: str) -> None:
    """A clear error for a start method this platform cannot offer."""
    if method in START_METHODS and method not in available_start_methods():
        raise ValueError(
            f"start_method={method!r} is not available here: {_platform.lacks(*_NEEDS[method])}. "
            f"Use one of {', '.join(map(repr, available_start_methods()))}"
        )


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


if hasattr(os, "register_at_fork"):  # not on Windows, which has no fork
    os.register_at_fork(after_in_child=_new_launch_lock)


class Launcher:
    """Base: start(worker id, child socket, status fd) and the exit codes gathered so far."""

    #: A file descriptor the supervisor must watch and pass to ``on_readable`` (None when there is none).
    control_fd: int | None = None

    def __init__(self) -> None:
        self.exits: dict[int, int] = {}

    def launch(
        self, wid: int, status: int | str, close_in_child: list[int]
    ) -> tuple[socket.socket, int | None]:
        """Start a worker: the parent's end of its socket, and its pid (None: the fork server reports it)."""
        mine, theirs = socket.socketpair()
        for end in (mine, theirs):
            # Larger socket buffers mean fewer partial sends, wakeups and flushes when chunks are large
            # (the kernel caps the request at net.core.wmem_max).
            end.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SOCKET_BUFFER)
        try:
            pid = self.start(wid, theirs, status, [*close_in_child, mine.fileno()])
        except BaseException:
            mine.close()
            raise
        finally:
            theirs.close()
        return mine, pid

    def start(
        self, wid: int, child: socket.socket, status_fd: int | str, close_in_child: Iterable[int]
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
        self, wid: int, child: socket.socket, status_fd: int | str, close_in_child: Iterable[int]
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
        # A spawned worker makes the parent's choices (_platform), whatever the environment says by now.
        self._env = {**os.environ, **(env or {}), _platform.VARIABLE: _platform.simulated() or "native"}
        self._preload = preload or []
        self._listener: socket.socket | None = None  # where workers connect back (no descriptor passing)

    def launch(
        self, wid: int, status: int | str, close_in_child: list[int]
    ) -> tuple[socket.socket, int | None]:
        if _platform.has("fd_passing"):
            return super().launch(wid, status, close_in_child)
        return self._connect_back(status)

    def _code(self, entry: str, args: str) -> str:
        # sys.path is set before any import: ``python -c`` puts the current directory first on it, and a
        # struct.py or json.py there would otherwise run in the worker (see ``_clean_path``).
        # Ctrl-C is the parent's to handle from the first statement: a terminal sends SIGINT to the whole
        # process group, and a worker still starting would print a KeyboardInterrupt traceback.
        return (
            "import _signal; _signal.signal(_signal.SIGINT, _signal.SIG_IGN); "
            f"{_clean_path(sys.path)}from manycore._worker._entry import {entry}; "
            f"{entry}({args}, sys.path[:], {self._preload!r})"
        )

    def start(
        self, wid: int, child: socket.socket, status_fd: int | str, close_in_child: Iterable[int]
    ) -> int | None:
        code = self._code("spawn_main", f"{child.fileno()}, {status_fd!r}")
        pass_fds = (child.fileno(), status_fd) if isinstance(status_fd, int) else (child.fileno(),)
        with _LAUNCH_LOCK:
            proc = subprocess.Popen([*_interpreter_args(), "-c", code], pass_fds=pass_fds, env=self._env)
        self._procs[proc.pid] = proc
        return proc.pid

    def _connect_back(self, status: int | str) -> tuple[socket.socket, int | None]:
        """Spawn a worker that connects back over loopback, and take its connection (no descriptor passing).

        The worker reads a one-time key from its stdin (a pipe only the parent holds: never the command line,
        which other users can read) and sends it first; a connection without it is closed unread, so another
        local process cannot become a worker, and the key is worthless once used. The listener exists while
        the launcher does; it accepts only here, while the worker it waits for starts.
        """
        if self._listener is None:
            self._listener = socket.create_server(("127.0.0.1", 0))
        host, port = self._listener.getsockname()[:2]
        key = os.urandom(KEY_SIZE)
        code = self._code("connect_main", f"({host!r}, {port}), {status!r}")
        with _LAUNCH_LOCK:
            proc = subprocess.Popen([*_interpreter_args(), "-c", code], stdin=subprocess.PIPE, env=self._env)
        self._procs[proc.pid] = proc
        assert proc.stdin is not None
        try:
            proc.stdin.write(key)
            proc.stdin.close()
        except OSError:  # it died already: its exit code says why
            pass
        conn = self._accept(key, proc)
        if conn is None:
            # It never connected (it died, or hung): a socket at EOF makes it a worker lost before READY.
            proc.kill()
            conn, dead = socket.socketpair()
            dead.close()
            return conn, proc.pid
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # frames are small and latency matters
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SOCKET_BUFFER)
        return conn, proc.pid

    def _accept(self, key: bytes, proc: subprocess.Popen[bytes]) -> socket.socket | None:
        """The connection that presents ``key``; None if the worker exits or the deadline passes first.

        Every connection waiting is read at once (select), each given ``KEY_WAIT`` to present a key: a local
        process that connects and sends nothing delays no worker's start beyond that, however many it opens.
        """
        import hmac
        import select
        import time

        assert self._listener is not None
        listener = self._listener
        listener.setblocking(False)
        deadline = time.monotonic() + CONNECT_TIMEOUT
        pending: dict[socket.socket, tuple[float, bytes]] = {}  # connection -> (when accepted, key so far)
        try:
            while time.monotonic() < deadline:
                ready, _, _ = select.select([listener, *pending], [], [], 0.05)
                now = time.monotonic()
                for conn in ready:
                    if conn is listener:
                        with contextlib.suppress(BlockingIOError, InterruptedError, ConnectionAbortedError):
                            new, _ = listener.accept()
                            new.setblocking(False)
                            pending[new] = (now, b"")
                        continue
                    since, got = pending[conn]
                    try:
                        part = conn.recv(KEY_SIZE - len(got))
                    except (BlockingIOError, InterruptedError):
                        continue
                    except OSError:
                        part = b""
                    got += part
                    if part and len(got) < KEY_SIZE:
                        pending[conn] = (since, got)
                        continue
                    del pending[conn]
                    if len(got) == KEY_SIZE and hmac.compare_digest(got, key):
                        conn.setblocking(True)
                        return conn
                    conn.close()  # not our worker (or a worker that gave up): refused
                for conn, (since, _) in list(pending.items()):
                    if now - since > KEY_WAIT:
                        del pending[conn]
                        conn.close()
                if not ready and proc.poll() is not None:
                    return None
            return None
        finally:
            for conn in pending:
                conn.close()

    def close(self) -> None:
        if self._listener is not None:
            self._listener.close()
            self._listener = None

    def forget(self) -> None:
        self.close()

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
        self, wid: int, child: socket.socket, status_fd: int | str, close_in_child: Iterable[int]
    ) -> int | None:
        assert isinstance(status_fd, int)  # the fork server exists only where descriptors can be passed
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
    require_start_method(start_method)
    if start_method == "forkserver":
        return ForkServerLauncher(env, preload)
    if start_method == "fork":
        return ForkLauncher(env)
    if start_method == "spawn":
        return SpawnLauncher(env, preload)
    raise ValueError(f"start_method must be one of {', '.join(START_METHODS)}, not {start_method!r}")

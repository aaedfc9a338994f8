"""A worker process's life around the loop: how it starts (forked or spawned), what it lets go of, how it ends.

Entry points: ``run_in_child`` (a worker forked by the fork server or from the user's process), ``spawn_main``
(a fresh interpreter, ``start_method="spawn"``) and ``connect_main`` (a fresh interpreter that connects back to
its parent, where descriptors cannot be passed).
"""

from __future__ import annotations

import _socket as socket  # the C module: no enum classes to build at start-up
import mmap
import os
import sys

from .. import _platform, _shm
from .._protocol import KEY_SIZE, STATUS_SIZE
from ._serve import serve

TYPE_CHECKING = False  # see manycore/__init__.py: workers avoid importing typing
if TYPE_CHECKING:
    import signal
    from collections.abc import Callable
    from typing import Any
else:  # the C module: signal.py imports more (enum, re) than a worker needs at start-up
    import _signal as signal


class _ParentDeathSignal:
    """Make this process die with its parent, so a SIGKILLed parent leaves no orphans.

    Linux: ``PR_SET_PDEATHSIG`` (the kernel sends SIGKILL). ``prepare()`` loads libc through ctypes (several ms)
    in the process that forks, once, instead of in each worker after the fork. Elsewhere: a watchdog thread
    that ends the worker once its parent is gone (``_watch_parent``); an idle worker also ends at once on its
    socket's EOF, the watchdog is for one busy in a task.
    """

    def __init__(self) -> None:
        self._prctl: Callable[..., int] | None = None

    def prepare(self) -> None:
        if self._prctl is None and _platform.has("pdeathsig"):
            import ctypes

            self._prctl = ctypes.CDLL(None, use_errno=True).prctl

    def __call__(self) -> None:
        self.prepare()
        if self._prctl is not None:
            pr_set_pdeathsig = 1
            self._prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)
        else:
            import _thread

            _thread.start_new_thread(_watch_parent, (os.getppid(),))


WATCH_INTERVAL = 0.25  # seconds between two looks at the parent (a watchdog worker only)


def _watch_parent(parent: int) -> None:
    """End this process once ``parent`` has exited (where PR_SET_PDEATHSIG does not exist)."""
    winapi: Any = None
    try:  # noqa: SIM105 (no contextlib: workers import as little as they can)
        winapi = __import__("_winapi")
    except ImportError:
        pass
    if winapi is not None:  # Windows: wait on the parent's process handle itself
        try:
            handle = winapi.OpenProcess(winapi.SYNCHRONIZE, False, parent)
            winapi.WaitForSingleObject(handle, winapi.INFINITE)
        finally:
            os._exit(1)
    import time

    # POSIX: an orphan is adopted (by init or a subreaper), so its parent pid changes.
    while os.getppid() == parent:
        time.sleep(WATCH_INTERVAL)
    _shm.unlink_all(parent_gone=True)
    os._exit(1)


set_parent_death_signal = _ParentDeathSignal()

# What only this worker may hold, for _let_go_in_child: its socket to the parent and its token pipe's read end
# (which ``serve`` adds when the init frame brings it).
_OWN: list[Any] = []
_OWN_HOOK: list[bool] = []  # non-empty once this process (or the worker it was forked from) registered it


def _let_go_in_child() -> None:
    """In a child a task (or initializer) forked without exec: close the worker's socket and token pipe.

    The parent learns that a worker died from end-of-file on its socket, which comes only once every copy is
    closed: a child still holding one (close-on-exec needs an exec) would hide a crash, or a task killed for
    ``task_timeout``, for as long as it lived. The status page's descriptor is closed before any user code runs;
    its mapping stays (the worker's frames in this child still write through views of it).
    """
    own = _OWN[:]
    # Cleared first: the hook stays registered in this child, whose own children must not close these
    # numbers again (this process may since have reused them, e.g. for a nested pool's worker).
    _OWN.clear()
    for thing in own:
        try:
            if isinstance(thing, int):
                os.close(thing)
            else:
                thing.close()
        except OSError:  # already closed
            pass


def _open_status(status: int | str | mmap.mmap) -> mmap.mmap:
    """Map the status page: a descriptor (closed here) or a name (unlinked once mapped: only we open it)."""
    if isinstance(status, mmap.mmap):
        return status
    if isinstance(status, int):
        page = mmap.mmap(status, STATUS_SIZE)
        os.close(status)
        return page
    page = _shm.open_handle(status, STATUS_SIZE)
    _shm.unlink_name(status)
    return page


_PARENT = [0]  # the parent's pid, for run_in_child's way out


def run_in_child(sock_fd: int, status_fd: int | str | mmap.mmap) -> None:
    """Entry point in a freshly forked or spawned worker: map the status page, serve, exit hard."""
    _PARENT[0] = os.getppid()
    code = 0
    try:
        # A spawned worker gets both through pass_fds, which makes them inheritable: a program that a task
        # starts without closing descriptors (os.system, close_fds=False) would hold the socket, could write
        # frames the parent unpickles, and would hide this worker's death from the parent while it lived.
        os.set_inheritable(sock_fd, False)
        if isinstance(status_fd, int):
            os.set_inheritable(status_fd, False)
        sock = socket.socket(fileno=sock_fd)
        sock.setblocking(True)
        _OWN[:] = [sock]
        if not _OWN_HOOK and hasattr(os, "register_at_fork"):  # no fork, no hook (Windows)
            # Registered once per process: a worker forked from a worker (a nested fork pool) inherits it.
            _OWN_HOOK.append(True)
            os.register_at_fork(after_in_child=_let_go_in_child)
        page = _open_status(status_fd)
        serve(sock, page, _OWN)
    except BaseException:
        code = 1
        import traceback

        traceback.print_exc()
    finally:
        # Skip interpreter teardown: atexit handlers and buffers inherited from the parent are not ours to run.
        _shm.unlink_all(parent_gone=os.getppid() != _PARENT[0])
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def _start_fresh(sys_path: list[str], preload: list[str] | None) -> None:
    sys.path[:] = sys_path
    set_parent_death_signal()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle, from the first moment
    for name in preload or ():
        try:  # noqa: SIM105 (no contextlib: workers import as little as they can)
            __import__(name)
        except Exception:
            pass


def spawn_main(
    sock_fd: int, status_fd: int | str, sys_path: list[str], preload: list[str] | None = None
) -> None:
    """Entry point of a worker started as a fresh interpreter (start_method="spawn")."""
    _start_fresh(sys_path, preload)
    run_in_child(sock_fd, status_fd)


def connect_main(
    address: tuple[str, int], status: int | str, sys_path: list[str], preload: list[str] | None = None
) -> None:
    """Entry point of a spawned worker that connects back to its parent (no descriptor passing: Windows).

    The one-time key comes on stdin, which is then the null device, as a spawned multiprocessing worker's.
    """
    key = b""
    while len(key) < KEY_SIZE:
        part = os.read(0, KEY_SIZE - len(key))
        if not part:
            os._exit(1)  # the parent is gone, or this is not its worker
        key += part
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0, inheritable=True)
    os.close(null)
    # Mapped before connecting: once connected, this worker may be stopped and its name unlinked at any moment.
    page = _open_status(status)
    # Connected before anything else is imported: the parent waits for this connection to start the next worker.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.connect(address)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.sendall(key)
    _start_fresh(sys_path, preload)
    run_in_child(sock.detach(), page)

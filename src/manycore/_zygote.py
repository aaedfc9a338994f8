"""The fork server: a clean, single-threaded interpreter whose only job is to fork workers on request.

Forking the user's process is fast but unsafe once it runs threads (ours included); starting a fresh interpreter
per worker is safe but slow. The zygote gives both: it is started once per pool as a fresh interpreter, and
forks each worker (a few milliseconds) from its own single-threaded state. It never imports user code.

Protocol on its SOCK_SEQPACKET control socket (one message per packet; the structs are in ``_protocol``):

    parent -> zygote   b"W" + worker id, with two file descriptors (worker socket, status page) attached
    zygote -> parent   ("F", worker id, pid) after a fork;  ("X", pid, exit code) after reaping a worker

When the control socket reports EOF the parent is gone (closed, crashed or SIGKILLed): the zygote kills every
worker it forked and exits, so no worker outlives its parent. Workers also get PR_SET_PDEATHSIG, so they die
with the zygote itself.
"""

from __future__ import annotations

import _socket as socket  # the C module: no enum classes to build at start-up
import array
import gc
import os
import select
import sys

from ._protocol import EXITED, FORK_REQUEST, FORKED, ZYGOTE_REPORT

TYPE_CHECKING = False  # see manycore/__init__.py: workers avoid importing typing
if TYPE_CHECKING:
    import signal
else:  # the C module: signal.py imports more (enum, re) than a worker needs at start-up
    import _signal as signal

MESSAGE = ZYGOTE_REPORT  # the name _launch reads the reports with


def main(ctrl_fd: int, sys_path: list[str], preload: list[str] | None = None) -> None:
    sys.path[:] = sys_path
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    os.set_inheritable(ctrl_fd, False)  # pass_fds made it inheritable; nothing we start may hold it
    ctrl = socket.socket(fileno=ctrl_fd)
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    # A Python-level handler is needed for set_wakeup_fd to be poked on SIGCHLD.
    signal.signal(signal.SIGCHLD, lambda *_: None)
    _prepare(preload)
    children: set[int] = set()
    try:
        _serve(ctrl, wake_r, wake_w, children)
    finally:
        _kill_all(children)
        # Closed, not left to the collector: an unclosed socket warns (an error under -W error, which a fork
        # server started from such a program has too).
        ctrl.close()


def _prepare(preload: list[str] | None) -> None:
    """What every worker needs, loaded once here so that forked workers have it already."""
    from ._worker import _entry

    _entry.set_parent_death_signal.prepare()  # load libc via ctypes once, not in every worker
    for name in preload or ():
        # Modules the parent uses (numpy): imported once here, so workers do not each pay for it. The BLAS
        # thread limits are already in this process's environment, so numpy starts with them.
        try:  # noqa: SIM105 (no contextlib: this process imports as little as it can)
            __import__(name)
        except Exception:
            pass
    # Every object made so far moves to the collector's permanent generation: a collection in a worker would
    # otherwise write to the header of each one, copying on write every page of the heap the workers share.
    # No gc.collect() first: with numpy loaded it takes 7-12 ms, on the path of every pool's start (W6),
    # to free the few cycles that imports leave.
    gc.freeze()


def _serve(ctrl: socket.socket, wake_r: int, wake_w: int, children: set[int]) -> None:
    """Fork a worker per request and report it; report exit codes; return when the parent's end closes."""
    from ._worker import _entry

    # poll, not select: select refuses descriptors above 1023, and the control socket keeps the number it had
    # in the parent, which may hold thousands of files.
    poller = select.poll()
    poller.register(ctrl.fileno(), select.POLLIN)
    poller.register(wake_r, select.POLLIN)
    while True:
        ready = [fd for fd, _ in poller.poll()]
        if wake_r in ready:
            os.read(wake_r, 4096)
        if ctrl.fileno() in ready:
            try:
                msg, fds = _recv_fds(ctrl)
            except OSError:  # ECONNRESET: the parent closed its end with our reports unread
                msg = b""
            if not msg:
                return
            _, wid = FORK_REQUEST.unpack_from(msg)
            pid = os.fork()
            if pid == 0:
                ctrl.close()
                os.close(wake_r)
                os.close(wake_w)
                signal.set_wakeup_fd(-1)
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                _entry.set_parent_death_signal()
                _entry.run_in_child(fds[0], fds[1])
            for fd in fds:
                os.close(fd)
            children.add(pid)
            try:
                ctrl.send(MESSAGE.pack(FORKED, wid, pid))
            except OSError:  # the parent has gone: main() cleans up
                return
        _reap(ctrl, children)


def _kill_all(children: set[int]) -> None:
    # Plain try/except rather than contextlib: this process imports as little as it can.
    for pid in children:
        try:  # noqa: SIM105
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    for pid in children:
        try:  # noqa: SIM105
            os.waitpid(pid, 0)
        except ChildProcessError:
            pass


def _recv_fds(ctrl: socket.socket) -> tuple[bytes, list[int]]:
    """One request and the fds attached to it (socket.recv_fds, without importing socket.py)."""
    # Close-on-exec at once: a program a task starts must not inherit the worker's socket or status page.
    msg, ancdata, _, _ = ctrl.recvmsg(64, socket.CMSG_SPACE(2 * 4), getattr(socket, "MSG_CMSG_CLOEXEC", 0))
    fds = array.array("i")
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(data[: len(data) - len(data) % fds.itemsize])
    return msg, list(fds)


def _reap(ctrl: socket.socket, children: set[int]) -> None:
    while children:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        children.discard(pid)
        try:
            ctrl.send(MESSAGE.pack(EXITED, pid, os.waitstatus_to_exitcode(status)))
        except OSError:
            return

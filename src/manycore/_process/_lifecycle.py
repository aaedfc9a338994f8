"""Workers coming and going: start, EOF, reap, shutdown, and the hooks for interpreter exit and os.fork().

Its reasons to change: how a worker is started and given its init data, what happens when its socket reports
EOF, how long the supervisor waits for an exit code, how a pool stops, and what a forked child does with the
parent's pools. Runs in the supervisor thread (but ``_forked_away``, in a forked child, and the first workers of
``start_method="fork"``, in the thread that makes the pool).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import threading
import time
import weakref

from .. import _channel as ch
from .. import _initdata, _shm
from .._jobs import State
from .._launch import launching
from .._protocol import INIT, STATUS_SIZE
from .._waiting import Latch
from ..errors import InitializerError, PoolClosedError
from ._poller import READ, WRITE, wake_close
from ._state import ProcessState
from ._workers import Worker, _dying, _hurry_exit, _token_pipe, _wait_for_eof

START_FAILURES_LIMIT = 5  # consecutive workers dying before READY: the pool cannot start workers
EXIT_CODE_GRACE = 2.0  # seconds to wait for a lost worker's exit code before reporting without it
DYING_LIMIT = 30.0  # ... and for one visibly exiting, whose exit code is sure to come (see _dying)

_live: weakref.WeakSet[WorkerLifecycle] = weakref.WeakSet()  # pools of this process, not shut down


@atexit.register
def _terminate_all() -> None:
    # The supervisor is a daemon thread only so that a forgotten pool cannot block interpreter exit;
    # this hook, not the daemon flag, is what stops its workers.
    for scheduler in list(_live):
        if scheduler.owner_pid == os.getpid():
            # A pool that only its pending results held is collected here, as they fail: it still warns.
            scheduler.ended_at_exit = True
            scheduler.terminate()


def _after_fork_in_child() -> None:
    # A child of os.fork() in the user's program, or a worker forked from it (start_method="fork"): every pool
    # here belongs to the parent, whose workers this process must neither use, stop nor keep alive.
    for scheduler in list(_live):
        scheduler._forked_away()
    _live.clear()


if hasattr(os, "register_at_fork"):  # not on Windows, which has no fork
    os.register_at_fork(after_in_child=_after_fork_in_child)


class WorkerLifecycle(ProcessState):
    """Starting, losing, reaping and stopping the workers of one pool (a part of ``Scheduler``)."""

    def _forked_away(self) -> None:
        """In a child of ``os.fork()``: let go of the parent's pool without touching its workers.

        The child's copies of the parent's descriptors are closed: held open here, the fork server's control
        socket would keep the fork server and the workers alive after the parent died, and a worker socket
        would hide that worker's death. Locks are replaced (another thread of the parent may have held one at
        the fork), and any use of the pool fails at once with an error that says what to do.
        """
        for w in [*self._workers.values(), *self._lost]:
            with contextlib.suppress(OSError):
                w.channel.sock.close()
            for (
                fd
            ) in w.tokens:  # not close_tokens(): its lock may have been held by another thread at the fork
                if fd >= 0:
                    with contextlib.suppress(OSError):
                        os.close(fd)
            w.tokens = (-1, -1)
            for chunk in w.inflight.values():
                if chunk.segment is not None:
                    chunk.segment.close()
        self._launcher.forget()
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                wake_close(fd)
        self._wake_r = self._wake_w = -1
        with contextlib.suppress(OSError):
            self._selector.close()
        self._segments.forget()
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._wake_lock = threading.Lock()
        self.broken = PoolClosedError(
            f"this pool belongs to process {self.owner_pid}, and this process is a child it forked "
            "(os.fork()): a pool's workers serve only the process that created it; create a new pool in the child"
        )
        self._stopped = Latch(is_set=True)

    def _start_worker_locked(self) -> None:
        # Under the launch lock until the new worker's descriptors are recorded in self._workers: a worker that
        # another pool forks meanwhile would otherwise copy them where its fork hook cannot see them, and keep
        # this worker's socket open after it dies (see _launch._LAUNCH_LOCK).
        with launching():
            self._start_worker_unguarded()

    def _start_worker_unguarded(self) -> None:
        wid = next(self._wids)
        status = _shm.Segment(STATUS_SIZE, "manycore-status")  # the worker's status page
        try:
            # Work stealing needs the worker to share a pipe with the parent: passed with the INIT frame where
            # descriptors can be passed; elsewhere no chunk is taken back once sent (see _assign.steal).
            tokens = _token_pipe() if ch.PASS_FDS else (-1, -1)
            close_in_child = [self._wake_r, self._wake_w, *tokens]
            close_in_child += [w.channel.fileno() for w in self._workers.values()]
            close_in_child += [fd for w in self._workers.values() for fd in w.tokens]
            if self._launcher.control_fd is not None:
                close_in_child.append(self._launcher.control_fd)
            try:
                mine, pid = self._launcher.launch(wid, status.handle, close_in_child)
            except BaseException:
                for fd in tokens:
                    if fd >= 0:
                        os.close(fd)
                status.close()
                raise
        finally:
            # The worker has its own descriptor (or opens the name, and unlinks it, itself): the mapping is
            # the parent's part.
            page, status_name = status.detach()
        w = Worker(wid, ch.ParentChannel(mine), page, pid, tokens)
        if status_name is not None:  # unlinked with the worker's own once it is gone (if it never did)
            w.channel.names.add(status_name)
        fds = self._init_fds
        nfds = len(fds) - (self._tracker is not None)
        head = _initdata.header(self.start_method, nfds, self._tracker)
        # The init data's descriptors first (the worker takes as many as the header counts), then the read end
        # of the worker's token pipe.
        init_fds = (*fds, tokens[0]) if tokens[0] >= 0 else tuple(fds)
        w.channel.send(INIT, 0, len(head), 0, head, self._init_blob, fds=init_fds)
        self._workers[wid] = w
        self._selector.register(w.channel.fileno(), READ | WRITE, w)

    def _on_eof(self, w: Worker) -> None:
        if w.pid is not None:
            _hurry_exit(w.pid)
        with self._lock:
            self._selector.unregister(w.channel.fileno())
            w.channel.close()
            _shm.unlink_names(w.channel.names)  # results held stay mapped; a killed worker cannot unlink them
            del self._workers[w.wid]
            w.lost_at = time.monotonic()
            self._lost.append(w)
            # Chunks are assigned before READY, so a worker may die while starting with some in flight.
            if not w.ready and self.state is not State.TERMINATED:
                self._start_failures += 1
            assignments = []
            if self.state is not State.TERMINATED and self.broken is None:
                if self._start_failures >= START_FAILURES_LIMIT:
                    self.broken = InitializerError(
                        f"{START_FAILURES_LIMIT} worker processes in a row died while starting "
                        f"(start method {self.start_method!r}); see their output above"
                    )
                else:
                    self._start_worker_locked()
                    assignments = self._assign_locked()
        self._send(assignments)

    def _on_control(self) -> None:
        forked = self._launcher.on_readable()
        with self._lock:
            for wid, pid in forked:
                w = self._workers.get(wid) or next((x for x in self._lost if x.wid == wid), None)
                if w is not None and w.pid is None:
                    w.pid = pid
                    if w.timed_out is not None or w.bad_frame is not None or self.state is State.TERMINATED:
                        w.kill()
        if self._launcher.control_fd is None and self._control_fd is not None:
            # The fork server died: no more workers can start, which makes the pool broken.
            self._selector.unregister(self._control_fd)
            self._control_fd = None
            if self.state is State.RUNNING:
                self._break(InitializerError("the fork server process died; no worker can be started"), None)

    def _reap_lost(self) -> None:
        now = time.monotonic()
        for w in list(self._lost):
            code = self._launcher.poll(w.pid) if w.pid is not None else None
            if code is None and self.state is not State.TERMINATED:
                waited = now - w.lost_at
                if waited < EXIT_CODE_GRACE or (waited < DYING_LIMIT and w.pid is not None and _dying(w.pid)):
                    continue
            self._lost.remove(w)
            if code is None:
                self._unreaped.append(w)  # recovered without its exit code; still to be reaped at shutdown
            self._recover(w, code)

    def _shutdown(self) -> None:
        with self._lock:
            workers = list(self._workers.values())
            self._workers.clear()
            lost, self._lost = self._lost + self._unreaped, []
        graceful = self.state is not State.TERMINATED and not self._crash
        deadline = time.monotonic() + 5
        for w in workers:
            if graceful:
                w.channel.send(ch.STOP, 0, 0, 0)
            else:
                w.kill()
        for w in workers:
            if graceful:
                _wait_for_eof(w.channel, deadline)
            with contextlib.suppress(OSError):
                w.channel.close()
            _shm.unlink_names(w.channel.names)
        # Closing the launcher stops the fork server, which first kills and reaps any worker still there.
        self._launcher.close()
        self._segments.close()
        for fd in self._init_fds:
            if fd != self._tracker:  # the resource tracker's is multiprocessing's, not ours
                os.close(fd)
        with self._lock:  # chunks still out when the pool stopped (terminate) hold input segments
            for w in workers:
                for chunk in w.inflight.values():
                    if chunk.segment is not None:
                        self._segments.release(chunk.segment, reusable=False)
                        chunk.segment = None
        for handle in list(self._broadcasts.values()):
            handle.release()
        for w in workers + lost:
            self._reap(w, deadline)
            w.page.close()
            w.close_tokens()
        with contextlib.suppress(OSError):
            self._selector.close()
        with self._wake_lock:
            # Numbers forgotten before they are closed: a worker forked meanwhile by another pool's supervisor
            # closes what it finds recorded here (_forked_away), and a closed number may already name its own
            # status page or socket (seen: a forked worker's status page closed under it, EBADF).
            wake = (self._wake_r, self._wake_w)
            self._wake_r = self._wake_w = -1
            for fd in wake:
                wake_close(fd)
        _live.discard(self)
        self._stopped.set()

    def _reap(self, w: Worker, deadline: float) -> None:
        """Wait until a worker is gone (killing it past the deadline), so none outlives the pool."""
        if w.pid is None:
            return
        while self._launcher.poll(w.pid) is None:
            if time.monotonic() > deadline:
                w.kill()
            time.sleep(0.001)

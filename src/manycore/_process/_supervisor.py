"""The scheduler: which chunk runs on which worker, and what happens when a worker dies or overruns.

Data flow (one pool)::

   caller threads                        supervisor thread                       worker processes
  ─────────────────                    ───────────────────────                  ──────────────────
   Pool.map / imap / apply_async        one epoll poll() over:                   worker 1 ─┐
   Executor.submit                        · every worker socket (results, EOF)            │ socket pair,
        │                                 · the wakeup pipe                      worker 2 ─┤ framed messages
        ▼                                 · the fork server's control socket              │ (_channel)
   Job (a result object) ──submit──▶  dispatchable jobs ──assign──▶ Worker.inflight ─send─▶ ...
        ▲                               retry queue ◀── a lost worker's chunks             │
        │                                                                                  │
        └──────────── deliver (values, per-item errors) ◀── RESULT frames ◀────────────────┘

- A Job turns its input into chunks, lazily: sized inputs (list, tuple, range) are sliced at assignment time, in
  whichever thread assigns; generators are pulled only by the consumer thread of imap, never by the supervisor,
  so a slow or failing generator cannot stall the pool.
- Assignment (``_assign_locked``) runs under the one scheduler lock in any thread: the caller after a submit
  (so ``apply`` reaches a worker without a thread hand-off) and the supervisor after each result. Each worker
  holds at most ``DEPTH`` chunks, one running and one waiting in its socket, so it never idles for a round trip.
- Pickling and sending happen outside the lock. Sends never block: what the kernel does not take waits in the
  channel's backlog, flushed by the supervisor when the socket is writable.
- Only the supervisor reads sockets, starts and replaces workers, and enforces ``task_timeout`` (it reads each
  worker's status page). One exception, for the latency of a blocking ``apply``: an idle worker is lent to the
  calling thread (``run_lent``), which sends the call and reads the answer itself, then hands the worker back;
  whoever reads a worker's socket holds its ``reading`` lock.
- A lost worker's chunks are re-run: the item it was running (its status page always says which) fails with
  ``WorkerLostError``/``TaskTimeoutError`` or is retried, never run again otherwise (at most once), and the
  rest of the chunk runs again.
- The supervisor holds the scheduler, never the Pool: a Pool that is dropped unclosed is garbage-collected,
  terminates its scheduler, and warns (ResourceWarning), as ``multiprocessing.Pool`` does.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from .. import _channel as ch
from .. import _initdata, _shm
from .._broadcast import Broadcast
from .._jobs import Chunk, Job, State
from .._launch import ForkLauncher, Launcher, available_start_methods, make_launcher
from .._options import cpu_count
from .._recovery import loss_error, lost_chunk, suspect_offset
from .._waiting import Latch
from ..errors import PoolBrokenError, PoolClosedError
from ._assign import DEPTH, Assigner, Assignment
from ._deadlines import overdue
from ._lifecycle import WorkerLifecycle, _live
from ._payload import MappedResults
from ._poller import READ, make_poller, wake_pair, wake_poke
from ._reading import Reading
from ._sending import LENT_POLL_S, Sending
from ._workers import Worker


class Scheduler(Reading, Sending, WorkerLifecycle):
    """Owns the worker processes of one pool and the supervisor thread."""

    def __init__(
        self,
        processes: int,
        *,
        initializer: Callable[..., object] | None = None,
        initargs: Sequence[Any] = (),
        max_tasks_per_worker: int | None = None,
        max_memory_per_worker: int | None = None,
        start_method: str,
        zero_copy_threshold: int | None = _shm.DEFAULT_THRESHOLD,
        worker_env: dict[str, str] | None = None,
        start_method_chosen: bool = True,
        launcher: Launcher | None = None,
    ) -> None:
        super().__init__(processes)
        self.owner_pid = os.getpid()  # a child of os.fork() holds a copy of this object: see _forked_away
        self.start_method = start_method
        self.zero_copy_threshold = zero_copy_threshold
        self.lent_poll_s = LENT_POLL_S if cpu_count() > 1 else 0.0
        self._broadcasts: dict[int, Broadcast[Any]] = {}
        self._segments = _shm.SegmentPool()
        self._results = MappedResults()
        self._assigner = Assigner(max_tasks_per_worker or 0, self._segments, DEPTH if ch.PASS_FDS else 1)
        self._wids = itertools.count(1)
        self._workers: dict[int, Worker] = {}
        self._lost: list[Worker] = []  # EOF seen, exit code not yet known
        self._unreaped: list[Worker] = []
        self._start_failures = 0
        self._watch_writes = True
        self._crash = False  # the supervisor failed (_crashed): stop the workers without waiting for them
        rest = (max_tasks_per_worker or 0, max_memory_per_worker or 0, zero_copy_threshold, worker_env or {})
        self._init_launcher(initializer, initargs, rest, worker_env, start_method_chosen, launcher)
        self._init_polling()
        _live.add(self)
        if isinstance(self._launcher, ForkLauncher):
            self._fork_workers()
        self._thread.start()

    def _init_launcher(
        self,
        initializer: Callable[..., object] | None,
        initargs: Sequence[Any],
        rest: tuple[int, int, int | None, dict[str, str]],
        worker_env: dict[str, str] | None,
        start_method_chosen: bool,
        launcher: Launcher | None,
    ) -> None:
        start_method = self.start_method
        # The launcher first: a fork server boots while this thread imports cloudpickle and pickles the
        # initializer (W6: the two overlap on separate cores). Pool() may have started it already, before
        # importing this module, for the same reason (Backend.prelaunch).
        self._launcher: Launcher = launcher or make_launcher(start_method, worker_env)
        try:
            try:
                self._init_blob, self._init_fds = _initdata.pack(initializer, initargs, rest, start_method)
            except _initdata.InheritOnly:
                if start_method_chosen or start_method == "fork" or "fork" not in available_start_methods():
                    raise
                # e.g. multiprocessing.Lock() in initargs: only a forked worker can use it, as with
                # multiprocessing.Pool, whose default start method on Linux is fork (before Python 3.14).
                self._launcher.close()
                self.start_method = start_method = "fork"
                self._launcher = make_launcher(start_method, worker_env)
                self._init_blob, self._init_fds = _initdata.pack(initializer, initargs, rest, start_method)
            # The tracker's descriptor travels like the initargs' (none where descriptors cannot be passed: the
            # workers then start their own, as multiprocessing's do on Windows).
            tracker = _initdata.tracker_fd() if start_method != "fork" and ch.PASS_FDS else None
        except BaseException:
            self._launcher.close()
            raise
        if tracker is not None:
            self._init_fds.append(tracker)
        self._tracker = tracker
        # Held for the pool's life, as multiprocessing.Pool holds them: a Lock or SharedMemory the pool was
        # given may have no other owner, and its finalizer would unlink what every new worker must open.
        self._initargs = (initializer, tuple(initargs))
        if isinstance(self._launcher, ForkLauncher):
            self._launcher.inherit = self._initargs

    def _init_polling(self) -> None:
        self._wake_lock = threading.Lock()
        self._wake_r, self._wake_w = wake_pair()
        self._selector = make_poller()
        self._selector.register(self._wake_r, READ, None)
        self._control_fd = self._launcher.control_fd
        if self._control_fd is not None:
            self._selector.register(self._control_fd, READ, self._launcher)
        self._thread = threading.Thread(target=self._supervise, name="manycore-supervisor", daemon=True)
        self._stopped = Latch()

    def _fork_workers(self) -> None:
        # Forked here, in the thread that makes the pool, as multiprocessing.Pool does, not by the supervisor
        # once this call has returned: a fork copies the locks other threads hold, an import's module lock
        # among them, and the caller's next step is often an import (a Manager() after an Executor: CPython's
        # test_ressources_gced_in_workers hung with a worker stuck on multiprocessing.managers' lock).
        # Replacement workers still come from the supervisor: the hazard of fork in a threaded program.
        try:
            with self._lock:
                for _ in range(self.processes):
                    self._start_worker_locked()
        except BaseException:
            self.state = State.TERMINATED
            self._shutdown()
            raise

    # ---- called by the API layer -------------------------------------------------------------------------

    def _submitted(self, job: Job) -> None:
        if job.task_timeout is not None:
            self._wake()  # the supervisor must start watching deadlines

    def join(self, timeout: float | None = None) -> bool:
        """Wait until the supervisor has stopped (after close: all work done; after terminate: at once)."""
        if threading.current_thread() is self._thread:
            return False
        return self._stopped.wait(timeout)

    def terminate(self) -> None:
        """Kill every worker now; unfinished jobs fail with PoolClosedError. Never blocks for long."""
        if self.owner_pid != os.getpid():
            return  # the workers are the parent's (os.fork() in the user's program)
        with self._lock:
            jobs = self._terminate_locked()
            if jobs is None:
                return
            workers = list(self._workers.values()) + self._lost
        for w in workers:
            w.kill()
        self._wake()
        self._fail_unfinished(jobs)
        if threading.current_thread() is not self._thread:
            self._stopped.wait(10)

    def statistics(self) -> dict[str, int]:
        with self._lock:
            return {
                "workers": len(self._workers),
                "chunks_in_flight": sum(len(w.inflight) for w in self._workers.values()),
                "jobs_active": self._active,
                "chunks_taken_back": self._assigner.taken_back,
            }

    def _assign_locked(self) -> list[Assignment]:
        if self.state is State.TERMINATED or self.broken is not None:
            return []
        return self._assigner.assign(self._workers, self._next_chunk_locked)

    def broadcast(self, obj: object) -> Broadcast[Any]:
        with self._lock:
            if self.state is not State.RUNNING:
                raise PoolClosedError("Pool not running: it was closed or terminated; create a new one")
        handle: Broadcast[Any] = Broadcast(obj, self._release_broadcast)
        with self._lock:
            self._broadcasts[handle.bid] = handle
        return handle

    def _release_broadcast(self, handle: Broadcast[Any]) -> None:
        with self._lock:
            self._broadcasts.pop(handle.bid, None)
            holders = [w for w in self._workers.values() if handle.bid in w.broadcasts]
            for w in holders:
                w.broadcasts.discard(handle.bid)
        for w in holders:
            w.channel.send(ch.RELEASE, handle.bid, 0, 0)

    def _wake(self) -> None:
        # Under the lock and checked: once the pipe is closed, its fd number may belong to someone else.
        with self._wake_lock:
            if self._wake_w >= 0:
                with contextlib.suppress(BlockingIOError, OSError):
                    wake_poke(self._wake_w)

    # ---- the supervisor thread ---------------------------------------------------------------------------

    def _supervise(self) -> None:
        try:
            try:
                with self._lock:
                    for _ in range(self.processes - len(self._workers)):  # fork: started in __init__
                        self._start_worker_locked()
                    assignments = self._assign_locked()  # calls submitted before the workers existed
                self._send(assignments)
                while not self._housekeeping():
                    done = self._poll(self._poll_timeout())
                    # Delivering wakes a waiting caller, which then needs the GIL: do it last, right before this
                    # thread blocks in select() again and lets the caller run.
                    self._deliver(done)
                    del done  # not kept while blocked in the next poll: it holds the calls' arguments
            except BaseException as exc:  # SystemExit too: nothing else would ever tell the callers
                self._crashed(exc)
            finally:
                self._shutdown()
        finally:
            # Even if shutting down failed: join() and terminate() must not wait for a thread that is gone.
            _live.discard(self)
            self._stopped.set()

    def _crashed(self, exc: BaseException) -> None:
        """The supervisor hit an exception it has no handling for: break the pool loudly, never hang.

        Nothing would read results or replace workers any more, so a pool that went on accepting calls would
        hang them. Every waiting and later call raises ``PoolBrokenError`` (the exception as its cause); the
        workers are killed by ``_shutdown``.
        """
        error = PoolBrokenError(
            f"the pool's supervisor thread failed with {type(exc).__name__}: {exc}; the pool is broken and its "
            "workers were stopped. Create a new pool"
        )
        self._break(error, exc)
        with self._lock:
            self._crash = True
            workers = list(self._workers.values()) + self._lost
        for w in workers:
            w.kill()
        self._fail_everything(self.broken or error)

    def _poll_timeout(self) -> float | None:
        if self._lost:
            return 0.01
        if self._timeouts_active:
            return 0.02
        if self.state is State.CLOSED:
            return 0.1
        return None

    def _housekeeping(self) -> bool:
        """Timeouts, lost workers, shutdown. Returns True when the supervisor should stop."""
        if self._timeouts_active:
            self._check_deadlines()
        if self._lost:
            self._reap_lost()
        if self.broken is not None:
            self._fail_everything(self.broken)
        if self.state is State.TERMINATED:
            return True
        if self.state is State.CLOSED:
            with self._lock:
                self._finish_abandoned_locked()
                return (
                    self._active == 0
                    and not self._retry
                    and not any(w.inflight for w in self._workers.values())
                    and not any(j.queued for j in self._dispatchable)
                )
        return False

    def _check_deadlines(self) -> None:
        now = time.monotonic_ns()
        with self._lock:
            for w, cid, offset in overdue(self._workers.values(), now):
                w.timed_out = (cid, offset)
                w.kill()

    def _recover(self, w: Worker, exitcode: int | None) -> None:
        """Re-run what a lost worker held; fail (or retry) the one item it was running (see ``_recovery``)."""
        failures: list[tuple[Chunk, BaseException]] = []
        with self._lock:
            # The status page always names the running item (see _worker._run.run_items), so the item a worker died
            # on is never run again unless retries allow it (at most once).
            if w.timed_out is not None:
                cid, offset = w.timed_out
            else:
                cid, offset, _ = w.running()
                offset = suspect_offset(w.inflight.get(cid), offset)
            requeue: list[Chunk] = []
            for chunk in w.inflight.values():
                if chunk.segment is not None:  # the dead worker's mapping is gone: the segment is free again
                    self._segments.release(chunk.segment, reusable=True)
                    chunk.segment = None
                # After terminate() its jobs fail with PoolClosedError, whichever thread gets there first: a
                # worker that terminate() killed must not be reported as lost, nor its chunks run again.
                if chunk.job.closed or self.state is State.TERMINATED:
                    continue
                if chunk.cid != cid:
                    requeue.append(chunk)
                    continue
                # With blocks (see _worker._run.run_items) the worker died on one of the block's items, not known
                # which: each is a suspect, failed (at most once) or retried alone, where a second death names
                # the culprit.
                lost = lost_chunk(chunk, offset, chunk.block if w.timed_out is None else 1)
                requeue += lost.requeue
                failures += [
                    (culprit, self._loss_error(w, exitcode, culprit, lost.span)) for culprit in lost.failed
                ]
            w.inflight.clear()
            w.close_tokens()
            self._retry.extendleft(reversed(requeue))
            assignments = self._assign_locked()
        self._send(assignments)
        for culprit, exc in failures:
            culprit.job.deliver(culprit, [None], {0: exc})

    @staticmethod
    def _loss_error(
        w: Worker, exitcode: int | None, culprit: Chunk, span: tuple[int, int] | None
    ) -> BaseException:
        return loss_error(
            culprit,
            culprit.first,
            span,
            pid=w.pid,
            exitcode=exitcode,
            timed_out=w.timed_out is not None,
            bad_frame=w.bad_frame,
        )

    def _break(self, error: BaseException, cause: BaseException | None) -> None:
        error.__cause__ = cause
        with self._lock:
            if self.broken is None:
                self.broken = error

    def _fail_everything(self, error: BaseException) -> None:
        with self._lock:
            jobs = [j for j in self._jobs if not j.closed]
            self._idle.notify_all()
        for job in jobs:
            job.fail_all(error)

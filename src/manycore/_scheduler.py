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

import atexit
import contextlib
import itertools
import mmap
import os
import select
import signal
import socket
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from . import _channel as ch
from . import _initdata, _shm
from ._broadcast import Broadcast, collect
from ._jobs import Chunk, Job, SchedulerBase, State
from ._launch import ForkLauncher, Launcher, launching, make_launcher
from ._protocol import (
    BLOCK_SHIFT,
    FN_SHIFT,
    FUNCTION_CACHE,
    INIT,
    INITARGS_UNLOADABLE,
    INPUT_KEPT,
    NO_FUNCTION,
    OUT_OF_BAND,
    PARTIAL,
    RESULT_FLAGS,
    STATUS,
    STATUS_SIZE,
    TOKEN,
    TRACK_ITEMS,
    UNLOADABLE,
)
from ._serialize import (
    dumps_frames,
    find_unpicklable,
    loads,
    name_item,
    unloadable_error,
    unpack_exception,
)
from ._worker._blas import thread_ids
from .errors import (
    InitializerError,
    PoolBrokenError,
    PoolClosedError,
    SerializationError,
    TaskTimeoutError,
    WorkerLostError,
)

DEPTH = 2  # chunks a worker holds: the one it runs and the next, already in its socket
START_FAILURES_LIMIT = 5  # consecutive workers dying before READY: the pool cannot start workers
EXIT_CODE_GRACE = 2.0  # seconds to wait for a lost worker's exit code before reporting without it
DYING_LIMIT = 30.0  # ... and for one visibly exiting, whose exit code is sure to come (see _dying)
SOCKET_BUFFER = 4 << 20
# Result segments the user may hold mapped at once, per pool. Each costs the parent a mapping (and, before
# Python 3.13, a descriptor) and its worker a segment it may not reuse (two descriptors): results beyond this
# are copied out of their segment, which then goes straight back. 20,000 results held, each in its own
# segment, would otherwise need 20,000 descriptors here and 40,000 in the workers (RLIMIT_NOFILE is often
# 1,024), and as many mappings (vm.max_map_count is 65,530).
MAX_MAPPED_RESULTS = 64
# No frame from a worker may be larger than this machine's memory: a longer length is a forged or garbled header,
# refused before anything is allocated for it.
MAX_BODY = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


READ = select.EPOLLIN
WRITE = select.EPOLLOUT
_READABLE = select.EPOLLIN | select.EPOLLHUP | select.EPOLLERR
_WRITABLE = select.EPOLLOUT | select.EPOLLHUP | select.EPOLLERR


class Poller:
    """``select.epoll`` with an object per file descriptor.

    Not the ``selectors`` module: its bookkeeping costs microseconds per call, and the supervisor polls once
    per result while ``apply`` registers and unregisters a worker on every call (W5).
    """

    def __init__(self) -> None:
        self._epoll = select.epoll()
        self._data: dict[int, tuple[Any, int]] = {}

    def register(self, fd: int, events: int, data: Any) -> None:
        self._epoll.register(fd, events)
        self._data[fd] = (data, events)

    def modify(self, fd: int, events: int, data: Any) -> None:
        if self._data[fd][1] != events:
            self._epoll.modify(fd, events)
            self._data[fd] = (data, events)

    def unregister(self, fd: int) -> None:
        del self._data[fd]
        self._epoll.unregister(fd)

    def poll(self, timeout: float | None) -> list[tuple[Any, bool, bool]]:
        """(data, readable, writable) for each ready descriptor; hang-up and error count as both."""
        ready = []
        data = self._data
        for fd, ev in self._epoll.poll(-1 if timeout is None else timeout):
            entry = data.get(fd)
            if entry is not None:  # unregistered by another thread meanwhile
                ready.append((entry[0], bool(ev & _READABLE), bool(ev & _WRITABLE)))
        return ready

    def close(self) -> None:
        self._epoll.close()


class Worker:
    __slots__ = (
        "accepting",
        "assigned",
        "bad_frame",
        "behind",
        "broadcasts",
        "channel",
        "fn_seq",
        "inflight",
        "known_fns",
        "lent",
        "lost_at",
        "page",
        "pid",
        "reading",
        "ready",
        "skips",
        "timed_out",
        "token_lock",
        "tokens",
        "unstarted",
        "wid",
    )

    def __init__(
        self, wid: int, channel: ch.ParentChannel, page: mmap.mmap, pid: int | None, tokens: tuple[int, int]
    ) -> None:
        self.wid = wid
        self.channel = channel
        self.page = page
        self.pid = pid
        self.ready = False
        self.accepting = True
        self.assigned = 0
        self.inflight: dict[int, Chunk] = {}
        self.known_fns: dict[int, int] = {}
        self.fn_seq = 0
        self.timed_out: tuple[int, int] | None = None  # (chunk id, item offset) the supervisor killed it for
        self.lost_at = 0.0
        self.broadcasts: set[int] = set()  # broadcast ids this worker has
        # Whoever reads the worker's socket holds this: the supervisor, or a caller it is lent to (``run_lent``).
        self.reading = threading.Lock()
        self.lent = False
        self.bad_frame: str | None = None  # why the supervisor killed it for what it sent
        channel.set_check(self.check_frame)

        # Work stealing (see Scheduler._steal_locked). Chunks queued behind another get a token; ``unstarted``
        # holds the ids of those sent whose token may still be in the pipe, in the order they entered the
        # socket; ``token_lock`` makes "write the token, send the frame, note the id" one step.
        self.tokens = tokens  # the token pipe's (read end, write end); both -1 once closed
        self.token_lock = threading.Lock()
        self.behind: set[int] = set()  # assigned behind another chunk: send with a token
        self.unstarted: list[int] = []
        self.skips = 0  # chunks taken back that are still ahead in the worker's socket

    def close_tokens(self) -> None:
        with self.token_lock:
            tokens, self.tokens = self.tokens, (-1, -1)  # forgotten first: see _shutdown's wake pipe
            for fd in tokens:
                if fd >= 0:
                    os.close(fd)

    def check_frame(self, frame: ch.Frame, length: int) -> None:
        """Refuse a frame header this worker cannot legitimately send, before its body is allocated or read.

        Runs in whichever thread reads the socket (holding ``reading``). The chunk id is what matters most: the
        parent unpickles a result only for a chunk it gave this worker, at most once (see ``Scheduler._read``).
        """
        kind, chunk_id = frame.kind, frame.chunk_id
        if kind == ch.RESULT:
            if chunk_id not in self.inflight:
                raise ch.ProtocolError(f"a result for chunk {chunk_id}, which it was not running")
            if frame.flags & ~RESULT_FLAGS:
                raise ch.ProtocolError(f"a result with unknown flags {frame.flags:#x}")
        elif kind == ch.READY:
            if self.ready or chunk_id or length:
                raise ch.ProtocolError("a second or malformed READY message")
            if self.pid is not None and frame.pid != self.pid:
                # The pid is the one the supervisor will SIGKILL: never take another process's from a worker.
                raise ch.ProtocolError(f"READY with pid {frame.pid}, but its pid is {self.pid}")
        elif kind == ch.INIT_FAILED:
            if self.ready:
                raise ch.ProtocolError("INIT_FAILED after READY")
        elif kind == ch.SKIPPED:
            # Not matched against ``skips``: the thread that took the chunk back counts it under the scheduler
            # lock, possibly just after this reader sees the worker's answer. An unasked SKIPPED changes nothing
            # but the count, which the next one puts right.
            if length:
                raise ch.ProtocolError("a malformed SKIPPED message")
        else:
            raise ch.ProtocolError(f"a message of unknown kind {kind}")
        if length > MAX_BODY:
            raise ch.ProtocolError(f"a message of {length} bytes, more than this machine's memory")

    def needs_function(self, key: int) -> bool:
        seen = self.known_fns.get(key)
        if seen is not None and self.fn_seq - seen < FUNCTION_CACHE // 2:
            return False
        self.known_fns[key] = self.fn_seq
        self.fn_seq += 1
        if len(self.known_fns) > FUNCTION_CACHE:
            del self.known_fns[next(iter(self.known_fns))]
        return True

    def running(self) -> tuple[int, int, int]:
        """(chunk id, item offset, item start in monotonic ns) from the status page; chunk id 0 when idle."""
        first = STATUS.unpack_from(self.page)
        second = STATUS.unpack_from(self.page)
        # The worker writes the page without a lock; two equal reads are a consistent one.
        return first if first == second else STATUS.unpack_from(self.page)

    def kill(self) -> None:
        if self.pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
            _hurry_exit(self.pid)


def _token_pipe() -> tuple[int, int]:
    r, w = os.pipe()
    # Non-blocking on both sides: the worker's copy (sent with SCM_RIGHTS) shares this file description.
    os.set_blocking(r, False)
    os.set_blocking(w, False)
    return r, w


_live: weakref.WeakSet[Scheduler] = weakref.WeakSet()


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


os.register_at_fork(after_in_child=_after_fork_in_child)


class Scheduler(SchedulerBase):
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
    ) -> None:
        super().__init__(processes)
        self.owner_pid = os.getpid()  # a child of os.fork() holds a copy of this object: see _forked_away
        self.start_method = start_method
        self.zero_copy_threshold = zero_copy_threshold
        self._broadcasts: dict[int, Broadcast[Any]] = {}
        self._segments = _shm.SegmentPool()
        self._freed: deque[tuple[ch.ParentChannel, int]] = deque()  # result segments to hand back
        self._mapped: set[int] = set()  # result segments the user still holds mapped (see MAX_MAPPED_RESULTS)
        self._mapping_ids = itertools.count()
        self._max_tasks = max_tasks_per_worker or 0
        self._cids = itertools.count(1)
        self._wids = itertools.count(1)
        self._workers: dict[int, Worker] = {}
        self._lost: list[Worker] = []  # EOF seen, exit code not yet known
        self._unreaped: list[Worker] = []
        self._start_failures = 0
        self._taken_back = 0  # chunks an idle worker took from a busy one (statistics)
        # A take-back was refused because the victim had a token chunk still being sent (``behind``). Nothing
        # else may happen for a long time (both running tasks can block), so the sender that finishes such a
        # send tries the steal again. Set under the victim's ``token_lock``, which the sender takes after it:
        # the sender cannot miss it.
        self._steal_again = False
        self._watch_writes = True
        self._crash = False  # the supervisor failed (_crashed): stop the workers without waiting for them
        # The launcher first: a fork server boots while this thread imports cloudpickle and pickles the
        # initializer (W6: the two overlap on separate cores).
        self._launcher: Launcher = make_launcher(start_method, worker_env)
        rest = (max_tasks_per_worker or 0, max_memory_per_worker or 0, zero_copy_threshold, worker_env or {})
        try:
            try:
                self._init_blob, self._init_fds = _initdata.pack(initializer, initargs, rest, start_method)
            except _initdata.InheritOnly:
                if start_method_chosen or start_method == "fork":
                    raise
                # e.g. multiprocessing.Lock() in initargs: only a forked worker can use it, as with
                # multiprocessing.Pool, whose default start method on Linux is fork (before Python 3.14).
                self._launcher.close()
                self.start_method = start_method = "fork"
                self._launcher = make_launcher(start_method, worker_env)
                self._init_blob, self._init_fds = _initdata.pack(initializer, initargs, rest, start_method)
            tracker = _initdata.tracker_fd() if start_method != "fork" else None
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
        self._wake_lock = threading.Lock()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._selector = Poller()
        self._selector.register(self._wake_r, READ, None)
        self._control_fd = self._launcher.control_fd
        if self._control_fd is not None:
            self._selector.register(self._control_fd, READ, self._launcher)
        self._thread = threading.Thread(target=self._supervise, name="manycore-supervisor", daemon=True)
        self._stopped = threading.Event()
        _live.add(self)
        if isinstance(self._launcher, ForkLauncher):
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
        self._thread.start()

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
                os.close(fd)
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
        self._stopped = threading.Event()
        self._stopped.set()

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
                "chunks_taken_back": self._taken_back,
            }

    # ---- assignment and sending (any thread) ---------------------------------------------------------------

    def _assign_locked(self) -> list[tuple[Worker, Chunk, bool]]:
        out: list[tuple[Worker, Chunk, bool]] = []
        if self.state is State.TERMINATED or self.broken is not None:
            return out
        for depth in range(1, DEPTH + 1):
            for w in self._workers.values():
                while w.accepting and not w.lent and not w.skips and len(w.inflight) < depth:
                    chunk = self._next_chunk_locked()
                    if chunk is None:
                        self._steal_locked(out)
                        return out
                    chunk.cid = next(self._cids)
                    if w.inflight:
                        w.behind.add(chunk.cid)
                    w.inflight[chunk.cid] = chunk
                    w.assigned += 1
                    if self._max_tasks and w.assigned >= self._max_tasks:
                        w.accepting = False
                    out.append((w, chunk, w.needs_function(chunk.job.fn_key)))
        return out

    def _steal_locked(self, out: list[tuple[Worker, Chunk, bool]]) -> None:
        """Nothing left to assign: give each idle worker a chunk queued, not started, behind a busy one.

        A chunk once sent is never taken back from the socket, so the parent and the busy worker must agree on
        who runs it, and shared-memory flags cannot do that (x86 reorders a store after a later load, and
        Python issues no fence). A pipe can: each chunk sent with ``TOKEN`` has one byte written to the
        worker's token pipe before its frame enters the socket, the worker reads one byte (non-blocking)
        before it runs such a chunk, and here the parent reads one byte to take a chunk. The kernel gives each
        byte to exactly one reader: whoever reads it owns a chunk, and a worker that finds none skips the
        chunk and says so (``SKIPPED``).

        Which chunk: the worker takes tokens in the order its frames arrive, which is the order of
        ``unstarted`` (token, frame and id go in under ``token_lock``). When the parent gets a byte, the
        pipe held more tokens than the worker has started chunks, so the last ``k`` ids of ``unstarted`` are
        not started, k >= 1; the worker will find tokens for all of them but the last, so the last is the
        parent's. That holds as long as no token is written behind a chunk the parent took while the worker
        has not yet passed it (the token would be taken for it): a worker with ``skips`` gets no chunk until
        its ``SKIPPED`` arrives, and no chunk is taken from a worker that has a token chunk assigned but not
        yet sent (``behind``; an id leaves it only once token, frame and id are in). A failed read proves every token chunk sent so far has started:
        ``unstarted`` is cleared, so no further read is tried for them.
        """
        # ``behind`` too: a chunk being sent enters ``unstarted`` only once sent, and a steal refused for it is
        # tried again by its sender (``_steal_again``).
        victims = [v for v in self._workers.values() if v.unstarted or v.behind]
        if not victims:  # the common case, e.g. every apply round trip: no loop over the thieves
            return
        for thief in self._workers.values():
            if thief.inflight or not thief.ready or not thief.accepting or thief.lent or thief.skips:
                continue
            for victim in victims:
                if victim is not thief and self._take_back_locked(victim, thief, out):
                    break

    def _take_back_locked(self, victim: Worker, thief: Worker, out: list[tuple[Worker, Chunk, bool]]) -> bool:
        with victim.token_lock:
            if victim.tokens[0] < 0:
                return False
            if victim.behind:
                # A chunk assigned behind another and not yet sent (another thread is pickling it): its token
                # would come after the byte taken here, and the worker would take it for the chunk taken back.
                # Chunks failed or recovered before their send leave an id here: forget those.
                victim.behind.intersection_update(victim.inflight)
                if victim.behind:
                    self._steal_again = True
                    return False
            if not victim.unstarted:
                return False
            try:
                got = os.read(victim.tokens[0], 1)
            except BlockingIOError:
                got = b""
            if not got:
                victim.unstarted.clear()  # every one has started
                return False
            cid = victim.unstarted.pop()
        chunk = victim.inflight.pop(cid)
        self._taken_back += 1
        victim.skips += 1
        victim.assigned -= 1
        victim.accepting = not self._max_tasks or victim.assigned < self._max_tasks
        if chunk.segment is not None:  # the victim never maps it: it skips the chunk before reading its data
            self._segments.release(chunk.segment, reusable=True)
            chunk.segment = None
        chunk.cid = next(self._cids)
        thief.inflight[chunk.cid] = chunk
        thief.assigned += 1
        if self._max_tasks and thief.assigned >= self._max_tasks:
            thief.accepting = False
        out.append((thief, chunk, thief.needs_function(chunk.job.fn_key)))
        return True

    def _send(self, assignments: list[tuple[Worker, Chunk, bool]]) -> None:
        if self._freed:
            self._send_freed()
        backlog = False
        # Chunks assigned while sending these (after a failure) go at the end, never ahead: a chunk must not
        # overtake, on a worker's socket, the earlier one that carries its function.
        queue = list(assignments)
        # (worker id, function key) whose function a chunk that failed here was to carry: the next chunk of this
        # batch for that worker carries it instead (it may already be in the queue, behind the failed one).
        carry: set[tuple[int, int]] = set()
        sent_token = False
        for w, chunk, with_fn in queue:
            job = chunk.job
            if (w.wid, job.fn_key) in carry:
                carry.discard((w.wid, job.fn_key))
                with_fn = True
            if not with_fn and job.fn_key not in w.known_fns:
                # The chunk before it that was to carry the function was not sent (_forget_function).
                with self._lock:
                    with_fn = w.needs_function(job.fn_key)
            token = chunk.cid in w.behind  # left there until sent: _take_back_locked waits for it
            if chunk.payload is None:
                collector = _shm.Collector(self.zero_copy_threshold)
                try:
                    with collect() as chunk.broadcasts:
                        chunk.payload = dumps_frames((chunk.first, chunk.items), collector)
                        threshold = self.zero_copy_threshold
                        if (
                            threshold is not None
                            and len(chunk.items) <= _shm.SCAN_ITEMS
                            and sum(map(len, chunk.payload)) >= threshold
                            and _shm.has_large(chunk.items, threshold)
                        ):
                            collector.buffers.clear()  # large bytes went in band: send them out of band
                            wrapped = _shm.wrap_large((chunk.first, chunk.items), threshold)
                            chunk.payload = dumps_frames(wrapped, collector)
                except BaseException as exc:  # even SystemExit from a __reduce__: an item's error, not ours
                    if isinstance(exc, KeyboardInterrupt):
                        raise
                    chunk.payload = None
                    if with_fn:
                        carry.add((w.wid, job.fn_key))
                    self._forget_function(w, job, with_fn)
                    queue.extend(self._unpicklable(w, chunk))
                    continue
                chunk.buffers = collector.buffers
                job.chunker.observe_bytes(
                    len(chunk.items), sum(map(len, chunk.payload)) + _shm.layout_size(chunk.buffers)
                )
            wanted = job.broadcasts | chunk.broadcasts
            foreign = wanted - self._broadcasts.keys()
            if foreign:
                if with_fn:
                    carry.add((w.wid, job.fn_key))
                self._forget_function(w, job, with_fn)
                queue += self._fail_chunk(
                    w,
                    chunk,
                    ValueError(
                        f"broadcast handle(s) #{', #'.join(map(str, sorted(foreign)))} belong to another pool or "
                        "were released; broadcast the object with this pool"
                    ),
                )
                continue
            for bid in wanted - w.broadcasts:
                backlog |= self._send_broadcast(w, bid)
            fn = job.fn_blob if with_fn else b""
            if job.task_timeout is None and len(chunk.items) > 1:
                shift = job.chunker.block_shift()  # before the send: _recover reads chunk.block
                chunk.block = 1 << shift
            else:
                shift, chunk.block = 0, 1  # a deadline needs each item's start time
            flags = (
                len(fn) << FN_SHIFT
                | shift << BLOCK_SHIFT
                | (TRACK_ITEMS if job.task_timeout is not None else 0)
            )
            if chunk.buffers:
                segment = self._segments.acquire(_shm.layout_size(chunk.buffers))
                data = _shm.pack(chunk.payload, chunk.buffers, segment)
                with self._lock:
                    # The worker may have died since the assignment, and the recovery code requeued its chunks:
                    # it releases the segments it sees on them, so one attached after that would leak.
                    assigned = w.inflight.get(chunk.cid) is chunk
                    if assigned:
                        chunk.segment = segment
                if not assigned:
                    self._segments.release(segment, reusable=True)
                    continue
                flags |= OUT_OF_BAND
                parts: tuple[bytes, ...] = (fn, data)
                fds: tuple[int, ...] = (segment.fd,)
            else:
                parts, fds = (fn, *chunk.payload), ()
            if token:
                with w.token_lock:  # the token before the frame, and both in the order of ``unstarted``
                    w.behind.discard(chunk.cid)
                    if w.tokens[1] < 0:
                        continue  # the worker is gone; its chunks are recovered
                    os.write(w.tokens[1], b"t")
                    backlog |= w.channel.send(job.kind, chunk.cid, job.fn_key, flags | TOKEN, *parts, fds=fds)
                    w.unstarted.append(chunk.cid)
                sent_token = True
            else:
                backlog |= w.channel.send(job.kind, chunk.cid, job.fn_key, flags, *parts, fds=fds)
        if backlog:
            self._watch_writes = True  # the supervisor must ask select() for writability
            if threading.current_thread() is not self._thread:
                self._wake()
        if sent_token and self._steal_again:
            with self._lock:
                self._steal_again = False
                retry = self._assign_locked()
            self._send(retry)

    # ---- a synchronous call reads its own result ---------------------------------------------------------

    def run_lent(self, job: Job) -> bool:
        """Run a one-chunk job on an idle worker whose socket the calling thread reads itself.

        For ``Pool.apply``: the result then reaches the caller without a hand-off through the supervisor
        thread, one thread wake-up fewer per call (W5). The worker is taken out of the supervisor's selector
        meanwhile; everything else (deadlines, recovery after its death, delivery) stays the supervisor's
        code. False when no worker is idle, or other work waits: then submit as usual.
        """
        with self._lock:
            if self._dispatchable or self._retry or self.state is not State.RUNNING or self.broken:
                return False
            w = next(
                (
                    w
                    for w in self._workers.values()
                    if w.ready and w.accepting and not w.inflight and not w.skips and not w.channel.pending
                ),
                None,
            )
            if w is None or not w.reading.acquire(blocking=False):
                return False
            self._admit_locked(job, True)
            chunk = job.take_locked()
            assert chunk is not None
            chunk.cid = next(self._cids)
            w.inflight[chunk.cid] = chunk
            w.assigned += 1
            if self._max_tasks and w.assigned >= self._max_tasks:
                w.accepting = False
            w.lent = True
            self._selector.unregister(w.channel.fileno())
            assignment = (w, chunk, w.needs_function(job.fn_key))
        results: list[tuple[Worker, ch.Frame]] = []
        alive = True
        try:
            self._submitted(job)
            self._send([assignment])
            fd = w.channel.fileno()
            while not results and not job.closed and not self._terminated():
                # A timeout, so that a pool terminated from another thread is noticed.
                readable, writable, _ = select.select([fd], [fd] if w.channel.pending else [], [], 0.05)
                if writable:
                    w.channel.flush()
                if readable and not self._read(w, results):
                    alive = False
                    break
        finally:
            with self._lock:
                w.lent = False
                if w.wid in self._workers:  # not shut down meanwhile (that clears _workers first)
                    # Back in the supervisor's care. A death seen here is seen there again: EOF stays readable.
                    pending = w.channel.pending
                    self._selector.register(w.channel.fileno(), READ | (WRITE if pending else 0), w)
                    self._watch_writes |= pending
            w.reading.release()
        if results:
            self._deliver(self._on_results(results))
        if not alive:
            self._wake()
        return True

    def _terminated(self) -> bool:
        return self.state is State.TERMINATED

    def broadcast(self, obj: object) -> Broadcast[Any]:
        with self._lock:
            if self.state is not State.RUNNING:
                raise PoolClosedError("Pool not running: it was closed or terminated; create a new one")
        handle: Broadcast[Any] = Broadcast(obj, self._release_broadcast)
        with self._lock:
            self._broadcasts[handle.bid] = handle
        return handle

    def _send_broadcast(self, w: Worker, bid: int) -> bool:
        handle = self._broadcasts[bid]
        w.broadcasts.add(bid)
        fds = (handle.segment.fd,) if handle.segment is not None else ()
        return w.channel.send(ch.BROADCAST, bid, 0, 0, handle.packed, fds=fds)

    def _release_broadcast(self, handle: Broadcast[Any]) -> None:
        with self._lock:
            self._broadcasts.pop(handle.bid, None)
            holders = [w for w in self._workers.values() if handle.bid in w.broadcasts]
            for w in holders:
                w.broadcasts.discard(handle.bid)
        for w in holders:
            w.channel.send(ch.RELEASE, handle.bid, 0, 0)

    def _fail_chunk(self, w: Worker, chunk: Chunk, exc: BaseException) -> list[tuple[Worker, Chunk, bool]]:
        with self._lock:
            w.inflight.pop(chunk.cid, None)
            assignments = self._assign_locked()
        chunk.job.deliver(chunk, [None] * len(chunk.items), dict.fromkeys(range(len(chunk.items)), exc))
        return assignments

    def _forget_function(self, w: Worker, job: Job, with_fn: bool) -> None:
        """A chunk that was to carry its function is not sent: the worker does not have the function yet."""
        if with_fn:
            with self._lock:
                w.known_fns.pop(job.fn_key, None)

    def _unpicklable(self, w: Worker, chunk: Chunk) -> list[tuple[Worker, Chunk, bool]]:
        """Fail a one-item chunk whose item does not pickle; split a longer one: the assignments to send next."""
        what = "argument" if chunk.job.kind != ch.CALL else "call argument"
        with self._lock:
            w.inflight.pop(chunk.cid, None)
            if len(chunk.items) > 1:
                self._retry.extendleft(reversed(chunk.solos()))
                assignments = self._assign_locked()
            else:
                assignments = []
        if len(chunk.items) == 1:
            chunk.job.deliver(chunk, [None], {0: find_unpicklable(chunk.items, chunk.first, what)})
        return assignments

    def _wake(self) -> None:
        # Under the lock and checked: once the pipe is closed, its fd number may belong to someone else.
        with self._wake_lock:
            if self._wake_w >= 0:
                with contextlib.suppress(BlockingIOError, OSError):
                    os.write(self._wake_w, b"x")

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

    def _poll(self, timeout: float | None) -> list[tuple[Worker, Chunk, ch.Frame]]:
        if self._freed:
            self._send_freed()
        results: list[tuple[Worker, ch.Frame]] = []
        for data, readable, writable in self._selector.poll(timeout):
            if data is None:
                with contextlib.suppress(BlockingIOError):
                    os.read(self._wake_r, 4096)
            elif data is self._launcher:
                self._on_control()
            else:
                w: Worker = data
                if writable:
                    w.channel.flush()
                if readable and w.reading.acquire(blocking=False):
                    try:
                        alive = self._read(w, results)
                    finally:
                        w.reading.release()
                    if not alive:
                        self._on_eof(w)
        done = self._on_results(results) if results else []
        if self._watch_writes:
            with self._lock:
                self._watch_writes = False
                for w in list(self._workers.values()):
                    if w.lent:  # out of the selector until its borrower gives it back
                        continue
                    pending = w.channel.pending
                    self._watch_writes |= pending
                    self._selector.modify(w.channel.fileno(), READ | (WRITE if pending else 0), w)
        return done

    def _read(self, w: Worker, results: list[tuple[Worker, ch.Frame]]) -> bool:
        """Read what a worker sent (the caller holds ``w.reading``); False at EOF or for a refused frame.

        Every header was checked before its body was read (``Worker.check_frame``); what only the whole read
        shows is checked here: one result per chunk, and descriptors exactly where frames announce them. A
        worker that breaks the protocol is killed and handled as lost, so its item fails with a
        ``WorkerLostError`` that says why; the parent never unpickles anything from the refused frame on.
        """
        channel = w.channel
        if channel.error is not None or w.bad_frame is not None:
            return self._refuse(w, channel.error)
        frames = channel.read_frames()
        if frames is None:
            return False
        # Check the whole read before acting on any of it: nothing from a read with a refused frame is unpickled.
        fds = channel.fds
        reason: object = channel.error
        answered: set[int] = set()
        announced = 0
        for frame in frames:
            if frame.kind == ch.RESULT:
                if frame.chunk_id in answered:
                    reason = f"a second result for chunk {frame.chunk_id}"
                answered.add(frame.chunk_id)
                announced += bool(frame.flags & OUT_OF_BAND)
        # Descriptors travel with a frame's first byte, at most one frame's per read: beyond the segments the
        # results announce, only the one of a frame still arriving may be there.
        if announced > len(fds):
            reason = reason or "a result announcing a shared-memory segment it did not send"
        elif len(fds) - announced > (1 if channel.partial else 0):
            reason = reason or "file descriptors that no message announced"
        if reason is not None:
            return self._refuse(w, reason)
        for frame in frames:
            if frame.kind == ch.RESULT:
                if frame.flags & OUT_OF_BAND:
                    frame.fd = fds.popleft()
                results.append((w, frame))
            elif frame.kind == ch.SKIPPED:
                results.append((w, frame))
            elif frame.kind == ch.READY:
                # Not the pid it names: that is the one the supervisor would SIGKILL, and an initializer could
                # forge it. The launcher's pid (or the fork server's report, soon after the fork) is the truth.
                w.ready = True
                self._start_failures = 0
                results.append((w, frame))  # no result, but an assignment pass: it may take a chunk over
            elif frame.kind == ch.INIT_FAILED:
                what = (
                    "the pool's initializer or its initargs could not be unpickled in a worker"
                    if frame.flags & INITARGS_UNLOADABLE
                    else "the pool's initializer raised in a worker"
                )
                self._break(
                    InitializerError(f"{what}, so no worker can run tasks"), unpack_exception(frame.body)
                )
        return True

    def _refuse(self, w: Worker, reason: object) -> bool:
        if w.bad_frame is None:
            w.bad_frame = str(reason)
        w.kill()  # its pid unknown yet: _on_control kills it when the fork server reports the pid
        return False

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

    def _on_results(self, results: list[tuple[Worker, ch.Frame]]) -> list[tuple[Worker, Chunk, ch.Frame]]:
        """Free the workers' slots and refill them at once; the results are delivered later (``_deliver``)."""
        done: list[tuple[Worker, Chunk, ch.Frame]] = []
        with self._lock:
            for w, frame in results:
                if w.unstarted:
                    with w.token_lock:
                        if frame.chunk_id in w.unstarted:
                            w.unstarted.remove(frame.chunk_id)
                if frame.kind == ch.SKIPPED:
                    w.skips -= 1  # it has passed a chunk taken back from it: it may get chunks again
                    continue
                if frame.kind == ch.READY:
                    continue  # steals wait for READY (``_steal_locked``); the pass below may make one
                chunk = w.inflight.pop(frame.chunk_id, None)
                if chunk is None and frame.fd is not None:  # the chunk was failed meanwhile
                    os.close(frame.fd)
                    frame.fd = None
                if chunk is not None:
                    done.append((w, chunk, frame))
                    if chunk.segment is not None:
                        self._segments.release(chunk.segment, reusable=not frame.flags & INPUT_KEPT)
                        chunk.segment = None
            assignments = self._assign_locked()
        self._send(assignments)
        return done

    def _deliver(self, done: list[tuple[Worker, Chunk, ch.Frame]]) -> None:
        for w, chunk, frame in done:
            job = chunk.job
            if job.closed:
                if frame.fd is not None:  # nobody wants these results: hand the segment straight back
                    os.close(frame.fd)
                    w.channel.send(ch.SEGMENT_FREE, _shm.segment_id(frame.body), 0, 0)
                continue
            if (
                frame.flags & NO_FUNCTION
            ):  # nothing ran: the worker lacked the function; send it again with it
                with self._lock:
                    w.known_fns.pop(job.fn_key, None)
                    self._retry.appendleft(chunk)
                    assignments = self._assign_locked()
                self._send(assignments)
                continue
            if frame.flags & UNLOADABLE:  # nothing ran: some item did not unpickle in the worker
                if len(chunk.items) > 1:
                    self._one_by_one(chunk)  # to find which
                else:
                    what = "argument" if job.kind != ch.CALL else "call argument"
                    job.deliver(chunk, [None], {0: unloadable_error(chunk.first, what, loads(frame.body))})
                continue
            job.chunker.observe_time(len(chunk.items), frame.compute_ns / 1e9)
            # Results count towards the chunk size cap too: a chunk of big results needs a big fresh segment.
            nbytes = len(frame.body) + (_shm.segment_bytes(frame.body) if frame.fd is not None else 0)
            job.chunker.observe_bytes(len(chunk.items), nbytes, results=True)
            try:
                if frame.fd is not None:
                    fd, frame.fd = frame.fd, None
                    values = self._unpack_in_place(w, frame.body, fd)
                    errors = {}
                elif frame.flags & PARTIAL:
                    values, packed = loads(frame.body)
                    errors = {k: unpack_exception(v) for k, v in packed.items()}
                    if job.kind != ch.CALL:
                        for k, error in errors.items():
                            name_item(error, chunk.first + k)
                else:
                    values, errors = loads(frame.body), {}
            except BaseException as exc:
                # Even SystemExit from a __reduce__: an item's error, not this thread's.
                if isinstance(exc, KeyboardInterrupt):
                    raise
                if len(chunk.items) > 1:
                    self._unreadable_results(chunk, exc)
                    continue
                # BrokenProcessPool: what concurrent.futures raises when it cannot unpickle a result.
                err = SerializationError.like(BrokenProcessPool)(
                    f"the result of item #{chunk.first} cannot be unpickled in the parent "
                    f"({type(exc).__name__}: {exc})",
                    what="result",
                    index=chunk.first,
                    detail=str(exc),
                )
                values, errors = [None], {0: err}
            job.deliver(chunk, values, errors)

    def _unreadable_results(self, chunk: Chunk, exc: BaseException) -> None:
        """One message holds the results of the whole chunk, and it does not unpickle here: every item ran, none
        of their results is readable. Each item counts an attempt, as in ``_recover``: with retries left it runs
        again alone (then only the culprit fails); without, it fails, and never runs twice (at most once)."""
        job = chunk.job
        last = chunk.first + len(chunk.items) - 1
        failed: list[Chunk] = []
        with self._lock:
            rerun: list[Chunk] = []
            for solo in chunk.solos():
                tries = job.attempts[solo.first] = job.attempts.get(solo.first, 0) + 1
                (rerun if tries <= job.retries else failed).append(solo)
            self._retry.extendleft(reversed(rerun))
            assignments = self._assign_locked() if rerun else []
        self._send(assignments)
        for solo in failed:
            # BrokenProcessPool: what concurrent.futures raises when it cannot unpickle a result.
            err = SerializationError.like(BrokenProcessPool)(
                f"the results of items #{chunk.first}-#{last} came back in one message that cannot be unpickled "
                f"in the parent ({type(exc).__name__}: {exc}); item #{solo.first} is one of them, and none of "
                "them runs again (at most once). Pass chunksize=1 (or retries=1) to find the item whose result "
                "does not unpickle",
                what="result",
                index=solo.first,
                detail=str(exc),
            )
            job.deliver(solo, [None], {0: err})

    def _one_by_one(self, chunk: Chunk) -> None:
        with self._lock:
            self._retry.extendleft(reversed(chunk.solos()))
            assignments = self._assign_locked()
        self._send(assignments)

    def _unpack_in_place(self, w: Worker, body: bytearray | memoryview, fd: int) -> Any:
        """Results rebuilt on the worker's segment itself; the segment goes back once nothing uses it."""
        sid = _shm.segment_id(body)
        if len(self._mapped) >= MAX_MAPPED_RESULTS:
            # Enough results held in place: this one is copied, and its segment is free again at once.
            try:
                return _shm.unpack(memoryview(body), fd, copy=True)[0]
            finally:
                w.channel.send(ch.SEGMENT_FREE, sid, 0, 0)
        mapping = None
        views: list[memoryview] = []
        try:
            values, mapping, views = _shm.unpack(memoryview(body), fd)
        finally:
            if _shm.release(mapping, views):
                w.channel.send(ch.SEGMENT_FREE, sid, 0, 0)  # nothing kept (e.g. bytes, which copy): reuse now
            elif mapping is not None:
                # The mapping lives as long as the arrays on it; when it goes, the worker may reuse the segment.
                # The finalizer may run in any thread, even inside a lock of ours (a garbage collection): it
                # only appends and discards (each atomic), and the next send or poll passes the news on.
                key = next(self._mapping_ids)
                self._mapped.add(key)
                weakref.finalize(
                    mapping, _unmapped, self._mapped, key, self._freed, (w.channel, sid)
                ).atexit = False
        return values

    def _send_freed(self) -> None:
        freed = self._freed
        while freed:
            channel, sid = freed.popleft()
            channel.send(ch.SEGMENT_FREE, sid, 0, 0)

    # ---- workers coming and going (supervisor thread) ------------------------------------------------------

    def _start_worker_locked(self) -> None:
        # Under the launch lock until the new worker's descriptors are recorded in self._workers: a worker that
        # another pool forks meanwhile would otherwise copy them where its fork hook cannot see them, and keep
        # this worker's socket open after it dies (see _launch._LAUNCH_LOCK).
        with launching():
            self._start_worker_unguarded()

    def _start_worker_unguarded(self) -> None:
        wid = next(self._wids)
        mine, theirs = socket.socketpair()
        for end in (mine, theirs):
            # Larger socket buffers mean fewer partial sends, wakeups and flushes when chunks are large
            # (the kernel caps the request at net.core.wmem_max).
            end.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SOCKET_BUFFER)
        status_fd = os.memfd_create("manycore-status", os.MFD_CLOEXEC)
        try:
            os.ftruncate(status_fd, STATUS_SIZE)
            page = mmap.mmap(status_fd, STATUS_SIZE)
            tokens = _token_pipe()
            close_in_child = [self._wake_r, self._wake_w, mine.fileno(), *tokens]
            close_in_child += [w.channel.fileno() for w in self._workers.values()]
            close_in_child += [fd for w in self._workers.values() for fd in w.tokens]
            if self._launcher.control_fd is not None:
                close_in_child.append(self._launcher.control_fd)
            try:
                pid = self._launcher.start(wid, theirs, status_fd, close_in_child)
            except BaseException:
                for fd in tokens:
                    os.close(fd)
                raise
        finally:
            theirs.close()
            os.close(status_fd)
        w = Worker(wid, ch.ParentChannel(mine), page, pid, tokens)
        fds = self._init_fds
        nfds = len(fds) - (self._tracker is not None)
        head = _initdata.header(self.start_method, nfds, self._tracker)
        # The init data's descriptors first (the worker takes as many as the header counts), then the read end
        # of the worker's token pipe.
        w.channel.send(INIT, 0, len(head), 0, head, self._init_blob, fds=(*fds, tokens[0]))
        self._workers[wid] = w
        self._selector.register(w.channel.fileno(), READ | WRITE, w)

    def _on_eof(self, w: Worker) -> None:
        if w.pid is not None:
            _hurry_exit(w.pid)
        with self._lock:
            self._selector.unregister(w.channel.fileno())
            w.channel.close()
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
            for w in self._workers.values():
                if w.timed_out is not None or not w.inflight:
                    continue
                cid, offset, started = w.running()
                chunk = w.inflight.get(cid)
                if chunk is None or chunk.job.task_timeout is None or not started:
                    continue
                if offset >= len(chunk.items):  # every item ran; the worker is sending the results
                    continue
                if now - started > chunk.job.task_timeout * 1e9:
                    w.timed_out = (cid, offset)
                    w.kill()

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

    def _recover(self, w: Worker, exitcode: int | None) -> None:
        """Re-run what a lost worker held; fail (or retry) the one item it was running."""
        failures: list[tuple[Chunk, BaseException]] = []
        with self._lock:
            # The status page always names the running item (see _worker.run_items), so the item a worker died
            # on is never run again unless retries allow it (at most once). Its chunk-mates that had finished
            # lost their results with the worker and run again: they are not the culprit, and failing them
            # would turn one crash into many.
            if w.timed_out is not None:
                cid, offset = w.timed_out
            else:
                cid, offset, _ = w.running()
                chunk = w.inflight.get(cid)
                if chunk is not None and offset >= len(chunk.items) > 1:
                    # Every item had run: the worker died pickling or sending the results. One of them may
                    # be what kills it (a result whose pickling crashes): re-run them one at a time.
                    offset = -1
                elif chunk is not None and offset >= 1 == len(chunk.items):
                    offset = 0  # alone, its result killed the worker: it is the culprit
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
                elif offset < 0:
                    requeue.extend(chunk.solos())
                else:
                    # With blocks (see _worker.run_items) the worker died on one of the block's items, not
                    # known which: each is a suspect, failed (at most once) or retried alone, where a second
                    # death names the culprit.
                    stop = min(offset + (chunk.block if w.timed_out is None else 1), len(chunk.items))
                    if offset:
                        requeue.append(chunk.part(0, offset))
                    for k in range(offset, stop):
                        index = chunk.first + k
                        culprit = chunk.part(k, k + 1)
                        tries = chunk.job.attempts[index] = chunk.job.attempts.get(index, 0) + 1
                        if tries <= chunk.job.retries:
                            requeue.append(culprit)
                        else:
                            span = (
                                (chunk.first + offset, chunk.first + stop - 1) if stop - offset > 1 else None
                            )
                            failures.append((culprit, self._loss_error(w, exitcode, chunk, index, span)))
                    if stop < len(chunk.items):
                        requeue.append(chunk.part(stop, len(chunk.items)))
            w.inflight.clear()
            w.close_tokens()
            self._retry.extendleft(reversed(requeue))
            assignments = self._assign_locked()
        self._send(assignments)
        for culprit, exc in failures:
            culprit.job.deliver(culprit, [None], {0: exc})

    def _loss_error(
        self, w: Worker, exitcode: int | None, chunk: Chunk, index: int, span: tuple[int, int] | None = None
    ) -> BaseException:
        single = chunk.job.kind == ch.CALL
        what = "the call" if single else f"item #{index}"
        block = ""
        if span is not None:
            what = f"one of items #{span[0]}-#{span[1]}"
            block = (
                f"; item #{index} is one of them: they ran as one block of fast items, so which one was running "
                "is not known, and none of them runs again (at most once). Pass chunksize=1 or a "
                "task_timeout to track each item"
            )
        if w.timed_out is not None:
            limit = chunk.job.task_timeout
            return TaskTimeoutError(
                f"{what} ran longer than task_timeout={limit} s; its worker "
                f"(pid {w.pid}) was killed and replaced",
                index=None if single else index,
                timeout=limit,
            )
        if w.bad_frame is not None:
            return WorkerLostError(
                f"the worker process (pid {w.pid}) running {what} sent the parent a malformed message "
                f"({w.bad_frame}); it was killed and replaced. Does the task write to descriptors it did not open?",
                index=None if single else index,
                pid=w.pid,
                exitcode=exitcode,
            )
        signame = None
        if exitcode is not None and exitcode < 0:
            with contextlib.suppress(ValueError):
                signame = signal.Signals(-exitcode).name
        how = (
            f"killed by {signame}"
            if signame
            else f"exited with code {exitcode}"
            if exitcode is not None
            else "exited (exit code unknown)"
        )
        hint = {
            "SIGKILL": " (killed from outside, or by the out-of-memory killer)",
            "SIGSEGV": " (a segmentation fault, usually in C code)",
        }.get(signame or "", "")
        return WorkerLostError(
            f"the worker process (pid {w.pid}) running {what} {how}{hint}{block}",
            index=None if single else index,
            pid=w.pid,
            exitcode=exitcode,
            signal_name=signame,
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
                os.close(fd)
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


def _unmapped(
    mapped: set[int],
    key: int,
    freed: deque[tuple[ch.ParentChannel, int]],
    segment: tuple[ch.ParentChannel, int],
) -> None:
    # A function, not a method: the finalizer must not keep the scheduler alive for as long as results live.
    mapped.discard(key)
    freed.append(segment)


def _hurry_exit(pid: int) -> None:
    """Give a dying worker's idle-priority threads normal priority again, so that they finish dying.

    A worker's exit code comes only once every one of its threads has ended, and a forked worker may hold
    OpenBLAS threads parked at SCHED_IDLE (see ``_worker._quiet_restarted_blas_threads``). On a loaded machine
    such a thread got so little CPU that it was still exiting 2 s after the worker's socket had closed
    (Python 3.13, numpy 2.5), and the crash was reported without its exit code. Linux allows this only with
    CAP_SYS_NICE or an RLIMIT_NICE that permits nice 0; without, ``_dying`` makes the supervisor wait longer.
    """
    for tid in thread_ids(pid):
        with contextlib.suppress(OSError):  # the thread ended meanwhile
            # Only threads at SCHED_IDLE: once a fork server has reaped the worker, its pid may name another
            # process, and the threads manycore parks are the only ones it touches.
            if os.sched_getscheduler(tid) == os.SCHED_IDLE:
                os.sched_setscheduler(tid, os.SCHED_OTHER, os.sched_param(0))


def _dying(pid: int) -> bool:
    """Whether a process is part-way through exiting: its main thread has ended (a zombie) but others run on.

    Its exit code comes once the last thread ends. Where ``_hurry_exit`` may not raise threads from idle
    priority (a user without CAP_SYS_NICE or an RLIMIT_NICE of 20), that can take longer than the grace.
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            return stat.read().rpartition(b")")[2].split()[0] == b"Z"
    except (OSError, IndexError):
        return False


def _wait_for_eof(channel: ch.ParentChannel, deadline: float) -> None:
    """A worker closes its socket only by exiting: EOF means it is gone or going."""
    while True:
        while channel.pending and channel.flush():
            if time.monotonic() > deadline:
                return
            time.sleep(0.001)
        left = deadline - time.monotonic()
        if left <= 0:
            return
        readable, _, _ = select.select([channel.sock], [], [], left)
        if readable and channel.read_frames() is None:
            return

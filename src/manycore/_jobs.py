"""Jobs, chunks and the bookkeeping every scheduler shares, whatever runs the chunks.

A Job is one call's work (a map, an imap, one apply or submit); the API layer's result objects subclass it. A
Chunk is consecutive items of one job, the unit that is sent, run and answered. ``SchedulerBase`` keeps the
jobs waiting for dispatch (first come, first served), the retry queue, and what ``close(); join()`` waits for.
Subclasses decide where chunks run: ``_process._supervisor.Scheduler`` on manycore's own worker processes,
``_engine.EngineScheduler`` on threads, Dask or Ray.
"""

from __future__ import annotations

import contextlib
import enum
import functools
import itertools
import pickle
import sys
import threading
import weakref
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from . import _channel as ch
from . import _shm
from ._broadcast import Broadcast, collect
from ._chunking import MIN_TAIL_SECONDS, TARGET_SECONDS, Chunker
from ._options import DEFAULT_CALL, CallOptions
from ._serialize import dumps_function
from .errors import PoolClosedError


def flush_std_streams() -> None:
    """Flush ``sys.stdout`` and ``sys.stderr`` before workers start, as ``multiprocessing`` does: what the
    program printed before the pool comes first in a redirected output, and a forked worker inherits no
    buffered text to write twice."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):  # closed, replaced by None, or an object without flush
            stream.flush()


class State(enum.Enum):
    RUNNING = "running"
    CLOSED = "closed"  # no new work; running work finishes
    TERMINATED = "terminated"


class Chunk:
    """Consecutive items of one job, sent and answered as one message."""

    __slots__ = (
        "block",
        "broadcasts",
        "buffers",
        "cid",
        "first",
        "items",
        "job",
        "origin",
        "payload",
        "segment",
    )

    def __init__(self, job: Job, first: int, items: Sequence[Any], origin: int | None = None) -> None:
        self.cid = 0
        self.job = job
        self.first = first  # index of items[0] in the job's input
        self.items = items
        self.origin = first if origin is None else origin  # ``first`` of the chunk this one was split from
        self.payload: list[bytes] | None = None  # pickled (first, items) in frames, large buffers out of band
        self.buffers: list[pickle.PickleBuffer] = []  # those buffers
        self.segment: _shm.Segment | None = None  # the shared memory they occupy while in flight
        self.broadcasts: set[int] = set()  # ids of the broadcast handles in the items
        # Items the worker tracks as one (see _worker._run.run_items): set when the chunk is sent; 1 tracks each.
        self.block = 1

    def part(self, start: int, stop: int) -> Chunk:
        return Chunk(self.job, self.first + start, self.items[start:stop], self.origin)

    def solos(self) -> list[Chunk]:
        return [self.part(k, k + 1) for k in range(len(self.items))]


class FunctionCache:
    """Pickles each task function once: 2,000 ``apply`` calls of one function send it once per worker.

    Entries hold the function weakly where it can be (functions, bound methods, partials): a cached bound method
    held its object alive for as long as the pool lived (CPython's test_no_stale_references). An entry whose
    function died is a miss (its id may name another object by then) and goes with the oldest entries.
    """

    def __init__(self, size: int = 256) -> None:
        self._entries: dict[int, tuple[Callable[[], object], int, bytes, frozenset[int]]] = {}
        self._keys = itertools.count(1)
        self._size = size
        self._lock = threading.Lock()

    def get(self, fn: object) -> tuple[int, bytes, frozenset[int]]:
        """(key, pickled function, ids of the broadcast handles it holds, e.g. through functools.partial)."""
        with self._lock:
            entry = self._entries.get(id(fn))
            if entry is not None and entry[0]() is fn:
                return entry[1], entry[2], entry[3]
        with collect() as ids:
            blob = dumps_function(fn)
        key = next(self._keys)
        ref: Callable[[], object]
        try:
            ref = weakref.ref(fn)
        except TypeError:  # e.g. a builtin: kept alive while cached, so its id names nothing else meanwhile
            ref = functools.partial(_same, fn)
        with self._lock:
            self._entries[id(fn)] = (ref, key, blob, frozenset(ids))
            if len(self._entries) > self._size:
                del self._entries[next(iter(self._entries))]
        return key, blob, frozenset(ids)


def _same(obj: object) -> object:
    return obj


class Job:
    """One call's work. Subclasses (the result objects of the API) say where chunks come from and go to."""

    kind = ch.MAP
    closed = True  # until __init__ completes: a job whose set-up failed has nothing to stop

    def __init__(
        self,
        scheduler: SchedulerBase,
        fn: Callable[..., Any],
        options: CallOptions = DEFAULT_CALL,
    ) -> None:
        self.scheduler = scheduler
        self.fn = fn  # engines other than manycore's processes take the function itself
        self.fn_key, self.fn_blob, self.broadcasts = scheduler.functions.get(fn)
        self.chunker = Chunker(
            options.chunksize,
            scheduler.processes,
            scheduler.chunk_seconds,
            scheduler.tail_seconds,
            rounds=scheduler.chunk_rounds,
        )
        self.task_timeout = options.task_timeout
        self.retries = options.retries
        self.queued: deque[Chunk] = deque()
        self.closed = False  # set when the job needs no more chunks run (done, failed fast, cancelled)
        # Set on admission: a job that finishes before it is admitted (a map of nothing) must not be
        # subtracted from counts it was never added to, or join() would wait for ever.
        self.counted = False
        self.admitted = False
        self.dispatchable = False  # in the scheduler's dispatch queue (an O(1) membership test)
        self.attempts: dict[int, int] = {}

    # Called under the scheduler lock.
    def take_locked(self) -> Chunk | None:
        return self.queued.popleft() if self.queued else None

    def probing_locked(self) -> bool:
        """Whether this job's next chunk is a probe: its items' cost is not measured yet."""
        return False

    def start_locked(self, chunk: Chunk) -> bool:
        """The chunk is about to be sent; False drops it (e.g. its future was cancelled)."""
        return True

    # Called without the scheduler lock, from the supervisor or the sending thread.
    def deliver(self, chunk: Chunk, values: list[Any], errors: dict[int, BaseException]) -> None:
        """Results for ``chunk`` (possibly a part of a chunk split after a crash); errors by offset."""
        raise NotImplementedError

    def fail_all(self, exc: BaseException) -> None:
        """The pool can run nothing more for this job (terminated, broken)."""
        raise NotImplementedError

    def drain(self) -> None:
        """The pool was closed while this uncounted job (an imap) was unfinished: it now runs to the end of its
        input whether or not anyone reads its results, and finishes once every result is in (join waits)."""


class SchedulerBase:
    """What every scheduler shares: job bookkeeping, dispatch order, the idle condition."""

    def __init__(self, processes: int) -> None:
        self.processes = processes
        self.functions = FunctionCache()
        self.state = State.RUNNING
        self.broken: BaseException | None = None
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._dispatchable: deque[Job] = deque()
        self._retry: deque[Chunk] = deque()
        self._jobs: weakref.WeakSet[Job] = weakref.WeakSet()
        self._active = 0  # counted jobs submitted and not yet finished, for join()
        self._timeouts_active = 0
        self._abandoned: list[Job] = []  # finished by finalizers that could not take the lock (job_abandoned)

    # Hooks for subclasses.
    def _assign_locked(self) -> list[Any]:
        raise NotImplementedError

    def _send(self, assignments: list[Any]) -> None:
        raise NotImplementedError

    def _wake(self) -> None:
        pass

    def _submitted(self, job: Job) -> None:
        pass

    def _terminate_locked(self) -> list[Job] | None:
        """Mark the pool terminated; the jobs to fail, or None if it already was."""
        if self.state is State.TERMINATED:
            return None
        self.state = State.TERMINATED
        self._idle.notify_all()
        return list(self._jobs)

    @staticmethod
    def _fail_unfinished(jobs: list[Job]) -> None:
        for job in jobs:
            if not job.closed:
                job.fail_all(PoolClosedError("the pool was terminated before this task finished"))

    # The rest of the interface the API layer uses.
    start_method = ""
    chunk_seconds = TARGET_SECONDS  # work per automatic chunk
    tail_seconds = MIN_TAIL_SECONDS  # the least work per chunk when the tail is split
    chunk_rounds = False  # sized inputs in equal rounds of chunks rather than a guided tail (see _chunking)
    ended_at_exit = False  # terminated by the interpreter exit hook, not by the program: Pool.__del__ warns

    def terminate(self) -> None:
        raise NotImplementedError

    def join(self, timeout: float | None = None) -> bool:
        raise NotImplementedError

    def broadcast(self, obj: object) -> Broadcast[Any]:
        raise NotImplementedError

    def statistics(self) -> dict[str, int]:
        raise NotImplementedError

    def submit(self, job: Job, *, counted: bool = True) -> None:
        """Queue a job's chunks for dispatch (its ``queued`` deque or its ``take_locked`` source).

        ``counted`` jobs keep ``close(); join()`` waiting until they finish; imap jobs are not counted, since
        their input advances only as their consumer reads: join waits for their chunks in flight instead.
        """
        with self._lock:
            self._admit_locked(job, counted)
            job.dispatchable = True
            self._dispatchable.append(job)
            assignments = self._assign_locked()
        self._send(assignments)
        self._submitted(job)

    def _admit_locked(self, job: Job, counted: bool) -> None:
        if self.state is not State.RUNNING:
            raise PoolClosedError("Pool not running: it was closed or terminated; create a new one")
        if self.broken is not None:
            raise self.broken
        self._jobs.add(job)
        if job.closed or job.admitted:
            return
        job.admitted = True
        job.counted = counted
        self._active += counted
        if job.task_timeout is not None:
            self._timeouts_active += 1

    def more_ready(self, job: Job) -> None:
        """An imap consumer pulled more chunks into ``job.queued``."""
        with self._lock:
            self._finish_abandoned_locked()
            if not job.dispatchable:
                job.dispatchable = True
                self._dispatchable.append(job)
            assignments = self._assign_locked()
        self._send(assignments)

    def job_finished(self, job: Job) -> None:
        """A job has every result it needs (or was abandoned): stop running its chunks."""
        with self._lock:
            self._finish_abandoned_locked()
            self.job_finished_locked(job)
        if self.state is State.CLOSED:
            self._wake()

    def job_abandoned(self, job: Job) -> None:
        """``job_finished`` for a finalizer. The cyclic collector runs finalizers in whatever thread allocates,
        one holding this scheduler's lock among them (an imap's feeder assigning chunks), where waiting for the
        lock never ended. Without the lock at once, the job waits in ``_abandoned`` for the next call that
        takes it (``job_finished``, ``more_ready``, the supervisor's housekeeping); ``list.append`` takes none.
        """
        if self._lock.acquire(blocking=False):
            self._lock.release()
            self.job_finished(job)
        else:
            self._abandoned.append(job)

    def _finish_abandoned_locked(self) -> None:
        while self._abandoned:
            self.job_finished_locked(self._abandoned.pop())

    def job_finished_locked(self, job: Job) -> None:
        if job.closed:
            return
        job.closed = True
        if not job.admitted:
            return
        self._active -= job.counted
        if job.task_timeout is not None:
            self._timeouts_active -= 1
        self._idle.notify_all()

    def queued_jobs(self) -> list[Job]:
        """Jobs waiting for dispatch (for ``Executor.shutdown(cancel_futures=True)``)."""
        with self._lock:
            return list(self._dispatchable)

    def close(self) -> None:
        draining: list[Job] = []
        with self._lock:
            if self.state is State.RUNNING:
                self.state = State.CLOSED
                # An imap's input advances only as its consumer reads, so it is not counted while the pool
                # runs. Once the pool is closed it must run to the end, as multiprocessing's (which reads its
                # whole input at once) does: `it = pool.imap(...); pool.close(); pool.join(); list(it)` is a
                # common pattern, and it stopped after the first window, waiting for ever.
                draining = [j for j in self._jobs if j.admitted and not j.closed and not j.counted]
                for job in draining:
                    job.counted = True
                    self._active += 1
        for job in draining:
            job.drain()
        self._wake()

    def _next_chunk_locked(self) -> Chunk | None:
        while self._retry:
            retried = self._retry.popleft()
            if not retried.job.closed:
                return retried
        while self._dispatchable:
            job = self._dispatchable[0]
            chunk = None if job.closed else job.take_locked()
            if chunk is None:
                self._dispatchable.popleft()
                job.dispatchable = False
                continue
            if job.start_locked(chunk):
                return chunk
        return None

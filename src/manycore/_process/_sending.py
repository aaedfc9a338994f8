"""Sending chunks: pickling them (``_payload``), attaching segments, tokens and broadcasts, and the lent path.

Its reasons to change: what goes into a chunk's frame and in which order, what happens to a chunk that cannot
be sent (an argument that does not pickle, a foreign broadcast handle), and ``run_lent``, the blocking
``apply`` that reads its own result. Runs in any thread, outside the scheduler lock but for bookkeeping.
"""

from __future__ import annotations

import os
import threading
import time

from .. import _channel as ch
from .. import _shm
from .._jobs import Chunk, Job, State
from .._protocol import OUT_OF_BAND, TOKEN
from .._serialize import find_unpicklable
from ._assign import Assignment
from ._payload import encode, frame_flags
from ._poller import READ, WRITE, OneDescriptor
from ._state import ProcessState
from ._workers import Worker

# How long the caller of a lent ``apply`` polls for its answer before it sleeps. A quick task answers in
# ~50-150 µs, and sleeping for it costs more than that: each side's wake-up (on a VM, an idle vCPU halts and
# must be woken) cost W5 (``benchmarks/run.py --workloads W5``, 2 cores) 222 µs a call without this poll and
# 119 µs with it (0.79-0.84x multiprocessing.Pool, then 0.43-0.50x), and doubled the worker's CPU time per
# call; 200 µs beat 100 µs on the mean (fewer calls fall asleep). A longer task costs at most this much CPU
# more per call. Not with a single core, where the worker would wait for the poller (``lent_poll_s``).
LENT_POLL_S = 200e-6


class Sending(ProcessState):
    """Sending assigned chunks to their workers (a part of ``Scheduler``)."""

    def _send(self, assignments: list[Assignment]) -> None:
        if self._results.freed:
            self._results.send_freed()
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
            token = chunk.cid in w.behind  # left there until sent: Assigner.take_back waits for it
            if chunk.payload is None and not self._encoded(w, chunk, with_fn, carry, queue):
                continue
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
            sent = self._send_chunk(w, chunk, with_fn, token)
            if sent is None:
                continue
            backlog |= sent
            sent_token |= token
        if backlog:
            self._watch_writes = True  # the supervisor must ask select() for writability
            if threading.current_thread() is not self._thread:
                self._wake()
        if sent_token and self._assigner.steal_again:
            with self._lock:
                self._assigner.steal_again = False
                retry = self._assign_locked()
            self._send(retry)

    def _encoded(
        self, w: Worker, chunk: Chunk, with_fn: bool, carry: set[tuple[int, int]], queue: list[Assignment]
    ) -> bool:
        """Pickle a chunk's items; False when one does not pickle (the chunk is failed or split, see _send)."""
        job = chunk.job
        try:
            encode(chunk, self.zero_copy_threshold)
        except BaseException as exc:  # even SystemExit from a __reduce__: an item's error, not ours
            if isinstance(exc, KeyboardInterrupt):
                raise
            chunk.payload = None
            if with_fn:
                carry.add((w.wid, job.fn_key))
            self._forget_function(w, job, with_fn)
            queue.extend(self._unpicklable(w, chunk))
            return False
        assert chunk.payload is not None
        job.chunker.observe_bytes(
            len(chunk.items), sum(map(len, chunk.payload)) + _shm.layout_size(chunk.buffers)
        )
        return True

    def _send_chunk(self, w: Worker, chunk: Chunk, with_fn: bool, token: bool) -> bool | None:
        """Send one encoded chunk: whether its channel has a backlog now; None when it was not sent."""
        job = chunk.job
        assert chunk.payload is not None
        fn = job.fn_blob if with_fn else b""
        flags = frame_flags(chunk, len(fn))  # before the send: _recover reads chunk.block
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
                return None
            flags |= OUT_OF_BAND
            parts: tuple[bytes, ...] = (fn, data)
            fds: tuple[int | str, ...] = (segment.handle,)
        else:
            parts, fds = (fn, *chunk.payload), ()
        if token:
            with w.token_lock:  # the token before the frame, and both in the order of ``unstarted``
                w.behind.discard(chunk.cid)
                if w.tokens[1] < 0:
                    return None  # the worker is gone; its chunks are recovered
                os.write(w.tokens[1], b"t")
                backlog = w.channel.send(job.kind, chunk.cid, job.fn_key, flags | TOKEN, *parts, fds=fds)
                w.unstarted.append(chunk.cid)
            return backlog
        return w.channel.send(job.kind, chunk.cid, job.fn_key, flags, *parts, fds=fds)

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
            assignment = self._assigner.give(w, chunk)
            w.lent = True
            self._selector.unregister(w.channel.fileno())
        results: list[tuple[Worker, ch.Frame]] = []
        alive = True
        try:
            self._submitted(job)
            self._send([assignment])
            alive = self._await_lent(w, job, results)
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
        if not alive or not self._selector.sees_changes:
            # poll and select wait on the descriptors they were given when the wait began: the supervisor must
            # begin a new wait to watch the worker again (epoll and kqueue see a registration at once).
            self._wake()
        return True

    def _await_lent(self, w: Worker, job: Job, results: list[tuple[Worker, ch.Frame]]) -> bool:
        """Read the lent worker's answer into ``results``; False if it died (EOF) or broke the protocol."""
        waiter = OneDescriptor(w.channel.fileno())
        poll_until = time.perf_counter() + self.lent_poll_s
        peek = waiter.peek
        while not w.channel.pending and not peek():
            if time.perf_counter() > poll_until:
                break
        while not results and not job.closed and not self._terminated():
            # A timeout, so that a pool terminated from another thread is noticed.
            readable, writable = waiter.wait(0.05, writable=w.channel.pending)
            if writable:
                w.channel.flush()
            if readable and not self._read(w, results):
                return False
        return True

    def _terminated(self) -> bool:
        return self.state is State.TERMINATED

    def _send_broadcast(self, w: Worker, bid: int) -> bool:
        handle = self._broadcasts[bid]
        w.broadcasts.add(bid)
        fds = (handle.segment.handle,) if handle.segment is not None else ()
        return w.channel.send(ch.BROADCAST, bid, 0, 0, handle.packed, fds=fds)

    def _fail_chunk(self, w: Worker, chunk: Chunk, exc: BaseException) -> list[Assignment]:
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

    def _unpicklable(self, w: Worker, chunk: Chunk) -> list[Assignment]:
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

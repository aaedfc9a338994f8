"""Reading results: the supervisor's poll, checks of what a worker sent, and delivery to the jobs.

Its reasons to change: what the parent accepts from a worker (a frame refused kills it), how a worker's slot is
freed and refilled, and what happens to a result that says nothing ran (``NO_FUNCTION``, ``UNLOADABLE``) or
does not unpickle. Runs in the supervisor thread, or in a caller that a worker is lent to (``run_lent``).
"""

from __future__ import annotations

from concurrent.futures.process import BrokenProcessPool

from .. import _channel as ch
from .. import _shm
from .._jobs import Chunk
from .._protocol import INITARGS_UNLOADABLE, INPUT_KEPT, NO_FUNCTION, OUT_OF_BAND, UNLOADABLE
from .._recovery import lost_chunk
from .._serialize import loads, unloadable_error, unpack_exception
from ..errors import InitializerError, SerializationError
from ._payload import decode
from ._poller import READ, WRITE, wake_drain
from ._state import ProcessState
from ._workers import Worker


class Reading(ProcessState):
    """Reading what workers send and delivering results (a part of ``Scheduler``)."""

    def _poll(self, timeout: float | None) -> list[tuple[Worker, Chunk, ch.Frame]]:
        if self._results.freed:
            self._results.send_freed()
        results: list[tuple[Worker, ch.Frame]] = []
        for data, readable, writable in self._selector.poll(timeout):
            if data is None:
                wake_drain(self._wake_r)
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
                    continue  # steals wait for READY (``Assigner.steal``); the pass below may make one
                chunk = w.inflight.pop(frame.chunk_id, None)
                if chunk is None and frame.fd is not None:  # the chunk was failed meanwhile
                    _shm.close_handle(frame.fd)
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
                    _shm.close_handle(frame.fd)
                    w.channel.send(ch.SEGMENT_FREE, _shm.segment_id(frame.body), 0, 0)
                continue
            if frame.flags & NO_FUNCTION:  # nothing ran: the worker lacked the function; send it with it
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
                values, errors = decode(frame, chunk, self._results, w.channel)
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
        with self._lock:
            rerun, failed, _ = lost_chunk(chunk, 0, len(chunk.items))  # every item a suspect
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

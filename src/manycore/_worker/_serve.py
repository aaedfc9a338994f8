"""The worker loop: receive a chunk, run it, send the results back; knows nothing of scheduling.

A worker owns one end of a socket pair and a one-page shared "status" mapping. It writes the id of the chunk it
is running and the offset of the item it runs (and, when the job has a ``task_timeout``, the moment that item
started) into that page, so the parent can tell which item a worker was running when it died or overran, without
any message on the hot path (the layout is in ``_protocol``).
Workers ignore SIGINT: Ctrl-C goes to the whole process group, and the parent, not each worker, decides what
an interrupt means (it stops the pool).
"""

from __future__ import annotations

import functools
import mmap
import os
import sys
import time

from .. import _mpstate, _shm
from .._channel import PASS_FDS, FrameReader, recv_frame, send_frame
from .._protocol import (
    BLOCK_MASK,
    BLOCK_SHIFT,
    BROADCAST,
    CALL,
    FN_SHIFT,
    FUNCTION_CACHE,
    INIT_FAILED,
    INITARGS_UNLOADABLE,
    INPUT_KEPT,
    NO_FUNCTION,
    OUT_OF_BAND,
    PARTIAL,
    READY,
    RELEASE,
    RESULT,
    SEGMENT_FREE,
    SKIPPED,
    STARMAP,
    STATUS,
    STOP,
    TOKEN,
    TRACK_ITEMS,
    UNLOADABLE,
    Frame,
)
from .._wire import BROADCASTS, dumps, loads, pack_exception, unpicklable_result
from ._run import Tracker, run_items

TYPE_CHECKING = False  # see manycore/__init__.py: workers avoid importing typing
if TYPE_CHECKING:
    import _socket as socket
    import pickle
    import signal
    from collections.abc import Callable
    from typing import Any
else:  # the C modules: pickle.py and signal.py import more (enum, re) than a worker needs at start-up
    import _pickle as pickle
    import _signal as signal

# Segments lent to the parent for results, by id, until it sends SEGMENT_FREE; then reused.
_RESULT_SEGMENTS = _shm.SegmentPool(threads=False, exact=True)
_LENT: dict[int, _shm.Segment] = {}


def serve(sock: socket.socket, page: mmap.mmap, own: list[Any]) -> None:
    """The worker loop. Returns when the parent says stop, goes away, or the task budget is spent.

    ``own``: what only this worker may hold (a child a task forks closes it); the token pipe is added to it.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    reader = FrameReader(sock)
    pending: list[Frame] = []
    init = recv_frame(reader, pending)
    if init is None:
        return
    settings = _initialize(sock, reader, init, own)
    if settings is None:
        return
    tokens, max_tasks, max_memory, threshold = settings
    send_frame(sock, READY, 0, os.getpid(), 0)
    chunks = _Chunks(sock, reader, page, tokens, threshold)
    done = 0
    while True:
        frame = recv_frame(reader, pending)
        if frame is None or frame.kind == STOP:
            return
        if frame.kind in (BROADCAST, RELEASE, SEGMENT_FREE):
            _on_notice(frame, reader)
            continue
        if not chunks.run(frame):
            continue
        done += 1
        if max_tasks and done >= max_tasks:
            return
        if max_memory and _rss() > max_memory:
            # Exit between chunks: the parent re-runs what was queued here and starts a fresh worker.
            return


def _initialize(
    sock: socket.socket, reader: FrameReader, init: Frame, own: list[Any]
) -> tuple[int, int | None, int | None, int | None] | None:
    """Apply the INIT frame and run the initializer: (token pipe, max tasks, max memory, shm threshold).

    None when the worker cannot start (INIT_FAILED was sent).
    """
    body = memoryview(init.body)
    meta = loads(
        body[: init.meta_len]
    )  # (authkey, name, identity, parent name, parent pid, tracker fd, fd count)
    _mpstate.INIT_FDS[:] = [int(reader.fds.popleft()) for _ in range(meta[6])]
    _mpstate.set_identity(meta)
    # The read end of this worker's token pipe came with the init frame (non-blocking: shared with the parent).
    # Taken before the initializer, so that a child the initializer forks lets go of it too.
    tokens = int(reader.fds.popleft()) if reader.fds and PASS_FDS else -1
    if tokens >= 0:
        own.append(tokens)
    try:
        initializer, initargs, max_tasks, max_memory, threshold, env = loads(body[init.meta_len :])
    except BaseException as exc:  # e.g. an initarg whose class is not importable here: the pool cannot start
        send_frame(sock, INIT_FAILED, 0, os.getpid(), INITARGS_UNLOADABLE, pack_exception(exc, None))
        return None
    del body
    if _mpstate.inherited_init is not None:  # forked: initargs (and an unpicklable initializer) inherited
        initializer = initializer or _mpstate.inherited_init[0]
        initargs = _mpstate.inherited_init[1]
    os.environ.update(env)  # e.g. BLAS thread limits, before the initializer or a task imports numpy
    if "manycore._worker._blas" in sys.modules:
        # Only a worker forked from the user's process can hold a BLAS that already runs, and the parent
        # imported _blas to scan it before the fork. Others load any BLAS with the limits above: they
        # need not import the module at all.
        from ._blas import limit_loaded_blas

        limit_loaded_blas(env)
    if initializer is not None:
        try:
            initializer(*initargs)
        except BaseException as exc:
            send_frame(sock, INIT_FAILED, 0, os.getpid(), 0, pack_exception(exc, None))
            return None
    return tokens, max_tasks, max_memory, threshold


def _on_notice(frame: Frame, reader: FrameReader) -> None:
    """A frame that runs nothing: a broadcast to keep or drop, a result segment the parent has done with."""
    if frame.kind == BROADCAST:
        fd = reader.fds.popleft() if _shm.segment_id(frame.body) else None
        try:  # noqa: SIM105 (no contextlib: workers import as little as they can)
            BROADCASTS[frame.broadcast_id] = _shm.unpack(memoryview(frame.body), fd, readonly=True)[0]
        except FileNotFoundError:
            # A named segment, released (and unlinked) before this worker read its message: a task that still
            # uses the handle fails as one of a released broadcast does.
            pass
    elif frame.kind == RELEASE:
        BROADCASTS.pop(frame.broadcast_id, None)
    else:  # SEGMENT_FREE
        lent = _LENT.pop(frame.segment_id, None)
        if lent is not None:
            _RESULT_SEGMENTS.release(lent, reusable=True)


class _Chunks:
    """Runs one worker's task frames: the functions it holds, its token pipe, its status page."""

    def __init__(
        self, sock: socket.socket, reader: FrameReader, page: mmap.mmap, tokens: int, threshold: int | None
    ) -> None:
        self.sock = sock
        self.reader = reader
        self.page = page
        self.progress = memoryview(page).cast("Q")  # run_items writes the running item's offset through it
        self.tokens = tokens
        self.threshold = threshold
        self.functions: dict[int, Callable[..., Any]] = {}

    def run(self, frame: Frame) -> bool:
        """Run a task frame's chunk and send its RESULT; False when nothing ran (the chunk was handed back)."""
        flags = frame.flags
        fn_len, oob = flags >> FN_SHIFT, flags & OUT_OF_BAND
        body = memoryview(frame.body)
        if fn_len:
            self._learn(frame.fn_key, body[:fn_len])
        fn = self._function_to_run(frame, oob)
        if fn is None:
            return False
        page = self.page
        # Written before unpickling, so a worker that dies even there is known to have been on this chunk.
        STATUS.pack_into(page, 0, frame.chunk_id, 0, time.monotonic_ns())
        started = time.perf_counter_ns()
        try:
            if oob:
                (first, data), mapping, views = _shm.unpack(body[fn_len:], self.reader.fds.popleft())
            else:
                first, data = loads(body[fn_len:])
                self.reader.recycle(frame.body)  # unpickling copied everything out of it
        except BaseException as exc:
            # Nothing ran: the parent makes this the error of the item that does not unpickle (it sends a
            # chunk of several items again one by one to find it). A failed unpack may have left views of
            # the input segment alive, so the parent must not reuse it.
            STATUS.pack_into(page, 0, 0, 0, 0)
            status = UNLOADABLE | (INPUT_KEPT if oob else 0)
            send_frame(self.sock, RESULT, frame.chunk_id, 0, status, dumps(_unloadable_text(exc)))
            return False
        tracker = Tracker(page, frame.chunk_id) if flags & TRACK_ITEMS else None
        values, errors = self._apply(frame, fn, first, data, tracker)
        elapsed = time.perf_counter_ns() - started
        if tracker is not None:
            tracker(len(values))  # past the last item: pickling results is not any item's run time
        del data
        status, blob, segment = _pack_results(values, errors, first, self.threshold)
        del values
        if oob and not _shm.release(mapping, views):
            status |= INPUT_KEPT
        STATUS.pack_into(page, 0, 0, 0, 0)
        fds = (segment.handle,) if segment is not None else ()
        send_frame(self.sock, RESULT, frame.chunk_id, elapsed, status, blob, fds)
        if segment is not None:
            _LENT[segment.sid] = segment
            # The parent may map it after this worker exits (the last result before max_tasks): its name is the
            # parent's to unlink from now on (``_shm.unlink_names``, when this worker's socket closes).
            _shm.given_away(segment)
        return True

    def _learn(self, key: int, blob: memoryview) -> None:
        functions = self.functions
        try:
            functions[key] = loads(blob)
        except BaseException as exc:  # even SystemExit from a __reduce__: each item's error, not ours
            functions[key] = _Unloadable(_unloadable_text(exc))
        if len(functions) > FUNCTION_CACHE:
            del functions[next(iter(functions))]

    def _function_to_run(self, frame: Frame, oob: int) -> Callable[..., Any] | None:
        """The chunk's function; None when the chunk is not this worker's to run (answered: SKIPPED, NO_FUNCTION)."""
        if frame.flags & TOKEN and not _take_token(self.tokens):
            # The parent took this chunk back for an idle worker: it is not ours to run. Say so, so that the
            # parent sends this worker chunks again.
            if oob:
                _shm.close_handle(self.reader.fds.popleft())
            send_frame(self.sock, SKIPPED, frame.chunk_id, 0, 0)
            return None
        fn = self.functions.get(frame.fn_key)
        if fn is None:
            # The chunk that was to carry the function reached this socket after this one (two parent
            # threads sent them) or never left the parent (its argument did not pickle). The chunk is this
            # worker's (its token, if any, is taken): hand it back unrun rather than die of a KeyError.
            if oob:
                _shm.close_handle(self.reader.fds.popleft())
            send_frame(self.sock, RESULT, frame.chunk_id, 0, NO_FUNCTION, b"")
        return fn

    def _apply(
        self, frame: Frame, fn: Callable[..., Any], first: int, data: Any, tracker: Tracker | None
    ) -> tuple[list[Any], dict[int, bytes]]:
        if frame.kind == CALL:
            args, kwargs = data[0]
            return run_items(functools.partial(fn, *args, **kwargs), ((),), True, first, tracker)
        # A one-item chunk needs no tracking: offset 0 was written before unpickling.
        return run_items(
            fn,
            data,
            frame.kind == STARMAP,
            first,
            tracker,
            self.progress if len(data) > 1 else None,
            1 << (frame.flags >> BLOCK_SHIFT & BLOCK_MASK),
        )


def _pack_values(values: list[Any], errors: dict[int, bytes], first: int) -> tuple[int, bytes]:
    if not errors:
        try:
            return 0, dumps(values)
        except BaseException:  # even SystemExit from a __reduce__: found and reported item by item below
            pass
    # Some value does not pickle (or some item failed): send the good values and an error for each bad one.
    good: list[Any] = []
    for offset, value in enumerate(values):
        if offset in errors:
            good.append(None)
            continue
        try:
            dumps(value)
            good.append(value)
        except BaseException as exc:
            errors[offset] = unpicklable_result(value, first + offset, exc)
            good.append(None)
    return PARTIAL, dumps((good, errors))


def _pack_results(
    values: list[Any], errors: dict[int, bytes], first: int, threshold: int | None
) -> tuple[int, bytes, _shm.Segment | None]:
    """Pickle results: (RESULT flags, body, the segment lent to the parent or None).

    Large buffers go out of band, into a segment lent to the parent; values that do not pickle become that
    item's error (``SerializationError``) and the others still travel.
    """
    if threshold is not None and not errors:
        collector = _shm.Collector(threshold)
        payload = None
        try:  # noqa: SIM105 (no contextlib in workers)
            payload = pickle.dumps(values, protocol=5, buffer_callback=collector)
        except BaseException:
            pass  # e.g. a memoryview, which plain pickle refuses: the wrapped form below handles it
        if payload is None or (
            len(payload) >= threshold and len(values) <= _shm.SCAN_ITEMS and _shm.has_large(values, threshold)
        ):
            # Large bytes went in band (or a memoryview refused plain pickle): send them out of band.
            collector.buffers.clear()
            try:
                payload = pickle.dumps(
                    _shm.wrap_large(values, threshold), protocol=5, buffer_callback=collector
                )
            except BaseException:
                payload = None
        if payload is not None:
            if not collector.buffers:
                return 0, payload, None
            try:
                segment = _RESULT_SEGMENTS.acquire(_shm.layout_size(collector.buffers))
            except OSError as exc:
                # Out of descriptors or mappings (the user's own files count too): the results still
                # travel, in the pickle; the message says which limit, for the worker's stderr.
                sys.stderr.write(f"manycore worker: results sent without shared memory: {exc}\n")
                segment = None
            if segment is not None:
                return OUT_OF_BAND, _shm.pack([payload], collector.buffers, segment), segment
    status, blob = _pack_values(values, errors, first)
    return status, blob, None


def _take_token(tokens: int) -> bool:
    """Whether this worker may run the chunk it holds: one byte read from its token pipe makes it its own."""
    try:
        return bool(os.read(tokens, 1))
    except (BlockingIOError, OSError):  # BlockingIOError: no token, the parent took it
        return False


def _rss() -> int:
    """This process's private resident memory in bytes (Linux /proc; 0 elsewhere: never a restart).

    Private: resident minus shared pages. Shared memory is not the worker's own (results it lent to the parent
    live in segments for as long as the user keeps them), and neither are the libraries it maps.
    """
    try:
        with open("/proc/self/statm", "rb") as statm:
            fields = statm.read().split()
        return (int(fields[1]) - int(fields[2])) * mmap.PAGESIZE
    except OSError:
        return 0


def _unloadable_text(exc: BaseException) -> str:
    """What failed while unpickling a task's function or arguments, with where it failed."""
    import traceback

    return "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))


class _Unloadable:
    """Stands for a task function that did not unpickle here: every item it is called for fails, saying why."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __call__(self, *args: object, **kwargs: object) -> None:
        from concurrent.futures.process import BrokenProcessPool

        from ..errors import SerializationError

        last = self.text.rstrip().rsplit("\n", 1)[-1]
        raise SerializationError.like(BrokenProcessPool)(
            f"the task function cannot be unpickled in the worker ({last}). Its traceback:\n{self.text}",
            what="function",
            detail=self.text,
        )

"""``IMapIterator``: the lazy results of ``imap``, ``imap_unordered``, ``istarmap`` and ``Executor.map``.

It reads its input in a feeder thread (``_feed``) and keeps a bounded window of items in flight, so memory
stays flat on endless generators and a slow input delays only its own items; results come back in input order
(reordered from the pieces that arrive) or in completion order.
"""

from __future__ import annotations

import contextlib
import itertools
import multiprocessing
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sized
from typing import Any, TypeVar

from . import _channel as ch
from . import _waiting
from ._jobs import Chunk, Job, SchedulerBase
from ._options import CallOptions
from ._progress import make_bar
from ._waiting import slices

T = TypeVar("T")

# imap keeps at most this many chunks pulled and not yet read, per worker: the two a worker holds
# (scheduler DEPTH) and one ready to go.
WINDOW_CHUNKS_PER_WORKER = 3


class IMapIterator(Job, Iterator[T]):
    """Lazy results of imap (input order) or imap_unordered (completion order)."""

    def __init__(
        self,
        scheduler: SchedulerBase,
        fn: Callable[..., T],
        iterable: Iterable[Any],
        options: CallOptions,
        *,
        star: bool,
        ordered: bool,
        max_ahead: int | None = None,
    ) -> None:
        super().__init__(scheduler, fn, options)
        self.kind = ch.STARMAP if star else ch.MAP
        total = len(iterable) if isinstance(iterable, Sized) else None
        self._source: Iterator[Any] | None = iter(iterable)
        self._ordered = ordered
        self._return_errors = options.on_error == "return"
        self._bar = make_bar(options.progress, total)
        # One lock, two conditions: the consumer waits for results (``_cond``), the feeder for room in the
        # window (``_room``). With one condition every delivered chunk woke the feeder for nothing and every
        # chunk read woke the consumer for nothing: W7 (2M items) made 3.5x the context switches of before the
        # feeder thread existed.
        # Blocks take the lock itself, never ``with self._cond``: an interrupt can leave a Python-level
        # condition's lock held (see _waiting), and the main thread does not wait on the condition either: it
        # sleeps on ``_wakeup``, a lock of its own that deliveries release when it is asleep.
        self._mutex = lock = threading.RLock()
        self._cond = threading.Condition(lock)
        self._room = threading.Condition(lock)
        self._wakeup = threading.Lock()
        self._wakeup.acquire()
        self._main_asleep = False
        self._pulled = 0  # items taken from the source
        self._taken = 0  # items of the pieces handed to the consumer so far
        self._values: list[Any] = []  # the piece being read, its errors by offset, the next offset
        self._errors: dict[int, BaseException] = {}
        self._pos = 0
        self._exhausted = False
        self._source_error: tuple[int, BaseException] | None = None
        self._pieces: dict[int, tuple[int, list[Any], dict[int, BaseException]]] = {}
        self._open: dict[
            int, int
        ] = {}  # pulled chunks not fully handed to the consumer: origin -> items left
        self._arrivals: deque[int] = deque()  # imap_unordered: piece keys in completion order
        self._failure: BaseException | None = None
        self._window = WINDOW_CHUNKS_PER_WORKER * scheduler.processes
        self._max_ahead = max_ahead  # Executor.map's buffersize, in items
        self._feed = _Feed()
        self._delivered = 0  # items whose results (or errors) are in
        self._draining = False  # the pool was closed: finish once every result is in, read or not
        self.owner: object = None  # its Pool, kept alive until the end is read (see AsyncResult._finish)

    def start(self) -> None:
        """Start reading the input in the background; called once submitted.

        The input is read by a feeder thread (one per imap, a daemon), never in the caller's: ``imap``
        returns at once and the first result comes when the first item is done, however slow the input.
        The feeder keeps at most the window ahead of the consumer. It stops when the iterator ends, is
        closed or garbage-collected, or its pool is terminated; a generator blocked for ever keeps its
        feeder blocked in it (a daemon thread, which holds no reference to this iterator while it waits)
        but blocks nothing else: close, terminate, join and interpreter exit do not wait for it.
        """
        source, self._source = self._source, None
        assert source is not None
        threading.Thread(
            target=_feed,
            args=(
                weakref.ref(self),
                self._feed,
                self._room,
                self._open,
                source,
                self._window,
                self._max_ahead,
            ),
            name="manycore-imap-feeder",
            daemon=True,
        ).start()

    def probing_locked(self) -> bool:
        return self.chunker.probing

    # ---- the feeder side -------------------------------------------------------------------------------

    def _add(self, items: list[Any], error: BaseException | None, exhausted: bool) -> bool:
        """Items read by the feeder (and the error that ended the input); whether to read on."""
        with self._mutex:
            first = self._pulled
            self._pulled = first + len(items)
            if items:
                self._open[first] = len(items)
            if error is not None:
                self._source_error = (self._pulled, error)
            self._exhausted = exhausted or error is not None
            if self._exhausted:
                self._wake_consumers_locked()  # a consumer waiting past the last item sees the end
        if items:
            self.queued.append(Chunk(self, first, items))
            self.scheduler.more_ready(self)
        elif self._draining:
            self._finish_drained()
        return not self._exhausted

    def drain(self) -> None:
        with self._mutex:
            self._draining = True
            self._feed.unbounded = True
            self._room.notify_all()
        self._finish_drained()

    def _finish_drained(self) -> None:
        with self._mutex:
            done = self._exhausted and self._delivered >= self._pulled
        if done:
            # Every result is stored for the consumer, who may read them after join(); the pool needs no more.
            self.scheduler.job_finished(self)

    def _stop_feeding(self) -> None:
        with self._mutex:
            self._feed.stop = True
            self._room.notify_all()

    # ---- the consumer side -----------------------------------------------------------------------------

    def _wake_consumers_locked(self) -> None:
        self._cond.notify_all()
        if self._main_asleep:
            self._main_asleep = False
            # Only wakers release, each holding the lock: a lock already released (the main thread stopped
            # sleeping on a slice's end and has not slept again yet) lets its next sleep return at once.
            if self._wakeup.locked():
                self._wakeup.release()

    def _finished_locked(self) -> bool:
        return (self._exhausted or self._source_error is not None) and self._taken >= self._pulled

    def next(self, timeout: float | None = None) -> T:
        """``next()`` with a timeout, as ``multiprocessing.pool.IMapIterator.next``."""
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            while self._pos >= len(self._values):
                with self._mutex:
                    if self._failure is not None:
                        raise self._failure
                    if self._take_piece_locked():
                        break
                    if self._finished_locked():
                        self._end()
                    left = None if deadline is None else deadline - time.monotonic()
                    if left is not None and left <= 0:
                        raise multiprocessing.TimeoutError(f"no result within {timeout} s")
                    if not slices(left):
                        self._cond.wait(left)
                        continue
                    self._main_asleep = True
                # Outside the lock, one C call, woken at least every MAIN_WAKE_S for Ctrl-C.
                wake = _waiting.MAIN_WAKE_S  # looked up each time: the storm test shortens it
                self._wakeup.acquire(timeout=wake if left is None else min(left, wake))
        except KeyboardInterrupt:
            # Outside the condition's lock: terminating fails this job, which takes that lock to deliver.
            self.scheduler.terminate()
            raise
        except BaseException:
            if self.closed:
                # The end was read (StopIteration, the input's error, a failure): let go of the pool, outside
                # the condition's lock, since its last reference going terminates it.
                self.owner = None
            raise
        return self.__next__()

    def pop(self, timeout: float | None = None) -> T:
        """``next(timeout)`` that keeps no reference to the value it returns (``Executor.map``'s contract)."""
        value = self.next(timeout)
        if type(self._values) is list:
            self._values[self._pos - 1] = None
        return value

    def __next__(self) -> T:
        # The hot path, once per result: an index into the current piece, no lock, no allocation.
        pos = self._pos
        if pos >= len(self._values):
            return self.next()
        self._pos = pos + 1
        if self._errors and pos in self._errors:
            error = self._errors[pos]
            if not self._return_errors:
                raise error
            return error  # type: ignore[return-value]  # on_error="return": the error stands in for the value
        return self._values[pos]  # type: ignore[no-any-return]

    def __iter__(self) -> Iterator[T]:
        """A generator over the same results: a generator step costs less than a ``__next__`` call, which
        matters at millions of results. It shares this object's position, so ``next()`` may be mixed in."""
        return self._iterate()

    def _iterate(self) -> Iterator[T]:
        while True:
            values, pos = self._values, self._pos
            if self._errors:
                while self._pos < len(values):
                    yield self.__next__()
            else:
                for value in itertools.islice(values, pos, None):
                    self._pos = pos = pos + 1  # before the yield: a consumer that stops here loses nothing
                    yield value
            try:
                first = self.next()  # the next piece (blocking); StopIteration at the end
            except StopIteration:
                return
            yield first

    def _end(self) -> None:
        self._stop_feeding()
        self.scheduler.job_finished(self)
        if self._bar is not None:
            self._bar.close()
        if self._source_error is not None:
            _, exc = self._source_error
            self._source_error = (self._pulled, StopIteration())
            if not isinstance(exc, StopIteration):
                raise exc
        raise StopIteration

    def _take_piece_locked(self) -> bool:
        if self._ordered:
            piece = self._pieces.pop(self._taken, None)
        else:
            piece = self._pieces.pop(self._arrivals.popleft()) if self._arrivals else None
        if piece is None:
            return False
        origin, values, errors = piece
        left = self._open[origin] - len(values)
        if left:
            self._open[origin] = left
        else:
            del self._open[origin]
        self._room.notify()  # room in the window: the feeder reads on
        self._taken += len(values)
        self._values, self._errors, self._pos = values, errors, 0
        return True

    def close(self) -> None:
        """Stop early: chunks not yet started are dropped (also done when the iterator is garbage)."""
        self._stop_feeding()
        self.scheduler.job_finished(self)
        if self._bar is not None:
            self._bar.close()
        self.owner = None

    def __del__(self) -> None:
        self.abandon()

    def abandon(self) -> None:
        """``close()`` for finalizers (this one's, a wrapper's): it never waits for the scheduler's lock."""
        if getattr(self, "_feed", None) is not None:
            # The condition's lock is reentrant: a collection that runs this in a thread holding it is safe.
            with contextlib.suppress(Exception):
                self._stop_feeding()
        if not self.closed:
            with contextlib.suppress(Exception):  # at interpreter shutdown there is nothing left to stop
                self.scheduler.job_abandoned(self)

    # ---- the scheduler side ------------------------------------------------------------------------------

    def deliver(self, chunk: Chunk, values: list[Any], errors: dict[int, BaseException]) -> None:
        with self._mutex:
            self._pieces[chunk.first] = (chunk.origin, values, errors)
            self._arrivals.append(chunk.first)
            self._delivered += len(values)
            self._wake_consumers_locked()
        if self._bar is not None:
            self._bar.update(len(values))
        if self._draining:
            self._finish_drained()

    def fail_all(self, exc: BaseException) -> None:
        with self._mutex:
            self._failure = exc
            self._feed.stop = True
            self._wake_consumers_locked()
            self._room.notify_all()
        self.scheduler.job_finished(self)
        self.owner = None


class _Feed:
    """What an imap's feeder thread shares with its iterator besides the window: the order to stop."""

    __slots__ = ("stop", "unbounded")

    def __init__(self) -> None:
        self.stop = False
        self.unbounded = False  # the pool was closed: read the whole input (see IMapIterator.drain)


def _feed(
    ref: weakref.ref[IMapIterator[Any]],
    feed: _Feed,
    cond: threading.Condition,
    open_: dict[int, int],
    source: Iterator[Any],
    window: int,
    max_ahead: int | None,
) -> None:
    """An imap's feeder thread: read the input a chunk at a time while the window has room.

    It holds the iterator only between reads, never while it waits for room or for the input, so an
    iterator its consumer dropped is collected (and its ``__del__`` stops this thread).
    """
    while True:
        with cond:
            while (
                not feed.stop
                and not feed.unbounded
                and (len(open_) >= window or (max_ahead is not None and sum(open_.values()) >= max_ahead))
            ):
                cond.wait()
            if feed.stop:
                return
            room = None if max_ahead is None or feed.unbounded else max_ahead - sum(open_.values())
        it = ref()
        if it is None:
            return
        size = it.chunker.next_size(None)
        del it
        if room is not None:
            size = min(size, room)
        items: list[Any] = []
        error: BaseException | None = None
        try:
            items.extend(itertools.islice(source, size))  # extend() keeps the items read before a raise
        except BaseException as exc:  # whatever the input raises reaches the consumer at its position
            error = exc
        it = ref()
        if it is None or feed.stop:
            return
        more = it._add(items, error, len(items) < size)
        del it
        if not more:
            return

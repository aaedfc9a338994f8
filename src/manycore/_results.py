"""The result objects that calls return; each is also the scheduler Job that produces it.

- ``ApplyResult``: one call (``apply``/``apply_async``), the ``multiprocessing.pool.AsyncResult`` contract.
- ``Call``: a blocking ``apply``, whose result the calling thread reads itself when a worker is idle.
- ``MapResult``: ``map``/``starmap`` and their ``_async`` forms over a sized input, sliced into chunks lazily.
- ``IMapIterator``: ``imap``/``imap_unordered``; reads its input in a feeder thread and keeps a bounded window
  of items in flight, so memory stays flat on endless generators and a slow input delays only its own items.
- ``FutureJob``: ``Executor.submit``; resolves a standard ``concurrent.futures.Future``.
"""

from __future__ import annotations

import contextlib
import itertools
import multiprocessing
import sys
import threading
import time
import traceback
import weakref
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future
from typing import Any, Generic, TypeVar

from . import _channel as ch
from ._jobs import Chunk, Job, SchedulerBase
from ._progress import Bar
from .errors import for_futures

T = TypeVar("T")

# imap keeps at most this many chunks pulled and not yet read, per worker: the two a worker holds
# (scheduler DEPTH) and one ready to go.
WINDOW_CHUNKS_PER_WORKER = 3


def _run_callback(fn: Callable[[Any], object] | None, arg: object) -> None:
    """Run a user's ``callback``/``error_callback``; what it raises is reported, and the pool goes on.

    Callbacks run in the pool's supervisor thread (or whichever thread settles the call), which delivers every
    other result: an exception there must not stop it. ``multiprocessing.pool`` lets it kill its result thread
    (reported by ``threading.excepthook``, then every later call hangs); manycore reports it the same way, as an
    exception in that thread, and carries on. ``SystemExit`` (a callback calling ``sys.exit()``) is reported too,
    not obeyed: a callback cannot end the program from the pool's thread. Only a ``KeyboardInterrupt`` in the main
    thread (a real Ctrl-C while a callback ran there) propagates.
    """
    if fn is None:
        return
    try:
        fn(arg)
    except BaseException as exc:  # see above: SystemExit too
        if isinstance(exc, KeyboardInterrupt) and threading.current_thread() is threading.main_thread():
            raise
        _report_callback_error(fn, exc)


def _report_callback_error(fn: Callable[[Any], object], exc: BaseException) -> None:
    note = f"manycore: raised by the callback {fn!r}; ignored, the pool goes on"
    hook = threading.excepthook
    if isinstance(exc, SystemExit) and hook is threading.__excepthook__:
        # The standard hook is silent about SystemExit (a thread may end that way); a callback may not.
        print(f"{note}:", file=sys.stderr)
        traceback.print_exception(type(exc), exc, exc.__traceback__)
        return
    if sys.version_info >= (3, 11):
        exc.add_note(note)
    else:
        print(f"{note}:", file=sys.stderr)
    try:
        hook(threading.ExceptHookArgs((type(exc), exc, exc.__traceback__, threading.current_thread())))
    except Exception:  # a broken hook must not stop the pool either
        traceback.print_exception(type(exc), exc, exc.__traceback__)


def _interruptible(scheduler: SchedulerBase, wait: Callable[[], bool]) -> bool:
    """Run a blocking wait; Ctrl-C stops the whole pool (no worker survives it) and propagates."""
    try:
        return wait()
    except KeyboardInterrupt:
        scheduler.terminate()
        raise


class AsyncResult(Job, Generic[T]):
    """The result of an ``*_async`` call: ``get``, ``wait``, ``ready``, ``successful``."""

    def __init__(
        self,
        scheduler: SchedulerBase,
        fn: Callable[..., Any],
        *,
        callback: Callable[[T], object] | None = None,
        error_callback: Callable[[BaseException], object] | None = None,
        progress: Bar | None = None,
        **job_options: Any,
    ) -> None:
        super().__init__(scheduler, fn, **job_options)
        self._event = threading.Event()
        self._lock = threading.Lock()
        self._value: Any = None
        self._error: BaseException | None = None
        self._callback = callback
        self._error_callback = error_callback
        self._bar = progress
        self.owner: object = None  # see _finish

    def ready(self) -> bool:
        return self._event.is_set()

    def successful(self) -> bool:
        if not self.ready():
            raise ValueError(f"{self!r} not ready")
        return self._error is None

    def wait(self, timeout: float | None = None) -> None:
        _interruptible(self.scheduler, lambda: self._event.wait(timeout))

    def get(self, timeout: float | None = None) -> T:
        self.wait(timeout)
        if not self.ready():
            raise multiprocessing.TimeoutError(f"no result within {timeout} s")
        if self._error is not None:
            raise self._error
        return self._value  # type: ignore[no-any-return]

    def _finish(self, value: Any, error: BaseException | None) -> None:
        with self._lock:
            if self._event.is_set():
                return
            self._value, self._error = value, error
            self._event.set()
        self.scheduler.job_finished(self)
        if self._bar is not None:
            self._bar.close()
        if error is None:
            _run_callback(self._callback, value)
        else:
            _run_callback(self._error_callback, error)
        # The Pool that made this result, kept alive by it until now (multiprocessing's results keep theirs:
        # ``return Pool(2).map_async(...)`` must still deliver). Finished, the result lets go, so a pool left
        # open is collected (and warns) even while the user keeps its results. Last, outside every lock: this
        # may drop the pool's last reference, and Pool.__del__ terminates it.
        self.owner = None

    def fail_all(self, exc: BaseException) -> None:
        self._finish(None, exc)


class ApplyResult(AsyncResult[T]):
    kind = ch.CALL

    def __init__(
        self,
        scheduler: SchedulerBase,
        fn: Callable[..., T],
        args: Sequence[Any],
        kwargs: dict[str, Any],
        **options: Any,
    ) -> None:
        super().__init__(scheduler, fn, **options)
        self.ready_chunks = [Chunk(self, 0, [(tuple(args), dict(kwargs))])]

    def take_locked(self) -> Chunk | None:
        return self.ready_chunks.pop() if self.ready_chunks else None

    def deliver(self, chunk: Chunk, values: list[Any], errors: dict[int, BaseException]) -> None:
        self._finish(values[0], errors.get(0))


class Call(Job, Generic[T]):
    """A blocking ``Pool.apply``: run on a worker lent to the calling thread (``Scheduler.run_lent``) when one
    is idle, submitted as usual otherwise.

    An ``ApplyResult`` without what only an asynchronous result needs (an event, callbacks): its one reader is
    the thread that made it, and that leanness is part of what makes ``apply``'s round trip short (W5).
    """

    kind = ch.CALL

    def __init__(
        self,
        scheduler: SchedulerBase,
        fn: Callable[..., T],
        args: Sequence[Any],
        kwargs: dict[str, Any],
        **options: Any,
    ) -> None:
        super().__init__(scheduler, fn, **options)
        self._chunk: Chunk | None = Chunk(self, 0, [(tuple(args), kwargs)])
        self._value: Any = None
        self._error: BaseException | None = None
        # Locks as cheap one-shot flags: the first outcome wins (delivery and terminate may race), and the
        # caller waits on ``_done`` only when its result did not come back on a lent worker.
        self._settled = threading.Lock()
        self._done = threading.Lock()
        self._done.acquire()

    def take_locked(self) -> Chunk | None:
        chunk, self._chunk = self._chunk, None
        return chunk

    def deliver(self, chunk: Chunk, values: list[Any], errors: dict[int, BaseException]) -> None:
        self._finish(values[0], errors.get(0))

    def fail_all(self, exc: BaseException) -> None:
        self._finish(None, exc)

    def _finish(self, value: Any, error: BaseException | None) -> None:
        if self._settled.acquire(blocking=False):
            self._value, self._error = value, error
            self.scheduler.job_finished(self)
            self._done.release()

    def result(self) -> T:
        if not self._done.acquire(blocking=False):
            _interruptible(self.scheduler, self._done.acquire)  # submitted, or re-run after a worker died
        if self._error is not None:
            raise self._error
        return self._value  # type: ignore[no-any-return]


class MapResult(AsyncResult[list[T]]):
    """Ordered results of map/starmap; fails fast on the first error unless ``on_error="return"``."""

    def __init__(
        self,
        scheduler: SchedulerBase,
        fn: Callable[..., T],
        items: Sequence[Any],
        *,
        star: bool,
        on_error: str = "raise",
        **options: Any,
    ) -> None:
        super().__init__(scheduler, fn, **options)
        self.kind = ch.STARMAP if star else ch.MAP
        self._items = items
        self._cursor = 0
        self._results: list[Any] = [None] * len(items)
        self._remaining = len(items)
        self._return_errors = on_error == "return"
        if not items:
            self._finish([], None)

    def _finish(self, value: Any, error: BaseException | None) -> None:
        super()._finish(value, error)
        self._items = ()  # a finished map keeps no reference to its input (chunks re-run hold their own)

    def probing_locked(self) -> bool:
        return self.chunker.probing

    def take_locked(self) -> Chunk | None:
        n = len(self._items)
        if self._cursor >= n:
            return None
        size = self.chunker.next_size(n - self._cursor)
        first = self._cursor
        self._cursor = min(n, first + size)
        return Chunk(self, first, self._items[first : self._cursor])

    def deliver(self, chunk: Chunk, values: list[Any], errors: dict[int, BaseException]) -> None:
        first = chunk.first
        with self._lock:
            if self._event.is_set():
                return
            self._results[first : first + len(values)] = values
            self._remaining -= len(values)
            remaining = self._remaining
        if self._bar is not None:
            self._bar.update(len(values))
        if errors:
            if not self._return_errors:
                self._finish(None, errors[min(errors)])
                return
            with self._lock:
                for offset, exc in errors.items():
                    self._results[first + offset] = exc
        if remaining == 0:
            self._finish(self._results, None)


class IMapIterator(Job, Iterator[T]):
    """Lazy results of imap (input order) or imap_unordered (completion order)."""

    def __init__(
        self,
        scheduler: SchedulerBase,
        fn: Callable[..., T],
        iterable: Iterable[Any],
        *,
        star: bool,
        ordered: bool,
        on_error: str = "raise",
        progress: Bar | None = None,
        max_ahead: int | None = None,
        **options: Any,
    ) -> None:
        super().__init__(scheduler, fn, **options)
        self.kind = ch.STARMAP if star else ch.MAP
        self._source: Iterator[Any] | None = iter(iterable)
        self._ordered = ordered
        self._return_errors = on_error == "return"
        self._bar = progress
        # One lock, two conditions: the consumer waits for results (``_cond``), the feeder for room in the
        # window (``_room``). With one condition every delivered chunk woke the feeder for nothing and every
        # chunk read woke the consumer for nothing: W7 (2M items) made 3.5x the context switches of before the
        # feeder thread existed.
        lock = threading.RLock()
        self._cond = threading.Condition(lock)
        self._room = threading.Condition(lock)
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
        with self._cond:
            first = self._pulled
            self._pulled = first + len(items)
            if items:
                self._open[first] = len(items)
            if error is not None:
                self._source_error = (self._pulled, error)
            self._exhausted = exhausted or error is not None
            if self._exhausted:
                self._cond.notify_all()  # a consumer waiting past the last item sees the end
        if items:
            self.queued.append(Chunk(self, first, items))
            self.scheduler.more_ready(self)
        elif self._draining:
            self._finish_drained()
        return not self._exhausted

    def drain(self) -> None:
        with self._cond:
            self._draining = True
            self._feed.unbounded = True
            self._room.notify_all()
        self._finish_drained()

    def _finish_drained(self) -> None:
        with self._cond:
            done = self._exhausted and self._delivered >= self._pulled
        if done:
            # Every result is stored for the consumer, who may read them after join(); the pool needs no more.
            self.scheduler.job_finished(self)

    def _stop_feeding(self) -> None:
        with self._cond:
            self._feed.stop = True
            self._room.notify_all()

    # ---- the consumer side -----------------------------------------------------------------------------

    def _finished_locked(self) -> bool:
        return (self._exhausted or self._source_error is not None) and self._taken >= self._pulled

    def next(self, timeout: float | None = None) -> T:
        """``next()`` with a timeout, as ``multiprocessing.pool.IMapIterator.next``."""
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            while self._pos >= len(self._values):
                with self._cond:
                    if self._failure is not None:
                        raise self._failure
                    if self._take_piece_locked():
                        break
                    if self._finished_locked():
                        self._end()
                    left = None if deadline is None else deadline - time.monotonic()
                    if left is not None and left <= 0:
                        raise multiprocessing.TimeoutError(f"no result within {timeout} s")
                    self._cond.wait(left)
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
        if getattr(self, "_feed", None) is not None:
            # The condition's lock is reentrant: a collection that runs this in a thread holding it is safe.
            with contextlib.suppress(Exception):
                self._stop_feeding()
        if not self.closed:
            with contextlib.suppress(Exception):  # at interpreter shutdown there is nothing left to stop
                self.scheduler.job_finished(self)

    # ---- the scheduler side ------------------------------------------------------------------------------

    def deliver(self, chunk: Chunk, values: list[Any], errors: dict[int, BaseException]) -> None:
        with self._cond:
            self._pieces[chunk.first] = (chunk.origin, values, errors)
            self._arrivals.append(chunk.first)
            self._delivered += len(values)
            self._cond.notify_all()
        if self._bar is not None:
            self._bar.update(len(values))
        if self._draining:
            self._finish_drained()

    def fail_all(self, exc: BaseException) -> None:
        with self._cond:
            self._failure = exc
            self._feed.stop = True
            self._cond.notify_all()
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


class FutureJob(Job):
    """One ``Executor.submit`` call, resolving a standard Future (so as_completed and wait work)."""

    kind = ch.CALL

    def __init__(
        self,
        scheduler: SchedulerBase,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        **options: Any,
    ) -> None:
        super().__init__(scheduler, fn, **options)
        self.future: Future[Any] = Future()
        self.ready_chunks = [Chunk(self, 0, [(args, kwargs)])]

    def take_locked(self) -> Chunk | None:
        return self.ready_chunks.pop() if self.ready_chunks else None

    def start_locked(self, chunk: Chunk) -> bool:
        if self.future.set_running_or_notify_cancel():
            return True
        self.scheduler.job_finished_locked(self)
        return False

    def deliver(self, chunk: Chunk, values: list[Any], errors: dict[int, BaseException]) -> None:
        if 0 in errors:
            self._settle(None, errors[0])
        else:
            self._settle(values[0], None)

    def _settle(self, value: Any, error: BaseException | None) -> None:
        self.scheduler.job_finished(self)
        if self.future.done():
            return
        if not self.future.running() and not self.future.set_running_or_notify_cancel():
            return
        if error is None:
            self.future.set_result(value)
        else:
            self.future.set_exception(for_futures(error))

    def fail_all(self, exc: BaseException) -> None:
        self._settle(None, exc)

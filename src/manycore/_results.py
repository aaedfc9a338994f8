"""The result objects that calls return; each is also the scheduler Job that produces it.

- ``ApplyResult``: one call (``apply``/``apply_async``), the ``multiprocessing.pool.AsyncResult`` contract.
- ``Call``: a blocking ``apply``, whose result the calling thread reads itself when a worker is idle.
- ``MapResult``: ``map``/``starmap`` and their ``_async`` forms over a sized input, sliced into chunks lazily.
- ``IMapIterator`` (in ``_imap``): ``imap``/``imap_unordered``, the lazy iterator and its feeder thread.
- ``FutureJob``: ``Executor.submit``; resolves a standard ``concurrent.futures.Future``.
"""

from __future__ import annotations

import multiprocessing
import sys
import threading
import traceback
from collections.abc import Callable, Sequence
from concurrent.futures import CancelledError, Future, _base
from concurrent.futures import TimeoutError as FuturesTimeoutError
from typing import Any, Generic, TypeVar

from . import _channel as ch
from ._jobs import Chunk, Job, SchedulerBase
from ._options import DEFAULT_CALL, CallOptions
from ._progress import make_bar
from ._waiting import Latch, slices, wait_in_slices
from .errors import for_futures

T = TypeVar("T")


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


class _Future(Future[T]):
    """A ``concurrent.futures.Future`` whose ``result`` and ``exception`` let the main thread handle Ctrl-C while
    they wait (see ``_waiting``).

    The main thread never takes the future's condition, a Python-level lock an interrupt can leave held (then
    the supervisor, finishing the future, blocked on it for good). It waits in slices on a latch that the
    future's first done-callback sets, and reads the outcome once the state says finished: a future's result
    and exception are written before its state, and never change after. Other threads use the standard
    methods. No ``TimeoutError`` is caught: a signal handler's (SIGALRM) must reach the caller, and a task's
    own is its result.
    """

    def __init__(self) -> None:
        super().__init__()
        self._finished = Latch()
        self.add_done_callback(_open_latch)

    def result(self, timeout: float | None = None) -> T:
        if not slices(timeout):
            return super().result(timeout)
        error = None
        try:
            error = self._outcome(timeout)
            if error:  # as the standard library, which tests the exception's truth
                raise error
            return self._result  # type: ignore[return-value]  # typeshed: T | None; None only before set
        finally:
            # As the standard library: the raised error's traceback holds this frame, which must not hold the
            # future (or the error itself) in a cycle.
            self = None  # type: ignore[assignment]
            error = None

    def exception(self, timeout: float | None = None) -> BaseException | None:
        if not slices(timeout):
            return super().exception(timeout)
        try:
            return self._outcome(timeout)
        finally:
            self = None  # type: ignore[assignment]

    def _outcome(self, timeout: float | None) -> BaseException | None:
        """Wait until finished, as ``result`` does; the exception, or None for a result."""
        try:
            wait_in_slices(self._done_or_latch, timeout)
            state = self._state
            if state in (_base.CANCELLED, _base.CANCELLED_AND_NOTIFIED):
                raise CancelledError()
            if state != _base.FINISHED:
                raise FuturesTimeoutError()
            return self._exception
        finally:
            self = None  # type: ignore[assignment]  # a kept TimeoutError must not keep the future

    def _done_or_latch(self, timeout: float | None) -> bool:
        # The state first: an interrupt in the main thread's own cancel() or set_result() after the state
        # changed and before the done-callbacks ran leaves the latch unset for good.
        return self._state in _DONE or self._finished.wait(timeout)


_DONE = (_base.CANCELLED, _base.CANCELLED_AND_NOTIFIED, _base.FINISHED)


def _open_latch(future: Future[Any]) -> None:
    future._finished.set()  # type: ignore[attr-defined]


class AsyncResult(Job, Generic[T]):
    """The result of an ``*_async`` call: ``get``, ``wait``, ``ready``, ``successful``."""

    def __init__(
        self,
        scheduler: SchedulerBase,
        fn: Callable[..., Any],
        options: CallOptions = DEFAULT_CALL,
        *,
        callback: Callable[[T], object] | None = None,
        error_callback: Callable[[BaseException], object] | None = None,
        total: int | None = None,
    ) -> None:
        super().__init__(scheduler, fn, options)
        self._done = Latch()  # not an Event: see _waiting
        self._lock = threading.Lock()
        self._value: Any = None
        self._error: BaseException | None = None
        self._callback = callback
        self._error_callback = error_callback
        self._bar = make_bar(options.progress, total)
        self.owner: object = None  # see _finish

    def ready(self) -> bool:
        return self._done.is_set()

    def successful(self) -> bool:
        if not self.ready():
            raise ValueError(f"{self!r} not ready")
        return self._error is None

    def wait(self, timeout: float | None = None) -> None:
        _interruptible(self.scheduler, lambda: self._done.wait(timeout))

    def get(self, timeout: float | None = None) -> T:
        self.wait(timeout)
        if not self.ready():
            raise multiprocessing.TimeoutError(f"no result within {timeout} s")
        if self._error is not None:
            raise self._error
        return self._value  # type: ignore[no-any-return]

    def _finish(self, value: Any, error: BaseException | None) -> None:
        with self._lock:
            if self._done.is_set():
                return
            self._value, self._error = value, error
            self._done.set()
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
        options: CallOptions = DEFAULT_CALL,
        *,
        callback: Callable[[T], object] | None = None,
        error_callback: Callable[[BaseException], object] | None = None,
    ) -> None:
        super().__init__(scheduler, fn, options, callback=callback, error_callback=error_callback)
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
        options: CallOptions = DEFAULT_CALL,
    ) -> None:
        super().__init__(scheduler, fn, options)
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

    def _acquire_done(self, timeout: float | None) -> bool:
        return self._done.acquire(timeout=-1 if timeout is None else timeout)

    def result(self) -> T:
        if not self._done.acquire(blocking=False):
            # Submitted, or re-run after a worker died.
            _interruptible(self.scheduler, lambda: wait_in_slices(self._acquire_done))
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
        options: CallOptions = DEFAULT_CALL,
        *,
        star: bool,
        callback: Callable[[list[T]], object] | None = None,
        error_callback: Callable[[BaseException], object] | None = None,
    ) -> None:
        super().__init__(
            scheduler, fn, options, callback=callback, error_callback=error_callback, total=len(items)
        )
        self.kind = ch.STARMAP if star else ch.MAP
        self._items = items
        self._cursor = 0
        self._results: list[Any] = [None] * len(items)
        self._remaining = len(items)
        self._return_errors = options.on_error == "return"
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
            if self._done.is_set():
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


class FutureJob(Job):
    """One ``Executor.submit`` call, resolving a standard Future (so as_completed and wait work)."""

    kind = ch.CALL

    def __init__(
        self,
        scheduler: SchedulerBase,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        options: CallOptions = DEFAULT_CALL,
    ) -> None:
        super().__init__(scheduler, fn, options)
        self.future: Future[Any] = _Future()
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

"""``manycore.Executor``: a real ``concurrent.futures.Executor`` on manycore's scheduler.

The constructor is ``ProcessPoolExecutor``'s. The documented improvement: a worker that dies fails only the
futures it was running, with ``WorkerLostError`` (a ``BrokenProcessPool``), and the executor stays usable,
where ``ProcessPoolExecutor`` breaks for good and fails every pending future.
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import os
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

from . import _options as opt
from ._options import CallOptions, Chunksize, PoolOptions
from ._shm import DEFAULT_THRESHOLD
from .backends import Backend, build_scheduler, resolve

# Imported by the first Executor() while its fork server boots, as Pool does (see _pool).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from ._imap import IMapIterator
    from ._jobs import SchedulerBase
    from ._results import FutureJob
    from .errors import PoolClosedError, for_futures


def _import_machinery() -> None:
    global IMapIterator, FutureJob, PoolClosedError, for_futures
    from ._imap import IMapIterator
    from ._results import FutureJob
    from .errors import PoolClosedError, for_futures


R = TypeVar("R")

# Schedulers of executors not shut down yet. At interpreter exit, as ``concurrent.futures`` does, their pending
# work runs to completion; and once exit has begun, ``submit`` raises.
# The process that made each one: a child forked from the user's program inherits this table but not the threads
# behind it, and must not wait for them when it exits.
_open: weakref.WeakKeyDictionary[SchedulerBase, int] = weakref.WeakKeyDictionary()
_exiting = False

#: ``Executor.map``'s options: those of ``Pool.map`` but ``progress``.
_MAP_OPTIONS = frozenset({"chunksize", "on_error", "retries", "task_timeout"})


def _finish_at_exit() -> None:
    # Runs from threading's exit hooks, before atexit's: before _process._lifecycle's hook terminates every pool.
    global _exiting
    _exiting = True
    schedulers = [s for s, pid in list(_open.items()) if pid == os.getpid()]
    for scheduler in schedulers:
        scheduler.close()
    for scheduler in schedulers:
        scheduler.join()


threading._register_atexit(_finish_at_exit)  # type: ignore[attr-defined]


class Executor(concurrent.futures.Executor):
    """A process pool executor; ``submit`` returns standard futures, ``map`` is lazy.

    >>> import manycore, operator
    >>> with manycore.Executor(max_workers=2) as ex:
    ...     ex.submit(operator.mul, 6, 7).result()
    42

    The keyword-only options are ``Pool``'s (``retries`` and ``task_timeout`` are defaults for every call);
    an option the ``backend`` cannot honour is refused here, with a ``ValueError`` naming it.
    """

    def __init__(
        self,
        max_workers: int | None = None,
        mp_context: Any = None,
        initializer: Callable[..., object] | None = None,
        initargs: tuple[Any, ...] = (),
        *,
        max_tasks_per_child: int | None = None,
        max_memory_per_worker: int | None = None,
        start_method: str | None = None,
        retries: int = 0,
        task_timeout: float | None = None,
        zero_copy_threshold: int | None = DEFAULT_THRESHOLD,
        blas_threads: int | None = None,
        backend: Any = "process",
    ) -> None:
        if isinstance(max_workers, int) and not isinstance(max_workers, bool) and max_workers <= 0:
            raise ValueError("max_workers must be greater than 0")  # ProcessPoolExecutor's words
        method_name = "mp_context" if start_method is None and mp_context is not None else "start_method"
        options = PoolOptions(
            max_workers,
            backend=backend,
            initializer=initializer,
            initargs=initargs,
            max_tasks_per_worker=max_tasks_per_child,
            max_memory_per_worker=max_memory_per_worker,
            start_method=opt.context_start_method(start_method, mp_context),
            zero_copy_threshold=zero_copy_threshold,
            blas_threads=blas_threads,
            defaults=CallOptions(retries=retries, task_timeout=task_timeout),
            names={
                "processes": "max_workers",
                "max_tasks_per_worker": "max_tasks_per_child",
                "start_method": method_name,
            },
        )
        self._defaults = options.defaults
        self._backend: Backend = resolve(options)
        self._scheduler: SchedulerBase = build_scheduler(self._backend, options, _import_machinery)
        _open[self._scheduler] = os.getpid()

    def submit(self, fn: Callable[..., R], /, *args: Any, **kwargs: Any) -> concurrent.futures.Future[R]:
        # O(1) whatever the number pending: the executor keeps no list of its futures (shutdown's
        # cancel_futures asks the scheduler for the jobs not yet dispatched), so a finished call's arguments
        # and result are not kept either.
        opt.function(fn, "fn")
        self._check_open()
        job = FutureJob(self._scheduler, fn, args, kwargs, self._defaults)
        try:
            self._scheduler.submit(job)
        except PoolClosedError:
            self._check_open()
            raise RuntimeError("cannot schedule new futures after shutdown") from None
        return job.future

    def _check_open(self) -> None:
        if _exiting:
            raise RuntimeError("cannot schedule new futures after interpreter shutdown")

    def map(
        self,
        fn: Callable[..., R],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: Chunksize = None,
        buffersize: int | None = None,
        **options: Any,
    ) -> Iterator[R]:
        """Lazy, ordered ``fn(*args)`` over zipped iterables; input is read as results are consumed.

        ``timeout`` counts from this call, as in ``concurrent.futures``; ``chunksize`` defaults to automatic
        (None, or "auto"). ``buffersize`` (Python 3.14's, on every Python): at most that many chunks (with
        automatic chunks: items) are read ahead of the consumer; by default a window of a few chunks per worker.
        Keyword options: ``on_error``, ``retries``, ``task_timeout`` (see ``Pool.map``).
        """
        opt.function(fn, "fn")
        if "journal" in options or "retry_failed" in options:
            return self._journaled(fn, iterables, timeout, chunksize, buffersize, options)
        return self._map_rows(fn, zip(*iterables), timeout, chunksize, buffersize, options)

    def _map_rows(
        self,
        fn: Callable[..., R],
        rows: Iterable[Any],
        timeout: float | None,
        chunksize: Chunksize,
        buffersize: int | None,
        options: dict[str, Any],
    ) -> Iterator[R]:
        """``map`` over rows of arguments (the iterables zipped)."""
        if buffersize is not None and (isinstance(buffersize, bool) or not isinstance(buffersize, int)):
            raise TypeError("buffersize must be an integer or None")
        if buffersize is not None and buffersize < 1:
            raise ValueError("buffersize must be None or > 0")
        self._check_open()
        deadline = None if timeout is None else time.monotonic() + timeout
        call = self._defaults.merge({"chunksize": chunksize, **options}, _MAP_OPTIONS)
        self._backend.capabilities.check_call(call, self._backend.name)
        size = call.chunksize
        it: IMapIterator[R] = IMapIterator(
            self._scheduler,
            fn,
            rows,
            call,
            star=True,
            ordered=True,
            max_ahead=None if buffersize is None else buffersize * (size or 1),
        )
        try:
            self._scheduler.submit(it, counted=False)
        except PoolClosedError:
            raise RuntimeError("cannot schedule new futures after shutdown") from None
        it.start()
        return _results_until(it, deadline)

    def _journaled(
        self,
        fn: Callable[..., R],
        iterables: tuple[Iterable[Any], ...],
        timeout: float | None,
        chunksize: Chunksize,
        buffersize: int | None,
        options: dict[str, Any],
    ) -> Iterator[R]:
        """``map`` resuming from its journal (``journal=``, see ``manycore._resume``)."""
        from . import _resume

        options = dict(options)
        path, retry_failed = _resume.take_options(options)
        assert path is not None
        on_error = self._defaults.merge(options, _MAP_OPTIONS).on_error
        inner = {**options, "on_error": "return"}

        def open_imap(wrapped: Callable[..., Any], rows: Iterable[Any]) -> Iterator[Any]:
            return self._map_rows(wrapped, rows, timeout, chunksize, buffersize, inner)

        # Executor.map spreads zipped iterables into arguments: a journaled run does the same (star).
        return _resume.run(
            fn, zip(*iterables), path, open_imap, star=True, on_error=on_error, retry_failed=retry_failed
        )

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        if cancel_futures:
            for job in self._scheduler.queued_jobs():
                if isinstance(job, FutureJob) and job.future.cancel():
                    self._scheduler.job_finished(job)
        self._scheduler.close()
        _open.pop(self._scheduler, None)
        if wait:
            try:
                self._scheduler.join()  # a Latch: the main thread's wait wakes for Ctrl-C
            except KeyboardInterrupt:
                self._scheduler.terminate()
                raise

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: Any) -> None:
        # Ctrl-C inside the block: stop the workers now instead of waiting for what they run.
        if exc_type is not None and issubclass(exc_type, KeyboardInterrupt):
            self._scheduler.terminate()
        else:
            self.shutdown(wait=True)

    def terminate_workers(self) -> None:
        """Stop every worker now (Python 3.14's method, on every Python): pending futures are cancelled, running
        ones fail with ``PoolClosedError``, and the executor takes no more work.

        manycore stops workers with SIGKILL (as ``Pool.terminate``), so that one stuck in C code goes too; the
        signal is the only difference from ``kill_workers``.
        """
        self.shutdown(wait=False, cancel_futures=True)
        self._scheduler.terminate()

    def kill_workers(self) -> None:
        """Python 3.14's ``kill_workers``: as ``terminate_workers`` (manycore's workers always get SIGKILL)."""
        self.terminate_workers()

    def statistics(self) -> dict[str, int]:
        return self._scheduler.statistics()

    def __del__(self) -> None:
        # As concurrent.futures: a dropped executor still runs what was submitted, then its workers exit.
        scheduler = getattr(self, "_scheduler", None)
        # Not in a child of os.fork(): the executor and its workers are the parent's.
        if scheduler is not None and getattr(scheduler, "owner_pid", None) in (None, os.getpid()):
            scheduler.close()


def _results_until(it: IMapIterator[R], deadline: float | None) -> Iterator[R]:
    try:
        while True:
            left = None if deadline is None else deadline - time.monotonic()
            try:
                yield it.pop(left)
            except StopIteration:
                return
            except multiprocessing.TimeoutError as exc:
                raise concurrent.futures.TimeoutError() from exc
            except BaseException as exc:
                raise for_futures(exc)  # noqa: B904 (the task's own exception, its cause kept)
    finally:
        it.close()

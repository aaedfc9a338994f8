"""``manycore.Pool``: the ``multiprocessing.Pool`` API, method for method, on manycore's scheduler.

Differences from ``multiprocessing.Pool``, all in the user's favour and documented in the README:
``chunksize`` defaults to automatic for every method; a dead worker fails only its item (``WorkerLostError``)
instead of hanging; lambdas, closures and ``__main__`` functions work with every start method; Ctrl-C stops the
workers; extra keyword options (``progress``, ``on_error``, ``retries``, ``task_timeout``) on the map family.
"""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from types import TracebackType
from typing import Any, TypeVar, cast

from . import _options as opt
from ._options import CallOptions, Chunksize, PoolOptions
from ._shm import DEFAULT_THRESHOLD
from .backends import Backend, build_scheduler, resolve

# What a running pool needs, imported by the first Pool() once its fork server has begun to boot: the two take
# ~15 ms each, side by side instead of one after the other (W6). Looking ``manycore.Pool`` up imports only the
# options and the backend registry; nothing here runs before ``Pool.__init__`` has called ``_import_machinery``.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from ._broadcast import Broadcast
    from ._imap import IMapIterator
    from ._jobs import SchedulerBase, State
    from ._results import ApplyResult, AsyncResult, Call, MapResult, _interruptible
    from .errors import PoolClosedError


def _import_machinery() -> None:
    global IMapIterator, State, ApplyResult, AsyncResult, Call, MapResult, _interruptible, PoolClosedError
    from ._imap import IMapIterator
    from ._jobs import State
    from ._results import ApplyResult, AsyncResult, Call, MapResult, _interruptible
    from .errors import PoolClosedError


T = TypeVar("T")
R = TypeVar("R")


def _no_journal(options: dict[str, Any], method: str) -> None:
    if "journal" in options or "retry_failed" in options:
        raise TypeError(
            f"{method} cannot take journal=: a journaled call returns its results as they are read back;"
            " use map, starmap, imap, imap_unordered or istarmap"
        )


def _as_sequence(iterable: Iterable[Any]) -> Sequence[Any]:
    # Lists, tuples and ranges are sliced as they are (a range costs nothing to slice or send);
    # anything else is read into a list first, as multiprocessing.Pool.map does.
    if isinstance(iterable, list | tuple | range):
        return iterable
    return list(iterable)


class Pool:
    """A pool of worker processes with the interface of ``multiprocessing.Pool``.

    >>> import manycore
    >>> def square(x):
    ...     return x * x
    >>> with manycore.Pool(processes=2) as pool:
    ...     pool.map(square, [1, 2, 3, 4, 5])
    [1, 4, 9, 16, 25]

    ``processes`` defaults to the cores this process may use; in a manycore worker (a pool created by a task),
    to that worker's share: cores // processes of the worker's pool, at least 1.

    Parameters beyond the standard ones (keyword-only):

    - ``start_method``: ``"forkserver"`` (default on Linux), ``"fork"`` or ``"spawn"``; ``context`` (a
      ``multiprocessing`` context) is accepted too and names the method.
    - ``max_tasks_per_worker``: alias of ``maxtasksperchild`` (a task is one chunk, as in multiprocessing).
    - ``max_memory_per_worker``: bytes; a worker whose resident memory exceeds it after a chunk is replaced by
      a fresh one (what was queued on it re-runs elsewhere). Pass ``chunksize=1`` to check after every item.
    - ``retries``, ``task_timeout``, ``on_error``: defaults for every map/imap/starmap call, see ``map``.
    - ``zero_copy_threshold``: buffers (numpy arrays, bytes...) from this many bytes (default 256 KiB) travel
      through shared memory instead of the pipe; None turns that off.
    - ``blas_threads``: BLAS/OpenMP threads per worker (default: cores // processes, at least 1), so that N
      workers do not each start one thread per core.
    - ``backend``: ``"process"`` (default), ``"thread"``, ``"dask"``, ``"ray"``, or an object from
      ``manycore.backends`` naming a client or cluster; see ``docs/scale-out.md``. An option the backend cannot
      honour (``manycore.backends.capabilities(backend)``) is refused here, with a ``ValueError`` naming it.

    Every option is validated here, once (``PoolOptions``); a call's options are merged with the pool's
    defaults (``CallOptions``).
    """

    def __init__(
        self,
        processes: int | None = None,
        initializer: Callable[..., object] | None = None,
        initargs: Sequence[Any] = (),
        maxtasksperchild: int | None = None,
        context: Any = None,
        *,
        start_method: str | None = None,
        max_tasks_per_worker: int | None = None,
        max_memory_per_worker: int | None = None,
        retries: int = 0,
        task_timeout: float | None = None,
        on_error: str = "raise",
        zero_copy_threshold: int | None = DEFAULT_THRESHOLD,
        blas_threads: int | None = None,
        backend: Any = "process",
    ) -> None:
        if maxtasksperchild is not None and max_tasks_per_worker is not None:
            raise TypeError("pass maxtasksperchild or max_tasks_per_worker, not both")
        method_name = "context" if start_method is None and context is not None else "start_method"
        limit_name = "max_tasks_per_worker" if maxtasksperchild is None else "maxtasksperchild"
        options = PoolOptions(
            processes,
            backend=backend,
            initializer=initializer,
            initargs=initargs,
            max_tasks_per_worker=maxtasksperchild if max_tasks_per_worker is None else max_tasks_per_worker,
            max_memory_per_worker=max_memory_per_worker,
            start_method=opt.context_start_method(start_method, context),
            zero_copy_threshold=zero_copy_threshold,
            blas_threads=blas_threads,
            defaults=CallOptions(retries=retries, task_timeout=task_timeout, on_error=on_error),
            names={
                "max_tasks_per_worker": limit_name,
                "start_method": method_name,
            },
        )
        self._stopped = False  # close() or terminate() called: the pool is not "unclosed" when collected
        self._options = options
        self._backend: Backend = resolve(options)
        self._scheduler: SchedulerBase = build_scheduler(self._backend, options, _import_machinery)
        self._processes = self._scheduler.processes

    # ---- lifecycle -------------------------------------------------------------------------------------------

    def close(self) -> None:
        """Take no more work; workers exit once the work already submitted is done."""
        self._stopped = True
        self._scheduler.close()

    def terminate(self) -> None:
        """Stop the workers now (SIGKILL, so even workers stuck in C code go); unfinished results fail."""
        self._stopped = True
        self._scheduler.terminate()

    def join(self) -> None:
        """Wait for the workers to exit; call ``close()`` or ``terminate()`` first."""
        if self._scheduler.state is State.RUNNING:
            raise ValueError("Pool is still running: call close() or terminate() before join()")
        try:
            self._scheduler.join()  # a Latch: the main thread's wait wakes for Ctrl-C
        except KeyboardInterrupt:
            self._scheduler.terminate()
            raise

    def __enter__(self) -> Pool:
        self._check_running()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        # As multiprocessing.Pool: leaving the block terminates (it never waits for stray work).
        self.terminate()

    def __del__(self) -> None:
        # multiprocessing.Pool's warning, word for word, so that code filtering it filters ours. A pool left
        # open at interpreter exit was already terminated by the scheduler's exit hook, and still warns.
        scheduler = getattr(self, "_scheduler", None)
        if scheduler is None or getattr(self, "_stopped", True):
            return
        # Not in a child of os.fork(): the pool and its workers are the parent's.
        if getattr(scheduler, "owner_pid", None) not in (None, os.getpid()):
            return
        if scheduler.state is State.RUNNING or sys.is_finalizing() or scheduler.ended_at_exit:
            warnings.warn(
                f"unclosed running multiprocessing pool {self!r}", ResourceWarning, source=self, stacklevel=1
            )
            scheduler.terminate()

    def __reduce__(self) -> Any:
        raise NotImplementedError("pool objects cannot be passed between processes or pickled")

    def __repr__(self) -> str:
        return (
            f"<manycore.Pool state={'broken' if self._scheduler.broken else self._scheduler.state.value} "
            f"processes={self._processes} "
            f"start_method={self._scheduler.start_method!r}>"
        )

    def broadcast(self, obj: T) -> Broadcast[T] | Any:
        """Send ``obj`` to each worker once; returns a small handle to pass in task arguments.

        Tasks receive the object itself (directly, inside a tuple, or through ``functools.partial``). Large
        buffers (numpy arrays) are mapped read-only from one shared segment by every worker. ``release()`` the
        handle, or close the pool, to free it.
        """
        self._check_running()
        return self._scheduler.broadcast(obj)

    def statistics(self) -> dict[str, int]:
        """A snapshot: live workers, chunks in flight, jobs not finished."""
        return self._scheduler.statistics()

    def _check_running(self) -> None:
        if self._scheduler.state is not State.RUNNING:
            raise PoolClosedError("Pool not running")

    # ---- single calls --------------------------------------------------------------------------------------

    def apply(
        self, func: Callable[..., R], args: Sequence[Any] = (), kwds: Mapping[str, Any] | None = None
    ) -> R:
        """Run ``func(*args, **kwds)`` in a worker and return its result."""
        self._check_running()
        call: Call[R] = Call(
            self._scheduler,
            opt.function(func),
            args,
            dict(kwds or {}),
            self._options.defaults,
        )
        run_lent = getattr(self._scheduler, "run_lent", None)
        # An idle worker, lent to this thread: no hand-off to the supervisor. Ctrl-C stops the pool.
        if run_lent is None or not _interruptible(self._scheduler, lambda: run_lent(call)):
            self._scheduler.submit(call)
        return call.result()

    def apply_async(
        self,
        func: Callable[..., R],
        args: Sequence[Any] = (),
        kwds: Mapping[str, Any] | None = None,
        callback: Callable[[R], object] | None = None,
        error_callback: Callable[[BaseException], object] | None = None,
    ) -> AsyncResult[R]:
        """Like ``apply`` but returns an ``AsyncResult`` at once; callbacks run in the pool's thread."""
        self._check_running()
        result: ApplyResult[R] = ApplyResult(
            self._scheduler,
            opt.function(func),
            args,
            dict(kwds or {}),
            self._options.defaults,
            callback=callback,
            error_callback=error_callback,
        )
        result.owner = self  # kept alive by its result until it is finished, as multiprocessing's pool
        self._scheduler.submit(result)
        return result

    # ---- the map family --------------------------------------------------------------------------------------

    def _map_async(
        self,
        func: Callable[..., Any],
        iterable: Iterable[Any],
        star: bool,
        chunksize: object,
        callback: Any,
        error_callback: Any,
        options: dict[str, Any],
    ) -> MapResult[Any]:
        self._check_running()
        opt.function(func)
        call = self._call_options(chunksize, options)
        result: MapResult[Any] = MapResult(
            self._scheduler,
            func,
            _as_sequence(iterable),
            call,
            star=star,
            callback=callback,
            error_callback=error_callback,
        )
        if not result.ready():
            result.owner = self  # see apply_async
            self._scheduler.submit(result)
        return result

    def _journaled(
        self,
        func: Callable[..., Any],
        iterable: Iterable[Any],
        star: bool,
        chunksize: object,
        options: dict[str, Any],
    ) -> Iterator[Any]:
        """A map that resumes from its journal (``journal=``): see ``_resume``. Always in input order."""
        from . import _resume

        self._check_running()
        opt.function(func)
        options = dict(options)
        path, retry_failed = _resume.take_options(options)
        assert path is not None
        on_error = self._call_options(chunksize, options).on_error
        inner = {**options, "on_error": "return"}

        def open_imap(fn: Callable[..., Any], items: Iterable[Any]) -> Iterator[Any]:
            return self._imap(fn, items, chunksize, True, star, inner)

        return _resume.run(
            func, iterable, path, open_imap, star=star, on_error=on_error, retry_failed=retry_failed
        )

    def _call_options(self, chunksize: object, overrides: dict[str, Any]) -> CallOptions:
        """The pool's defaults with this call's options; what the backend cannot honour is refused."""
        call = self._options.defaults.merge({"chunksize": chunksize, **overrides})
        self._backend.capabilities.check_call(call, self._backend.name)
        return call

    def map(
        self,
        func: Callable[[T], R],
        iterable: Iterable[T],
        chunksize: Chunksize = None,
        **options: Any,
    ) -> list[R]:
        """Apply ``func`` to every item, in parallel; results in input order.

        ``chunksize``: None or "auto" (default) adapts chunk sizes to measured item costs; an int fixes it.
        Keyword options: ``progress`` (True: a tqdm bar on a terminal; "always": even when not a terminal),
        ``on_error`` ("raise": the first failing item's exception; "return": failed items come back as their
        exception objects), ``retries`` (re-run an item whose worker died or timed out, up to N times),
        ``task_timeout`` (seconds per item; an overrunning item's worker is killed and replaced), ``journal``
        (a path: an SQLite file recording each finished item, so that the same call run again, after a crash or
        Ctrl-C, computes only what is missing; also on ``starmap``, ``imap``, ``imap_unordered``, ``istarmap``,
        where results then come in input order; see ``docs/journal.md``), ``retry_failed`` (with a journal: run
        the items that failed last time again, instead of returning their recorded errors).
        """
        if "journal" in options or "retry_failed" in options:
            return list(self._journaled(func, iterable, False, chunksize, options))
        return self._map_async(func, iterable, False, chunksize, None, None, options).get()

    def map_async(
        self,
        func: Callable[[T], R],
        iterable: Iterable[T],
        chunksize: Chunksize = None,
        callback: Callable[[list[R]], object] | None = None,
        error_callback: Callable[[BaseException], object] | None = None,
        **options: Any,
    ) -> AsyncResult[list[R]]:
        """``map`` that returns an ``AsyncResult`` at once."""
        _no_journal(options, "map_async")
        return self._map_async(func, iterable, False, chunksize, callback, error_callback, options)

    def starmap(
        self,
        func: Callable[..., R],
        iterable: Iterable[Iterable[Any]],
        chunksize: Chunksize = None,
        **options: Any,
    ) -> list[R]:
        """Like ``map`` but each item is unpacked: ``func(*item)``."""
        if "journal" in options or "retry_failed" in options:
            return list(self._journaled(func, iterable, True, chunksize, options))
        return self._map_async(func, iterable, True, chunksize, None, None, options).get()

    def starmap_async(
        self,
        func: Callable[..., R],
        iterable: Iterable[Iterable[Any]],
        chunksize: Chunksize = None,
        callback: Callable[[list[R]], object] | None = None,
        error_callback: Callable[[BaseException], object] | None = None,
        **options: Any,
    ) -> AsyncResult[list[R]]:
        """``starmap`` that returns an ``AsyncResult`` at once."""
        _no_journal(options, "starmap_async")
        return self._map_async(func, iterable, True, chunksize, callback, error_callback, options)

    def _imap(
        self,
        func: Callable[..., Any],
        iterable: Iterable[Any],
        chunksize: object,
        ordered: bool,
        star: bool,
        options: dict[str, Any],
    ) -> IMapIterator[Any]:
        if "journal" in options or "retry_failed" in options:
            # A Resumed has IMapIterator's public methods (next, close, iteration): see _resume.
            return cast("IMapIterator[Any]", self._journaled(func, iterable, star, chunksize, options))
        self._check_running()
        opt.function(func)
        call = self._call_options(chunksize, options)
        it: IMapIterator[Any] = IMapIterator(
            self._scheduler, func, iterable, call, star=star, ordered=ordered
        )
        it.owner = self  # see apply_async
        self._scheduler.submit(it, counted=False)
        it.start()
        return it

    def imap(
        self,
        func: Callable[[T], R],
        iterable: Iterable[T],
        chunksize: Chunksize = None,
        **options: Any,
    ) -> IMapIterator[R]:
        """Lazy ``map``: reads the input as results are consumed (a bounded window in flight), input order.

        Returns at once: a background thread reads the input, so the first result comes when the first item is
        done, however slow the input. An exception raised by the input comes out of ``next()`` after every
        result before it. An input that blocks for ever does not block ``close``, ``terminate`` or ``join``.
        """
        return self._imap(func, iterable, chunksize, True, False, options)

    def imap_unordered(
        self,
        func: Callable[[T], R],
        iterable: Iterable[T],
        chunksize: Chunksize = None,
        **options: Any,
    ) -> IMapIterator[R]:
        """Like ``imap`` but results come in completion order."""
        return self._imap(func, iterable, chunksize, False, False, options)

    def istarmap(
        self,
        func: Callable[..., R],
        iterable: Iterable[Iterable[Any]],
        chunksize: Chunksize = None,
        ordered: bool = True,
        **options: Any,
    ) -> IMapIterator[R]:
        """Lazy ``starmap`` (an extension: multiprocessing has none)."""
        return self._imap(func, iterable, chunksize, ordered, True, options)

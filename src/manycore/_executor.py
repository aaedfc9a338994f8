"""``manycore.Executor``: a real ``concurrent.futures.Executor`` on manycore's scheduler.

The constructor is ``ProcessPoolExecutor``'s. The documented improvement: a worker that dies fails only the
futures it was running, with ``WorkerLostError`` (a ``BrokenProcessPool``), and the executor stays usable,
where ``ProcessPoolExecutor`` breaks for good and fails every pending future.
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import os
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

from . import _options as opt
from ._jobs import SchedulerBase
from ._results import FutureJob, IMapIterator
from ._shm import DEFAULT_THRESHOLD
from .errors import PoolClosedError

R = TypeVar("R")


class Executor(concurrent.futures.Executor):
    """A process pool executor; ``submit`` returns standard futures, ``map`` is lazy.

    >>> import manycore, operator
    >>> with manycore.Executor(max_workers=2) as ex:
    ...     ex.submit(operator.mul, 6, 7).result()
    42
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
        self._retries = opt.retries(retries)
        self._task_timeout = opt.timeout(task_timeout, "task_timeout")
        self._scheduler: SchedulerBase = opt.make_scheduler(
            backend,
            opt.processes(max_workers, "max_workers"),
            initializer=initializer,
            initargs=initargs,
            task_limit=opt.max_tasks(max_tasks_per_child, "max_tasks_per_child"),
            memory_limit=max_memory_per_worker,
            method=start_method,
            context=mp_context,
            threshold=zero_copy_threshold,
            blas_threads=blas_threads,
        )
        self._jobs: list[FutureJob] = []

    def submit(self, fn: Callable[..., R], /, *args: Any, **kwargs: Any) -> concurrent.futures.Future[R]:
        opt.function(fn, "fn")
        job = FutureJob(
            self._scheduler, fn, args, kwargs, task_timeout=self._task_timeout, retries=self._retries
        )
        try:
            self._scheduler.submit(job)
        except PoolClosedError:
            raise RuntimeError("cannot schedule new futures after shutdown") from None
        if len(self._jobs) > 1024:
            self._jobs = [j for j in self._jobs if not j.future.done()]
        self._jobs.append(job)
        return job.future

    def map(
        self,
        fn: Callable[..., R],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int | str = "auto",
        **options: Any,
    ) -> Iterator[R]:
        """Lazy, ordered ``fn(*args)`` over zipped iterables; input is read as results are consumed.

        ``timeout`` counts from this call, as in ``concurrent.futures``; ``chunksize`` defaults to automatic.
        Keyword options: ``on_error``, ``retries``, ``task_timeout`` (see ``Pool.map``).
        """
        opt.function(fn, "fn")
        deadline = None if timeout is None else time.monotonic() + timeout
        unknown = set(options) - {"on_error", "retries", "task_timeout"}
        if unknown:
            raise TypeError(f"unexpected keyword argument(s): {', '.join(sorted(unknown))}")
        it: IMapIterator[R] = IMapIterator(
            self._scheduler,
            fn,
            zip(*iterables),
            star=True,
            ordered=True,
            on_error=opt.on_error(options.get("on_error", "raise")),
            chunksize=opt.chunksize(chunksize),
            task_timeout=opt.timeout(options.get("task_timeout", self._task_timeout), "task_timeout"),
            retries=opt.retries(options.get("retries", self._retries)),
        )
        try:
            self._scheduler.submit(it, counted=False)
        except PoolClosedError:
            raise RuntimeError("cannot schedule new futures after shutdown") from None
        it.start()
        return _results_until(it, deadline)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        if cancel_futures:
            for job in self._jobs:
                if job.future.cancel():
                    self._scheduler.job_finished(job)
        self._scheduler.close()
        if wait:
            try:
                self._scheduler.join()
            except KeyboardInterrupt:
                self._scheduler.terminate()
                raise

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: Any) -> None:
        # Ctrl-C inside the block: stop the workers now instead of waiting for what they run.
        if exc_type is not None and issubclass(exc_type, KeyboardInterrupt):
            self._scheduler.terminate()
        else:
            self.shutdown(wait=True)

    def statistics(self) -> dict[str, int]:
        return self._scheduler.statistics()

    def __del__(self) -> None:
        scheduler = getattr(self, "_scheduler", None)
        if scheduler is not None and getattr(scheduler, "owner_pid", None) in (None, os.getpid()):
            scheduler.terminate()


def _results_until(it: IMapIterator[R], deadline: float | None) -> Iterator[R]:
    try:
        while True:
            left = None if deadline is None else deadline - time.monotonic()
            try:
                yield it.next(left)
            except StopIteration:
                return
            except multiprocessing.TimeoutError as exc:
                raise concurrent.futures.TimeoutError() from exc
    finally:
        it.close()

"""The ``thread`` backend: chunks run on threads of the calling process."""

from __future__ import annotations

import concurrent.futures
import threading
from collections.abc import Callable
from typing import Any

from .._engine import Engine, run_chunk
from .._jobs import Chunk
from .._options import PoolOptions, cpu_count
from ._base import Capabilities
from ._shared import failed_chunk, initialize, substitute


class LocalHandle:
    """``Pool.broadcast`` on the thread backend: the object is already shared; tasks receive it as is."""

    made = False  # whether any handle was ever made in this process: chunks need searching for them

    def __init__(self, obj: object) -> None:
        self.obj = obj
        LocalHandle.made = True

    def release(self) -> None:
        self.obj = None


class Thread(Engine):
    """Threads of the calling process: for I/O-bound work and free-threaded Python builds.

    Nothing is pickled; ``initializer`` runs once in each thread. ``task_timeout`` is refused: a running
    thread cannot be stopped.
    """

    name = "thread"
    capabilities = Capabilities(initializer=True, broadcast=True)
    chunk_seconds = 0.01
    chunk_rounds = False  # a chunk costs microseconds here: the guided tail's extra chunks are free

    def __init__(
        self,
        workers: int | None = None,
        initializer: Callable[..., object] | None = None,
        initargs: tuple[Any, ...] = (),
    ) -> None:
        self.slots = workers or cpu_count()
        self._initializer = initializer
        self._initargs = initargs
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        # The initializer's failure is kept per thread, not raised: concurrent.futures would break the whole
        # executor (BrokenThreadPool); this way each task reports an InitializerError, as on other backends.
        self._init_errors = threading.local()

    @classmethod
    def from_options(cls, options: PoolOptions) -> Thread:
        return cls(options.processes, options.initializer, options.initargs)

    def start(self) -> None:
        self._executor = concurrent.futures.ThreadPoolExecutor(
            self.slots, thread_name_prefix="manycore-thread", initializer=self._init_thread
        )

    def _init_thread(self) -> None:
        self._init_errors.error = initialize(self._initializer, self._initargs, "a worker thread")

    def _run(
        self, fn: Callable[..., Any], kind: int, first: int, items: list[Any]
    ) -> tuple[list[Any], dict[int, bytes], float]:
        error = getattr(self._init_errors, "error", None)
        if error is not None:
            return failed_chunk(error, first, len(items))
        return run_chunk(fn, kind, first, items)

    def run(self, chunk: Chunk, done: Callable[[Chunk, Any, BaseException | None], None]) -> None:
        assert self._executor is not None
        job = chunk.job
        # Looking for handles costs as much as the items' work for tiny items: only once a broadcast exists.
        items = list(chunk.items)
        if LocalHandle.made:
            items = substitute(items, _obj, LocalHandle)
        future = self._executor.submit(self._run, job.fn, job.kind, chunk.first, items)
        future.add_done_callback(lambda f: done(chunk, None if f.exception() else f.result(), f.exception()))

    def broadcast(self, obj: object) -> LocalHandle:
        return LocalHandle(obj)

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)


def _obj(handle: LocalHandle) -> Any:
    return handle.obj

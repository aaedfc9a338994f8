"""Where chunks run: manycore's own processes (the default), threads, a Dask cluster or a Ray cluster.

``Pool(backend=...)`` takes a name (``"process"``, ``"thread"``, ``"dask"``, ``"ray"``) or one of these objects,
which name a specific client or cluster::

    import distributed, manycore
    client = distributed.Client("tcp://scheduler:8786")
    with manycore.Pool(backend=manycore.backends.Dask(client=client)) as pool:
        results = pool.map(simulate, params)

Engines are imported only when used: ``import manycore`` never imports dask or ray.
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Callable
from typing import Any

from .._engine import Engine, run_chunk
from .._jobs import Chunk
from .._options import cpu_count

__all__ = ["Dask", "Engine", "Ray", "Thread", "resolve"]


class LocalHandle:
    """``Pool.broadcast`` on the thread backend: the object is already shared; tasks receive it as is."""

    def __init__(self, obj: object) -> None:
        self.obj = obj

    def release(self) -> None:
        self.obj = None


def _substitute(
    obj: Any, convert: Callable[[Any], Any], match: type | tuple[type, ...], depth: int = 3
) -> Any:
    if isinstance(obj, match):
        return convert(obj)
    if depth and type(obj) in (tuple, list):
        return type(obj)(_substitute(x, convert, match, depth - 1) for x in obj)
    return obj


class Thread(Engine):
    """Threads of the calling process: for I/O-bound work and free-threaded Python builds.

    Nothing is pickled; ``initializer`` runs once in each thread. ``task_timeout`` is refused: a running
    thread cannot be stopped.
    """

    name = "thread"
    chunk_seconds = 0.01

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

    def start(self) -> None:
        self._executor = concurrent.futures.ThreadPoolExecutor(
            self.slots,
            thread_name_prefix="manycore-thread",
            initializer=self._initializer,
            initargs=self._initargs,
        )

    def run(self, chunk: Chunk, done: Callable[[Chunk, Any, BaseException | None], None]) -> None:
        assert self._executor is not None
        job = chunk.job
        items = _substitute(list(chunk.items), lambda h: h.obj, LocalHandle)
        future = self._executor.submit(run_chunk, job.fn, job.kind, chunk.first, items)
        future.add_done_callback(lambda f: done(chunk, None if f.exception() else f.result(), f.exception()))

    def broadcast(self, obj: object) -> LocalHandle:
        return LocalHandle(obj)

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)


class Dask(Engine):
    """A Dask ``distributed`` cluster: the given client, a new client for ``address``, or the active client.

    ``broadcast`` uses ``client.scatter(broadcast=True)``: tasks receive the object, sent once per worker.
    A worker that dies running a chunk is handled as locally (its items re-run, the culprit fails alone),
    after Dask's own retries (``distributed.scheduler.allowed-failures``). Not supported, and refused:
    ``task_timeout`` (Dask cannot stop a running task), ``initializer`` and ``maxtasksperchild``.
    Closing the pool never closes a client or cluster that the user created.
    """

    name = "dask"

    def __init__(self, client: Any = None, address: str | None = None) -> None:
        self._client = client
        self._address = address
        self._owned = False

    def start(self) -> None:
        import distributed

        if self._client is None and self._address is not None:
            self._client = distributed.Client(self._address)  # type: ignore[no-untyped-call]
            self._owned = True
        elif self._client is None:
            try:
                self._client = distributed.get_client()
            except ValueError:
                raise RuntimeError(
                    "backend='dask' needs a Dask client, and none is active. Create one first, e.g. "
                    "distributed.Client('tcp://scheduler:8786') for a cluster or "
                    "distributed.Client(distributed.LocalCluster()) on this machine, or pass "
                    "backend=manycore.backends.Dask(address=...)."
                ) from None
        self.slots = max(1, sum(self._client.nthreads().values()))

    def run(self, chunk: Chunk, done: Callable[[Chunk, Any, BaseException | None], None]) -> None:
        job = chunk.job
        future = self._client.submit(
            run_chunk, job.fn, job.kind, chunk.first, list(chunk.items), pure=False, retries=0
        )

        def finished(f: Any) -> None:
            if f.status == "finished":
                done(chunk, f.result(), None)
            else:
                try:
                    error = f.exception()
                except BaseException as exc:  # cancelled: the client closed under us
                    error = exc
                done(chunk, None, error)

        future.add_done_callback(finished)

    def is_worker_lost(self, exc: BaseException) -> bool:
        return type(exc).__name__ == "KilledWorker"

    def broadcast(self, obj: object) -> Any:
        # A Dask future: Dask hands tasks the object in its place, even inside lists and tuples.
        return self._client.scatter([obj], broadcast=True, hash=False)[0]

    def close(self) -> None:
        if self._owned and self._client is not None:
            self._client.close()


class Ray(Engine):
    """A Ray runtime: the connected one (``ray.init(...)`` done by the user), or one at ``address``.

    ``broadcast`` uses ``ray.put``. Tasks run with ``max_retries=0``, so a worker that dies is handled by
    manycore as locally. Not supported, and refused: ``task_timeout``, ``initializer``, ``maxtasksperchild``.
    """

    name = "ray"

    def __init__(self, address: str | None = None) -> None:
        self._address = address
        self._started = False
        self._remote: Any = None

    def start(self) -> None:
        import ray

        if not ray.is_initialized():
            if self._address is None:
                raise RuntimeError(
                    "backend='ray' needs a Ray runtime, and none is connected. Call ray.init() (or "
                    "ray.init(address='ray://head:10001') for a cluster) first, or pass "
                    "backend=manycore.backends.Ray(address=...)."
                )
            ray.init(address=self._address)
            self._started = True
        self.slots = max(1, int(ray.available_resources().get("CPU", 1)))
        self._remote = ray.remote(max_retries=0)(_ray_chunk)

    def run(self, chunk: Chunk, done: Callable[[Chunk, Any, BaseException | None], None]) -> None:
        job = chunk.job
        items = _substitute(list(chunk.items), lambda h: h.ref, RayHandle)
        ref = self._remote.remote(job.fn, job.kind, chunk.first, items)
        future = ref.future()
        future.add_done_callback(lambda f: done(chunk, None if f.exception() else f.result(), f.exception()))

    def is_worker_lost(self, exc: BaseException) -> bool:
        return type(exc).__name__ in ("WorkerCrashedError", "NodeDiedError", "ActorDiedError")

    def broadcast(self, obj: object) -> RayHandle:
        import ray

        return RayHandle(ray.put(obj))

    def close(self) -> None:
        if self._started:
            import ray

            ray.shutdown()


class RayHandle:
    """``Pool.broadcast`` on Ray: the object is in Ray's object store once; tasks receive the object."""

    def __init__(self, ref: Any) -> None:
        self.ref = ref

    def release(self) -> None:
        self.ref = None  # Ray frees the object once no reference to it is left


def _ray_chunk(fn: Callable[..., Any], kind: int, first: int, items: list[Any]) -> Any:
    import ray

    # Ray resolves object refs only at the top level of arguments; broadcast handles sit inside items.
    items = _substitute(items, ray.get, ray.ObjectRef)
    return run_chunk(fn, kind, first, items)


def resolve(backend: object, processes: int | None) -> Engine | None:
    """The engine for ``Pool(backend=...)``; None means manycore's own processes."""
    if backend is None or backend == "process":
        return None
    if isinstance(backend, Engine):
        return backend
    if backend == "thread":
        return Thread(processes)
    if backend == "dask":
        return Dask()
    if backend == "ray":
        return Ray()
    raise ValueError(
        f'backend must be "process", "thread", "dask", "ray" or a manycore.backends object, not {backend!r}'
    )

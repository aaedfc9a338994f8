"""The ``dask`` backend: chunks run as tasks of a Dask ``distributed`` cluster."""

from __future__ import annotations

import concurrent.futures
import contextlib
from collections.abc import Callable
from typing import Any

from .._engine import Engine, run_chunk
from .._jobs import Chunk
from ._base import Capabilities


class Dask(Engine):
    """A Dask ``distributed`` cluster: the given client, a new client for ``address``, or the active client.

    ``broadcast`` uses ``client.scatter(broadcast=True)``: tasks receive the object, sent once per worker.
    A worker that dies running a chunk is handled as locally (its items re-run, the culprit fails alone),
    after Dask's own retries (``distributed.scheduler.allowed-failures``). Not supported, and refused:
    ``task_timeout`` (Dask cannot stop a running task), ``initializer`` and ``maxtasksperchild``.
    Closing the pool never closes a client or cluster that the user created.
    """

    name = "dask"
    capabilities = Capabilities(broadcast=True, lost_workers=True)

    def __init__(self, client: Any = None, address: str | None = None) -> None:
        self._client = client
        self._address = address
        self._owned = False
        # Finished chunks are read on threads of ours. Dask runs every future's callbacks, for all clients,
        # one at a time on a single thread, and reading a result there blocks it whenever Dask must compute
        # the result again (a worker holding it died): every other chunk's callback, the lost worker's
        # KilledWorker included, then waited behind it (contract tests over 180 s under load). Several
        # threads, so that one result being recomputed holds up no other.
        self._readers: concurrent.futures.ThreadPoolExecutor | None = None

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
        self._readers = concurrent.futures.ThreadPoolExecutor(
            max(4, self.slots), thread_name_prefix="manycore-dask-results"
        )

    def run(self, chunk: Chunk, done: Callable[[Chunk, Any, BaseException | None], None]) -> None:
        job = chunk.job
        future = self._client.submit(
            run_chunk, job.fn, job.kind, chunk.first, list(chunk.items), pure=False, retries=0
        )
        readers = self._readers
        assert readers is not None

        def finished(f: Any) -> None:
            # RuntimeError: the pool has stopped (terminated), and nothing waits for this chunk any more.
            with contextlib.suppress(RuntimeError):
                readers.submit(_read_dask_future, f, chunk, done)

        future.add_done_callback(finished)

    def is_worker_lost(self, exc: BaseException) -> bool:
        return type(exc).__name__ == "KilledWorker"

    def broadcast(self, obj: object) -> Any:
        # A Dask future: Dask hands tasks the object in its place, even inside lists and tuples.
        return self._client.scatter([obj], broadcast=True, hash=False)[0]

    def close(self) -> None:
        if self._readers is not None:
            # Not waiting: a reader blocked on a result being recomputed ends when the client cancels it.
            self._readers.shutdown(wait=False)
        if self._owned and self._client is not None:
            self._client.close()


def _read_dask_future(f: Any, chunk: Chunk, done: Callable[[Chunk, Any, BaseException | None], None]) -> None:
    try:
        result = f.result()
    except BaseException as exc:  # the task's error, KilledWorker, or cancelled (the client closed under us)
        done(chunk, None, exc)
    else:
        done(chunk, result, None)

"""One-call helpers: ``manycore.map`` and ``manycore.imap``, on one process-wide pool reused across calls.

A loop of ``manycore.map`` calls must not pay a pool's start-up (a fork server, two workers: tens of
milliseconds) on every call: 100 calls of 10 tiny items took 5.0 s with a pool per call, against 0.06 s on one
``multiprocessing.Pool``. So process pools are shared (``_Shared``):

- created on first use, with the call's ``workers`` and ``start_method``; a call that asks for others replaces
  it (the old one is closed once no call uses it any more: a call running on it in another thread finishes);
- a pool that cannot serve any more (Ctrl-C terminated it, its workers cannot start) is replaced by the next
  call; a worker that dies (a crash, a ``task_timeout`` kill) is replaced by the pool itself, as in any pool;
- a child of ``os.fork()`` makes its own (the parent's belongs to the parent, see ``_process._lifecycle``);
- stopped at interpreter exit, before the scheduler's own exit hook would stop it with a ``ResourceWarning``.

Engine backends (``"thread"``, Dask, Ray) still get a pool per call: it starts no process, and its engine's life
(a Dask client, a Ray runtime) is the user's, which a pool kept here could outlive.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

from ._jobs import State
from ._launch import default_start_method
from ._options import Chunksize
from ._pool import Pool

T = TypeVar("T")
R = TypeVar("R")


class _Shared:
    """The process-wide pool, the options it was made with, and how many calls are using it."""

    def __init__(self, workers: int | None, start_method: str) -> None:
        self.pool = Pool(workers, start_method=start_method)
        # Held here until stopped: a pool reachable only from an abandoned imap's garbage cycle would otherwise
        # be collected with it, unstopped, and warn as a pool the program forgot.
        _live.add(self)
        self.workers = workers
        self.start_method = start_method
        self.users = 0
        self.retired = False

    def fits(self, workers: int | None, start_method: str) -> bool:
        # workers=None (the default size) fits a pool made with None; a number fits a pool of that size.
        size = (workers is None and self.workers is None) or workers == self.pool._processes
        return size and start_method == self.start_method

    def usable(self) -> bool:
        scheduler: Any = self.pool._scheduler
        return (
            scheduler.state is State.RUNNING
            and scheduler.broken is None
            and scheduler.owner_pid == os.getpid()
        )

    def stop(self) -> None:
        """Stop a pool no call uses any more: what still runs on it was abandoned (a map's results are all in
        once it returns; an imap dropped or closed wants none of its own), so its workers are killed rather
        than waited for, which could take as long as the longest task."""
        self.pool.terminate()
        self.pool.join()
        _live.discard(self)


_lock = threading.Lock()
_shared: _Shared | None = None
_live: set[_Shared] = set()
# Releases by finalizers (``_Using.__del__``). The cyclic collector runs a finalizer in whatever thread allocates
# at that moment: one holding ``_lock`` (a call making a new pool), or a pool's supervisor thread, which a call
# holding ``_lock`` may be waiting for while it stops that pool. Waiting for the lock there, for a pool to stop,
# or for a thread to start, deadlocked; a finalizer only appends here (no lock), counts down if it gets the lock
# without waiting, and leaves stopping a pool to whichever call comes next (or the exit hook).
_deferred: list[_Shared] = []
_to_stop: list[_Shared] = []


def _release_deferred(*, blocking: bool = True) -> None:
    if (_deferred or _to_stop) and _lock.acquire(blocking=blocking):
        try:
            while _deferred:
                shared = _deferred.pop()
                shared.users -= 1
                if shared.retired and shared.users == 0:
                    _to_stop.append(shared)
        finally:
            _lock.release()
    while blocking:
        try:
            shared = _to_stop.pop()  # atomic: another thread may empty the list between a check and a pop
        except IndexError:
            return
        shared.stop()


def _acquire(workers: int | None, start_method: str | None) -> _Shared:
    """The shared pool for these options, counted as in use until ``_release``."""
    global _shared
    _release_deferred()
    method = start_method or default_start_method()
    retired = None
    with _lock:
        current = _shared
        if current is not None and not (current.usable() and current.fits(workers, method)):
            _shared = None
            current.retired = True
            if current.users == 0:
                retired = current
        if _shared is None:
            if retired is not None:
                # Stopped before the new pool starts: two pools' workers at once would compete for the cores.
                retired.stop()
                retired = None
            _shared = _Shared(workers, method)
        shared = _shared
        shared.users += 1
    return shared


def _release(shared: _Shared) -> None:
    _release_deferred()
    with _lock:
        shared.users -= 1
        last = shared.retired and shared.users == 0
    if last:  # replaced while this call used it: the last call to leave stops it
        shared.stop()


def _stop_shared() -> None:
    # Before _process._lifecycle's exit hook, which would terminate the pools as ones the program forgot, and
    # warn. A call still running in a daemon thread must not hold up the exit: every pool is terminated.
    global _shared
    with _lock:
        _shared = None
        pools = list(_live)
        _live.clear()
        _deferred.clear()
        _to_stop.clear()
    for shared in pools:
        if getattr(shared.pool._scheduler, "owner_pid", None) == os.getpid():
            shared.pool.terminate()
            shared.pool.join()


def _forget_in_child() -> None:
    # A child of os.fork(): the parent's pool is not this process's (using it raises), and the lock may have
    # been held by another thread at the fork. The child's first call makes its own pool.
    global _lock, _shared, _live, _deferred
    _lock = threading.Lock()
    _shared = None
    _live = set()
    _deferred = []
    _to_stop.clear()


atexit.register(_stop_shared)
if hasattr(os, "register_at_fork"):  # not on Windows, which has no fork
    os.register_at_fork(after_in_child=_forget_in_child)


def _is_process(backend: Any) -> bool:
    return backend is None or (isinstance(backend, str) and backend == "process")


def map(
    fn: Callable[[T], R],
    iterable: Iterable[T],
    *,
    workers: int | None = None,
    ordered: bool = True,
    progress: bool | str = False,
    chunksize: Chunksize = None,
    start_method: str | None = None,
    backend: Any = "process",
    **options: Any,
) -> list[R]:
    """Apply ``fn`` to every item on all cores and return the list of results.

    >>> import manycore
    >>> manycore.map(abs, [-1, -2, 3], workers=2)
    [1, 2, 3]

    ``ordered=False`` returns results in completion order. ``chunksize``: None (or "auto", its other spelling)
    is automatic, as everywhere. ``backend`` as ``Pool`` (``"process"``, ``"thread"``, ``"dask"``, ``"ray"``).
    Other keywords as ``Pool.map``: ``on_error``, ``retries``, ``task_timeout``.

    Process pools are reused: the first call starts one, later calls with the same ``workers`` and
    ``start_method`` run on its workers (a call with others replaces it), and it stops at interpreter exit.
    Ctrl-C during a call stops that pool; the next call starts a fresh one. Threads may call at once. Other
    backends get a pool for the duration of the call.
    """
    if not _is_process(backend):
        with Pool(workers, backend=backend, start_method=start_method) as pool:
            return _map_on(pool, fn, iterable, ordered, progress, chunksize, options)
    shared = _acquire(workers, start_method)
    try:
        return _map_on(shared.pool, fn, iterable, ordered, progress, chunksize, options)
    finally:
        _release(shared)


def _map_on(
    pool: Pool,
    fn: Callable[[T], R],
    iterable: Iterable[T],
    ordered: bool,
    progress: bool | str,
    chunksize: Chunksize,
    options: dict[str, Any],
) -> list[R]:
    if ordered:
        return pool.map(fn, iterable, chunksize, progress=progress, **options)
    return list(pool.imap_unordered(fn, iterable, chunksize, progress=progress, **options))


def imap(
    fn: Callable[[T], R],
    iterable: Iterable[T],
    *,
    workers: int | None = None,
    ordered: bool = True,
    progress: bool | str = False,
    chunksize: Chunksize = None,
    start_method: str | None = None,
    backend: Any = "process",
    **options: Any,
) -> Iterator[R]:
    """Lazily apply ``fn`` to the items on all cores; results as they are consumed.

    Runs on the process-wide pool that ``map`` uses (see there); the iterator counts as using it until the
    results are exhausted or it is closed. Other backends get a pool that stops with the iteration.

    >>> import manycore
    >>> sum(manycore.imap(abs, range(-5, 5), workers=2))
    25
    """
    if _is_process(backend):
        shared = _acquire(workers, start_method)
        pool = shared.pool
    else:
        pool = Pool(workers, start_method=start_method, backend=backend)
    try:
        if ordered:
            results = pool.imap(fn, iterable, chunksize, progress=progress, **options)
        else:
            results = pool.imap_unordered(fn, iterable, chunksize, progress=progress, **options)
    except BaseException:
        if _is_process(backend):
            _release(shared)
        else:
            pool.terminate()
        raise
    if _is_process(backend):
        return _Using(shared, results)
    return _owning(pool, results)


class _Using(Iterator[R]):
    """An imap iterator on the shared pool: in use until exhausted, closed or collected (released once)."""

    def __init__(self, shared: _Shared, results: Iterator[R]) -> None:
        self._shared: _Shared | None = shared
        self._results = results

    def __next__(self) -> R:
        try:
            return next(self._results)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Stop: drop the results not yet read, and let the pool go (it stays up for later calls)."""
        shared = self._let_go(finalizing=False)
        if shared is not None:
            _release(shared)

    def _let_go(self, *, finalizing: bool) -> _Shared | None:
        shared, self._shared = self._shared, None
        if shared is not None:
            # A finalizer must not wait for the scheduler's lock either (IMapIterator.abandon).
            stop = getattr(self._results, "abandon" if finalizing else "close", None)
            if stop is not None:
                stop()
        return shared

    def __del__(self) -> None:
        # Never _release here (see _deferred): the next call does it. At interpreter exit this module's
        # globals may be gone already: then there is nothing to release.
        with contextlib.suppress(Exception):
            shared = self._let_go(finalizing=True)
            if shared is not None:
                _deferred.append(shared)
                _release_deferred(blocking=False)


def _owning(pool: Pool, results: Iterator[R]) -> Iterator[R]:
    with pool:
        yield from results

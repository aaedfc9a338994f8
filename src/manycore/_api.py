"""One-call helpers: ``manycore.map`` and ``manycore.imap`` run a pool for the duration of one call."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

from ._options import Chunksize
from ._pool import Pool

T = TypeVar("T")
R = TypeVar("R")


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
    """
    with Pool(workers, start_method=start_method, backend=backend) as pool:
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

    The pool lives as long as the iteration: it stops when the results are exhausted or the iterator is closed.

    >>> import manycore
    >>> sum(manycore.imap(abs, range(-5, 5), workers=2))
    25
    """
    pool = Pool(workers, start_method=start_method, backend=backend)
    try:
        if ordered:
            results = pool.imap(fn, iterable, chunksize, progress=progress, **options)
        else:
            results = pool.imap_unordered(fn, iterable, chunksize, progress=progress, **options)
    except BaseException:
        pool.terminate()
        raise
    return _owning(pool, results)


def _owning(pool: Pool, results: Iterator[R]) -> Iterator[R]:
    with pool:
        yield from results

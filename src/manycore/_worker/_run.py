"""Running a chunk's items: each item's error is kept, and the status page names the item that runs.

Also the parent's thread engine runs chunks with ``run_items``, without a status page.
"""

from __future__ import annotations

import itertools
import time
from operator import itemgetter, setitem

from .._protocol import OFFSET_SLOT, STATUS
from .._wire import pack_exception

TYPE_CHECKING = False  # see manycore/__init__.py: workers avoid importing typing
if TYPE_CHECKING:
    import mmap
    from collections.abc import Callable, Iterable
    from typing import Any

_SECOND = itemgetter(1)


def run_items(
    fn: Callable[..., Any],
    items: Iterable[Any],
    star: bool,
    first: int,
    track: Callable[[int], None] | None,
    progress: memoryview | None = None,
    block: int = 1,
) -> tuple[list[Any], dict[int, bytes]]:
    """Apply fn to every item; an item that raises records its error and the others still run.

    ``progress`` (the status page cast to 'Q') gets the running item's offset in its slot ``OFFSET_SLOT``, so
    that the parent knows which item a worker died on (at most once: that item is never run again). The offset
    is written by C code as each item is pulled, with no Python call per item: ``zip`` pulls the ``setitem``
    first, then the item, and ``map`` calls fn on it before it pulls the next one, so the page names item k
    while fn runs on item k, never one ahead. Past the last item it reads ``len(items)``.

    That write still costs ~75 ns an item, as much as a cheap item itself (W1). So for items the parent
    measured as cheap it asks for ``block`` > 1: the page gets the first offset of each run of at most
    ``block`` items, written before any of them starts, and the parent counts a worker that dies there as
    dead on one of those items (see Scheduler._recover).
    """
    values: list[Any] = []
    errors: dict[int, bytes] = {}
    it = iter(items)
    if progress is not None and track is None and block > 1:
        return _run_blocks(fn, it, star, first, progress, block)
    if progress is not None and track is None:
        writes = map(setitem, itertools.repeat(progress), itertools.repeat(OFFSET_SLOT), itertools.count())  # type: ignore[arg-type]
        it = map(_SECOND, zip(writes, it))
    while True:
        try:
            if track is not None:
                for x in it:
                    track(len(values))
                    values.append(fn(*x) if star else fn(x))
            elif star:
                values.extend(itertools.starmap(fn, it))
            else:
                # map() appends item by item, so when fn raises, `values` holds exactly the items before it and
                # `it` has moved past the failing one: the loop resumes with the next item.
                values.extend(map(fn, it))
            return values, errors
        except (
            Exception,
            SystemExit,
        ) as exc:  # SystemExit from a task is that item's error, not the worker's
            errors[len(values)] = pack_exception(exc, first + len(values))
            values.append(None)


def _run_blocks(
    fn: Callable[..., Any], it: Any, star: bool, first: int, progress: memoryview, block: int
) -> tuple[list[Any], dict[int, bytes]]:
    """run_items in blocks: the page names the offset before each block of at most ``block`` items.

    After an item raises, the next block starts right after it (the boundaries shift): the parent only relies
    on "the block named by offset s holds items s to s + block - 1 at most", which stays true.
    """
    values: list[Any] = []
    errors: dict[int, bytes] = {}
    apply = itertools.starmap if star else map
    islice = itertools.islice
    while True:
        start = len(values)
        progress[OFFSET_SLOT] = start
        try:
            values.extend(apply(fn, islice(it, block)))
        except (Exception, SystemExit) as exc:  # that item's error, as in run_items
            errors[len(values)] = pack_exception(exc, first + len(values))
            values.append(None)
            continue
        if len(values) - start < block:
            # Past the last item, as run_items: a death while pickling the results is not these items' fault.
            progress[OFFSET_SLOT] = len(values)
            return values, errors


class Tracker:
    """Writes the running item's offset and start time into the status page (only for jobs with a timeout)."""

    __slots__ = ("chunk_id", "page")

    def __init__(self, page: mmap.mmap, chunk_id: int) -> None:
        self.page = page
        self.chunk_id = chunk_id

    def __call__(self, offset: int) -> None:
        STATUS.pack_into(self.page, 0, self.chunk_id, offset, time.monotonic_ns())

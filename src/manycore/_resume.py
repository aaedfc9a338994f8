"""A map that resumes where it stopped (``journal=``): finished items come from the journal, the rest run.

How one journaled call runs (any backend: this sits above them, on the pool's own ordered ``imap``). The
caller's thread reads the input in stretches:

- a stretch the journal holds: its items are read and their digest checked against the journal's (a
  mismatch stops the run with ``JournalError`` before any of that stretch is returned); its results come from
  the file (failed items run again first, with ``retry_failed=True``);
- a stretch the journal does not hold: the pool's ordered ``imap`` over it, read lazily by the pool as usual,
  the function wrapped by ``_worker._journaled.recorded`` (results and failures told apart). Each outcome is
  handed to ``_Writer``, which commits every ~50 ms from its own thread, so a result reaches the file within
  ~50 ms of reaching the parent, whether or not more follow.

A stretch gets an ``imap`` of its own, so the pool sizes its chunks from items that run: sending the stored
items through the pool as markers (the first design) let the automatic chunk size grow on them to ~12,000
items, and a resumed run then committed nothing for its first 0.7 s.

Failures are recorded with their traceback. On resume they come back as they failed (raised or returned as
``on_error`` says) unless ``retry_failed=True``, which runs them again.

What may run twice: items in flight when the parent died, results that reached the parent less than ~50 ms
before it died, and results held back for input order behind a slower item (the ordered window). Nothing
committed runs again.
"""

from __future__ import annotations

import functools
import itertools
import os
import threading
import weakref
from collections.abc import Callable, Generator, Iterable, Iterator
from typing import Any

from . import _journal
from ._fingerprint import items_digest
from ._journal import Journal, Range
from ._worker._journaled import Returned, recorded, recorded_star
from .errors import JournalError

COMMIT_EVERY_S = 0.05


class _Writer:
    """Commits, from a thread of its own, what the caller's thread hands it, every ``COMMIT_EVERY_S``.

    The caller's thread only appends each fresh outcome to ``outcomes`` (and, at the start of each run of
    consecutive positions, ``(outcomes handed so far, position)`` to ``starts``); grouping into ranges, digests
    and pickling happen here, so a result is committed within ~50 ms of reaching the parent even when no other
    result follows it. Lists, not deques: ``append`` is atomic under the GIL, and this thread takes what is
    there with one slice and one ``del`` (a deque's per-item ``popleft`` cost 40 ns an item, W1 budget 1 µs).
    """

    def __init__(self, journal: Journal, items: list[Any]) -> None:
        self._journal = journal
        self._items = items  # the feeder's: the fresh items, in the order of their outcomes
        self.outcomes: list[Any] = []
        self.starts: list[tuple[int, int]] = []
        self.rows: list[tuple[Any, ...]] = []  # per-item outcomes (items run again)
        self.total: int | None = None
        self._taken = 0  # outcomes taken so far
        self._cuts: list[tuple[int, int]] = []  # starts taken, not yet reached
        self._position = 0  # the input position of the next outcome taken
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="manycore-journal", daemon=False)
        _writers.add(self)
        self._thread.start()

    def check(self) -> None:
        if isinstance(self._error, JournalError):
            raise self._error
        if self._error is not None:
            raise JournalError(f"cannot write journal {self._journal.path}: {self._error}") from self._error

    def _run(self) -> None:
        # This thread closes the journal, after its last commit: the caller's close() may be cut short by a
        # second Ctrl-C, and the connection must not be closed under a commit.
        try:
            while not self._stop.wait(COMMIT_EVERY_S):
                self._flush()
            self._flush()
        finally:
            self._journal.close()

    def _flush(self) -> None:
        if self._error is not None:
            return
        try:
            self._write()
        except (
            Exception
        ) as exc:  # an item pickle cannot write, a full disk: the caller's next check() raises it
            self._error = exc

    def _write(self) -> None:
        outcomes = _take(self.outcomes, len(self.outcomes))
        rows = _take(self.rows, len(self.rows))
        total = self.total
        if not (outcomes or rows or total is not None):
            return
        ranges: list[tuple[int, int, bytes, bytes]] = []
        first, end = self._taken, self._taken + len(outcomes)
        self._cuts.extend(_take(self.starts, len(self.starts)))  # after the outcomes: none is missing
        cuts = dict(cut for cut in self._cuts if cut[0] < end)
        self._cuts = [cut for cut in self._cuts if cut[0] >= end]
        bounds = sorted({first, end, *cuts})
        for lo, hi in itertools.pairwise(bounds):
            self._position = cuts.get(lo, self._position)
            run = outcomes[lo - first : hi - first]
            items = _take(self._items, len(run))
            ranges.append(_range_row(self._position, run, items, rows))
            self._position += len(run)
        self._taken = end
        self._journal.commit(ranges, rows, total)

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.check()

    def stop(self) -> None:
        self._stop.set()


#: Writers not closed yet. At interpreter exit (before threading joins its threads) each makes its last commit and
#: closes its journal: an imap left unfinished (a `break` out of its loop, a second Ctrl-C inside close()) never
#: closes its writer, and the exit waited for that thread for ever.
_writers: weakref.WeakSet[_Writer] = weakref.WeakSet()


def _stop_writers_at_exit() -> None:
    for writer in list(_writers):
        writer.stop()


threading._register_atexit(_stop_writers_at_exit)  # type: ignore[attr-defined]


def _take(shared: list[Any], count: int) -> list[Any]:
    """The first ``count`` entries of a list another thread appends to (two atomic operations)."""
    taken = shared[:count]
    del shared[:count]
    return taken


def _range_row(
    start: int, run: list[Any], items: list[Any], rows: list[tuple[Any, ...]]
) -> tuple[int, int, bytes, bytes]:
    kinds = set(map(type, run))  # a loop in C: the scan below runs only when some outcome is special (rare)
    special = any(kind is Returned or issubclass(kind, BaseException) for kind in kinds)
    flags = map(isinstance, run, itertools.repeat((BaseException, Returned))) if special else ()
    for i in itertools.compress(range(len(run)), flags):
        if isinstance(run[i], BaseException):  # a failure: its slot stays empty, its row says why
            rows.append(failure_row(start + i, run[i]))
            run[i] = None
        else:  # a returned exception object
            run[i] = run[i].value
    return (start, start + len(run), items_digest(items, start), _journal.dumps(run))


def failure_row(index: int, error: BaseException) -> tuple[Any, ...]:
    cause = error.__cause__
    tb = str(cause).strip().strip('"').strip() if cause is not None else ""
    try:
        blob = _journal.dumps(error)
    except Exception:
        blob = None
    return (index, 0, blob, type(error).__name__, str(error), tb)


class Resumed(Iterator[Any]):
    """What a journaled ``imap`` returns: its results in input order, with ``IMapIterator``'s ``next`` and
    ``close`` (``next(timeout)`` is refused: a result may be waiting on a journal commit)."""

    def __init__(self, results: Iterator[Any]) -> None:
        self._results = results

    def __iter__(self) -> Iterator[Any]:
        return self._results  # list(...) then iterates the generator itself, not a Python __next__ per item

    def __next__(self) -> Any:
        return next(self._results)

    def next(self, timeout: float | None = None) -> Any:
        if timeout is not None:
            raise TypeError("next(timeout=...) is not available on a journaled imap: use next(iterator)")
        return next(self._results)

    def close(self) -> None:
        """Stop: results not read are dropped; what was journaled stays (a later run resumes from it)."""
        close = getattr(self._results, "close", None)
        if close is not None:
            close()


def take_options(options: dict[str, Any]) -> tuple[str | None, bool]:
    """Remove ``journal`` and ``retry_failed`` from a call's keyword options; both checked."""
    path = options.pop("journal", None)
    retry_failed = options.pop("retry_failed", False)
    if not isinstance(retry_failed, bool):
        raise TypeError(f"retry_failed must be True or False, not {retry_failed!r}")
    if path is None:
        if retry_failed:
            raise TypeError("retry_failed=True applies to a journaled call: pass journal=PATH too")
        return None, False
    if not isinstance(path, str | os.PathLike):
        raise TypeError(f"journal must be a path (str or os.PathLike), not {type(path).__name__} {path!r}")
    return os.fspath(path), retry_failed


def run(
    fn: Callable[..., Any],
    iterable: Iterable[Any],
    path: str,
    open_imap: Callable[[Callable[..., Any], Iterable[Any]], Iterator[Any]],
    *,
    star: bool,
    on_error: str,
    retry_failed: bool,
) -> Resumed:
    """The results of ``fn`` over ``iterable`` in input order, journaled in ``path``.

    ``open_imap(function, items)`` runs the pool's ordered imap with ``on_error="return"``. Failures are raised
    or returned as ``on_error`` says; with "raise", the run stops at the first one (after recording it).
    """
    journal = Journal(path, fn, "starmap" if star else "map")  # refused at the call when it is another run's
    try:
        run = _Run(journal, iterable, open_imap, functools.partial(recorded_star if star else recorded, fn))
        run.rerun = {i for i, ok in run.outcomes.items() if not ok} if retry_failed else set()
        run.raising = on_error == "raise"
    except BaseException:
        journal.close()
        raise
    return Resumed(run.results())


class _Run:
    """One journaled call: the input read in stretches, stored or run (see the module's docstring)."""

    def __init__(
        self,
        journal: Journal,
        iterable: Iterable[Any],
        open_imap: Callable[[Callable[..., Any], Iterable[Any]], Iterator[Any]],
        wrapped: Callable[..., Any],
    ) -> None:
        self.journal = journal
        self.stored = journal.ranges()
        self.outcomes = journal.outcomes()
        self.rerun: set[int] = set()
        self.raising = True
        self._source = iter(iterable)
        self._open_imap = open_imap
        self._wrapped = wrapped
        self._items: list[Any] = []  # fresh items sent to the pool, taken by the writer for their digests
        self._handed = 0  # fresh outcomes handed to the writer so far

    def results(self) -> Iterator[Any]:
        try:
            writer = _Writer(self.journal, self._items)  # from now on, its thread closes the journal
        except BaseException:
            self.journal.close()
            raise
        try:
            position = 0
            for stored, stored_results in _journal.iter_stored(self.journal, self.stored):
                if position < stored.start:
                    yield from self._run(position, stored.start - position, writer)
                yield from self._read_back(stored, stored_results, writer)
                position = stored.stop
            writer.total = position + (yield from self._run(position, None, writer))
        finally:
            writer.close()  # the last commit; its thread then closes the journal

    def _run(self, position: int, count: int | None, writer: _Writer) -> Generator[Any, None, int]:
        """The stretch of ``count`` items (None: to the end) from ``position``, run; returns how many."""
        writer.starts.append((self._handed, position))
        source = self._source if count is None else itertools.islice(self._source, count)
        results = self._open_imap(self._wrapped, _sent(source, self._items))
        handed = writer.outcomes.append
        seen = 0
        try:
            for seen, out in enumerate(results, 1):
                handed(out)
                if type(out) is Returned or isinstance(out, BaseException) or not seen & 1023:
                    yield _value(out, self.raising, writer)
                else:
                    yield out
        finally:
            close = getattr(results, "close", None)
            if close is not None:
                close()
        self._handed += seen
        if count is not None and seen < count:
            self._too_short(position + seen)
        return seen

    def _read_back(self, stored: Range, stored_results: list[Any], writer: _Writer) -> Iterator[Any]:
        items = list(itertools.islice(self._source, stored.stop - stored.start))
        if len(items) < stored.stop - stored.start:
            self._too_short(stored.start + len(items))
        if items_digest(items, stored.start) != stored.digest:
            raise JournalError(
                f"items #{stored.start}-#{stored.stop - 1} of the input differ from those journal"
                f" {self.journal.path} recorded: the input changed since that run. Pass another journal path, or"
                f" delete {self.journal.path} to start afresh."
            )
        again = [i for i in range(stored.start, stored.stop) if i in self.rerun]
        rerun = {}
        if again:
            rerun = dict(zip(again, self._open_imap(self._wrapped, [items[i - stored.start] for i in again])))
        for position in range(stored.start, stored.stop):
            yield self._stored_value(position, stored_results[position - stored.start], rerun, writer)

    def _stored_value(self, position: int, slot: Any, rerun: dict[int, Any], writer: _Writer) -> Any:
        failed = self.outcomes.get(position) is False
        if position in rerun:  # a failed item run again (retry_failed=True)
            out = rerun[position]
            failed = isinstance(out, BaseException)
            value = out.value if type(out) is Returned else out
            row = (
                failure_row(position, out)
                if failed
                else (position, 1, _journal.dumps(value), None, None, None)
            )
            writer.rows.append(row)
        elif position in self.outcomes:  # a failure, or a failed item's later result: a row of its own
            value = self.journal.item(position)
        else:
            value = slot
        if self.raising and failed:
            writer.check()
            raise value
        return value

    def _too_short(self, length: int) -> None:
        raise JournalError(
            f"the input has {length} items, but journal {self.journal.path} holds results for items up to"
            f" #{self.stored[-1].stop - 1}: the input changed. Delete {self.journal.path} to start afresh."
        )


def _sent(source: Iterable[Any], items: list[Any]) -> Iterator[Any]:
    """The items of a stretch as the pool reads them (in its own thread), each kept for its digest."""
    keep = items.append
    for item in source:
        keep(item)
        yield item


def _value(out: Any, raising: bool, writer: _Writer) -> Any:
    writer.check()  # a journal that cannot be written stops the run
    if type(out) is Returned:
        return out.value
    if raising and isinstance(out, BaseException):
        raise out
    return out

"""Running one fault through one entry point, and checking what came back."""

from __future__ import annotations

import concurrent.futures
import contextlib
import multiprocessing
import multiprocessing.pool
import signal
from collections.abc import Callable
from functools import partial
from typing import Any

import psutil

import manycore
from manycore.errors import RemoteTraceback, SerializationError, TaskTimeoutError, WorkerLostError

from . import tasks
from .helpers import is_alive

ENTRY_POINTS = ("map", "imap", "imap_unordered", "starmap", "apply_async", "submit", "executor_map")
N = 10  # items per call
BAD = 3  # the faulty item
RESULT_WAIT = 30  # seconds: far more than any result needs; a hang fails the test instead of blocking it


def expected(entry: str, x: int) -> int:
    return x * x + (1 if entry in ("starmap", "executor_map") else 0)


def make_pool(start_method: str | None = None, **kw: Any) -> manycore.Pool:
    return manycore.Pool(2, start_method=start_method, **kw)


def make_executor(start_method: str | None = None, **kw: Any) -> manycore.Executor:
    return manycore.Executor(max_workers=2, start_method=start_method, **kw)


def outcome(get: Callable[[], Any]) -> Any:
    """The value, or the exception it raised (the way on_error="return" reports it)."""
    try:
        return get()
    except Exception as exc:
        return exc


def run_entry(
    entry: str, pool: manycore.Pool | manycore.Executor, fn: Callable[..., Any], n: int = N, **options: Any
) -> list[Any]:
    """Run fn over range(n) through `entry`; each item's value or exception, in input order where the entry
    point keeps it (imap_unordered: completion order). Star entry points call fn(x, 1)."""
    items = list(range(n))
    if entry == "submit":
        assert isinstance(pool, manycore.Executor)
        futures = [pool.submit(fn, x) for x in items]
        return [outcome(partial(f.result, RESULT_WAIT)) for f in futures]
    if entry == "executor_map":
        assert isinstance(pool, manycore.Executor)
        return list(pool.map(fn, items, [1] * n, timeout=RESULT_WAIT, on_error="return", **options))
    assert isinstance(pool, manycore.Pool)
    if entry == "apply_async":
        results = [pool.apply_async(fn, (x,)) for x in items]
        return [outcome(partial(r.get, RESULT_WAIT)) for r in results]
    if entry == "map":
        return pool.map_async(fn, items, on_error="return", **options).get(RESULT_WAIT)
    if entry == "starmap":
        return pool.starmap_async(fn, [(x, 1) for x in items], on_error="return", **options).get(RESULT_WAIT)
    if entry in ("imap", "imap_unordered"):
        it = getattr(pool, entry)(fn, items, on_error="return", **options)
        return [it.next(RESULT_WAIT) for _ in items] + _rest(it)
    raise AssertionError(entry)


def _rest(it: Any) -> list[Any]:
    """Whatever an imap iterator yields beyond the expected items (it must yield nothing more)."""
    try:
        return [it.next(RESULT_WAIT)]
    except StopIteration:
        return []


def task_for(entry: str, kind: str, bad: int = BAD) -> Callable[..., Any]:
    star = entry in ("starmap", "executor_map")
    return partial(tasks.faulty_star if star else tasks.faulty, kind=kind, bad=bad)


def check_others(
    entry: str, results: list[Any], bad: int | set[int] = BAD, n: int = N
) -> list[BaseException]:
    """Every item except `bad` has its correct value; returns the errors (one per bad item expected)."""
    bads = {bad} if isinstance(bad, int) else bad
    assert len(results) == n, f"{len(results)} results for {n} items: {results!r}"
    if entry == "imap_unordered":
        errors = [r for r in results if isinstance(r, BaseException)]
        values = sorted(r for r in results if not isinstance(r, BaseException))
        assert values == sorted(expected(entry, x) for x in range(n) if x not in bads)
        return errors
    for x, r in enumerate(results):
        if x not in bads:
            assert r == expected(entry, x), f"item {x}: {r!r}"
    return [results[x] for x in sorted(bads)]


def single_call(entry: str) -> bool:
    return entry in ("apply_async", "submit")


def check_fault_error(
    kind: str, err: BaseException, entry: str, bad: int = BAD, *, timeout: float = tasks.TIMEOUT
) -> None:
    """The error a faulty item comes back with says what happened, as manycore documents it."""
    # Single calls (apply_async, submit) have no position in an input; manycore may report None or 0 there.
    index_ok = (None, 0) if single_call(entry) else (bad,)
    if kind in ("sigkill", "segfault", "exit"):
        assert isinstance(err, WorkerLostError), repr(err)
        assert isinstance(err, concurrent.futures.process.BrokenProcessPool)
        assert err.index in index_ok, f"index {err.index!r}"
        want_code = {"sigkill": -signal.SIGKILL, "segfault": -signal.SIGSEGV, "exit": 3}[kind]
        want_sig = {"sigkill": "SIGKILL", "segfault": "SIGSEGV", "exit": None}[kind]
        assert err.exitcode == want_code, repr(err)
        assert err.signal_name == want_sig, repr(err)
        assert isinstance(err.pid, int) and err.pid > 0
        with contextlib.suppress(psutil.NoSuchProcess):
            assert not is_alive(psutil.Process(err.pid)), f"worker {err.pid} reported lost but still alive"
    elif kind == "timeout":
        assert isinstance(err, TaskTimeoutError), repr(err)
        assert isinstance(err, multiprocessing.TimeoutError)
        assert err.index in index_ok, f"index {err.index!r}"
        assert err.timeout == timeout
    elif kind == "unpicklable_result":
        assert isinstance(err, SerializationError), repr(err)
        assert isinstance(err, multiprocessing.pool.MaybeEncodingError)
        assert err.what == "result"
        assert err.index in index_ok, f"index {err.index!r}"
        assert err.type_name == "lock", err.type_name
    elif kind in ("unpicklable_exception", "unloadable_exception"):
        cls, message = {
            "unpicklable_exception": ("UnpicklableError", f"cannot travel {bad}"),
            "unloadable_exception": ("UnloadableError", f"cannot be rebuilt {bad} (code 7)"),
        }[kind]
        assert isinstance(err, SerializationError), repr(err)
        assert err.what == "exception", repr(err)
        assert err.type_name == cls, f"type_name {err.type_name!r} in {err!r}"
        assert message in str(err), f"original message missing from {err!r}"
        assert "do_fault" in str(err) + err.detail, f"worker traceback missing from {err!r}"
    elif kind == "raise":
        assert type(err) is ValueError, repr(err)
        assert str(err) == f"bad item {bad}"
        # The standard library's own class for each API: futures carry concurrent.futures's, pools (and the
        # errors that manycore's on_error="return" hands back as values) multiprocessing.pool's.
        want = concurrent.futures.process._RemoteTraceback if entry == "submit" else RemoteTraceback
        assert type(err.__cause__) is want, repr(err.__cause__)
        assert "do_fault" in err.__cause__.tb and "ValueError: bad item" in err.__cause__.tb
    else:
        raise AssertionError(kind)

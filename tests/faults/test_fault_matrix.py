"""Every entry point x every fault kind, on the default start method (forkserver).

For each combination: the faulty item comes back as the right error, every other item has its correct result,
the pool replaced any dead worker and runs the next call, and no process outlives the pool.
"""

from __future__ import annotations

import pytest

from . import tasks
from .common import (
    BAD,
    ENTRY_POINTS,
    check_fault_error,
    check_others,
    make_executor,
    make_pool,
    run_entry,
    task_for,
)


def run_with_fault(entry: str, kind: str, start_method: str | None = None) -> None:
    timeout = tasks.TIMEOUT if kind == "timeout" else None
    fn = task_for(entry, kind)
    if entry in ("submit", "executor_map"):
        # The Executor takes task_timeout as a default; Executor.map also per call (exercised in other tests).
        with make_executor(start_method, task_timeout=timeout) as ex:
            results = run_entry(entry, ex, fn)
            after = list(ex.map(tasks.square, range(8), timeout=30))
            workers = ex.statistics()["workers"]
    else:
        # apply_async takes the pool's default; the map family gets task_timeout per call.
        pool_timeout = timeout if entry == "apply_async" else None
        with make_pool(start_method, task_timeout=pool_timeout) as pool:
            options = {} if entry == "apply_async" else {"task_timeout": timeout}
            results = run_entry(entry, pool, fn, **options)
            after = pool.map_async(tasks.square, range(8)).get(30)
            workers = pool.statistics()["workers"]
    errors = check_others(entry, results)
    assert len(errors) == 1, f"expected one failed item, got {errors!r}"
    check_fault_error(kind, errors[0], entry)
    assert after == [x * x for x in range(8)], "the pool is not usable after the fault"
    assert workers == 2, f"{workers} workers after the fault (the dead one must be replaced)"


# Executor.map shares its machinery with imap: a few kinds are enough for it.
MATRIX = [
    pytest.param(entry, kind)
    for entry in ENTRY_POINTS
    for kind in tasks.FAULT_KINDS
    if entry != "executor_map" or kind in ("sigkill", "timeout", "unpicklable_result", "raise")
]


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("entry", "kind"), MATRIX)
def test_fault(entry: str, kind: str, no_orphans: set[int]) -> None:
    run_with_fault(entry, kind)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", ["sigkill", "timeout", "raise"])
def test_map_raises_fault_and_pool_survives(kind: str, no_orphans: set[int]) -> None:
    """on_error="raise" (the default): map raises the faulty item's error, and the pool stays usable."""
    timeout = tasks.TIMEOUT if kind == "timeout" else None
    with make_pool() as pool:
        with pytest.raises(Exception) as info:
            pool.map_async(task_for("map", kind), range(10), task_timeout=timeout).get(30)
        check_fault_error(kind, info.value, "map")
        assert pool.map(tasks.square, range(6)) == [0, 1, 4, 9, 16, 25]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", ["sigkill", "timeout"])
def test_imap_raises_at_the_faulty_item(kind: str, no_orphans: set[int]) -> None:
    """imap with on_error="raise": the items before the fault arrive, then its error is raised."""
    timeout = tasks.TIMEOUT if kind == "timeout" else None
    with make_pool() as pool:
        it = pool.imap(task_for("imap", kind), range(10), task_timeout=timeout)
        got = [it.next(30) for _ in range(BAD)]
        assert got == [x * x for x in range(BAD)]
        with pytest.raises(Exception) as info:
            it.next(30)
        check_fault_error(kind, info.value, "imap")
        assert list(pool.imap(tasks.square, range(5))) == [0, 1, 4, 9, 16]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", ["sigkill", "segfault", "exit", "timeout"])
def test_apply_raises_fault(kind: str, no_orphans: set[int]) -> None:
    """The blocking apply() raises the fault's error and the pool runs the next call."""
    timeout = tasks.TIMEOUT if kind == "timeout" else None
    with make_pool(task_timeout=timeout) as pool:
        with pytest.raises(Exception) as info:
            pool.apply(tasks.faulty, (BAD,), {"kind": kind, "bad": BAD})
        check_fault_error(kind, info.value, "apply_async")
        assert pool.apply(tasks.square, (7,)) == 49


@pytest.mark.timeout(60)
def test_every_worker_dies_at_once(no_orphans: set[int]) -> None:
    """Both workers die on their first item, repeatedly: every faulty item fails, every other item arrives."""
    bad = set(tasks.KILL_SET)
    with make_pool() as pool:
        results = pool.map_async(tasks.kill_if_in, range(12), chunksize=1, on_error="return").get(30)
        errors = check_others("map", results, bad=bad, n=12)
        for x, err in zip(sorted(bad), errors):
            check_fault_error("sigkill", err, "map", bad=x)
        assert pool.map(tasks.square, range(4)) == [0, 1, 4, 9]

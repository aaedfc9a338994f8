"""retries=N re-runs an item whose worker died or timed out; a dead worker's other chunk items are re-run."""

from __future__ import annotations

import os
from functools import partial
from pathlib import Path

import pytest

import manycore
from manycore.errors import TaskTimeoutError, WorkerLostError

from . import tasks
from .common import ENTRY_POINTS, check_fault_error, check_others, make_executor, make_pool, run_entry


def runs(marker_dir: Path, x: int) -> int:
    """How many times item x ran (count_attempts / always_fault append one byte per run)."""
    path = marker_dir / f"runs-{x}"
    return path.stat().st_size if path.exists() else 0


def once_task(entry: str, kind: str, marker_dir: Path, bad: int = 3) -> partial[int]:
    fn = partial(tasks.fault_once, kind=kind, bad=bad, marker_dir=str(marker_dir))
    if entry in ("starmap", "executor_map"):
        return partial(tasks.star_adapter, fn)
    return fn


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("entry", "kind"),
    [(e, "sigkill") for e in ENTRY_POINTS]
    + [(e, "timeout") for e in ("map", "imap", "apply_async", "submit")],
)
def test_retry_succeeds_after_first_attempt_fails(
    entry: str, kind: str, tmp_path: Path, no_orphans: set[int]
) -> None:
    """The faulty item kills (or hangs) its worker only on its first attempt: with retries=1 every item succeeds."""
    timeout = tasks.TIMEOUT if kind == "timeout" else None
    fn = once_task(entry, kind, tmp_path)
    if entry in ("submit", "executor_map"):
        with make_executor(retries=1, task_timeout=timeout) as ex:
            results = run_entry(entry, ex, fn)
    else:
        with make_pool(retries=1, task_timeout=timeout) as pool:
            results = run_entry(entry, pool, fn)
    assert (tmp_path / "attempted-3").exists(), "the faulty first attempt never ran"
    errors = check_others(entry, results, bad=set())
    assert errors == []


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", ["sigkill", "exit", "timeout"])
def test_retry_per_call_option_on_map(kind: str, tmp_path: Path, no_orphans: set[int]) -> None:
    """retries and task_timeout given per call (not as pool defaults)."""
    timeout = tasks.TIMEOUT if kind == "timeout" else None
    with make_pool() as pool:
        out = pool.map(once_task("map", kind, tmp_path), range(12), retries=1, task_timeout=timeout)
    assert out == [x * x for x in range(12)]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", ["sigkill", "timeout"])
def test_retries_exhausted(kind: str, tmp_path: Path, no_orphans: set[int]) -> None:
    """An item that faults every time runs 1 + retries times, then fails; each other item still arrives."""
    timeout = tasks.TIMEOUT if kind == "timeout" else None
    fn = partial(tasks.always_fault, kind=kind, bad=3, marker_dir=str(tmp_path))
    with make_pool() as pool:
        results = pool.map_async(
            fn, range(8), chunksize=1, on_error="return", retries=2, task_timeout=timeout
        ).get(30)
        assert pool.map(tasks.square, range(3)) == [0, 1, 4]
    (err,) = check_others("map", results, bad=3, n=8)
    check_fault_error(kind, err, "map")
    assert runs(tmp_path, 3) == 3, f"item 3 ran {runs(tmp_path, 3)} times with retries=2"
    assert all(runs(tmp_path, x) == 1 for x in range(8) if x != 3)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("entry", ["map", "imap", "imap_unordered", "starmap", "executor_map"])
def test_chunk_of_dead_worker_is_rerun(entry: str, tmp_path: Path, no_orphans: set[int]) -> None:
    """40 items in chunks of 10; item 13 kills its worker: it fails, the other 39 (9 in its chunk) are correct."""
    n, bad = 40, 13
    fn = partial(tasks.always_fault, kind="sigkill", bad=bad, marker_dir=str(tmp_path))
    if entry in ("starmap", "executor_map"):
        fn = partial(tasks.star_adapter, fn)
    if entry == "executor_map":
        with make_executor() as ex:
            results = list(ex.map(fn, range(n), [1] * n, chunksize=10, on_error="return", timeout=30))
    else:
        with make_pool() as pool:
            if entry == "starmap":
                results = pool.starmap_async(
                    fn, [(x, 1) for x in range(n)], chunksize=10, on_error="return"
                ).get(30)
            elif entry == "map":
                results = pool.map_async(fn, range(n), chunksize=10, on_error="return").get(30)
            else:
                it = getattr(pool, entry)(fn, range(n), chunksize=10, on_error="return")
                results = [it.next(30) for _ in range(n)]
            assert pool.map(tasks.square, range(3)) == [0, 1, 4]
    (err,) = check_others(entry, results, bad=bad, n=n)
    assert isinstance(err, WorkerLostError), repr(err)
    check_fault_error("sigkill", err, entry, bad=bad)
    # The chunk-mates of the faulty item ran again (they were lost with the worker), and every item ran.
    assert all(runs(tmp_path, x) >= 1 for x in range(n))
    assert all(runs(tmp_path, x) == 1 for x in range(n) if not 10 <= x < 20)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", ["sigkill", "segfault", "exit"])
def test_chunked_map_item_fails_not_chunk(kind: str, no_orphans: set[int]) -> None:
    """Worker death at the last item of a chunk and at the first: only that item fails. (The items pause 1 ms
    so that each is tracked alone: see test_start_method_faults.test_chunked_crash_and_timeout.)"""
    with make_pool() as pool:
        for bad in (0, 9, 19):
            out = pool.map_async(
                partial(tasks.faulty, kind=kind, bad=bad, pause=1e-3),
                range(20),
                chunksize=10,
                on_error="return",
            ).get(30)
            (err,) = check_others("map", out, bad=bad, n=20)
            check_fault_error(kind, err, "map", bad=bad)


@pytest.mark.timeout(60)
def test_timeout_inside_a_chunk(tmp_path: Path, no_orphans: set[int]) -> None:
    """task_timeout is per item: one overrunning item of a 10-item chunk fails; the rest of the chunk runs."""
    n, bad = 30, 14
    fn = partial(tasks.always_fault, kind="timeout", bad=bad, marker_dir=str(tmp_path))
    with make_pool() as pool:
        out = pool.map_async(fn, range(n), chunksize=10, on_error="return", task_timeout=tasks.TIMEOUT).get(
            30
        )
    (err,) = check_others("map", out, bad=bad, n=n)
    assert isinstance(err, TaskTimeoutError)
    check_fault_error("timeout", err, "map", bad=bad)
    # The overrunning item is known (timeouts track items), so it is not run again; its chunk-mates that had
    # finished lost their results with the killed worker and may run again; every other item runs once.
    counts = {x: runs(tmp_path, x) for x in range(n)}
    assert counts[bad] == 1, counts
    assert all(counts[x] == 1 for x in range(n) if not 10 <= x < 20), counts
    assert all(counts[x] in (1, 2) for x in range(10, 20)), counts


@pytest.mark.timeout(60)
def test_max_tasks_per_child_with_crashes(no_orphans: set[int]) -> None:
    """Worker recycling (maxtasksperchild) and crashes together: still every result, still no hang."""
    with manycore.Pool(2, maxtasksperchild=2) as pool:
        out = pool.map_async(
            partial(tasks.faulty, kind="exit", bad=5), range(10), chunksize=1, on_error="return"
        ).get(30)
        pids = set(pool.map(tasks.pid, range(8), chunksize=1))
    (err,) = check_others("map", out, bad=5, n=10)
    check_fault_error("exit", err, "map", bad=5)
    assert len(pids) >= 4, f"maxtasksperchild=2 should recycle workers: {pids}"
    assert os.getpid() not in pids

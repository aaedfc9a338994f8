"""At most once: the item a worker died on is never run again (retries=0), even in a chunk of many items."""

from __future__ import annotations

import mmap
from functools import partial
from pathlib import Path

import pytest

from manycore._protocol import STATUS_SIZE
from manycore._worker._run import run_items
from manycore.errors import WorkerLostError

from . import sched_tasks
from .common import make_pool


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", ["sigkill", "exit"])
@pytest.mark.parametrize("bad", [13, 10, 19])
def test_item_a_worker_died_on_runs_once(
    start_method: str, kind: str, bad: int, tmp_path: Path, no_orphans: set[int]
) -> None:
    """Chunks of 10, no task_timeout: item `bad` kills its worker; it ran exactly once and fails, all others
    succeed. Its chunk-mates that had finished ran twice (their results died with the worker); those after it
    never started, and ran once."""
    n = 40
    fn = partial(sched_tasks.log_and_fault, kind=kind, bad=bad, log_dir=str(tmp_path))
    with make_pool(start_method) as pool:
        results = pool.map_async(fn, range(n), chunksize=10, on_error="return").get(30)
    err = results[bad]
    assert isinstance(err, WorkerLostError), repr(err)
    assert err.index == bad
    assert [r for x, r in enumerate(results) if x != bad] == [x * x for x in range(n) if x != bad]
    runs = {x: sched_tasks.runs_of(str(tmp_path), x) for x in range(n)}
    assert runs[bad] == 1, f"item {bad} ran {runs[bad]} times"
    start = bad - bad % 10
    assert {x: runs[x] for x in range(start, bad)} == dict.fromkeys(range(start, bad), 2)
    assert all(runs[x] == 1 for x in range(n) if not start <= x < bad), runs


@pytest.mark.parametrize("star", [False, True])
def test_status_page_names_the_item_fn_runs_on(star: bool) -> None:
    """run_items writes item k's offset before fn runs on item k, not one ahead, also after an item raised;
    past the last item the page reads the chunk's length."""
    page = mmap.mmap(-1, STATUS_SIZE)
    progress = memoryview(page).cast("Q")
    seen: list[tuple[int, int]] = []

    def fn(x: int, _: int = 0) -> int:
        seen.append((x, progress[1]))
        if x == 2:
            raise ValueError("item 2")
        return x

    items = [(x, 0) for x in range(5)] if star else list(range(5))
    values, errors = run_items(fn, items, star, 100, None, progress)
    assert seen == [(k, k) for k in range(5)]
    assert values == [0, 1, None, 3, 4]
    assert list(errors) == [2]
    assert progress[1] == 5
    progress.release()
    page.close()


@pytest.mark.timeout(60)
def test_worker_dying_after_its_last_item(tmp_path: Path, no_orphans: set[int]) -> None:
    """A result whose pickling kills the worker: no item was running, so the chunk re-runs one item at a time
    and the item whose result kills a worker alone fails; every other item arrives."""
    fn = partial(sched_tasks.result_kills_worker, bad=14, log_dir=str(tmp_path))
    with make_pool() as pool:
        results = pool.map_async(fn, range(30), chunksize=10, on_error="return").get(30)
    assert isinstance(results[14], WorkerLostError), repr(results[14])
    assert [r for x, r in enumerate(results) if x != 14] == [x * x for x in range(30) if x != 14]
    assert sched_tasks.runs_of(str(tmp_path), 14) == 2  # in its chunk, then alone


N_CHEAP, CHUNK, KILLER = 40_000, 4000, 30_500  # the killer sits mid-chunk, long after the cost is measured
# (chunks of ~2 ms of work: a few ms of preemption while one runs cannot make the items look slow)


def _block_failures(results: list[object]) -> list[int]:
    return [x for x, r in enumerate(results) if isinstance(r, WorkerLostError)]


@pytest.mark.timeout(60)
def test_cheap_items_fail_as_one_block(start_method: str, tmp_path: Path, no_orphans: set[int]) -> None:
    """Items of well under a µs are tracked in blocks: the worker dies on the killer, and the whole block it
    was in fails (none of them runs again), its chunk-mates before the block run again, all others once.

    The failed block must hold more than one item: with per-item tracking this test fails, so it cannot
    pass without blocks being used."""
    path = str(tmp_path / "counts")
    sched_tasks.make_counters(path, N_CHEAP)
    fn = partial(sched_tasks.count_and_kill, bad=KILLER, path=path)
    with make_pool(start_method) as pool:
        results = pool.map_async(fn, range(N_CHEAP), chunksize=CHUNK, on_error="return").get(30)
    failed = _block_failures(results)
    assert KILLER in failed
    start, stop = failed[0], failed[-1] + 1
    assert failed == list(range(start, stop)), "the failed items are one block"
    assert stop - start >= 2, "the items were tracked one by one, not in blocks"
    # A block starts at a multiple of its size within the chunk (no item raised) and stays within it.
    size = 1 << (stop - start - 1).bit_length()
    chunk = KILLER - KILLER % CHUNK
    assert (start - chunk) % size == 0 and stop <= chunk + CHUNK, (start, stop)
    for x in failed:
        err = results[x]
        assert isinstance(err, WorkerLostError) and err.index == x
        assert f"one of items #{start}-#{stop - 1}" in str(err) and "chunksize=1" in str(err), str(err)
    assert [r for x, r in enumerate(results) if x not in failed] == [
        x * x for x in range(N_CHEAP) if x not in failed
    ]
    runs = sched_tasks.counts(path)
    expected = [1] * N_CHEAP
    for x in range(chunk, start):
        expected[x] = 2  # finished chunk-mates: their results died with the worker
    for x in range(KILLER + 1, stop):
        expected[x] = 0  # after the killer in its block: never started, never run again
    assert list(runs) == expected, {
        x: (runs[x], expected[x]) for x in range(N_CHEAP) if runs[x] != expected[x]
    }


@pytest.mark.timeout(60)
def test_cheap_items_retried_one_by_one(start_method: str, tmp_path: Path, no_orphans: set[int]) -> None:
    """With retries=1, a block a worker died in runs again one item at a time: the second death names the
    killer, which alone fails; every other item of the block gets its result."""
    path = str(tmp_path / "counts")
    sched_tasks.make_counters(path, N_CHEAP)
    fn = partial(sched_tasks.count_and_kill, bad=KILLER, path=path)
    with make_pool(start_method) as pool:
        results = pool.map_async(fn, range(N_CHEAP), chunksize=CHUNK, on_error="return", retries=1).get(30)
    assert _block_failures(results) == [KILLER]
    err = results[KILLER]
    assert isinstance(err, WorkerLostError) and err.index == KILLER
    assert "one of items" not in str(err), str(err)
    assert [r for x, r in enumerate(results) if x != KILLER] == [x * x for x in range(N_CHEAP) if x != KILLER]
    runs = sched_tasks.counts(path)
    # The killer ran in its block, then alone; its chunk-mates before it ran twice (in the block or before
    # it), every other item once: block-mates after the killer first ran alone. (That the first death failed
    # a block of several items with retries=0 is what the test above shows, on the same inputs.)
    chunk = KILLER - KILLER % CHUNK
    expected = [2 if chunk <= x <= KILLER else 1 for x in range(N_CHEAP)]
    assert list(runs) == expected, {
        x: (runs[x], expected[x]) for x in range(N_CHEAP) if runs[x] != expected[x]
    }


@pytest.mark.parametrize("star", [False, True])
def test_status_page_names_each_block(star: bool) -> None:
    """With blocks, the page names each block's first offset before any of its items runs; after an item
    raises, the next block starts after it and results stay aligned; past the last item it reads len."""
    page = mmap.mmap(-1, STATUS_SIZE)
    progress = memoryview(page).cast("Q")
    seen: list[tuple[int, int]] = []

    def fn(x: int, _: int = 0) -> int:
        seen.append((x, progress[1]))
        if x in (5, 11):
            raise ValueError(f"item {x}")
        return x * 10

    n = 14
    items = [(x, 0) for x in range(n)] if star else list(range(n))
    values, errors = run_items(fn, items, star, 100, None, progress, 4)
    # Blocks: 0-3, 4-5 (5 raises), 6-9, 10-11 (11 raises), 12-13 (short: the end).
    starts = [0] * 4 + [4] * 2 + [6] * 4 + [10] * 2 + [12] * 2
    assert seen == list(zip(range(n), starts))
    assert values == [None if x in (5, 11) else x * 10 for x in range(n)]
    assert list(errors) == [5, 11]
    assert progress[1] == n
    progress.release()
    page.close()

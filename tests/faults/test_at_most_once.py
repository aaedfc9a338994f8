"""At most once: the item a worker died on is never run again (retries=0), even in a chunk of many items."""

from __future__ import annotations

import mmap
from functools import partial
from pathlib import Path

import pytest

from manycore._worker import STATUS_SIZE, run_items
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

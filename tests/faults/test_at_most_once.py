"""At most once: the item a worker died on is never run again (retries=0), even in a chunk of many items."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import pytest

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

"""An idle worker takes over a chunk queued, not started, behind a busy one; no chunk ever runs twice."""

from __future__ import annotations

import random
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from manycore import _platform

from . import sched_tasks
from .common import make_executor, make_pool

# Taking back a queued chunk needs a token pipe, passed to each worker as a descriptor (without one, no chunk
# waits behind another: each worker holds one).
STEALS = pytest.mark.needs("fd_passing")


@pytest.mark.timeout(60)
@pytest.mark.parametrize("api", ["apply_async", "submit"])
def test_fast_tasks_do_not_wait_behind_a_slow_one(
    start_method: str, api: str, tmp_path: Path, no_orphans: set[int]
) -> None:
    """Pool(2): a slow task, then fast ones. The fast one queued behind the slow task on its worker is taken
    over by the other worker: every fast task completes while the slow one still runs (it runs until this
    test creates a file, so no timing is assumed)."""
    release = tmp_path / "release"
    log_dir = tmp_path / "log"
    log_dir.mkdir()
    fast = partial(sched_tasks.log_and_sleep, seconds=0, log_dir=str(log_dir))
    pool = make_executor(start_method) if api == "submit" else make_pool(start_method)
    with pool:
        # Both workers started and idle, as in a long-lived pool.
        if api == "submit":
            assert list(pool.map(fast, [-1, -2])) == [-1, -2]  # type: ignore[union-attr]
            slow = pool.submit(sched_tasks.wait_for_file, str(release))  # type: ignore[union-attr]
            quick = [pool.submit(fast, x) for x in range(6)]  # type: ignore[union-attr]
            done = [f.result(timeout=20) for f in quick]
            assert not slow.done()
        else:
            assert pool.map(fast, [-1, -2]) == [-1, -2]  # type: ignore[union-attr]
            slow = pool.apply_async(sched_tasks.wait_for_file, (str(release),))  # type: ignore[union-attr,assignment]
            quick = [pool.apply_async(fast, (x,)) for x in range(6)]  # type: ignore[union-attr,misc]
            done = [r.get(timeout=20) for r in quick]  # type: ignore[attr-defined]
            assert not slow.ready()  # type: ignore[attr-defined]
        assert done == list(range(6))
        # Taken back from behind the slow one; where chunks cannot be taken back, none ever queued behind it.
        assert pool.statistics()["chunks_taken_back"] >= (1 if _platform.has("fd_passing") else 0)
        release.touch()
        assert (slow.result(timeout=30) if api == "submit" else slow.get(timeout=30)) == "slow"  # type: ignore[attr-defined]
    assert all(sched_tasks.runs_of(str(log_dir), x) == 1 for x in range(6))


@STEALS
@pytest.mark.timeout(60)
def test_a_steal_refused_while_its_chunk_was_being_sent_is_tried_again(
    start_method: str, tmp_path: Path, no_orphans: set[int]
) -> None:
    """Pool(2): a slow task on one worker; then item 0 goes to the other worker and item 1 queues behind the
    slow task, its argument taking 2 s to pickle. Item 0 finishes at once, and its worker asks to take item 1
    over while item 1 is still being sent (a take-back must wait for the send). Once sent, item 1 must still
    move: it once stayed behind the slow task until that ended (seen as a 20 s stall in full-suite runs)."""
    release = tmp_path / "release"
    log_dir = tmp_path / "log"
    log_dir.mkdir()
    fast = partial(sched_tasks.log_and_sleep, seconds=0, log_dir=str(log_dir))
    with make_pool(start_method) as pool:
        assert pool.map(fast, [-1, -2]) == [-1, -2]  # both workers started and idle
        slow = pool.apply_async(sched_tasks.wait_for_file, (str(release),))
        items = [0, sched_tasks.SlowToPickle(1, 2.0)]
        assert pool.map_async(fast, items, chunksize=1).get(timeout=20) == [0, 1]
        assert not slow.ready()
        release.touch()
        assert slow.get(timeout=30) == "slow"
    assert all(sched_tasks.runs_of(str(log_dir), x) == 1 for x in (0, 1))


@STEALS
@pytest.mark.timeout(60)
def test_a_worker_that_becomes_ready_takes_over_a_queued_chunk(
    start_method: str, tmp_path: Path, no_orphans: set[int]
) -> None:
    """Pool(2, maxtasksperchild=2): worker A runs a slow task with item 1 queued behind it; worker B runs items
    0 and 2, reaches its limit and is replaced. Nothing is left to assign when the replacement starts, and it
    can take a chunk over only once READY: item 1 must move to it then, not wait for the slow task."""
    release = tmp_path / "release"
    log_dir = tmp_path / "log"
    log_dir.mkdir()
    fast = partial(sched_tasks.log_and_sleep, seconds=0, log_dir=str(log_dir))
    with make_pool(start_method, maxtasksperchild=2) as pool:
        slow = pool.apply_async(sched_tasks.wait_for_file, (str(release),))
        assert pool.map_async(fast, range(3), chunksize=1).get(timeout=20) == [0, 1, 2]
        assert not slow.ready()
        release.touch()
        assert slow.get(timeout=30) == "slow"
    assert all(sched_tasks.runs_of(str(log_dir), x) == 1 for x in range(3))


@STEALS
@pytest.mark.timeout(120)
@pytest.mark.parametrize("start_method", ["fork", "forkserver"])
def test_every_item_runs_once_while_steals_race_starts(
    start_method: str, tmp_path: Path, no_orphans: set[int]
) -> None:
    """Many tiny chunks of uneven length in waves: workers go idle while others hold queued chunks, so steals
    race with the busy workers starting those chunks. Every item must run exactly once (a file per run)."""
    rng = random.Random(1234)
    rounds, per_round = 60, 12
    with make_pool(start_method) as pool:
        for r in range(rounds):
            results: list[tuple[Any, Any]] = []
            # Sleeps of 0-2 ms, one longer task per round, so the tail of each wave has idle workers.
            sleeps = [rng.choice((0, 0, 0.0005, 0.001, 0.002)) for _ in range(per_round)]
            sleeps[rng.randrange(per_round)] = 0.01
            for k, s in enumerate(sleeps):
                fn = partial(sched_tasks.log_and_sleep, seconds=s, log_dir=str(tmp_path))
                results.append((r * per_round + k, pool.apply_async(fn, (r * per_round + k,))))
            if r % 3 == 0:
                items = range(100_000 + r * 100, 100_000 + r * 100 + 40)
                fn = partial(sched_tasks.log_and_sleep, seconds=0.0002, log_dir=str(tmp_path))
                results.append((list(items), pool.map_async(fn, items, chunksize=rng.choice((1, 2, 5)))))
            for want, res in results:  # the wave ends before the next: its tail leaves workers idle
                assert res.get(timeout=60) == want
        taken = pool.statistics()["chunks_taken_back"]
    counts: dict[int, int] = {}
    for name in (p.name for p in tmp_path.iterdir()):
        x = int(name.split("-")[1])
        counts[x] = counts.get(x, 0) + 1
    expected = set(range(rounds * per_round))
    for r in range(0, rounds, 3):
        expected |= set(range(100_000 + r * 100, 100_000 + r * 100 + 40))
    assert set(counts) == expected
    twice = {x: c for x, c in counts.items() if c != 1}
    assert not twice, f"items ran more than once: {twice}"
    assert taken > 0, "no chunk was taken over: the test did not exercise stealing"

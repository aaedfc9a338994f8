"""get(timeout)/result(timeout)/next(timeout) follow their standard contracts, and task_timeout never hangs."""

from __future__ import annotations

import concurrent.futures
import multiprocessing
from functools import partial

import pytest

from manycore.errors import TaskTimeoutError

from . import tasks
from .common import make_executor, make_pool


@pytest.mark.timeout(60)
def test_async_result_get_timeout_then_result_arrives(no_orphans: set[int]) -> None:
    with make_pool() as pool:
        r = pool.apply_async(tasks.sleep_return, (0.6, "late"))
        with pytest.raises(multiprocessing.TimeoutError) as info:
            r.get(timeout=0.1)
        assert not isinstance(info.value, TaskTimeoutError), "a wait timeout is not a task timeout"
        assert not r.ready()  # get() gave up before the result came: it did not wait for it
        r.wait(0.05)
        assert not r.ready()
        assert r.get(timeout=10) == "late"
        assert r.ready() and r.successful()


@pytest.mark.timeout(60)
def test_map_async_get_timeout_then_result_arrives(no_orphans: set[int]) -> None:
    with make_pool() as pool:
        r = pool.map_async(tasks.sleep_return, [0.4, 0.4, 0.01])
        with pytest.raises(multiprocessing.TimeoutError):
            r.get(timeout=0.05)
        with pytest.raises(ValueError):
            r.successful()  # not ready: multiprocessing raises ValueError
        assert r.get(timeout=10) == [None, None, None]


@pytest.mark.timeout(60)
def test_future_result_timeout_then_result_arrives(no_orphans: set[int]) -> None:
    with make_executor() as ex:
        f = ex.submit(tasks.sleep_return, 0.6, "late")
        with pytest.raises(concurrent.futures.TimeoutError):
            f.result(timeout=0.1)
        with pytest.raises(concurrent.futures.TimeoutError):
            f.exception(timeout=0.05)
        assert not f.done()
        assert f.result(timeout=10) == "late"
        assert f.exception() is None


@pytest.mark.timeout(60)
def test_imap_next_timeout_then_result_arrives(no_orphans: set[int]) -> None:
    with make_pool() as pool:
        it = pool.imap(tasks.sleep_return, [0.5, 0.0])
        with pytest.raises(multiprocessing.TimeoutError):
            it.next(timeout=0.1)
        assert it.next(timeout=10) is None
        assert it.next(timeout=10) is None
        with pytest.raises(StopIteration):
            it.next(timeout=10)


@pytest.mark.timeout(60)
def test_executor_map_timeout(no_orphans: set[int]) -> None:
    """Executor.map(timeout=...) counts from the call and raises concurrent.futures.TimeoutError."""
    with make_executor() as ex:
        # The first result comes after 2 s: a map that ignored its timeout would return it, not raise.
        results = ex.map(tasks.sleep_return, [2.0, 0.0], timeout=0.2)
        with pytest.raises(concurrent.futures.TimeoutError):
            next(results)


@pytest.mark.timeout(60)
def test_task_timeout_apply_and_submit_others_continue(no_orphans: set[int]) -> None:
    """An overrunning call fails with TaskTimeoutError while calls submitted around it complete."""
    with make_pool(task_timeout=tasks.TIMEOUT) as pool:
        stuck = pool.apply_async(tasks.block_in_c, (1000,))
        quick = [pool.apply_async(tasks.square, (x,)) for x in range(20)]
        assert [q.get(30) for q in quick] == [x * x for x in range(20)]
        with pytest.raises(TaskTimeoutError) as info:  # the call blocks for 1000 s: only the timeout ends it
            stuck.get(30)
        assert info.value.timeout == tasks.TIMEOUT
    with make_executor(task_timeout=tasks.TIMEOUT) as ex:
        stuck_f = ex.submit(tasks.block_in_c, 1000)
        quick_f = [ex.submit(tasks.square, x) for x in range(20)]
        assert [q.result(30) for q in quick_f] == [x * x for x in range(20)]
        assert isinstance(stuck_f.exception(30), TaskTimeoutError)


@pytest.mark.timeout(60)
def test_result_pickling_time_is_not_blamed_on_other_items(no_orphans: set[int]) -> None:
    """Items 3 and 4 return at once; only item 2's result is slow to pickle. 3 and 4 must not time out."""
    with make_pool() as pool:
        out = pool.map_async(
            partial(tasks.slow_result_at, bad=2),
            range(10),
            chunksize=5,
            on_error="return",
            task_timeout=tasks.TIMEOUT,
        ).get(30)
    assert isinstance(out[2], (tasks.SlowToPickle, TaskTimeoutError)), repr(out[2])
    assert [out[x] for x in range(10) if x != 2] == [x * x for x in range(10) if x != 2], out


@pytest.mark.timeout(60)
def test_task_timeout_only_kills_the_overrunning_item(no_orphans: set[int]) -> None:
    """Items that take a while but stay under task_timeout are not killed."""
    with make_pool() as pool:
        durations = [0.1, 0.2, 30.0, 0.1, 0.1]  # task_timeout=0.6
        res = pool.map_async(
            tasks.sleep_return, durations, chunksize=1, on_error="return", task_timeout=0.6
        ).get(30)
    assert res[:2] == [None, None] and res[3:] == [None, None]
    assert isinstance(res[2], TaskTimeoutError) and res[2].index == 2

"""manycore.Executor against the concurrent.futures contract, plus its documented improvement on crashes."""

from __future__ import annotations

import concurrent.futures
import os
import signal
import time

import pytest

import manycore
from manycore.errors import WorkerLostError

from tasks import add, fail_on, sleep_return, square

pytestmark = pytest.mark.timeout(60)


def kill_self(x: int) -> int:
    if x == 2:
        os.kill(os.getpid(), signal.SIGKILL)
    return x


def test_is_a_real_executor_with_standard_futures(no_leftover_processes: None) -> None:
    with manycore.Executor(max_workers=2) as ex:
        assert isinstance(ex, concurrent.futures.Executor)
        futures = [ex.submit(square, i) for i in range(20)]
        assert all(isinstance(f, concurrent.futures.Future) for f in futures)
        done = {f.result() for f in concurrent.futures.as_completed(futures, timeout=30)}
        assert done == {i * i for i in range(20)}
        finished, pending = concurrent.futures.wait(futures, timeout=30)
        assert len(finished) == 20 and not pending


def test_submit_positional_only_fn_and_kwargs(no_leftover_processes: None) -> None:
    with manycore.Executor(2) as ex:
        assert ex.submit(add, 1, b=2).result(10) == 3
        assert ex.submit(lambda fn: fn, fn=5).result(10) == 5


def test_result_timeout_then_result(no_leftover_processes: None) -> None:
    with manycore.Executor(2) as ex:
        future = ex.submit(sleep_return, 0.5)
        with pytest.raises(concurrent.futures.TimeoutError):
            future.result(timeout=0.05)
        assert future.result(timeout=10) == 0.5


def test_exception_in_task_goes_to_its_future(no_leftover_processes: None) -> None:
    with manycore.Executor(2) as ex:
        future = ex.submit(fail_on, 3)
        assert isinstance(future.exception(10), ValueError)
        assert ex.submit(fail_on, 1).result(10) == 1


def test_map_is_lazy_ordered_and_zips(no_leftover_processes: None) -> None:
    with manycore.Executor(2) as ex:
        assert list(ex.map(add, range(100), range(100))) == [2 * i for i in range(100)]
        assert list(ex.map(square, range(1000), chunksize=50)) == [i * i for i in range(1000)]
        results = ex.map(square, iter(range(10**9)))  # lazy: an eager map would never return
        assert next(results) == 0
        results.close()  # type: ignore[attr-defined]


def test_map_timeout_counts_from_the_call(no_leftover_processes: None) -> None:
    with manycore.Executor(2) as ex:
        # Warm first: on a loaded CI machine, starting the fork server and workers alone took up to 1.6 s.
        assert ex.submit(square, 3).result(30) == 9
        results = ex.map(sleep_return, [0.01, 3.0], timeout=1.5)
        assert next(results) == 0.01
        with pytest.raises(concurrent.futures.TimeoutError):
            next(results)


def test_map_raises_task_error_at_its_position(no_leftover_processes: None) -> None:
    with manycore.Executor(2) as ex:
        results = ex.map(fail_on, range(6))
        assert [next(results) for _ in range(3)] == [0, 1, 2]
        with pytest.raises(ValueError):
            next(results)


def test_dead_worker_fails_only_its_future_and_executor_stays_usable(no_leftover_processes: None) -> None:
    with manycore.Executor(2) as ex:
        futures = [ex.submit(kill_self, i) for i in range(6)]
        outcomes = [f.exception(30) for f in futures]
        assert isinstance(outcomes[2], WorkerLostError)
        assert isinstance(outcomes[2], concurrent.futures.process.BrokenProcessPool)
        assert [f.result() for i, f in enumerate(futures) if i != 2] == [0, 1, 3, 4, 5]
        assert ex.submit(square, 9).result(10) == 81


def test_shutdown_waits_and_then_rejects_new_work(no_leftover_processes: None) -> None:
    ex = manycore.Executor(2)
    futures = [ex.submit(sleep_return, 0.05) for _ in range(4)]
    ex.shutdown(wait=True)
    assert all(f.done() for f in futures)
    with pytest.raises(RuntimeError, match="shutdown"):
        ex.submit(square, 1)


def test_shutdown_cancel_futures_cancels_queued_work(no_leftover_processes: None) -> None:
    ex = manycore.Executor(2)
    running = [ex.submit(sleep_return, 0.3) for _ in range(2)]
    time.sleep(0.1)
    queued = [ex.submit(sleep_return, 0.3) for _ in range(20)]
    ex.shutdown(wait=True, cancel_futures=True)
    assert [f.result() for f in running] == [0.3, 0.3]
    assert sum(f.cancelled() for f in queued) >= 10
    assert all(f.done() for f in queued)


def test_cancel_a_queued_future(no_leftover_processes: None) -> None:
    with manycore.Executor(1) as ex:
        blocker = ex.submit(sleep_return, 0.3)
        waiting = [ex.submit(square, i) for i in range(5)]
        cancelled = [f.cancel() for f in waiting]
        assert blocker.result(10) == 0.3
        for f, was_cancelled in zip(waiting, cancelled):
            assert f.cancelled() if was_cancelled else f.result(10) is not None


def test_max_workers_validation() -> None:
    with pytest.raises(ValueError, match="max_workers"):
        manycore.Executor(max_workers=0)

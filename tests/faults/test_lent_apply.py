"""The synchronous ``apply`` fast path: an idle worker lent to the calling thread, which reads its own result.

Whatever happens while a worker is lent (it dies, it times out, the pool is terminated from another thread,
other threads call too) must end exactly as on the supervisor's path: the right error for the call, the pool
usable afterwards, and no process left behind.
"""

from __future__ import annotations

import threading
from functools import partial
from pathlib import Path

import pytest

import manycore
from manycore.errors import PoolClosedError, TaskTimeoutError, WorkerLostError

from . import tasks
from .common import make_pool
from proc_helpers import python_output

pytestmark = pytest.mark.timeout(60)


@pytest.mark.parametrize("kind", ["sigkill", "exit", "timeout"])
def test_lent_apply_retries_after_its_worker_is_lost(kind: str, tmp_path: Path, no_orphans: set[int]) -> None:
    timeout = tasks.TIMEOUT if kind == "timeout" else None
    fn = partial(tasks.fault_once, kind=kind, bad=3, marker_dir=str(tmp_path))
    with make_pool(retries=1, task_timeout=timeout) as pool:
        assert pool.apply(tasks.square, (2,)) == 4  # both workers ready and idle: the next call is lent
        assert pool.apply(fn, (3,)) == 9
        assert (tmp_path / "attempted-3").exists(), "the faulty first attempt never ran"
        assert pool.apply(fn, (3,)) == 9


def test_lent_apply_timeout_names_the_call(no_orphans: set[int]) -> None:
    with make_pool(task_timeout=0.5) as pool:
        pool.apply(tasks.square, (1,))
        with pytest.raises(TaskTimeoutError, match=r"the call ran longer than task_timeout=0\.5"):
            pool.apply(tasks.faulty, (3,), {"kind": "timeout", "bad": 3})
        assert pool.apply(tasks.square, (5,)) == 25


def test_many_threads_calling_apply_at_once_all_get_their_own_results(no_orphans: set[int]) -> None:
    """More callers than workers: some borrow a worker, the rest go through the supervisor; none is mixed up."""
    errors: list[BaseException] = []
    with make_pool() as pool:

        def caller(base: int) -> None:
            try:
                for x in range(base, base + 150):
                    got = pool.apply(tasks.square, (x,))
                    assert got == x * x, (x, got)
            except BaseException as exc:  # reported by the main thread
                errors.append(exc)

        threads = [threading.Thread(target=caller, args=(k * 1000,)) for k in range(5)]
        for t in threads:
            t.start()
        # Meanwhile a map keeps the workers busy part of the time, so both paths are taken.
        assert pool.map(tasks.square, range(3000)) == [x * x for x in range(3000)]
        for t in threads:
            t.join(30)
        assert errors == []
        assert not any(t.is_alive() for t in threads)


def test_terminate_from_another_thread_ends_a_lent_apply(no_orphans: set[int]) -> None:
    pool = make_pool()
    pool.apply(tasks.square, (1,))
    timer = threading.Timer(0.5, pool.terminate)
    timer.start()
    try:
        # The call sleeps far longer than the test's timeout: returning at all means terminate ended it.
        with pytest.raises((PoolClosedError, WorkerLostError)):
            pool.apply(tasks.faulty, (3,), {"kind": "timeout", "bad": 3})
    finally:
        timer.cancel()
        pool.terminate()
        pool.join()


def test_apply_with_large_arguments_and_results_on_a_lent_worker(no_orphans: set[int]) -> None:
    """Out-of-band (shared memory) arguments and results, read by the caller itself."""
    blob = bytes(range(256)) * 8192  # 2 MiB: above the zero-copy threshold
    with manycore.Pool(2) as pool:
        pool.apply(tasks.square, (1,))
        for _ in range(5):
            assert pool.apply(bytes, (blob,)) == blob


@pytest.mark.needs("sched")  # CPU affinity
def test_a_single_core_caller_does_not_poll_for_its_answer() -> None:
    """The caller of a lent apply polls its worker's socket for up to 200 µs before it sleeps (W5), unless
    it may run on one core only: there the poll would only delay the worker it waits for."""
    code = (
        "import os, manycore\n"
        "from manycore._process._sending import LENT_POLL_S\n"
        "def polls():\n"
        "    with manycore.Pool(2) as pool:\n"
        "        assert pool.apply(abs, (-3,)) == 3\n"
        "        return pool._scheduler.lent_poll_s\n"
        "assert polls() == (LENT_POLL_S if len(os.sched_getaffinity(0)) > 1 else 0.0)\n"
        "os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})\n"
        "assert polls() == 0.0\n"
        "print('ok')\n"
    )
    assert python_output(code) == "ok\n"

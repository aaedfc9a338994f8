"""A task that forks without exec leaves a child holding copies of the worker's descriptors.

The parent learns that a worker died from end-of-file on that worker's socket; a child still holding a copy of
it would hide the death (and a killed overrunning task) for as long as it lived. Workers close their socket and
token pipe in every child they fork, so the death is noticed at once however long the child lives.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

import manycore
from manycore.errors import TaskTimeoutError, WorkerLostError

from . import fork_tasks
from .common import make_pool

HOW = ("os.fork", "multiprocessing")
WAIT = 20  # seconds: far more than noticing a death takes, far less than the children's LINGER


@pytest.fixture
def pid_dir(tmp_path: Path) -> Iterator[Path]:
    """Where tasks record the children they leave behind; each is killed at the end of the test."""
    yield tmp_path
    for path in tmp_path.glob("*.pid"):
        with contextlib.suppress(psutil.Error, ValueError):
            child = psutil.Process(int(path.read_text()))
            if child.create_time() >= path.stat().st_mtime - 60:  # not a process that reused the number
                child.send_signal(signal.SIGKILL)


def _left_children(pid_dir: Path) -> list[int]:
    pids = [int(p.read_text()) for p in pid_dir.glob("*.pid")]
    return [pid for pid in pids if psutil.pid_exists(pid)]


def _fails_while_child_lives(pool: manycore.Pool, result: Any, error: type[Exception], pid_dir: Path) -> None:
    """The task's worker is gone (``error``) while the child the task forked lives; the pool goes on with a
    fresh worker."""
    with pytest.raises(error):
        result.get(WAIT)
    assert _left_children(pid_dir), "the task's child should still be alive: the test shows nothing"
    assert pool.apply(os.getpid) > 0


@pytest.mark.timeout(90)
@pytest.mark.parametrize(("how", "death"), [("os.fork", "sigkill"), ("multiprocessing", "segfault")])
def test_worker_death_noticed_while_its_forked_child_lives(
    start_method: str, how: str, death: str, pid_dir: Path, no_orphans: set[int]
) -> None:
    with make_pool(start_method) as pool:
        result = pool.apply_async(fork_tasks.leave_child_then_die, (str(pid_dir), how, death))
        _fails_while_child_lives(pool, result, WorkerLostError, pid_dir)


@pytest.mark.timeout(90)
@pytest.mark.parametrize("how", HOW)
def test_task_timeout_fires_while_the_tasks_forked_child_lives(
    start_method: str, how: str, pid_dir: Path, no_orphans: set[int]
) -> None:
    with make_pool(start_method, task_timeout=1) as pool:
        result = pool.starmap_async(fork_tasks.leave_child_then_hang, [(str(pid_dir), how)])
        _fails_while_child_lives(pool, result, TaskTimeoutError, pid_dir)


@pytest.mark.timeout(90)
@pytest.mark.parametrize("how", HOW)
def test_worker_serves_on_after_a_task_forked_a_child(
    start_method: str, how: str, pid_dir: Path, no_orphans: set[int]
) -> None:
    # The worker closes its descriptors only in the child: it goes on serving the parent itself.
    with manycore.Pool(1, start_method=start_method) as pool:
        worker = pool.apply(fork_tasks.leave_child_then_return, (str(pid_dir), how))
        assert pool.apply(os.getpid) == worker
        assert pool.starmap(fork_tasks.leave_child_then_return, [(str(pid_dir), how)] * 3) == [worker] * 3
        assert len(_left_children(pid_dir)) == 4

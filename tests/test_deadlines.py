"""Deadlines (``manycore._process._deadlines``) on their own: which worker's running item is over its timeout.

No worker process: the status pages are written here as a worker writes them. End to end, ``task_timeout`` is
tested in tests/faults.
"""

from __future__ import annotations

import mmap
import socket
from collections.abc import Iterator

import pytest

from manycore import _channel as ch
from manycore._jobs import Chunk, Job, SchedulerBase
from manycore._options import CallOptions
from manycore._process._deadlines import overdue
from manycore._process._workers import Worker, _token_pipe
from manycore._protocol import STATUS, STATUS_SIZE

from tasks import square

pytestmark = pytest.mark.timeout(60)

SECOND = 1_000_000_000


@pytest.fixture
def worker() -> Iterator[Worker]:
    mine, theirs = socket.socketpair()
    w = Worker(1, ch.ParentChannel(mine), mmap.mmap(-1, STATUS_SIZE), None, _token_pipe())
    try:
        yield w
    finally:
        w.channel.close()
        theirs.close()
        w.page.close()
        w.close_tokens()


def running(w: Worker, timeout: float | None, items: int = 3) -> Chunk:
    job = Job(SchedulerBase(2), square, CallOptions(task_timeout=timeout))
    chunk = Chunk(job, 0, list(range(items)))
    chunk.cid = 7
    w.inflight[chunk.cid] = chunk
    return chunk


def test_an_item_over_its_timeout_is_named(worker: Worker) -> None:
    running(worker, 1.0)
    STATUS.pack_into(worker.page, 0, 7, 2, 10 * SECOND)
    assert overdue([worker], 11 * SECOND) == []  # exactly at the limit: not over it
    assert overdue([worker], 11 * SECOND + 1) == [(worker, 7, 2)]


@pytest.mark.parametrize(
    ("timeout", "status"),
    [
        (None, (7, 1, SECOND)),  # no deadline for this job
        (1.0, (0, 0, 0)),  # idle: between chunks
        (1.0, (8, 1, SECOND)),  # a chunk it no longer holds
        (1.0, (7, 3, SECOND)),  # every item ran: it is sending the results
    ],
)
def test_nothing_is_overdue(worker: Worker, timeout: float | None, status: tuple[int, int, int]) -> None:
    running(worker, timeout)
    STATUS.pack_into(worker.page, 0, *status)
    assert overdue([worker], 100 * SECOND) == []


def test_a_worker_already_killed_for_a_timeout_is_not_named_again(worker: Worker) -> None:
    running(worker, 1.0)
    STATUS.pack_into(worker.page, 0, 7, 0, SECOND)
    worker.timed_out = (7, 0)
    assert overdue([worker], 100 * SECOND) == []

"""The recovery policy (``manycore._recovery``) on its own: given a lost chunk, what runs again and what fails.

No worker process here: the policy is a function of the chunk, where its worker died and the job's attempt
counts. The end-to-end behaviour (real crashes, real timeouts) is tested in tests/faults; the engine backends'
use of the same policy is checked below on an engine the test drives.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

import manycore
from manycore import _channel as ch
from manycore._engine import Engine, run_chunk
from manycore._jobs import Chunk, Job, SchedulerBase
from manycore._recovery import Lost, loss_error, lost_chunk, retry_allowed, suspect_offset
from manycore.errors import TaskTimeoutError, WorkerLostError

from tasks import square

pytestmark = pytest.mark.timeout(60)


def make_chunk(n: int, *, first: int = 10, retries: int = 0, kind: int = ch.MAP) -> Chunk:
    job = Job(SchedulerBase(2), square, retries=retries)
    job.kind = kind
    return Chunk(job, first, list(range(first, first + n)))


def spans(chunks: list[Chunk]) -> list[tuple[int, int]]:
    """(first index, number of items) of each chunk, in order."""
    return [(c.first, len(c.items)) for c in chunks]


def test_the_running_item_fails_and_its_chunk_mates_run_again() -> None:
    chunk = make_chunk(5)
    lost = lost_chunk(chunk, 2, 1)
    # Items 10-11 ran (their results died with the worker), 13-14 had not started: all run again, in order.
    assert spans(lost.requeue) == [(10, 2), (13, 2)]
    assert spans(lost.failed) == [(12, 1)]
    assert lost.span is None
    assert chunk.job.attempts == {12: 1}
    assert all(part.origin == chunk.first for part in lost.requeue + lost.failed)


def test_a_suspect_with_retries_left_runs_again_alone_then_fails() -> None:
    chunk = make_chunk(3, retries=1)
    first = lost_chunk(chunk, 1, 1)
    assert spans(first.requeue) == [(10, 1), (11, 1), (12, 1)]  # the suspect alone, between its mates
    assert first.failed == []
    (suspect,) = (c for c in first.requeue if c.first == 11)
    second = lost_chunk(suspect, 0, 1)  # its worker died again: retries spent
    assert second == Lost([], second.failed, None)
    assert spans(second.failed) == [(11, 1)]
    assert chunk.job.attempts == {11: 2}


def test_every_item_of_a_block_is_a_suspect() -> None:
    chunk = make_chunk(10)
    lost = lost_chunk(chunk, 4, 4)
    assert spans(lost.requeue) == [(10, 4), (18, 2)]
    assert spans(lost.failed) == [(14, 1), (15, 1), (16, 1), (17, 1)]
    assert lost.span == (14, 17)
    assert chunk.job.attempts == dict.fromkeys(range(14, 18), 1)


def test_a_block_is_cut_at_the_end_of_its_chunk() -> None:
    chunk = make_chunk(5, retries=1)
    lost = lost_chunk(chunk, 3, 8)
    assert spans(lost.requeue) == [(10, 3), (13, 1), (14, 1)]
    assert lost.failed == []
    assert lost.span == (13, 14)


def test_unknown_culprit_reruns_each_item_alone_without_counting() -> None:
    chunk = make_chunk(3)
    lost = lost_chunk(chunk, -1, 1)
    assert spans(lost.requeue) == [(10, 1), (11, 1), (12, 1)]
    assert lost.failed == []
    assert chunk.job.attempts == {}


def test_retry_allowed_counts_each_attempt() -> None:
    job = make_chunk(1, retries=2).job
    assert [retry_allowed(job, 7) for _ in range(4)] == [True, True, False, False]
    assert job.attempts == {7: 4}


@pytest.mark.parametrize(
    ("items", "offset", "expected"),
    [
        (5, 2, 2),  # died running item 2
        (5, 0, 0),
        (5, 5, -1),  # every item ran: it died sending the results, any of them may be the cause
        (1, 1, 0),  # alone, its result killed the worker
        (1, 0, 0),
    ],
)
def test_suspect_offset(items: int, offset: int, expected: int) -> None:
    assert suspect_offset(make_chunk(items), offset) == expected


def test_suspect_offset_of_a_chunk_not_held() -> None:
    assert suspect_offset(None, 3) == 3


def test_loss_error_names_the_signal_and_the_item() -> None:
    chunk = make_chunk(3)
    err = loss_error(chunk, 11, None, pid=1234, exitcode=-9, timed_out=False, bad_frame=None)
    assert isinstance(err, WorkerLostError)
    assert (err.index, err.pid, err.exitcode, err.signal_name) == (11, 1234, -9, "SIGKILL")
    assert "pid 1234" in str(err) and "item #11" in str(err) and "out-of-memory" in str(err)


def test_loss_error_of_a_block_says_which_items() -> None:
    err = loss_error(make_chunk(8), 12, (11, 14), pid=5, exitcode=3, timed_out=False, bad_frame=None)
    assert "one of items #11-#14" in str(err) and "exited with code 3" in str(err)
    assert "chunksize=1" in str(err)


def test_loss_error_of_a_timeout_and_of_a_malformed_message() -> None:
    chunk = make_chunk(2)
    chunk.job.task_timeout = 0.5
    timeout = loss_error(chunk, 10, None, pid=5, exitcode=-9, timed_out=True, bad_frame=None)
    assert isinstance(timeout, TaskTimeoutError)
    assert (timeout.index, timeout.timeout) == (10, 0.5)
    bad = loss_error(chunk, 10, None, pid=5, exitcode=None, timed_out=False, bad_frame="a stray fd")
    assert isinstance(bad, WorkerLostError) and "malformed message (a stray fd)" in str(bad)


def test_loss_error_of_a_call_has_no_index() -> None:
    err = loss_error(
        make_chunk(1, kind=ch.CALL), 0, None, pid=5, exitcode=None, timed_out=False, bad_frame=None
    )
    assert err.index is None and "running the call exited (exit code unknown)" in str(err)


class WorkerLost(Exception):
    pass


class LosingEngine(Engine):
    """An engine whose worker dies (``WorkerLost``) on every chunk holding a doomed item, the test stepping it."""

    name = "losing"
    slots = 2

    def __init__(self, doomed: int) -> None:
        self.doomed = doomed
        self.pending: list[tuple[Chunk, Callable[[Chunk, Any, BaseException | None], None]]] = []

    def run(self, chunk: Chunk, done: Callable[[Chunk, Any, BaseException | None], None]) -> None:
        self.pending.append((chunk, done))

    def is_worker_lost(self, exc: BaseException) -> bool:
        return isinstance(exc, WorkerLost)

    def finish_all(self) -> None:
        while self.pending:
            chunk, done = self.pending.pop(0)
            if self.doomed in chunk.items:
                done(chunk, None, WorkerLost("gone"))
            else:
                values, errors, _ = run_chunk(chunk.job.fn, chunk.job.kind, chunk.first, list(chunk.items))
                done(chunk, (values, errors, 0.001), None)


@pytest.mark.parametrize("retries", [0, 2])
def test_an_engine_fails_only_the_culprit_after_its_retries(retries: int) -> None:
    engine = LosingEngine(doomed=5)
    with manycore.Pool(backend=engine) as pool:
        result = pool.map_async(square, range(8), chunksize=4, retries=retries, on_error="return")
        engine.finish_all()
        values = result.get(timeout=10)
    assert [v for k, v in enumerate(values) if k != 5] == [x * x for x in range(8) if x != 5]
    assert isinstance(values[5], WorkerLostError)
    assert values[5].index == 5 and "the losing worker running item #5 died (gone)" in str(values[5])
    assert isinstance(values[5].__cause__, WorkerLost)

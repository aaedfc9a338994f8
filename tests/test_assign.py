"""The assignment policy (``manycore._process._assign``) on its own: which chunk goes to which worker.

No worker process: the workers are bare handles (``Worker``) on real socket pairs, status pages and token
pipes, and the test plays the sender's part where it matters (a token written before a chunk is "sent") and
the worker's (reading a token to start a chunk). End to end, work stealing is tested in
tests/faults/test_work_stealing.py.
"""

from __future__ import annotations

import mmap
import os
import socket
from collections import deque
from collections.abc import Callable, Iterator

import pytest

from manycore import _channel as ch
from manycore import _shm
from manycore._jobs import Chunk, Job, SchedulerBase
from manycore._process._assign import DEPTH, Assigner
from manycore._process._workers import Worker, _token_pipe
from manycore._protocol import STATUS_SIZE

from tasks import square

pytestmark = pytest.mark.timeout(60)


class Workers:
    """Bare worker handles, closed at the end of the test."""

    def __init__(self) -> None:
        self.made: list[tuple[Worker, socket.socket]] = []

    def make(self, n: int, *, ready: bool = True) -> dict[int, Worker]:
        workers = {}
        for _ in range(n):
            wid = len(self.made) + 1
            mine, theirs = socket.socketpair()
            w = Worker(wid, ch.ParentChannel(mine), mmap.mmap(-1, STATUS_SIZE), None, _token_pipe())
            w.ready = ready
            self.made.append((w, theirs))
            workers[wid] = w
        return workers

    def close(self) -> None:
        for w, theirs in self.made:
            w.channel.close()
            theirs.close()
            w.page.close()
            w.close_tokens()


@pytest.fixture
def workers() -> Iterator[Workers]:
    made = Workers()
    try:
        yield made
    finally:
        made.close()


def make_chunks(n: int) -> deque[Chunk]:
    job = Job(SchedulerBase(2), square)
    return deque(Chunk(job, k, [k]) for k in range(n))


def source(chunks: deque[Chunk]) -> Callable[[], Chunk | None]:
    return lambda: chunks.popleft() if chunks else None


def placed(assignments: list[tuple[Worker, Chunk, bool]]) -> list[tuple[int, int, bool]]:
    """(worker id, chunk's first item, carries the function) of each assignment, in order."""
    return [(w.wid, c.first, with_fn) for w, c, with_fn in assignments]


def send_with_token(w: Worker, chunk: Chunk) -> None:
    """What the sender does for a chunk queued behind another (``Sending._send_chunk``), minus the frame."""
    with w.token_lock:
        w.behind.discard(chunk.cid)
        os.write(w.tokens[1], b"t")
        w.unstarted.append(chunk.cid)


def start_with_token(w: Worker) -> bool:
    """What the worker does before it runs a token chunk: take one byte, or skip the chunk."""
    try:
        return bool(os.read(w.tokens[0], 1))
    except BlockingIOError:
        return False


def test_workers_are_filled_one_chunk_each_per_round_up_to_depth(workers: Workers) -> None:
    ws = workers.make(2)
    chunks = make_chunks(5)
    out = Assigner(0, _shm.SegmentPool()).assign(ws, source(chunks))
    assert DEPTH == 2
    # Each worker's first chunk carries the function; the second, behind it, gets a token (``behind``).
    assert placed(out) == [(1, 0, True), (2, 1, True), (1, 2, False), (2, 3, False)]
    assert [c.first for c in chunks] == [4]  # left queued
    assert {c.first for c in ws[1].inflight.values()} == {0, 2}
    assert [ws[1].inflight[cid].first for cid in ws[1].behind] == [2]
    assert [ws[2].inflight[cid].first for cid in ws[2].behind] == [3]
    assert len({c.cid for _, c, _ in out}) == 4 and all(c.cid > 0 for _, c, _ in out)


def test_busy_lent_and_skipping_workers_get_nothing(workers: Workers) -> None:
    ws = workers.make(4)
    ws[1].lent = True  # its socket is being read by a caller (run_lent)
    ws[2].skips = 1  # a chunk taken back from it is still ahead in its socket
    ws[3].accepting = False  # reached max_tasks_per_worker: to be replaced
    out = Assigner(0, _shm.SegmentPool()).assign(ws, source(make_chunks(5)))
    assert [w.wid for w, _, _ in out] == [4, 4]


def test_max_tasks_stops_a_worker_accepting(workers: Workers) -> None:
    ws = workers.make(2)
    assigner = Assigner(1, _shm.SegmentPool())
    out = assigner.assign(ws, source(make_chunks(5)))
    assert placed(out) == [(1, 0, True), (2, 1, True)]
    assert not ws[1].accepting and not ws[2].accepting


def test_an_idle_worker_takes_over_a_chunk_not_started(workers: Workers) -> None:
    ws = workers.make(2)
    assigner = Assigner(0, _shm.SegmentPool())
    ws[2].accepting = False  # so that both chunks go to worker 1
    out = assigner.assign(ws, source(make_chunks(2)))
    assert placed(out) == [(1, 0, True), (1, 1, False)]
    send_with_token(ws[1], out[1][1])
    ws[2].accepting = True
    # Worker 1 still runs chunk 0 (it took no token: chunk 0 was first), nothing is left to assign.
    stolen = assigner.assign(ws, source(deque()))
    assert placed(stolen) == [(2, 1, True)]
    chunk = stolen[0][1]
    assert chunk.cid not in (c.cid for c in ws[1].inflight.values()) and ws[2].inflight == {chunk.cid: chunk}
    assert (ws[1].skips, ws[1].assigned, assigner.taken_back) == (1, 1, 1)
    assert not start_with_token(ws[1])  # the worker finds no token for chunk 1: it skips it
    # Until its SKIPPED arrives, the victim gets nothing: a token written now would be taken for the old chunk.
    assert [w.wid for w, _, _ in assigner.assign(ws, source(make_chunks(2)))] == [2]


def test_no_take_over_of_a_chunk_the_worker_started(workers: Workers) -> None:
    ws = workers.make(2)
    assigner = Assigner(0, _shm.SegmentPool())
    ws[2].accepting = False
    out = assigner.assign(ws, source(make_chunks(2)))
    send_with_token(ws[1], out[1][1])
    assert start_with_token(ws[1])  # the worker got there first
    ws[2].accepting = True
    assert assigner.assign(ws, source(deque())) == []
    assert ws[1].unstarted == [] and assigner.taken_back == 0 and len(ws[1].inflight) == 2


def test_a_chunk_still_being_sent_is_not_taken_and_asks_for_another_try(workers: Workers) -> None:
    ws = workers.make(2)
    assigner = Assigner(0, _shm.SegmentPool())
    ws[2].accepting = False
    chunks = make_chunks(3)
    first = assigner.assign(ws, source(chunks))
    send_with_token(ws[1], first[1][1])
    ws[1].inflight.pop(first[0][1].cid)  # chunk 0 done; chunk 2 goes behind chunk 1, not yet sent
    second = assigner.assign(ws, source(chunks))
    assert placed(second) == [(1, 2, False)]
    ws[2].accepting = True
    assert assigner.assign(ws, source(deque())) == []
    assert assigner.steal_again  # its sender tries again once chunk 2 is sent
    send_with_token(ws[1], second[0][1])
    assert placed(assigner.assign(ws, source(deque()))) == [(2, 2, True)]


def test_ids_of_chunks_gone_before_their_send_do_not_block_a_take_over(workers: Workers) -> None:
    ws = workers.make(2)
    assigner = Assigner(0, _shm.SegmentPool())
    ws[2].accepting = False
    out = assigner.assign(ws, source(make_chunks(3)))
    send_with_token(ws[1], out[1][1])
    ws[1].behind.add(999)  # a chunk failed (e.g. its argument did not pickle) before it was sent
    ws[2].accepting = True
    assert placed(assigner.assign(ws, source(deque()))) == [(2, 1, True)]
    assert not assigner.steal_again and ws[1].behind == set()


def test_a_worker_not_ready_takes_nothing_over(workers: Workers) -> None:
    ws = workers.make(1)
    ws.update(workers.make(1, ready=False))
    assigner = Assigner(0, _shm.SegmentPool())
    ws[2].accepting = False
    out = assigner.assign(ws, source(make_chunks(2)))
    send_with_token(ws[1], out[1][1])
    ws[2].accepting = True
    assert assigner.assign(ws, source(deque())) == []
    assert ws[1].unstarted == [out[1][1].cid]  # its token is still in the pipe

"""The assignment policy: which chunk goes to which worker, and when an idle worker takes over a queued one.

Its reasons to change: how deep a worker's queue is, the order workers are filled in, ``max_tasks_per_worker``,
and work stealing. It runs under the scheduler's lock in any thread and touches no socket: the chunks it hands
out are pickled and sent by the caller (``_sending``). It needs no worker process, so it is unit-tested with
bare ``Worker`` handles (tests/test_assign.py).
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable

from .. import _shm
from .._jobs import Chunk
from ._workers import Worker

DEPTH = 2  # chunks a worker holds: the one it runs and the next, already in its socket

# (worker, chunk, whether the frame carries the function): what the sender sends.
Assignment = tuple[Worker, Chunk, bool]


class Assigner:
    """The chunk-to-worker bookkeeping of one pool: chunk ids, per-worker counts, take-backs."""

    def __init__(self, max_tasks: int, segments: _shm.SegmentPool, depth: int = DEPTH) -> None:
        self.max_tasks = max_tasks  # chunks per worker before it is replaced (0: no limit)
        # Chunks a worker holds. Without a token pipe (no descriptor passing) a queued chunk can never be taken
        # back, and a fast task would wait behind a slow one: then one, as multiprocessing's workers take one.
        self.depth = depth
        self.segments = segments  # where a taken-back chunk's input segment goes back
        self.cids = itertools.count(1)
        self.taken_back = 0  # chunks an idle worker took from a busy one (statistics)
        # A take-back was refused because the victim had a token chunk still being sent (``behind``). Nothing
        # else may happen for a long time (both running tasks can block), so the sender that finishes such a
        # send tries the steal again. Set under the victim's ``token_lock``, which the sender takes after it:
        # the sender cannot miss it.
        self.steal_again = False

    def give(self, w: Worker, chunk: Chunk) -> Assignment:
        """Record a chunk as the worker's; the one place a chunk gets an id and a worker its count."""
        chunk.cid = next(self.cids)
        if w.inflight:  # never with depth 1: no chunk waits behind another
            w.behind.add(chunk.cid)
        w.inflight[chunk.cid] = chunk
        w.assigned += 1
        if self.max_tasks and w.assigned >= self.max_tasks:
            w.accepting = False
        return (w, chunk, w.needs_function(chunk.job.fn_key))

    def assign(self, workers: dict[int, Worker], next_chunk: Callable[[], Chunk | None]) -> list[Assignment]:
        """Fill every worker's queue to ``DEPTH``, one chunk per worker per round; steal once nothing is left."""
        out: list[Assignment] = []
        for depth in range(1, self.depth + 1):
            for w in workers.values():
                while w.accepting and not w.lent and not w.skips and len(w.inflight) < depth:
                    chunk = next_chunk()
                    if chunk is None:
                        self.steal(workers, out)
                        return out
                    out.append(self.give(w, chunk))
        return out

    def steal(self, workers: dict[int, Worker], out: list[Assignment]) -> None:
        """Nothing left to assign: give each idle worker a chunk queued, not started, behind a busy one.

        A chunk once sent is never taken back from the socket, so the parent and the busy worker must agree on
        who runs it, and shared-memory flags cannot do that (x86 reorders a store after a later load, and
        Python issues no fence). A pipe can: each chunk sent with ``TOKEN`` has one byte written to the
        worker's token pipe before its frame enters the socket, the worker reads one byte (non-blocking)
        before it runs such a chunk, and here the parent reads one byte to take a chunk. The kernel gives each
        byte to exactly one reader: whoever reads it owns a chunk, and a worker that finds none skips the
        chunk and says so (``SKIPPED``).

        Which chunk: the worker takes tokens in the order its frames arrive, which is the order of
        ``unstarted`` (token, frame and id go in under ``token_lock``). When the parent gets a byte, the
        pipe held more tokens than the worker has started chunks, so the last ``k`` ids of ``unstarted`` are
        not started, k >= 1; the worker will find tokens for all of them but the last, so the last is the
        parent's. That holds as long as no token is written behind a chunk the parent took while the worker
        has not yet passed it (the token would be taken for it): a worker with ``skips`` gets no chunk until
        its ``SKIPPED`` arrives, and no chunk is taken from a worker that has a token chunk assigned but not
        yet sent (``behind``; an id leaves it only once token, frame and id are in). A failed read proves every token chunk sent so far has started:
        ``unstarted`` is cleared, so no further read is tried for them.
        """
        # ``behind`` too: a chunk being sent enters ``unstarted`` only once sent, and a steal refused for it is
        # tried again by its sender (``steal_again``).
        victims = [v for v in workers.values() if v.unstarted or v.behind]
        if not victims:  # the common case, e.g. every apply round trip: no loop over the thieves
            return
        for thief in workers.values():
            if thief.inflight or not thief.ready or not thief.accepting or thief.lent or thief.skips:
                continue
            for victim in victims:
                if victim is not thief and self.take_back(victim, thief, out):
                    break

    def take_back(self, victim: Worker, thief: Worker, out: list[Assignment]) -> bool:
        with victim.token_lock:
            if victim.tokens[0] < 0:
                return False
            if victim.behind:
                # A chunk assigned behind another and not yet sent (another thread is pickling it): its token
                # would come after the byte taken here, and the worker would take it for the chunk taken back.
                # Chunks failed or recovered before their send leave an id here: forget those.
                victim.behind.intersection_update(victim.inflight)
                if victim.behind:
                    self.steal_again = True
                    return False
            if not victim.unstarted:
                return False
            try:
                got = os.read(victim.tokens[0], 1)
            except BlockingIOError:
                got = b""
            if not got:
                victim.unstarted.clear()  # every one has started
                return False
            cid = victim.unstarted.pop()
        chunk = victim.inflight.pop(cid)
        self.taken_back += 1
        victim.skips += 1
        victim.assigned -= 1
        victim.accepting = not self.max_tasks or victim.assigned < self.max_tasks
        if chunk.segment is not None:  # the victim never maps it: it skips the chunk before reading its data
            self.segments.release(chunk.segment, reusable=True)
            chunk.segment = None
        out.append(self.give(thief, chunk))
        return True

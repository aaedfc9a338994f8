"""The recovery policy: what becomes of a chunk whose worker was lost, for every backend.

A lost chunk's items are sorted three ways: those known not to be the culprit run again (re-queued), the
suspects (the item the worker was running, or every item of the block it was running) count an attempt each and
run again alone while ``retries`` allow, and the others fail with ``WorkerLostError`` or ``TaskTimeoutError``,
never running twice (at most once). The process scheduler reads the suspects from the worker's status page;
an engine that cannot say which task killed its worker runs each item alone first, and a lone item whose
worker dies is the suspect. Pure functions of the chunk and the job's attempt counts: unit-tested without
processes (tests/test_recovery.py).
"""

from __future__ import annotations

import contextlib
import signal
from typing import NamedTuple

from . import _channel as ch
from ._jobs import Chunk, Job
from .errors import TaskTimeoutError, WorkerLostError


class Lost(NamedTuple):
    """What to do with a lost chunk's items."""

    requeue: list[Chunk]  # to run again, in this order, ahead of new work
    failed: list[Chunk]  # one-item chunks of suspects whose retries are spent: they fail
    span: tuple[int, int] | None  # (first, last) index of the suspects when more than one: a block


def retry_allowed(job: Job, index: int) -> bool:
    """Count one attempt of item ``index``; whether it may run again (``retries`` left)."""
    tries = job.attempts[index] = job.attempts.get(index, 0) + 1
    return tries <= job.retries


def suspect_offset(chunk: Chunk | None, offset: int) -> int:
    """The first suspect's offset, from the offset a dead worker's status page shows for its running chunk.

    -1 when every item had run, for a chunk of several: the worker died pickling or sending the results, and
    one of them may be what kills it (a result whose pickling crashes), so each runs again alone.
    """
    if chunk is not None and offset >= len(chunk.items) > 1:
        return -1
    if chunk is not None and offset >= 1 == len(chunk.items):
        return 0  # alone, its result killed the worker: it is the culprit
    return offset


def lost_chunk(chunk: Chunk, offset: int, width: int) -> Lost:
    """Sort a lost chunk: items before ``offset`` ran and lost only their results (re-queued); the ``width``
    items from ``offset`` on are suspects (re-queued alone or failed, see ``retry_allowed``); the rest had not
    started (re-queued). An ``offset`` of -1 re-queues every item alone, counting no attempt.

    The chunk-mates of a suspect are not failed: they are not the culprit, and failing them would turn one
    crash into many. A block's suspects all count an attempt: which one was running is not known.
    """
    if offset < 0:
        return Lost(chunk.solos(), [], None)
    stop = min(offset + width, len(chunk.items))
    requeue = [chunk.part(0, offset)] if offset else []
    failed: list[Chunk] = []
    for k in range(offset, stop):
        (requeue if retry_allowed(chunk.job, chunk.first + k) else failed).append(chunk.part(k, k + 1))
    if stop < len(chunk.items):
        requeue.append(chunk.part(stop, len(chunk.items)))
    span = (chunk.first + offset, chunk.first + stop - 1) if stop - offset > 1 else None
    return Lost(requeue, failed, span)


def loss_error(
    chunk: Chunk,
    index: int,
    span: tuple[int, int] | None,
    *,
    pid: int | None,
    exitcode: int | None,
    timed_out: bool,
    bad_frame: str | None,
) -> BaseException:
    """The error of item ``index`` of ``chunk``, whose worker process was lost (see ``Lost.failed``)."""
    single = chunk.job.kind == ch.CALL
    what = "the call" if single else f"item #{index}"
    block = ""
    if span is not None:
        what = f"one of items #{span[0]}-#{span[1]}"
        block = (
            f"; item #{index} is one of them: they ran as one block of fast items, so which one was running "
            "is not known, and none of them runs again (at most once). Pass chunksize=1 or a "
            "task_timeout to track each item"
        )
    if timed_out:
        limit = chunk.job.task_timeout
        return TaskTimeoutError(
            f"{what} ran longer than task_timeout={limit} s; its worker (pid {pid}) was killed and replaced",
            index=None if single else index,
            timeout=limit,
        )
    if bad_frame is not None:
        return WorkerLostError(
            f"the worker process (pid {pid}) running {what} sent the parent a malformed message "
            f"({bad_frame}); it was killed and replaced. Does the task write to descriptors it did not open?",
            index=None if single else index,
            pid=pid,
            exitcode=exitcode,
        )
    signame = None
    if exitcode is not None and exitcode < 0:
        with contextlib.suppress(ValueError):
            signame = signal.Signals(-exitcode).name
    how = (
        f"killed by {signame}"
        if signame
        else f"exited with code {exitcode}"
        if exitcode is not None
        else "exited (exit code unknown)"
    )
    hint = {
        "SIGKILL": " (killed from outside, or by the out-of-memory killer)",
        "SIGSEGV": " (a segmentation fault, usually in C code)",
    }.get(signame or "", "")
    return WorkerLostError(
        f"the worker process (pid {pid}) running {what} {how}{hint}{block}",
        index=None if single else index,
        pid=pid,
        exitcode=exitcode,
        signal_name=signame,
    )

"""Deadlines: which running item has overrun its ``task_timeout``, read from the workers' status pages.

Its reason to change: how ``task_timeout`` is enforced. The supervisor calls ``overdue`` every 20 ms while a
job with a deadline is active, kills the workers it names, and the recovery fails (or retries) their item.
"""

from __future__ import annotations

from collections.abc import Iterable

from ._workers import Worker


def overdue(workers: Iterable[Worker], now: int) -> list[tuple[Worker, int, int]]:
    """(worker, chunk id, item offset) for each worker whose running item started over its timeout before
    ``now`` (monotonic ns). Workers already killed for one are left out."""
    late = []
    for w in workers:
        if w.timed_out is not None or not w.inflight:
            continue
        cid, offset, started = w.running()
        chunk = w.inflight.get(cid)
        if chunk is None or chunk.job.task_timeout is None or not started:
            continue
        if offset >= len(chunk.items):  # every item ran; the worker is sending the results
            continue
        if now - started > chunk.job.task_timeout * 1e9:
            late.append((w, cid, offset))
    return late

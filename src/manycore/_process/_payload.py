"""Payload encoding: a chunk's items into frames and shared-memory buffers, and results back into values.

Its reasons to change: how items are pickled (in band, or large buffers out of band through a segment), the
flags a chunk's frame carries, how results are rebuilt (in place on their segment, or copied), and when a
result segment goes back to its worker. No locks and no sockets but the ``SEGMENT_FREE`` notes: the sender
(``_sending``) and the reader (``_reading``) decide when these run.
"""

from __future__ import annotations

import itertools
import weakref
from collections import deque
from typing import Any

from .. import _channel as ch
from .. import _shm
from .._broadcast import collect
from .._jobs import Chunk
from .._protocol import BLOCK_SHIFT, FN_SHIFT, PARTIAL, TRACK_ITEMS
from .._serialize import dumps_frames, loads, name_item, unpack_exception

# Result segments the user may hold mapped at once, per pool. Each costs the parent a mapping (and, before
# Python 3.13, a descriptor) and its worker a segment it may not reuse (two descriptors): results beyond this
# are copied out of their segment, which then goes straight back. 20,000 results held, each in its own
# segment, would otherwise need 20,000 descriptors here and 40,000 in the workers (RLIMIT_NOFILE is often
# 1,024), and as many mappings (vm.max_map_count is 65,530).
MAX_MAPPED_RESULTS = 64


def encode(chunk: Chunk, threshold: int | None) -> None:
    """Pickle ``(first, items)`` into ``chunk.payload`` (frames) and ``chunk.buffers`` (out of band).

    Raises whatever pickling an item raises; ``chunk.broadcasts`` gets the broadcast handles found in the items.
    """
    collector = _shm.Collector(threshold)
    with collect() as chunk.broadcasts:
        chunk.payload = dumps_frames((chunk.first, chunk.items), collector)
        if (
            threshold is not None
            and len(chunk.items) <= _shm.SCAN_ITEMS
            and sum(map(len, chunk.payload)) >= threshold
            and _shm.has_large(chunk.items, threshold)
        ):
            collector.buffers.clear()  # large bytes went in band: send them out of band
            wrapped = _shm.wrap_large((chunk.first, chunk.items), threshold)
            chunk.payload = dumps_frames(wrapped, collector)
    chunk.buffers = collector.buffers


def frame_flags(chunk: Chunk, fn_length: int) -> int:
    """The flags of a chunk's frame; sets ``chunk.block``, which the recovery reads (so: before the send)."""
    job = chunk.job
    if job.task_timeout is None and len(chunk.items) > 1:
        shift = job.chunker.block_shift()
        chunk.block = 1 << shift
    else:
        shift, chunk.block = 0, 1  # a deadline needs each item's start time
    return fn_length << FN_SHIFT | shift << BLOCK_SHIFT | (TRACK_ITEMS if job.task_timeout is not None else 0)


def decode(
    frame: ch.Frame, chunk: Chunk, mapped: MappedResults, channel: ch.ParentChannel
) -> tuple[list[Any], dict[int, BaseException]]:
    """(values, per-item errors) of a result frame; raises what unpickling raises. Takes the frame's fd."""
    if frame.fd is not None:
        fd, frame.fd = frame.fd, None
        return mapped.unpack_in_place(channel, frame.body, fd), {}
    if frame.flags & PARTIAL:
        values, packed = loads(frame.body)
        errors = {k: unpack_exception(v) for k, v in packed.items()}
        if chunk.job.kind != ch.CALL:
            for k, error in errors.items():
                name_item(error, chunk.first + k)
        return values, errors
    return loads(frame.body), {}


class MappedResults:
    """Result segments the user holds mapped, and those to hand back to their workers."""

    def __init__(self) -> None:
        self.freed: deque[tuple[ch.ParentChannel, int]] = deque()  # result segments to hand back
        self.mapped: set[int] = set()  # result segments the user still holds mapped (see MAX_MAPPED_RESULTS)
        self._mapping_ids = itertools.count()

    def unpack_in_place(self, channel: ch.ParentChannel, body: bytearray | memoryview, fd: int | str) -> Any:
        """Results rebuilt on the worker's segment itself; the segment goes back once nothing uses it."""
        sid = _shm.segment_id(body)
        if len(self.mapped) >= MAX_MAPPED_RESULTS:
            # Enough results held in place: this one is copied, and its segment is free again at once.
            try:
                return _shm.unpack(memoryview(body), fd, copy=True)[0]
            finally:
                channel.send(ch.SEGMENT_FREE, sid, 0, 0)
        mapping = None
        views: list[memoryview] = []
        try:
            values, mapping, views = _shm.unpack(memoryview(body), fd)
        finally:
            if _shm.release(mapping, views):
                channel.send(ch.SEGMENT_FREE, sid, 0, 0)  # nothing kept (e.g. bytes, which copy): reuse now
            elif mapping is not None:
                # The mapping lives as long as the arrays on it; when it goes, the worker may reuse the segment.
                # The finalizer may run in any thread, even inside a lock of ours (a garbage collection): it
                # only appends and discards (each atomic), and the next send or poll passes the news on.
                key = next(self._mapping_ids)
                self.mapped.add(key)
                weakref.finalize(
                    mapping, _unmapped, self.mapped, key, self.freed, (channel, sid)
                ).atexit = False
        return values

    def send_freed(self) -> None:
        freed = self.freed
        while freed:
            channel, sid = freed.popleft()
            channel.send(ch.SEGMENT_FREE, sid, 0, 0)


def _unmapped(
    mapped: set[int],
    key: int,
    freed: deque[tuple[ch.ParentChannel, int]],
    segment: tuple[ch.ParentChannel, int],
) -> None:
    # A function, not a method: the finalizer must not keep the scheduler alive for as long as results live.
    mapped.discard(key)
    freed.append(segment)

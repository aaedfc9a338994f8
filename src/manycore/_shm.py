"""Large buffers through shared memory: numpy arrays, bytes, bytearray and memoryview without pipe copies.

Pickle protocol 5 lets an object hand its large buffers "out of band". Those above a threshold are copied once
into a shared-memory segment, and the receiver rebuilds the object on top of the segment itself, with no copy
(numpy arrays) or one (``bytes``, which must own its memory). Small buffers stay in the pickle.

Segments (``_segment``) are memfds on Linux: shared memory with no name. The kernel frees one when its last file
descriptor and its last mapping are gone, so no segment can outlive its users, not even after a crash, Ctrl-C or
a SIGKILL of the parent: there is nothing in ``/dev/shm`` to leak. A segment's fd travels with the frame that
uses it (its name, where descriptors cannot be passed: see ``_segment`` and docs/platforms.md).

- Inputs (parent -> worker): the parent reuses segments from a small pool, because writing into memory that is
  already mapped is an order of magnitude faster than into fresh pages. The worker maps the segment for the
  task and unmaps it afterwards; if the task kept a view (stored an input array), the segment is retired
  instead of reused, so the kept array never changes under it.
- Results (worker -> parent): the worker lends a segment from its own pool, and the parent rebuilds the
  result on it, with no copy: the result's memory is the segment. When nothing refers to it any more (the
  last array on it is garbage), the parent hands the segment back (``SEGMENT_FREE``) and the worker reuses it.
  Not copying matters because fresh memory is what big results cost: on the VMs we measure on, a fresh page
  costs ~10 us to fault in (0.5 GB/s), so filling 512 MiB of new results is ~1 s wherever it happens. A
  parent-side copy puts all of it in the parent, one core; here each worker faults in its own results, in
  parallel (W4b: 1.2 GB/s from a cold start against 0.5 with the copy, 2 workers). Only a bounded number
  of results stay on their segments (``_process._payload.MAX_MAPPED_RESULTS``): each costs descriptors and a
  mapping, and a process has a few hundred of one and 65,530 of the other. Later ones are copied out.
- Broadcasts (``Pool.broadcast``): one read-only segment mapped by every worker, cached until released.
"""

from __future__ import annotations

import mmap
import os

from ._protocol import OOB, SPAN  # the out-of-band block: a header, then one (offset, length) span per buffer

# Segments themselves are _segment's; these names are re-exported, used as ``_shm.Segment`` and so on.
from ._segment import KIND as KIND
from ._segment import Segment as Segment
from ._segment import close_handle as close_handle
from ._segment import given_away as given_away
from ._segment import limit_error as limit_error
from ._segment import open_handle as open_handle
from ._segment import unlink_all as unlink_all
from ._segment import unlink_name as unlink_name
from ._segment import unlink_names as unlink_names

TYPE_CHECKING = False  # workers import this module: see manycore/__init__.py
if TYPE_CHECKING:
    import pickle
else:  # the C module: pickle.py imports more (enum, re) than a worker needs at start-up
    import _pickle as pickle
if TYPE_CHECKING:
    from collections.abc import Iterable
    from typing import Any, SupportsIndex

DEFAULT_THRESHOLD = 256 << 10  # buffers from this size travel through shared memory
ALIGN = 64
MAX_POOLED_BYTES = 1 << 30
# Free segments a pool keeps, whatever their size: each costs descriptors (see ``Segment``), and a process may
# have as few as 256 (RLIMIT_NOFILE) for everything it does.
MAX_POOLED_SEGMENTS = 16


def _round(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


def pack(payload: list[bytes], buffers: list[pickle.PickleBuffer], segment: Segment | None) -> bytes:
    """Copy ``buffers`` into ``segment`` and return the out-of-band header + table + payload (its parts joined)."""
    spans: list[bytes] = []
    offset = 0
    for buf in buffers:
        raw = buf.raw()
        n = raw.nbytes
        if n:
            assert segment is not None
            segment.map[offset : offset + n] = raw
        spans.append(SPAN.pack(offset, n))
        offset = _round(offset + n)
    size, sid = (segment.size, segment.sid) if segment is not None and buffers else (0, 0)
    return b"".join([OOB.pack(size, len(buffers), sid), *spans, *payload])


def layout_size(buffers: list[pickle.PickleBuffer]) -> int:
    return sum(_round(buf.raw().nbytes) for buf in buffers)


def segment_bytes(data: bytes | bytearray | memoryview) -> int:
    """The size of the segment an out-of-band block uses."""
    return int(OOB.unpack_from(data)[0])


def segment_id(data: bytes | bytearray | memoryview) -> int:
    """The id of the segment an out-of-band block uses (0: none, all its buffers were empty)."""
    return int(OOB.unpack_from(data)[2])


def unpack(
    data: memoryview, fd: int | str | None, *, readonly: bool = False, copy: bool = False
) -> tuple[Any, mmap.mmap | None, list[memoryview]]:
    """Rebuild an object from header + table + payload and the segment's handle (fd closed here, or name).

    Returns the object, the mapping and the buffer views handed to pickle, so that the caller can tell
    afterwards (``release``) whether anything still uses the segment. With ``copy``, the segment is read
    into memory of the process's own instead, and not mapped at all: the segment is free again at once.
    """
    size, n, _ = OOB.unpack_from(data)
    table = OOB.size
    mapping = None
    owned: bytearray | None = None
    views: list[memoryview] = []
    if fd is not None:
        try:
            if size and copy and KIND == "memfd" and isinstance(fd, int):
                owned = _read_all(fd, size)
            elif size and copy:
                with open_handle(fd, size, readonly=True) as whole_map:
                    owned = bytearray(whole_map)
            elif size:
                # Mapped lazily, not with MAP_POPULATE: a worker often reads only part of a broadcast, and even
                # a full read is quicker by faults (the kernel maps 16 pages per fault) than populated up front
                # (256 MiB: 20 ms against 50 ms, measured).
                mapping = open_handle(fd, size, readonly)
        except OSError as exc:
            raise limit_error(exc, "a shared-memory segment") from exc
        finally:
            close_handle(fd)
    source = owned if owned is not None else mapping
    whole = memoryview(source) if source is not None else memoryview(b"")
    for k in range(n):
        offset, length = SPAN.unpack_from(data, table + k * SPAN.size)
        views.append(whole[offset : offset + length])
    whole.release()
    obj = pickle.loads(data[table + n * SPAN.size :], buffers=views)
    return obj, mapping, views


def _read_all(fd: int, size: int) -> bytearray:
    """A segment's bytes, read (not mapped) into a fresh buffer."""
    owned = bytearray(size)
    view = memoryview(owned)
    got = 0
    while got < size:
        n = os.preadv(fd, [view[got:]], got)
        if n <= 0:
            break
        got += n
    view.release()
    return owned


def release(mapping: mmap.mmap | None, views: Iterable[memoryview]) -> bool:
    """Drop our views and mapping of a segment; False when the task kept some view of it."""
    kept = False
    for view in views:
        try:
            view.release()
        except BufferError:
            kept = True
    if mapping is not None and not kept:
        try:
            mapping.close()
        except BufferError:
            kept = True
    return not kept


BYTES_TYPES = (bytes, bytearray, memoryview)


def _restore(buf: Any, kind: str) -> Any:
    # bytes and bytearray own their memory: one copy out of the segment; a memoryview stays a view of it.
    if kind == "bytes":
        return bytes(buf)
    if kind == "bytearray":
        return bytearray(buf)
    return memoryview(buf)


class _Wrapped:
    """Stands in for a large bytes-like object so that pickle sends its memory out of band.

    pickle writes bytes and bytearray in band before any hook runs; a PickleBuffer is what goes out of band.
    """

    __slots__ = ("obj",)

    def __init__(self, obj: bytes | bytearray | memoryview) -> None:
        self.obj = obj

    def __reduce_ex__(self, protocol: SupportsIndex) -> tuple[Any, tuple[Any, str]]:
        view = memoryview(self.obj)
        if not view.contiguous:
            view = memoryview(view.tobytes())
        return (_restore, (pickle.PickleBuffer(view.cast("B")), type(self.obj).__name__))


# Chunks of more items than this are not scanned for large bytes: automatic chunking caps a chunk near 1 MiB,
# so such chunks are made of small items, and scanning them item by item would cost more than it saves.
SCAN_ITEMS = 64


def has_large(obj: Any, threshold: int, depth: int = 5) -> bool:
    """Whether ``obj`` holds a bytes-like of ``threshold`` bytes or more (where ``wrap_large`` looks)."""
    kind = type(obj)
    if kind in BYTES_TYPES:
        return memoryview(obj).nbytes >= threshold
    if depth == 0:
        return False
    if kind is tuple or kind is list:
        return any(has_large(x, threshold, depth - 1) for x in obj)
    if kind is dict:
        return any(has_large(x, threshold, depth - 1) for x in obj.values())
    return False


def wrap_large(obj: Any, threshold: int, depth: int = 5) -> Any:
    """A copy of ``obj`` whose large bytes-likes (also inside tuples, lists, dict values) go out of band.

    Called only when a payload came out large, so small payloads never pay for the scan.
    """
    kind = type(obj)
    if kind in BYTES_TYPES:
        return _Wrapped(obj) if memoryview(obj).nbytes >= threshold else obj
    if depth == 0:
        return obj
    if kind is tuple or kind is list:
        return kind(wrap_large(x, threshold, depth - 1) for x in obj)
    if kind is dict:
        return {k: wrap_large(v, threshold, depth - 1) for k, v in obj.items()}
    return obj


# Segments behind arrays made by ``shared_array``, by the address where the parent maps them.
_SHARED: dict[int, Segment] = {}


def _address(buffer: Any) -> int:
    import numpy

    return int(numpy.frombuffer(buffer, dtype=numpy.uint8).ctypes.data)


def shared_array(shape: Any, dtype: Any = float, order: str = "C") -> Any:
    """A numpy array whose memory is a shared-memory segment, so ``Pool.broadcast`` can share it with no copy.

    >>> import manycore
    >>> table = manycore.shared_array((1000, 1000))
    >>> table[:] = 1.0
    >>> with manycore.Pool(2) as pool:
    ...     handle = pool.broadcast(table)   # nothing is copied: workers map the same memory
    ...     pool.map(lambda args: float(args[0][args[1]].sum()), [(handle, 0), (handle, 1)])
    [1000.0, 1000.0]

    Broadcasting an ordinary array copies it once into shared memory; allocating it here first avoids that
    copy, which matters for arrays of hundreds of MiB (fresh pages cost far more to fill than to read).
    """
    import weakref

    import numpy

    dt = numpy.dtype(dtype)
    count = 1
    for n in (shape,) if isinstance(shape, int) else shape:
        count *= int(n)
    segment = Segment(count * dt.itemsize)
    array = numpy.ndarray(shape, dtype=dt, buffer=segment.map, order=order)  # type: ignore[arg-type]
    base = _address(segment.map)
    _SHARED[base] = segment
    weakref.finalize(array, _forget, base)
    return array


def _forget(base: int) -> None:
    segment = _SHARED.pop(base, None)
    if segment is not None and segment.open:
        segment.forget_handle()  # the mapping stays while views of the array live


def find_shared(buffers: list[pickle.PickleBuffer]) -> tuple[Segment, list[tuple[int, int]]] | None:
    """If every buffer lies inside one ``shared_array`` segment: that segment and each (offset, length)."""
    if not buffers or not _SHARED:
        return None
    found: Segment | None = None
    spans = []
    for buf in buffers:
        raw = buf.raw()
        addr = _address(raw)
        for base, segment in _SHARED.items():
            if base <= addr and addr + raw.nbytes <= base + segment.size and segment.open:
                if found is not None and found is not segment:
                    return None
                found = segment
                spans.append((addr - base, raw.nbytes))
                break
        else:
            return None
    assert found is not None
    return found, spans


def pack_in_place(payload: bytes, segment: Segment, spans: list[tuple[int, int]]) -> bytes:
    """Like ``pack`` for buffers already inside ``segment``: nothing is copied."""
    table = [SPAN.pack(offset, length) for offset, length in spans]
    return b"".join([OOB.pack(segment.size, len(spans), segment.sid), *table, payload])


class Collector:
    """``buffer_callback`` for pickle: keeps buffers from ``threshold`` bytes out of band."""

    __slots__ = ("buffers", "threshold")

    def __init__(self, threshold: int | None) -> None:
        self.threshold = threshold
        self.buffers: list[pickle.PickleBuffer] = []

    def __call__(self, buf: pickle.PickleBuffer) -> bool:
        if self.threshold is None:
            return True
        try:
            size = buf.raw().nbytes
        except BufferError:  # not contiguous: stays in band
            return True
        if size < self.threshold:
            return True
        self.buffers.append(buf)
        return False  # out of band


class _NoLock:
    def __enter__(self) -> None:
        pass

    def __exit__(self, *exc: object) -> None:
        pass


class SegmentPool:
    """Reusable segments: the parent's for inputs, a worker's for results (see the module docstring)."""

    def __init__(self, threads: bool = True, exact: bool = False) -> None:
        # ``exact``: a segment is taken only for a size close to its own, and sizes are not rounded up. For
        # results, which live in their segment for as long as the user keeps them.
        self._exact = exact
        self._free: list[Segment] = []
        # Once closed, a segment released late (a chunk that comes back, or whose worker died, after the pool
        # shut down) is closed at once: pooled, it would stay mapped for as long as the Pool object lives.
        self._closed = False
        if threads:
            import threading  # the parent's pool is shared by threads; a worker's is not

            self._lock: Any = threading.Lock()
        else:
            self._lock = _NoLock()

    def acquire(self, size: int) -> Segment:
        with self._lock:
            fits = [s for s in self._free if size <= s.size and (not self._exact or s.size <= 2 * size)]
            if fits:
                best = min(fits, key=lambda s: s.size)
                self._free.remove(best)
                return best
        if self._exact:
            return Segment(size)
        # Round up, so that inputs of similar sizes can share segments.
        return Segment(max(size, 1 << 20) if size < (64 << 20) else size)

    def release(self, segment: Segment, reusable: bool) -> None:
        with self._lock:
            if not reusable or self._closed:
                segment.close()
                return
            self._free.append(segment)
            total = sum(s.size for s in self._free)
            while (total > MAX_POOLED_BYTES or len(self._free) > MAX_POOLED_SEGMENTS) and self._free:
                victim = self._free.pop(0)
                total -= victim.size
                victim.close()

    def forget(self) -> None:
        """In a child of ``os.fork()``: close the pooled segments without the lock (a parent's thread may hold it)."""
        for segment in self._free:
            segment.close()
        self._free.clear()
        self._closed = True
        self._lock = _NoLock()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            for segment in self._free:
                segment.close()
            self._free.clear()

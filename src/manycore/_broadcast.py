"""``Pool.broadcast``: send a large read-only object to each worker once, instead of with every task.

The object is pickled once, its large buffers (numpy arrays, ...) out of band into one shared-memory segment.
A worker receives the segment the first time a task that uses the handle is sent to it, maps it read-only and
keeps the rebuilt object until the handle is released; numpy arrays in it are views of that one segment, so N
workers share one copy of the data. Tasks receive the object itself: the handle unpickles to it.

How the scheduler learns which handles a task uses: pickling a handle calls ``Broadcast.__reduce__``, which
records its id in the ``collect()`` context active in that thread.
"""

from __future__ import annotations

import itertools
import threading
from typing import Any, Generic, TypeVar

from . import _shm
from ._serialize import dumps
from ._wire import BROADCASTS, broadcast_value

T = TypeVar("T")

_ids = itertools.count(1)
_local = threading.local()


class collect:  # lower case: used as a function, ``with collect() as ids``
    """Ids of the broadcast handles pickled inside this block, in this thread.

    A class rather than a ``contextlib`` generator: it runs once per chunk sent, on the hot path.
    """

    __slots__ = ("ids", "outer")

    def __enter__(self) -> set[int]:
        self.outer: set[int] | None = getattr(_local, "ids", None)
        self.ids: set[int] = set()
        _local.ids = self.ids
        return self.ids

    def __exit__(self, *exc: object) -> None:
        _local.ids = self.outer
        if self.outer is not None:
            self.outer |= self.ids


class Broadcast(Generic[T]):
    """A handle for an object sent to every worker once. Pass it in task arguments; tasks get the object.

    >>> import manycore, numpy as np
    >>> with manycore.Pool(2) as pool:
    ...     table = pool.broadcast(np.arange(1_000_000))
    ...     pool.map(lambda h_i: int(h_i[0][h_i[1]]), [(table, 5), (table, 7)])
    [5, 7]
    """

    def __init__(self, obj: T, release: Any) -> None:
        self.bid = next(_ids)
        self._release = release
        collector = _shm.Collector(1)  # every buffer out of band: workers share it instead of copying it
        payload = dumps(obj, collector)
        shared = _shm.find_shared(collector.buffers)
        self._owns_segment = shared is None
        if shared is not None:  # made with shared_array: the workers map the array's own memory
            self.segment: _shm.Segment | None = shared[0]
            self.packed = _shm.pack_in_place(payload, shared[0], shared[1])
        else:
            self.segment = _shm.Segment(_shm.layout_size(collector.buffers)) if collector.buffers else None
            self.packed = _shm.pack([payload], collector.buffers, self.segment)
        self.nbytes = len(self.packed) + (self.segment.size if self.segment else 0)
        self._obj: object = obj  # keeps a shared_array's segment open while the handle lives
        BROADCASTS[self.bid] = obj  # unpickled in the parent (e.g. in a result), it is the original
        self.released = False

    def __reduce__(self) -> tuple[Any, tuple[int]]:
        if self.released:
            raise ValueError(f"broadcast #{self.bid} was released and cannot be used in new tasks")
        ids = getattr(_local, "ids", None)
        if ids is not None:
            ids.add(self.bid)
        return (broadcast_value, (self.bid,))

    def release(self) -> None:
        """Free the shared memory, in the parent now and in each worker at its next message."""
        if not self.released:
            self.released = True
            BROADCASTS.pop(self.bid, None)
            self._release(self)
            if self.segment is not None and self._owns_segment:
                self.segment.close()
            self._obj = None

    def __repr__(self) -> str:
        state = "released" if self.released else f"{self.nbytes} bytes"
        return f"<manycore.Broadcast #{self.bid} {state}>"

"""Payload encoding (``manycore._process._payload``) on its own: a chunk into frames and back, without a worker.

End to end (segments handed back, results kept mapped) it is tested in tests/test_shared_memory.py.
"""

from __future__ import annotations

import pickle
import threading

import pytest

from manycore import _channel as ch
from manycore._engine import run_chunk
from manycore._jobs import Chunk, Job, SchedulerBase
from manycore._options import CallOptions
from manycore._process._payload import MappedResults, decode, encode, frame_flags
from manycore._protocol import BLOCK_SHIFT, FN_SHIFT, PARTIAL, TRACK_ITEMS
from manycore._serialize import loads

from tasks import fail_on

pytestmark = pytest.mark.timeout(60)


def make_chunk(items: list[object], *, first: int = 0, task_timeout: float | None = None) -> Chunk:
    return Chunk(Job(SchedulerBase(2), fail_on, CallOptions(task_timeout=task_timeout)), first, items)


def test_small_items_travel_in_band() -> None:
    chunk = make_chunk([1, "two", (3,)], first=7)
    encode(chunk, 1024)
    assert chunk.buffers == []
    assert chunk.payload is not None
    assert loads(b"".join(chunk.payload)) == (7, [1, "two", (3,)])


def test_large_bytes_go_out_of_band_only_with_a_threshold() -> None:
    big = bytes(range(256)) * 16  # 4 KiB
    chunk = make_chunk([big, 1])
    encode(chunk, 1024)
    assert [len(b.raw()) for b in chunk.buffers] == [len(big)]
    assert chunk.payload is not None and sum(map(len, chunk.payload)) < len(big)
    in_band = make_chunk([big, 1])
    encode(in_band, None)
    assert in_band.buffers == []


def test_an_item_that_does_not_pickle_raises() -> None:
    with pytest.raises(TypeError):
        encode(make_chunk([1, threading.Lock()]), 1024)


def test_frame_flags_carry_the_function_length_and_the_tracking() -> None:
    timed = make_chunk([1, 2, 3], task_timeout=5.0)
    flags = frame_flags(timed, 300)
    assert flags >> FN_SHIFT == 300
    assert flags & TRACK_ITEMS and timed.block == 1  # a deadline needs each item's start time
    cheap = make_chunk(list(range(100)))
    cheap.job.chunker.observe_time(100_000, 0.01)  # 100 ns an item: tracked in blocks
    flags = frame_flags(cheap, 0)
    assert not flags & TRACK_ITEMS
    assert cheap.block > 1 and (flags >> BLOCK_SHIFT) & 31 == cheap.block.bit_length() - 1
    alone = make_chunk([1])
    alone.job.chunker.observe_time(100_000, 0.01)
    frame_flags(alone, 0)
    assert alone.block == 1


def test_partial_results_name_the_item_that_raised() -> None:
    chunk = make_chunk([1, 2, 3, 4], first=0)
    values, errors, _ = run_chunk(fail_on, ch.MAP, chunk.first, list(chunk.items))
    frame = ch.Frame(ch.RESULT, 1, 0, PARTIAL, bytearray(pickle.dumps((values, errors))))
    got, raised = decode(frame, chunk, MappedResults(), None)  # no segment: no channel to hand it back on
    assert [got[k] for k in (0, 1, 3)] == values[:2] + values[3:]
    (k, error) = next(iter(raised.items()))
    assert k == 2 and "raised by item #2 of the map" in " ".join(getattr(error, "__notes__", ()))


def test_whole_results_decode_as_they_are() -> None:
    chunk = make_chunk([1, 2])
    frame = ch.Frame(ch.RESULT, 1, 0, 0, bytearray(pickle.dumps([10, 20])))
    assert decode(frame, chunk, MappedResults(), None) == ([10, 20], {})

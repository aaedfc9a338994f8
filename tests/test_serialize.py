"""The parent's framed pickling (``_serialize.dumps_frames``): the same bytes as ``dumps``, in parts."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from manycore._serialize import dumps, dumps_frames, loads


def many_small_items() -> tuple[int, list[bytes]]:
    """A W7-like chunk: a thousand distinct 1 KiB objects, so the pickler writes many frames."""
    return 7, [bytes([k % 256]) * 1024 for k in range(1000)]


@pytest.mark.parametrize(
    "obj",
    [
        many_small_items(),
        (0, [1, "two", 3.0]),
        bytearray(b"y" * (1 << 20)),  # large: the pickler hands the object itself to write()
        np.arange(300_000, dtype=np.float64).reshape(600, 500),  # in band, the pickler writes a PickleBuffer
        np.asfortranarray(np.arange(300_000, dtype=np.float64).reshape(600, 500)),
        lambda x: x + 1,
    ],
    ids=[
        "1000 KiB items",
        "small tuple",
        "large bytearray",
        "C array",
        "F array",
        "lambda",
    ],
)
def test_frames_join_to_the_same_pickle_as_dumps(obj: object) -> None:
    frames = dumps_frames(obj)
    assert all(type(f) is bytes for f in frames)
    assert b"".join(frames) == dumps(obj)


def test_a_long_payload_comes_in_several_frames_that_unpickle_to_the_input() -> None:
    obj = many_small_items()
    frames = dumps_frames(obj)
    assert len(frames) > 4  # about 1 MiB in frames of about 64 KiB: no single joined block
    assert loads(b"".join(frames)) == obj


def test_the_payload_does_not_follow_later_changes_to_an_in_band_buffer() -> None:
    """A chunk may be sent again after a worker dies: its payload must hold the values pickled, not a view."""
    data = bytearray(b"a" * (1 << 20))
    arr = np.zeros(200_000)
    frames = dumps_frames((data, pickle.PickleBuffer(arr)))
    data[:] = b"b" * len(data)
    arr[:] = 1.0
    restored_data, restored = loads(b"".join(frames))
    assert bytes(restored_data) == b"a" * (1 << 20)
    assert not np.asarray(restored).any()

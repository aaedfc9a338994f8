"""The framed transport (``_channel``), over a real socket pair."""

from __future__ import annotations

import socket
import threading

from manycore import _channel as ch


def send_soon(sock: socket.socket, chunk_id: int, body: bytes) -> threading.Thread:
    """Send from another thread: a frame larger than the socket buffer blocks until it is read."""
    sender = threading.Thread(target=ch.send_frame, args=(sock, ch.MAP, chunk_id, 0, 0, body))
    sender.start()
    return sender


def test_a_recycled_body_is_reused_for_the_next_large_frame() -> None:
    """A worker hands back a chunk's body once unpickled; the next large frame fills it, not fresh memory."""
    parent, worker = socket.socketpair()
    with parent, worker:
        reader = ch.FrameReader(worker)
        pending: list[ch.Frame] = []
        first_body = bytes(range(256)) * 4096  # 1 MiB: a large frame, read into a buffer of its own
        sender = send_soon(parent, 1, first_body)
        first = ch.recv_frame(reader, pending)
        sender.join()
        assert first is not None and bytes(first.body) == first_body
        reader.recycle(first.body)
        second_body = bytes(reversed(range(256))) * 3000  # smaller: fits in the recycled buffer
        sender = send_soon(parent, 2, second_body)
        second = ch.recv_frame(reader, pending)
        sender.join()
        assert second is not None and second.chunk_id == 2
        assert isinstance(second.body, memoryview) and second.body.obj is first.body
        assert bytes(second.body) == second_body
        # A larger frame than the spare gets fresh memory, and is still read whole.
        third_body = b"x" * (2 << 20)
        sender = send_soon(parent, 3, third_body)
        third = ch.recv_frame(reader, pending)
        sender.join()
        assert third is not None and bytes(third.body) == third_body

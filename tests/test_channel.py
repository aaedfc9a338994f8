"""The framed transport (``_channel``), over a real socket pair."""

from __future__ import annotations

import socket
import threading

from manycore import _channel as ch
from manycore import _protocol


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


def test_frames_name_their_fields_per_kind() -> None:
    """No reader needs to know that the header's third field is a pid, a compute time or a function key."""
    parent, worker = socket.socketpair()
    with parent, worker:
        ch.send_frame(worker, _protocol.READY, 0, 4321, 0)
        ch.send_frame(worker, _protocol.RESULT, 7, 123_456, _protocol.PARTIAL, b"body")
        ch.send_frame(worker, _protocol.SKIPPED, 8, 0, 0)
        reader = ch.FrameReader(parent)
        pending: list[ch.Frame] = []
        ready, result, skipped = (ch.recv_frame(reader, pending) for _ in range(3))
        assert ready is not None and ready.kind == _protocol.READY and ready.pid == 4321
        assert result is not None and result.kind == _protocol.RESULT
        assert (result.chunk_id, result.compute_ns, result.flags) == (7, 123_456, _protocol.PARTIAL)
        assert bytes(result.body) == b"body"
        assert skipped is not None and (skipped.kind, skipped.chunk_id) == (_protocol.SKIPPED, 8)
    task = _protocol.Frame(_protocol.MAP, 3, 42, 5 << _protocol.FN_SHIFT, bytearray())
    assert (task.fn_key, task.flags >> _protocol.FN_SHIFT) == (42, 5)
    init = _protocol.Frame(_protocol.INIT, 0, 17, 0, bytearray())
    assert init.meta_len == 17
    notice = _protocol.Frame(_protocol.SEGMENT_FREE, 9, 0, 0, bytearray())
    assert notice.segment_id == 9 and notice.broadcast_id == 9  # chunk_id's names for its kinds
    notice.fd = 5  # a real slot of its own
    assert (notice.fd, notice.chunk_id, notice.arg) == (5, 9, 0)


def test_the_header_check_gets_named_fields_before_the_body_is_read() -> None:
    """The parent's check refuses a frame from its header alone: nothing of a refused body is read."""
    seen: list[tuple[int, int, int, int]] = []

    def check(frame: ch.Frame, length: int) -> None:
        seen.append((frame.kind, frame.arg, len(frame.body), length))
        if frame.kind == _protocol.RESULT:
            raise ch.ProtocolError("refused")

    parent, worker = socket.socketpair()
    channel = ch.ParentChannel(parent)
    try:
        channel.set_check(check)
        ch.send_frame(worker, _protocol.READY, 0, 99, 0)
        ch.send_frame(worker, _protocol.RESULT, 1, 5, 0, b"x" * 1000)
        frames = channel.read_frames()
        assert frames is not None and [(f.kind, f.pid) for f in frames] == [(_protocol.READY, 99)]
        assert seen == [(_protocol.READY, 99, 0, 0), (_protocol.RESULT, 5, 0, 1000)]
        assert isinstance(channel.error, ch.ProtocolError)
        assert channel.read_frames() == []  # nothing after a refused frame
    finally:
        channel.close()
        worker.close()


def test_a_names_message_is_refused_where_descriptors_travel_or_when_garbled() -> None:
    """A worker cannot make the parent open (or later unlink) a name of its choosing: NAMES messages exist only
    where descriptors cannot be passed, and even there a garbled one is a refused frame, not a crash."""
    a, b = socket.socketpair()
    with a, b:
        reader = ch.FrameReader(b, check=lambda frame, length: None)
        body = b"\xff\xfe"  # not UTF-8
        a.sendall(
            _protocol.HEADER.pack(_protocol.NAMES, 0, 1, 0, len(body))
            + body
            + _protocol.HEADER.pack(_protocol.RESULT, 1, 0, 0, 0)
        )
        assert reader.read() == []
        assert isinstance(reader.error, ch.ProtocolError)
        assert not reader.fds
        assert ("descriptors travel" in str(reader.error)) == ch.PASS_FDS

"""Framed messages over a worker's socket: the only way bytes move between the parent and a worker.

A frame is a fixed 33-byte header (kind, chunk id, two integers, body length) followed by the body, written with
one ``sendmsg`` so that a large body is never concatenated. The parent side never blocks on a write: whatever the
kernel does not take at once waits in a backlog that the supervisor flushes when the socket is writable. That is
what rules out the classic deadlock where the parent waits to write a task while the worker waits to write a
result. The worker side is plain blocking I/O (``recv_frame``/``send_frame``).
"""

from __future__ import annotations

import socket
import struct
from collections import deque

HEADER = struct.Struct("<BQQQQ")

# Frame kinds, parent -> worker.
MAP, STARMAP, CALL, STOP = 1, 2, 3, 4
# Frame kinds, worker -> parent.
READY, RESULT, INIT_FAILED = 11, 12, 13


class Frame:
    """One message. (Not a NamedTuple: importing typing would cost every worker ~10 ms of start-up.)"""

    __slots__ = ("a", "b", "body", "chunk_id", "kind")

    def __init__(self, kind: int, chunk_id: int, a: int, b: int, body: bytearray) -> None:
        self.kind = kind
        self.chunk_id = chunk_id
        self.a = a
        self.b = b
        self.body = body


class ParentChannel:
    """Parent end of one worker's socket: thread-safe non-blocking sends, incremental frame reads."""

    def __init__(self, sock: socket.socket) -> None:
        import threading  # parent side only: workers start faster without it

        sock.setblocking(False)
        self.sock = sock
        self.closed = False
        self._lock = threading.Lock()
        self._backlog: deque[memoryview] = deque()
        self._head = bytearray(HEADER.size)
        self._head_got = 0
        self._body: bytearray | None = None
        self._body_got = 0
        self._parsed: tuple[int, int, int, int] = (0, 0, 0, 0)

    def fileno(self) -> int:
        return self.sock.fileno()

    def send(self, kind: int, chunk_id: int, a: int, b: int, *parts: bytes) -> bool:
        """Send a frame without blocking; True when part of it waits in the backlog for ``flush``."""
        views = [memoryview(HEADER.pack(kind, chunk_id, a, b, sum(len(p) for p in parts)))]
        views.extend(memoryview(p) for p in parts if len(p))
        with self._lock:
            if self.closed:
                return False
            self._backlog.extend(views)
            return self._flush_locked()

    def flush(self) -> bool:
        with self._lock:
            return self._flush_locked()

    @property
    def pending(self) -> bool:
        return bool(self._backlog)

    def _flush_locked(self) -> bool:
        backlog = self._backlog
        while backlog:
            try:
                sent = self.sock.sendmsg(list(backlog)[:64])
            except (BlockingIOError, InterruptedError):
                return True
            except OSError:
                # The worker is gone; the supervisor learns that from the socket's EOF and reassigns its work.
                self.closed = True
                backlog.clear()
                return False
            while sent:
                head = backlog[0]
                if sent >= len(head):
                    sent -= len(head)
                    backlog.popleft()
                else:
                    backlog[0] = head[sent:]
                    sent = 0
        return False

    def read_frames(self) -> list[Frame] | None:
        """Read whatever the socket holds; complete frames in order, or None once the worker has closed it."""
        frames: list[Frame] = []
        sock = self.sock
        while True:
            try:
                if self._body is None:
                    n = sock.recv_into(memoryview(self._head)[self._head_got :])
                    if n == 0:
                        return frames or None
                    self._head_got += n
                    if self._head_got < HEADER.size:
                        continue
                    kind, chunk_id, a, b, length = HEADER.unpack(self._head)
                    self._head_got = 0
                    self._parsed = (kind, chunk_id, a, b)
                    self._body = bytearray(length)
                    self._body_got = 0
                    if length:
                        continue
                else:
                    n = sock.recv_into(memoryview(self._body)[self._body_got :])
                    if n == 0:
                        return frames or None
                    self._body_got += n
                    if self._body_got < len(self._body):
                        continue
            except (BlockingIOError, InterruptedError):
                return frames
            except OSError:
                return frames or None
            frames.append(Frame(*self._parsed, self._body))
            self._body = None

    def close(self) -> None:
        with self._lock:
            self.closed = True
            self._backlog.clear()
            self.sock.close()


def recv_exact(sock: socket.socket, n: int) -> bytearray | None:
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        k = sock.recv_into(view[got:])
        if k == 0:
            return None
        got += k
    return buf


def recv_frame(sock: socket.socket) -> Frame | None:
    """Blocking read of one frame (worker side); None when the parent has gone."""
    head = recv_exact(sock, HEADER.size)
    if head is None:
        return None
    kind, chunk_id, a, b, length = HEADER.unpack(head)
    body = recv_exact(sock, length) if length else bytearray()
    if body is None:
        return None
    return Frame(kind, chunk_id, a, b, body)


def send_frame(sock: socket.socket, kind: int, chunk_id: int, a: int, b: int, body: bytes = b"") -> None:
    head = HEADER.pack(kind, chunk_id, a, b, len(body))
    if len(body) < 65536:
        sock.sendall(head + body)
    else:
        sock.sendall(head)
        sock.sendall(body)

"""Framed messages over a worker's socket: the only way bytes move between the parent and a worker.

A frame is a fixed 33-byte header (kind, chunk id, ``arg``, ``flags``, body length; what each means per kind is
in ``_protocol``) followed by the body, written with one ``sendmsg`` so that a large body is never concatenated. The parent side never blocks on a write: whatever the
kernel does not take at once waits in a backlog that the supervisor flushes when the socket is writable. That is
what rules out the classic deadlock where the parent waits to write a task while the worker waits to write a
result. The worker side is plain blocking I/O (``recv_frame``/``send_frame``).
"""

from __future__ import annotations

import _socket as socket  # the C module: no enum classes to build at start-up
import array
import itertools
import os
from collections import deque

from . import _platform, _segment

# The kinds are re-exported: the scheduler, jobs, results and engine name frame (and job) kinds ``_channel.MAP``.
from ._protocol import BROADCAST as BROADCAST
from ._protocol import CALL as CALL
from ._protocol import HEADER, MAX_NAMES_BODY, NAMES
from ._protocol import INIT as INIT
from ._protocol import INIT_FAILED as INIT_FAILED
from ._protocol import MAP as MAP
from ._protocol import READY as READY
from ._protocol import RELEASE as RELEASE
from ._protocol import RESULT as RESULT
from ._protocol import SEGMENT_FREE as SEGMENT_FREE
from ._protocol import SKIPPED as SKIPPED
from ._protocol import STARMAP as STARMAP
from ._protocol import STOP as STOP
from ._protocol import Frame as Frame

TYPE_CHECKING = False  # see manycore/__init__.py: workers avoid importing typing
if TYPE_CHECKING:
    from collections.abc import Callable

    # Called with each header (a Frame whose body is not read yet) and its body's length.
    Check = Callable[[Frame, int], None]

RECYCLE_MAX = 16 << 20  # a recycled frame body is kept up to this size
# Descriptors that arrive with a frame are close-on-exec from the first moment: a program that a task or the
# user's process starts (os.system, subprocess with close_fds=False) must not inherit a segment.
RECV_FLAGS = getattr(socket, "MSG_CMSG_CLOEXEC", 0)
MAX_FDS = 16  # file descriptors one recvmsg can take (shared-memory segments travel as memfds)
# Descriptors travel with the bytes (SCM_RIGHTS) where the platform can; elsewhere segments travel by name, in a
# NAMES frame ahead of the frame that uses them, and plain send/recv_into move the bytes (Windows has no
# sendmsg).
PASS_FDS = _platform.has("fd_passing")
NAME_START = ("/mc", "mc")  # every segment name manycore makes (see _segment._new_name)


class ProtocolError(Exception):
    """A frame that the receiver's checks refuse: the peer is broken (or hostile), never this process."""


def _rights(fds: tuple[int, ...] | list[int]) -> list[tuple[int, int, bytes]]:
    return [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())] if fds else []


def _names_frame(names: tuple[int | str, ...]) -> bytes:
    """The NAMES frame that carries ``names`` ahead of their frame (where descriptors cannot be passed)."""
    body = "\0".join(map(str, names)).encode()
    return HEADER.pack(NAMES, 0, len(names), 0, len(body)) + body


class ParentChannel:
    """Parent end of one worker's socket: thread-safe non-blocking sends, incremental frame reads."""

    def __init__(self, sock: socket.socket) -> None:
        import threading  # parent side only: workers start faster without it

        sock.setblocking(False)
        self.sock = sock
        self.closed = False
        self._lock = threading.Lock()
        # Views still to send, each with the fds that must leave with its first byte (a frame's first view).
        self._backlog: deque[tuple[memoryview, tuple[int, ...]]] = deque()
        self._reader = FrameReader(sock)

    @property
    def names(self) -> set[str]:
        """The names of the segments this worker sent (where segments travel by name)."""
        return self._reader.names_seen

    @property
    def fds(self) -> deque[int | str]:
        """File descriptors received, in order; a frame that announces a segment takes the next one."""
        return self._reader.fds

    def fileno(self) -> int:
        return self.sock.fileno()

    def send(
        self, kind: int, chunk_id: int, arg: int, flags: int, *parts: bytes, fds: tuple[int | str, ...] = ()
    ) -> bool:
        """Send a frame without blocking; True when part of it waits in the backlog for ``flush``.

        ``fds`` are duplicated into the worker (SCM_RIGHTS) with the frame's first byte; the caller may close
        its own copies once this returns.
        """
        length = 0
        for p in parts:
            length += len(p)
        head = HEADER.pack(kind, chunk_id, arg, flags, length)
        dups: tuple[int, ...] = ()
        if fds and PASS_FDS:
            dups = tuple(os.dup(int(fd)) for fd in fds)
        elif fds:
            head = _names_frame(fds) + head
        views = [(memoryview(head), dups)]
        views.extend((memoryview(p), ()) for p in parts if len(p))
        with self._lock:
            if self.closed:
                _close_all(views[0][1])
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
            # One sendmsg carries at most one frame's fds, at its start, so each fd leaves with its frame.
            batch = [backlog[0]]
            if len(backlog) > 1:
                for item in list(itertools.islice(backlog, 1, 64)):
                    if item[1]:
                        break
                    batch.append(item)
            fds = batch[0][1]
            try:
                if PASS_FDS:
                    sent = self.sock.sendmsg([view for view, _ in batch], _rights(fds))
                elif len(batch) > 1 and sum(len(view) for view, _ in batch) <= 65536:
                    sent = self.sock.send(b"".join([view for view, _ in batch]))
                else:
                    sent = self.sock.send(batch[0][0])
            except (BlockingIOError, InterruptedError):
                return True
            except OSError:
                # The worker is gone; the supervisor learns that from the socket's EOF and reassigns its work.
                self.closed = True
                self._drop_backlog()
                return False
            if fds:
                _close_all(fds)  # the kernel holds its own copies now
                backlog[0] = (backlog[0][0], ())
            while sent:
                view, _ = backlog[0]
                if sent >= len(view):
                    sent -= len(view)
                    backlog.popleft()
                else:
                    backlog[0] = (view[sent:], ())
                    sent = 0
        return False

    def _drop_backlog(self) -> None:
        for _, fds in self._backlog:
            _close_all(fds)
        self._backlog.clear()

    def set_check(self, check: Check) -> None:
        """Have every frame header that arrives from now on checked (see ``FrameReader``)."""
        self._reader.check = check

    @property
    def error(self) -> ProtocolError | None:
        """The first frame the reader's ``check`` refused; nothing after it is read."""
        return self._reader.error

    @property
    def partial(self) -> bool:
        """Part of a frame has arrived and the rest has not (its descriptors may already be in ``fds``)."""
        return self._reader.partial

    def read_frames(self) -> list[Frame] | None:
        """Read whatever the socket holds; complete frames in order, or None once the worker has closed it.

        After a frame that ``check`` refuses, this returns the frames before it and then nothing more: see
        ``error``.
        """
        try:
            return self._reader.read()
        except (BlockingIOError, InterruptedError):
            return []
        except OSError:
            return None

    def close(self) -> None:
        with self._lock:
            self.closed = True
            self._drop_backlog()
            self.sock.close()
            _close_all(self._reader.fds)
            self._reader.fds.clear()
            # The check is usually a bound method of the object that owns this channel: without this, a closed
            # worker's status page and segments would wait for the cyclic garbage collector.
            self._reader.check = None


def _close_all(fds: tuple[int, ...] | deque[int | str]) -> None:
    for fd in fds:
        if isinstance(fd, str):
            continue  # a segment's name: its owner unlinks it
        try:  # noqa: SIM105 (no contextlib: workers import as little as they can)
            os.close(fd)
        except OSError:
            pass


class FrameReader:
    """Splits a byte stream into frames with as few ``recv`` calls as possible.

    Small frames are read many at a time into one buffer; a large body gets its own buffer of the exact size,
    filled in place, so big payloads are copied once. Works on blocking and non-blocking sockets alike:
    ``read`` returns the frames completed by one ``recv``, and raises BlockingIOError when nothing was there.
    """

    BUFFER = 256 << 10

    def __init__(self, sock: socket.socket, check: Check | None = None) -> None:
        self._sock = sock
        # Called with each header (a Frame, its body not read yet) and the body's length before anything is
        # allocated for the body; raises ProtocolError to refuse the frame. The parent checks what workers
        # send; workers trust it.
        self.check = check
        self.error: ProtocolError | None = None
        self._buf = bytearray(self.BUFFER)
        self._start = 0  # unparsed bytes are self._buf[self._start:self._end]
        self._end = 0
        self._head: Frame | None = None  # the frame whose large body is being filled
        self._body: bytearray | memoryview | None = None
        self._spare: bytearray | None = None  # a large body handed back (``recycle``), filled next time
        self._got = 0
        # Descriptors (or, where they cannot be passed, segment names) that came with frames, in order.
        self.fds: deque[int | str] = deque()
        self._names: list[str] = []  # from a NAMES frame, handed out with the frame after it
        # Every segment name received (the parent unlinks a worker's once it is gone, see _process._lifecycle).
        self.names_seen: set[str] = set()

    def _recv_into(self, view: memoryview) -> int:
        if not PASS_FDS:
            return self._sock.recv_into(view)
        # recvmsg, not recv: plain recv would silently drop the file descriptors that frames carry.
        n, ancdata, _, _ = self._sock.recvmsg_into([view], socket.CMSG_SPACE(MAX_FDS * 4), RECV_FLAGS)
        for level, kind, data in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds = array.array("i")
                fds.frombytes(data[: len(data) - len(data) % fds.itemsize])
                self.fds.extend(fds)
        return n

    def recycle(self, body: bytearray | memoryview) -> None:
        """Hand back a large frame's body that nothing uses any more: the next large frame is read into it.

        A worker streaming 1 MiB chunks would otherwise fault in a fresh megabyte per chunk, and fresh pages
        are slow (W7: about a tenth of the wall time).
        """
        owner = body.obj if isinstance(body, memoryview) else body
        if (
            isinstance(owner, bytearray)
            and len(owner) <= RECYCLE_MAX
            and (self._spare is None or len(owner) > len(self._spare))
        ):
            self._spare = owner

    @property
    def partial(self) -> bool:
        return self._body is not None or self._start != self._end

    def read(self) -> list[Frame] | None:
        """Frames completed by one read, [] if none yet, None at EOF (the peer has closed its end)."""
        if self.error is not None:
            return []  # the stream cannot be trusted past a refused frame
        if self._body is not None:
            n = self._recv_into(memoryview(self._body)[self._got :])
            if n == 0:
                return None
            self._got += n
            if self._got < len(self._body):
                return []
            frame = self._head
            assert frame is not None
            frame.body = self._body
            self._head = self._body = None
            return [frame]
        if self._start == self._end:
            self._start = self._end = 0
        elif self._end == len(self._buf):
            # Move a partial frame to the front so the next read has room.
            rest = self._buf[self._start : self._end]
            self._buf[: len(rest)] = rest
            self._start, self._end = 0, len(rest)
        n = self._recv_into(memoryview(self._buf)[self._end :])
        if n == 0:
            return None
        self._end += n
        return self._parse()

    def _take_names(self, frame: Frame, length: int) -> bool:
        """Read a NAMES frame whole from the buffer; False when it is not all there yet, or is refused."""
        body_start = self._start + HEADER.size
        try:
            if self.check is not None and (PASS_FDS or length > MAX_NAMES_BODY or self._names):
                raise ProtocolError("a NAMES message where descriptors travel, or a malformed one")
            if length > self._end - body_start:
                return False  # small (MAX_NAMES_BODY): the rest comes into the same buffer
            names = bytes(self._buf[body_start : body_start + length]).decode().split("\0")
            if self.check is not None and (
                len(names) != frame.arg or not all(n.startswith(NAME_START) for n in names)
            ):
                raise ProtocolError("a NAMES message that names no segment of manycore's")
        except (UnicodeDecodeError, ProtocolError) as exc:
            self.error = exc if isinstance(exc, ProtocolError) else ProtocolError("a garbled NAMES message")
            self._start = self._end = 0
            return False
        self._names = names[: frame.arg]
        self._start = body_start + length
        return True

    def _parse(self) -> list[Frame]:
        frames: list[Frame] = []
        buf = self._buf
        check = self.check
        # Locals: this loop runs once per frame received (W5's round trips, W7's stream of chunks).
        unpack, header_size, end = HEADER.unpack_from, HEADER.size, self._end
        while end - self._start >= header_size:
            kind, chunk_id, arg, flags, length = unpack(buf, self._start)
            frame = Frame(kind, chunk_id, arg, flags, _NO_BODY)
            if kind == NAMES:
                taken = self._take_names(frame, length)
                if taken:
                    continue
                break
            if check is not None:
                try:
                    check(frame, length)
                except ProtocolError as exc:
                    # Keep the good frames before it; the receiver sees ``error`` once it has handled them.
                    self.error = exc
                    self._start = self._end = 0
                    break
            body_start = self._start + header_size
            available = end - body_start
            if self._names:
                # As descriptors come with a frame's first byte: the names are the receiver's with their frame.
                self.fds.extend(self._names)
                self.names_seen.update(self._names)
                if self.check is None:  # a worker: see _segment.unlink_all
                    _segment.RECEIVED.update(self._names)
                self._names = []
            if length <= available:
                frame.body = buf[body_start : body_start + length]
                frames.append(frame)
                self._start = body_start + length
                continue
            if length > self.BUFFER // 2:
                self._head = frame
                spare = self._spare
                if spare is not None and len(spare) >= length:
                    self._spare = None
                    self._body = memoryview(spare)[:length]
                else:
                    self._body = bytearray(length)
                self._body[:available] = buf[body_start : self._end]
                self._got = available
                self._start = self._end = 0
            break
        return frames


_NO_BODY = memoryview(b"")  # a header's body until it is read


def recv_frame(reader: FrameReader, pending: list[Frame]) -> Frame | None:
    """Blocking read of the next frame (worker side); None when the parent has gone."""
    while not pending:
        frames = reader.read()
        if frames is None:
            return None
        pending.extend(frames)
    return pending.pop(0)


def send_frame(
    sock: socket.socket,
    kind: int,
    chunk_id: int,
    arg: int,
    flags: int,
    body: bytes = b"",
    fds: tuple[int | str, ...] = (),
) -> None:
    """Blocking send of one frame (worker side); ``fds`` (or segment names) leave with its first byte."""
    head = HEADER.pack(kind, chunk_id, arg, flags, len(body))
    if fds and not PASS_FDS:
        head, fds = _names_frame(fds) + head, ()
    if len(body) < 65536:
        head, body = head + body, b""
    if fds:
        sent = sock.sendmsg([head], _rights(fds))  # type: ignore[arg-type]
        if sent < len(head):
            sock.sendall(memoryview(head)[sent:])
    else:
        sock.sendall(head)
    if body:
        sock.sendall(body)

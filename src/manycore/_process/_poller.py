"""The supervisor's poller: one readiness wait over every worker socket, the wake-up pipe and the fork server.

Its one reason to change is how the supervisor waits for descriptors: ``select.epoll`` where the platform has it
(Linux), else the ``selectors`` module's best (kqueue on macOS and the BSDs, poll, select on Windows sockets).
Also ``OneDescriptor``, the one-descriptor wait of the threads that read a worker's socket themselves, and the
supervisor's wake-up channel.
"""

from __future__ import annotations

import contextlib
import functools
import os
import select
import selectors
import socket
from collections.abc import Callable
from typing import Any

from .. import _platform

# epoll's own values (the hot path passes them straight through); PortablePoller translates them.
READ = getattr(select, "EPOLLIN", 1)
WRITE = getattr(select, "EPOLLOUT", 4)


class Poller:
    """``select.epoll`` with an object per file descriptor.

    Not the ``selectors`` module: its bookkeeping costs microseconds per call, and the supervisor polls once
    per result while ``apply`` registers and unregisters a worker on every call (W5).
    """

    sees_changes = True  # a descriptor registered by another thread is watched by a wait already begun

    def __init__(self) -> None:
        self._epoll = select.epoll()
        self._data: dict[int, tuple[Any, int]] = {}
        self._readable = select.EPOLLIN | select.EPOLLHUP | select.EPOLLERR
        self._writable = select.EPOLLOUT | select.EPOLLHUP | select.EPOLLERR

    def register(self, fd: int, events: int, data: Any) -> None:
        self._epoll.register(fd, events)
        self._data[fd] = (data, events)

    def modify(self, fd: int, events: int, data: Any) -> None:
        if self._data[fd][1] != events:
            self._epoll.modify(fd, events)
            self._data[fd] = (data, events)

    def unregister(self, fd: int) -> None:
        del self._data[fd]
        self._epoll.unregister(fd)

    def poll(self, timeout: float | None) -> list[tuple[Any, bool, bool]]:
        """(data, readable, writable) for each ready descriptor; hang-up and error count as both."""
        ready = []
        data = self._data
        readable, writable = self._readable, self._writable
        for fd, ev in self._epoll.poll(-1 if timeout is None else timeout):
            entry = data.get(fd)
            if entry is not None:  # unregistered by another thread meanwhile
                ready.append((entry[0], bool(ev & readable), bool(ev & writable)))
        return ready

    def close(self) -> None:
        self._epoll.close()


class PortablePoller:
    """The same interface over the ``selectors`` module, for platforms without epoll."""

    def __init__(self) -> None:
        self.sees_changes = _platform.has("kqueue")  # as epoll; poll and select do not
        if _platform.has("kqueue"):
            self._selector: selectors.BaseSelector = selectors.KqueueSelector()  # type: ignore[attr-defined,unused-ignore]
        elif _platform.has("poll"):
            self._selector = selectors.PollSelector()
        else:
            self._selector = selectors.SelectSelector()

    def register(self, fd: int, events: int, data: Any) -> None:
        self._selector.register(fd, _selector_events(events), data)

    def modify(self, fd: int, events: int, data: Any) -> None:
        wanted = _selector_events(events)
        if self._selector.get_key(fd).events != wanted:
            self._selector.modify(fd, wanted, data)

    def unregister(self, fd: int) -> None:
        self._selector.unregister(fd)

    def poll(self, timeout: float | None) -> list[tuple[Any, bool, bool]]:
        # A descriptor in error or hung up is reported readable (select, poll and kqueue all do): reading it
        # gives the EOF or the error that the caller acts on.
        return [
            (key.data, bool(ev & selectors.EVENT_READ), bool(ev & selectors.EVENT_WRITE))
            for key, ev in self._selector.select(timeout)
        ]

    def close(self) -> None:
        self._selector.close()


def _selector_events(events: int) -> int:
    return (selectors.EVENT_READ if events & READ else 0) | (selectors.EVENT_WRITE if events & WRITE else 0)


def make_poller() -> Poller | PortablePoller:
    return Poller() if _platform.has("epoll") else PortablePoller()


class OneDescriptor:
    """Waits on one descriptor: the threads that read a worker's socket themselves (``apply``, shutdown).

    ``poll`` where it exists: ``select`` refuses descriptors above 1023, which a program holding many files has.
    """

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._poll = select.poll() if _platform.has("poll") else None
        #: ``peek()`` is true once the descriptor is readable (or hung up). Called in a tight loop while a
        #: caller spins for its answer (W5), so where poll exists it is poll's own method, bound to timeout 0.
        self.peek: Callable[[], object] = self._readable_now
        if self._poll is not None:
            self._events = select.POLLIN
            self._poll.register(fd, self._events)
            self.peek = functools.partial(self._poll.poll, 0)

    def _readable_now(self) -> bool:
        return self.wait(0)[0]

    def wait(self, timeout: float, writable: bool = False) -> tuple[bool, bool]:
        """Up to ``timeout`` seconds: (readable or hung up, writable)."""
        if self._poll is not None:
            events = select.POLLIN | (select.POLLOUT if writable else 0)
            if events != self._events:
                self._poll.modify(self._fd, events)
                self._events = events
            ready = self._poll.poll(max(0, int(timeout * 1000)))
            mask = ready[0][1] if ready else 0
            return bool(mask & ~select.POLLOUT), bool(mask & select.POLLOUT)
        r, w, x = select.select([self._fd], [self._fd] if writable else [], [self._fd], max(0.0, timeout))
        return bool(r or x), bool(w)


# The supervisor's wake-up channel: a pipe, or where select() is all there is (Windows, whose select takes
# sockets only) a socket pair. Either way two descriptor numbers, read and written through these helpers.
WAKE_SOCKETS = not _platform.has("poll")


def wake_pair() -> tuple[int, int]:
    if WAKE_SOCKETS:
        a, b = socket.socketpair()
        a.setblocking(False)
        b.setblocking(False)
        return a.detach(), b.detach()
    r, w = os.pipe()
    os.set_blocking(r, False)
    os.set_blocking(w, False)
    return r, w


def wake_drain(fd: int) -> None:
    if not WAKE_SOCKETS:
        with contextlib.suppress(BlockingIOError, InterruptedError):
            os.read(fd, 4096)
        return
    sock = socket.socket(fileno=fd)
    try:
        sock.recv(4096)
    except (BlockingIOError, InterruptedError):
        pass
    finally:
        sock.detach()


def wake_poke(fd: int) -> None:
    if WAKE_SOCKETS:
        sock = socket.socket(fileno=fd)
        try:
            sock.send(b"x")
        finally:
            sock.detach()
    else:
        os.write(fd, b"x")


def wake_close(fd: int) -> None:
    if WAKE_SOCKETS:
        socket.socket(fileno=fd).close()
    else:
        os.close(fd)

"""The supervisor's poller: one ``epoll`` over every worker socket, the wake-up pipe and the fork server.

Its one reason to change is how the supervisor waits for descriptors.
"""

from __future__ import annotations

import select
from typing import Any

READ = select.EPOLLIN
WRITE = select.EPOLLOUT
_READABLE = select.EPOLLIN | select.EPOLLHUP | select.EPOLLERR
_WRITABLE = select.EPOLLOUT | select.EPOLLHUP | select.EPOLLERR


class Poller:
    """``select.epoll`` with an object per file descriptor.

    Not the ``selectors`` module: its bookkeeping costs microseconds per call, and the supervisor polls once
    per result while ``apply`` registers and unregisters a worker on every call (W5).
    """

    def __init__(self) -> None:
        self._epoll = select.epoll()
        self._data: dict[int, tuple[Any, int]] = {}

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
        for fd, ev in self._epoll.poll(-1 if timeout is None else timeout):
            entry = data.get(fd)
            if entry is not None:  # unregistered by another thread meanwhile
                ready.append((entry[0], bool(ev & _READABLE), bool(ev & _WRITABLE)))
        return ready

    def close(self) -> None:
        self._epoll.close()

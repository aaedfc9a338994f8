"""The state the process scheduler's parts share, declared in one place.

``Scheduler`` is assembled from parts, one per reason to change (``_lifecycle``: workers coming and going;
``_sending``: pickling and sending chunks, the lent path; ``_reading``: reading and delivering results), each a
mixin on this class. ``Scheduler.__init__`` (``_supervisor``) sets every attribute declared here; the methods
below are the ones a part calls in another, declared so that each part type-checks on its own.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

from .. import _channel as ch
from .. import _shm
from .._broadcast import Broadcast
from .._jobs import Chunk, SchedulerBase
from .._launch import Launcher
from .._waiting import Latch
from ._assign import Assigner
from ._payload import MappedResults
from ._poller import Poller, PortablePoller
from ._workers import Worker


class ProcessState(SchedulerBase):
    owner_pid: int  # a child of os.fork() holds a copy of this object: see _forked_away
    start_method: str
    zero_copy_threshold: int | None
    lent_poll_s: float  # how long a lent apply polls for its answer before it sleeps (see _sending)
    _broadcasts: dict[int, Broadcast[Any]]
    _segments: _shm.SegmentPool  # input segments
    _results: MappedResults  # result segments
    _assigner: Assigner
    _wids: Iterator[int]
    _workers: dict[int, Worker]
    _lost: list[Worker]  # EOF seen, exit code not yet known
    _unreaped: list[Worker]
    _start_failures: int
    _watch_writes: bool
    _crash: bool  # the supervisor failed (_crashed): stop the workers without waiting for them
    _launcher: Launcher
    _init_blob: bytes
    _init_fds: list[int]
    _tracker: int | None
    _initargs: tuple[Callable[..., object] | None, tuple[Any, ...]]
    _wake_lock: threading.Lock
    _wake_r: int
    _wake_w: int
    _selector: Poller | PortablePoller
    _control_fd: int | None
    _thread: threading.Thread
    _stopped: Latch

    def _break(self, error: BaseException, cause: BaseException | None) -> None:
        raise NotImplementedError

    def _recover(self, w: Worker, exitcode: int | None) -> None:
        raise NotImplementedError

    def _on_control(self) -> None:
        raise NotImplementedError

    def _on_eof(self, w: Worker) -> None:
        raise NotImplementedError

    def _read(self, w: Worker, results: list[tuple[Worker, ch.Frame]]) -> bool:
        raise NotImplementedError

    def _on_results(self, results: list[tuple[Worker, ch.Frame]]) -> list[tuple[Worker, Chunk, ch.Frame]]:
        raise NotImplementedError

    def _deliver(self, done: list[tuple[Worker, Chunk, ch.Frame]]) -> None:
        raise NotImplementedError

"""Worker handles: what the parent knows of one worker process, and the helpers that see a process go.

Its reasons to change: what a worker may send (``check_frame``), its status page, its token pipe, how a worker
process is killed and awaited. Starting and replacing workers is ``_lifecycle``'s.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import threading
import time

from .. import _channel as ch
from .. import _platform
from .._jobs import Chunk
from .._protocol import FUNCTION_CACHE, RESULT_FLAGS, STATUS
from .._worker._blas import thread_ids
from ._poller import OneDescriptor

# No frame from a worker may be larger than this machine's memory: a longer length is a forged or garbled header,
# refused before anything is allocated for it.
MAX_BODY = _platform.physical_memory()


class Worker:
    __slots__ = (
        "accepting",
        "assigned",
        "bad_frame",
        "behind",
        "broadcasts",
        "channel",
        "fn_seq",
        "inflight",
        "known_fns",
        "lent",
        "lost_at",
        "page",
        "pid",
        "reading",
        "ready",
        "skips",
        "timed_out",
        "token_lock",
        "tokens",
        "unstarted",
        "wid",
    )

    def __init__(
        self, wid: int, channel: ch.ParentChannel, page: mmap.mmap, pid: int | None, tokens: tuple[int, int]
    ) -> None:
        self.wid = wid
        self.channel = channel
        self.page = page
        self.pid = pid
        self.ready = False
        self.accepting = True
        self.assigned = 0
        self.inflight: dict[int, Chunk] = {}
        self.known_fns: dict[int, int] = {}
        self.fn_seq = 0
        self.timed_out: tuple[int, int] | None = None  # (chunk id, item offset) the supervisor killed it for
        self.lost_at = 0.0
        self.broadcasts: set[int] = set()  # broadcast ids this worker has
        # Whoever reads the worker's socket holds this: the supervisor, or a caller it is lent to (``run_lent``).
        self.reading = threading.Lock()
        self.lent = False
        self.bad_frame: str | None = None  # why the supervisor killed it for what it sent
        channel.set_check(self.check_frame)

        # Work stealing (see _assign.Assigner.steal). Chunks queued behind another get a token; ``unstarted``
        # holds the ids of those sent whose token may still be in the pipe, in the order they entered the
        # socket; ``token_lock`` makes "write the token, send the frame, note the id" one step.
        self.tokens = tokens  # the token pipe's (read end, write end); both -1 once closed
        self.token_lock = threading.Lock()
        self.behind: set[int] = set()  # assigned behind another chunk: send with a token
        self.unstarted: list[int] = []
        self.skips = 0  # chunks taken back that are still ahead in the worker's socket

    def close_tokens(self) -> None:
        with self.token_lock:
            tokens, self.tokens = self.tokens, (-1, -1)  # forgotten first: see _shutdown's wake pipe
            for fd in tokens:
                if fd >= 0:
                    os.close(fd)

    def check_frame(self, frame: ch.Frame, length: int) -> None:
        """Refuse a frame header this worker cannot legitimately send, before its body is allocated or read.

        Runs in whichever thread reads the socket (holding ``reading``). The chunk id is what matters most: the
        parent unpickles a result only for a chunk it gave this worker, at most once (see ``Scheduler._read``).
        """
        kind, chunk_id = frame.kind, frame.chunk_id
        if kind == ch.RESULT:
            if chunk_id not in self.inflight:
                raise ch.ProtocolError(f"a result for chunk {chunk_id}, which it was not running")
            if frame.flags & ~RESULT_FLAGS:
                raise ch.ProtocolError(f"a result with unknown flags {frame.flags:#x}")
        elif kind == ch.READY:
            if self.ready or chunk_id or length:
                raise ch.ProtocolError("a second or malformed READY message")
            if self.pid is not None and frame.pid != self.pid:
                # The pid is the one the supervisor will SIGKILL: never take another process's from a worker.
                raise ch.ProtocolError(f"READY with pid {frame.pid}, but its pid is {self.pid}")
        elif kind == ch.INIT_FAILED:
            if self.ready:
                raise ch.ProtocolError("INIT_FAILED after READY")
        elif kind == ch.SKIPPED:
            # Not matched against ``skips``: the thread that took the chunk back counts it under the scheduler
            # lock, possibly just after this reader sees the worker's answer. An unasked SKIPPED changes nothing
            # but the count, which the next one puts right.
            if length:
                raise ch.ProtocolError("a malformed SKIPPED message")
        else:
            raise ch.ProtocolError(f"a message of unknown kind {kind}")
        if length > MAX_BODY:
            raise ch.ProtocolError(f"a message of {length} bytes, more than this machine's memory")

    def needs_function(self, key: int) -> bool:
        seen = self.known_fns.get(key)
        if seen is not None and self.fn_seq - seen < FUNCTION_CACHE // 2:
            return False
        self.known_fns[key] = self.fn_seq
        self.fn_seq += 1
        if len(self.known_fns) > FUNCTION_CACHE:
            del self.known_fns[next(iter(self.known_fns))]
        return True

    def running(self) -> tuple[int, int, int]:
        """(chunk id, item offset, item start in monotonic ns) from the status page; chunk id 0 when idle."""
        first = STATUS.unpack_from(self.page)
        second = STATUS.unpack_from(self.page)
        # The worker writes the page without a lock; two equal reads are a consistent one.
        return first if first == second else STATUS.unpack_from(self.page)

    def kill(self) -> None:
        if self.pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, _platform.KILL_SIGNAL)
            _hurry_exit(self.pid)


def _token_pipe() -> tuple[int, int]:
    r, w = os.pipe()
    # Non-blocking on both sides: the worker's copy (sent with SCM_RIGHTS) shares this file description.
    os.set_blocking(r, False)
    os.set_blocking(w, False)
    return r, w


def _hurry_exit(pid: int) -> None:
    """Give a dying worker's idle-priority threads normal priority again, so that they finish dying.

    A worker's exit code comes only once every one of its threads has ended, and a forked worker may hold
    OpenBLAS threads parked at SCHED_IDLE (see ``_worker._blas._quiet_restarted_blas_threads``). On a loaded machine
    such a thread got so little CPU that it was still exiting 2 s after the worker's socket had closed
    (Python 3.13, numpy 2.5), and the crash was reported without its exit code. Linux allows this only with
    CAP_SYS_NICE or an RLIMIT_NICE that permits nice 0; without, ``_dying`` makes the supervisor wait longer.
    """
    if not _platform.has("sched"):
        return  # nothing was parked (see _blas): nothing to raise
    for tid in thread_ids(pid):
        with contextlib.suppress(OSError):  # the thread ended meanwhile
            # Only threads at SCHED_IDLE: once a fork server has reaped the worker, its pid may name another
            # process, and the threads manycore parks are the only ones it touches.
            if os.sched_getscheduler(tid) == os.SCHED_IDLE:
                os.sched_setscheduler(tid, os.SCHED_OTHER, os.sched_param(0))


def _dying(pid: int) -> bool:
    """Whether a process is part-way through exiting: its main thread has ended (a zombie) but others run on.

    Its exit code comes once the last thread ends. Where ``_hurry_exit`` may not raise threads from idle
    priority (a user without CAP_SYS_NICE or an RLIMIT_NICE of 20), that can take longer than the grace.
    Without ``/proc``: never (no thread was parked, so the exit code comes within the grace).
    """
    if not _platform.has("proc"):
        return False
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            return stat.read().rpartition(b")")[2].split()[0] == b"Z"
    except (OSError, IndexError):
        return False


def _wait_for_eof(channel: ch.ParentChannel, deadline: float) -> None:
    """A worker closes its socket only by exiting: EOF means it is gone or going."""
    waiter = OneDescriptor(channel.fileno())
    while True:
        while channel.pending and channel.flush():
            if time.monotonic() > deadline:
                return
            time.sleep(0.001)
        left = deadline - time.monotonic()
        if left <= 0:
            return
        if waiter.wait(max(0.001, left))[0] and channel.read_frames() is None:
            return

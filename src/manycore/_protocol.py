"""The wire protocol between the parent and its workers, in one place: what each side writes and reads.

Shared by both sides (the parent's scheduler and launchers, the worker package, the fork server), so it
imports only ``struct`` and ``mmap`` (workers import as little as they can; see manycore/__init__.py).

**Frames** (one socket pair per worker, see ``_channel``): a fixed header ``HEADER`` then ``length`` bytes of
body. The header's integers mean, per kind:

=============  =========  ====================  ===========================  ==================================
kind           direction  chunk_id              arg (its name per kind)      flags
=============  =========  ====================  ===========================  ==================================
INIT           to worker  0                     ``meta_len``: bytes of the   0
                                                identity header in the body
MAP, STARMAP,  to worker  the chunk             ``fn_key``: the task         ``fn_len << FN_SHIFT | k <<
CALL                                            function's key               BLOCK_SHIFT | TRACK_ITEMS |
                                                                             OUT_OF_BAND | TOKEN``
BROADCAST,     to worker  ``broadcast_id``      0                            0
RELEASE
SEGMENT_FREE   to worker  ``segment_id``        0                            0
STOP           to worker  0                     0                            0
READY          to parent  0                     ``pid``                      0
INIT_FAILED    to parent  0                     ``pid``                      INITARGS_UNLOADABLE or 0
RESULT         to parent  the chunk             ``compute_ns``: the chunk's  PARTIAL | OUT_OF_BAND |
                                                compute time                 INPUT_KEPT | UNLOADABLE |
                                                                             NO_FUNCTION
SKIPPED        to parent  the chunk             0                            0
=============  =========  ====================  ===========================  ==================================

A frame with ``OUT_OF_BAND`` carries one memfd (SCM_RIGHTS, with its first byte; where descriptors cannot be
passed, its segment's name in a ``NAMES`` frame just before it); its body starts with the
``OOB`` block that says where the buffers lie in that segment. A BROADCAST frame carries one when its body's
segment id is not 0.

**Status page**: one shared page per worker (``STATUS_SIZE``), 8-byte slots written by the worker without a
lock: ``STATUS`` = (running chunk id, 0 when idle; offset of the running item, slot ``OFFSET_SLOT``; the item's
start, monotonic ns, only for jobs with a ``task_timeout``).

**Fork server** (``_zygote``, SOCK_SEQPACKET, one message per packet): the parent sends ``FORK_REQUEST``
(``FORK``, worker id) with the worker's socket and status page attached; the fork server answers with
``ZYGOTE_REPORT`` messages: (``FORKED``, worker id, pid) after a fork, (``EXITED``, pid, exit code) after
reaping one.
"""

from __future__ import annotations

import mmap
import struct

TYPE_CHECKING = False  # see manycore/__init__.py: workers avoid importing typing

# ---- frames --------------------------------------------------------------------------------------------------

HEADER = struct.Struct("<BQQQQ")  # kind, chunk_id, arg, flags, body length

# Kinds, parent -> worker. A task frame's kind is its job's kind (``Job.kind``).
MAP, STARMAP, CALL, STOP, BROADCAST, RELEASE, SEGMENT_FREE, INIT = 1, 2, 3, 4, 5, 6, 7, 8
# Kinds, worker -> parent.
READY, RESULT, INIT_FAILED = 11, 12, 13
SKIPPED = 14  # a queued chunk the parent took back (its token was gone): not run here
# Either way, where descriptors cannot be passed: the names of the shared-memory segments the next frame carries
# (``arg`` names, body their UTF-8 joined by NUL). The reader hands them out with that frame, as it would hand
# out descriptors that came with its first byte; never delivered as a frame of its own.
NAMES = 20
MAX_NAMES_BODY = 4096

# Where descriptors cannot be passed, a spawned worker connects back to the parent over loopback and first sends
# the one-time key of this many bytes that it read from its stdin (``_launch.SpawnLauncher._connect_back``).
KEY_SIZE = 32

# Task frames' flags: b = fn_len << FN_SHIFT | k << BLOCK_SHIFT | TOKEN | OUT_OF_BAND | TRACK_ITEMS.
# TRACK_ITEMS: the job has a task_timeout, so the status page gets each item's start time too.
# OUT_OF_BAND: large buffers travel in the memfd that comes with the frame.
# TOKEN: the chunk was queued behind another, so the parent may take it back for an idle worker; the worker runs
# it only if it gets a byte from its token pipe first (see Scheduler._steal_locked).
# k: the status page names blocks of 2**k items rather than each item (see _worker._run.run_items).
# fn_len: the body starts with the pickled task function, that many bytes (0: the worker has it already).
TRACK_ITEMS, OUT_OF_BAND, TOKEN = 1, 2, 4
BLOCK_SHIFT, FN_SHIFT = 3, 8  # k sits in bits 3-7 (0..31), the function's length above
BLOCK_MASK = 31
# RESULT frames' flags: PARTIAL (some items carry an error) | OUT_OF_BAND | INPUT_KEPT (the task kept a view of
# its input segment, which the parent must then not reuse) | UNLOADABLE (the chunk's items could not be unpickled
# in the worker: the body is the text of that error, and nothing ran) | NO_FUNCTION (the chunk came without its
# function, which the worker does not have: nothing ran, the parent sends it again with the function).
PARTIAL, INPUT_KEPT, UNLOADABLE, NO_FUNCTION = 1, 4, 8, 16
RESULT_FLAGS = PARTIAL | OUT_OF_BAND | INPUT_KEPT | UNLOADABLE | NO_FUNCTION
# INIT_FAILED frames' flag: the initializer or its initargs did not unpickle (else the initializer raised).
INITARGS_UNLOADABLE = 1

# The worker keeps at most this many task functions; the parent resends one it last sent longer ago than half
# of this (see Worker.needs_function in the scheduler), so an evicted function is never needed.
FUNCTION_CACHE = 1024


class Frame:
    """One message: the header's fields by name, and the body.

    ``arg`` and ``chunk_id`` mean something per kind (see the table above): read them by that kind's name
    (``frame.pid``, ``frame.compute_ns``, ``frame.fn_key``, ``frame.meta_len``; ``frame.broadcast_id``,
    ``frame.segment_id``). Those names are the same slots under other names (set below the class), so a read
    costs what reading ``arg`` does: frames are parsed on the hot path (W5's round trip, W7's million items).
    Not a NamedTuple: importing typing would cost every worker ~10 ms of start-up.
    """

    __slots__ = ("arg", "body", "chunk_id", "fd", "flags", "kind")

    if TYPE_CHECKING:
        # arg, by kind
        meta_len: int  # INIT
        fn_key: int  # MAP, STARMAP, CALL
        pid: int  # READY, INIT_FAILED
        compute_ns: int  # RESULT
        # chunk_id, by kind
        broadcast_id: int  # BROADCAST, RELEASE
        segment_id: int  # SEGMENT_FREE

    def __init__(self, kind: int, chunk_id: int, arg: int, flags: int, body: bytearray | memoryview) -> None:
        self.kind = kind
        self.chunk_id = chunk_id
        self.arg = arg
        self.flags = flags
        self.body = body
        self.fd: int | str | None = None  # the shared-memory segment this frame's data lives in, if any


# The slot descriptors themselves under each kind's name: reading and writing go to the same slot, in C.
for _alias, _slot in (
    ("meta_len", "arg"),
    ("fn_key", "arg"),
    ("pid", "arg"),
    ("compute_ns", "arg"),
    ("broadcast_id", "chunk_id"),
    ("segment_id", "chunk_id"),
):
    setattr(Frame, _alias, Frame.__dict__[_slot])
del _alias, _slot


# ---- the status page -------------------------------------------------------------------------------------------

# Running chunk id (0 = none), item offset within it, item start (monotonic ns).
STATUS = struct.Struct("<QQQ")
STATUS_SIZE = mmap.PAGESIZE
OFFSET_SLOT = 1  # the item offset's index in the page read as 8-byte words (what the worker writes per item)

# ---- the fork server's control socket ----------------------------------------------------------------------

FORK = b"W"
FORK_REQUEST = struct.Struct("<cq")  # FORK, worker id; the worker's socket and status page attached
FORKED, EXITED = b"F", b"X"
ZYGOTE_REPORT = struct.Struct("<cqq")  # (FORKED, worker id, pid) or (EXITED, pid, exit code)

# ---- out-of-band blocks (shared-memory segments, see _shm) -----------------------------------------------------

OOB = struct.Struct("<QQQ")  # segment size, number of buffers, segment id; then that many SPANs
SPAN = struct.Struct("<QQ")  # a buffer's offset and length in the segment

"""Tasks that attack their own worker's channel to the parent, as a buggy or hostile task could.

They find the worker's socket and status page the way any task could (``/proc/self``), write a forged or garbled
frame into the socket, then wait to be killed: the parent must refuse the frame, kill and replace the worker, and
fail only this item.
"""

from __future__ import annotations

import array
import ctypes
import os
import pickle
import socket
import struct
import sys
import time

HEADER = struct.Struct("<BQQQQ")  # kind, chunk id, a, b, length: the wire format, written out on purpose
READY, RESULT = 11, 12
OUT_OF_BAND = 2


def touch(path: str) -> str:
    """Run by unpickling a ``Marker``: a file at ``path`` proves the parent unpickled a forged body."""
    with open(path, "w") as f:
        f.write("unpickled")
    return path


class Marker:
    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[object, ...]:
        return (touch, (self.path,))


def worker_socket() -> int:
    """The fd of this worker's socket to the parent, read from the worker loop's own frame (``_worker._serve.serve``
    holds it as ``sock``) up the stack of this task: exact with every start method, where a forked worker also
    inherits the parent's unrelated sockets."""
    frame = sys._getframe()
    while frame is not None:
        if frame.f_code.co_name == "serve" and frame.f_globals.get("__name__") == "manycore._worker._serve":
            fd = frame.f_locals["sock"].fileno()
            assert os.readlink(f"/proc/self/fd/{fd}").startswith("socket:")
            return int(fd)
        frame = frame.f_back  # type: ignore[assignment]
    raise RuntimeError("not running in a manycore worker")


def running_chunk() -> int:
    """The chunk id in this worker's status page (mapped from a memfd named manycore-status)."""
    with open("/proc/self/maps") as maps:
        for line in maps:
            if "manycore-status" in line:
                start = int(line.split("-", 1)[0], 16)
                return int.from_bytes(ctypes.string_at(start, 8), "little")
    raise RuntimeError("no status page mapped in this worker")


def forge(how: str, marker: str, victim_pid: int = 0) -> str:
    """Write one forged frame of the kind ``how`` to the parent, then wait to be killed for it."""
    fd = worker_socket()
    cid = running_chunk()
    body = pickle.dumps(Marker(marker))
    fds: list[int] = []
    if how == "garbage":
        data = b"\xde\xad\xbe\xef" * 40
    elif how == "huge-length":
        data = HEADER.pack(RESULT, cid, 0, 0, 1 << 62)
    elif how == "unknown-kind":
        data = HEADER.pack(99, cid, 0, 0, len(body)) + body
    elif how == "foreign-chunk":
        data = HEADER.pack(RESULT, cid + 1_000_000, 0, 0, len(body)) + body
    elif how == "ready-other-pid":
        data = HEADER.pack(READY, 0, victim_pid, 0, 0)
    elif how == "missing-fd":
        data = HEADER.pack(RESULT, cid, 0, OUT_OF_BAND, len(body)) + body
    elif how == "unannounced-fd":
        data = HEADER.pack(RESULT, cid, 0, 0, len(body)) + body
        fds = [os.open("/dev/null", os.O_RDONLY)]
    else:
        raise ValueError(how)
    sock = socket.socket(fileno=os.dup(fd))
    try:
        rights = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())] if fds else []
        sent = sock.sendmsg([data], rights)
        sock.sendall(data[sent:])
    finally:
        sock.close()
    time.sleep(60)  # the parent kills this worker for what it sent
    return "not killed"


def forge_ready_once(marker: str, victim_pid: int) -> None:
    """An initializer that, in the first worker only, announces READY with another process's pid."""
    try:
        os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return
    sock = socket.socket(fileno=os.dup(worker_socket()))
    try:
        sock.sendall(HEADER.pack(READY, 0, victim_pid, 0, 0))
    finally:
        sock.close()
    # Wait here to be killed for the forgery. Going on, this worker could start the item already sent to it
    # before the parent read the forged message (seen once on a loaded CI machine), and that item would then
    # fail as at-most-once requires, instead of running again elsewhere.
    time.sleep(30)

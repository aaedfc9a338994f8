"""Tasks for test_descriptors: they start programs from a worker, as a user's task may."""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys

# Run in a program a task starts: report every descriptor it inherited, and write a forged RESULT frame to
# each socket among them (chunk ids 1 to 64, so that whichever chunk the parent waits for, one matches). The
# frame's pickle opens (creates) the marker file when unpickled: code running in the parent.
LISTER = r"""
import json, os, socket, sys
report, forged = sys.argv[1], bytes.fromhex(sys.argv[2])
fds = {}
for name in os.listdir("/proc/self/fd"):
    try:
        fds[name] = os.readlink(f"/proc/self/fd/{name}")
    except OSError:
        pass
for name, target in fds.items():
    if target.startswith("socket:"):
        s = socket.socket(fileno=int(name))
        try:
            s.setblocking(False)
            for chunk_id in range(1, 65):
                s.send(forged.replace(b"CHUNKIDX", chunk_id.to_bytes(8, "little")))
        except OSError:
            pass
        finally:
            s.detach()
with open(report, "w") as f:
    json.dump(fds, f)
"""


class _OpensFile:
    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (open, (self.path, "w"))


def forged_result_frame(marker: str) -> bytes:
    """A RESULT frame (see _protocol.HEADER) whose body, once unpickled, creates ``marker``."""
    from manycore import _protocol

    body = pickle.dumps([_OpensFile(marker)])
    head = _protocol.HEADER.pack(_protocol.RESULT, 0, 0, 0, len(body))
    # The chunk id (bytes 1-8) is patched by the program for each id it tries.
    return head[:1] + b"CHUNKIDX" + head[9:] + body


def start_lister(how: str, report: str, marker: str) -> str:
    args = [sys.executable, "-c", LISTER, report, forged_result_frame(marker).hex()]
    if how == "popen":
        subprocess.run(args, close_fds=False, check=True)
    elif how == "system":
        os.system(" ".join(f"'{a}'" for a in args))
    elif how == "posix_spawn":
        pid = os.posix_spawn(sys.executable, args, dict(os.environ))
        os.waitpid(pid, 0)
    return how


def die_leaving_grandchild(pidfile: str) -> None:
    """Start a long-lived program that keeps what it inherits, then die by SIGKILL."""
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], close_fds=False)
    with open(pidfile, "w") as f:
        f.write(str(child.pid))
    os.kill(os.getpid(), signal.SIGKILL)


def nested_pool_size(_: object) -> int:
    import manycore

    with manycore.Pool() as inner:
        return int(inner._processes)


def big_result(i: int) -> object:
    """A 1 MiB array: it comes back through a shared-memory segment."""
    import numpy

    return numpy.full(1 << 17, i, dtype=numpy.int64)

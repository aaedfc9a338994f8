"""A user's script for test_descriptors, run as its own process: os.fork() with a pool open, and results held
under a low RLIMIT_NOFILE.

    python fd_script.py SCENARIO START_METHOD [ARGS...]

It prints one JSON line on stdout when it reaches its reporting point.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from typing import Any

import psutil

import manycore


def report(**what: Any) -> None:
    print(json.dumps(what), flush=True)


def make_result(i: int, size: int) -> Any:
    import numpy

    return numpy.full(size // 8, i, dtype=numpy.int64)


def counts() -> tuple[int, int]:
    with open("/proc/self/maps") as maps:
        return len(os.listdir("/proc/self/fd")), len(maps.readlines())


def fork_child_uses_pool(method: str) -> None:
    """The child tries the parent's pool and exits normally (atexit hooks run); the parent's pool lives on."""
    pool = manycore.Pool(2, start_method=method)
    assert pool.map(abs, [-1, -2]) == [1, 2]
    pid = os.fork()
    if pid == 0:
        started = time.monotonic()
        try:
            pool.map(abs, [-3])
            outcome = "no error"
        except Exception as exc:
            outcome = f"{type(exc).__name__}: {exc}"
        print(json.dumps({"child": outcome, "child_s": time.monotonic() - started}), flush=True)
        sys.exit(0)  # a normal exit: atexit hooks and finalizers run, as in a user's program
    _, status = os.waitpid(pid, 0)
    started = time.monotonic()
    values = pool.map(abs, [-5, -6, -7])
    pool.close()
    pool.join()
    report(parent=values, child_status=os.waitstatus_to_exitcode(status), parent_s=time.monotonic() - started)


def fork_child_outlives_parent(method: str) -> None:
    """The child sleeps; the parent reports its pool's processes and waits to be SIGKILLed by the test."""
    pool = manycore.Pool(2, start_method=method)
    assert pool.map(abs, [-1, -2]) == [1, 2]
    pid = os.fork()
    if pid == 0:
        time.sleep(60)
        os._exit(0)
    me = psutil.Process()
    pool_pids = [p.pid for p in me.children(recursive=True) if p.pid != pid]
    report(child=pid, pool=pool_pids)
    time.sleep(60)


def held_results(method: str, count: str, size: str) -> None:
    """Hold ``count`` results of ``size`` bytes with RLIMIT_NOFILE at 256; report descriptors and mappings."""
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))
    n, nbytes = int(count), int(size)
    with manycore.Pool(2, start_method=method) as pool:
        pool.starmap(make_result, [(i, nbytes) for i in range(8)])
        fds_before, maps_before = counts()
        held = pool.starmap(make_result, [(i, nbytes) for i in range(n)])
        fds_after, maps_after = counts()
        ok = all(int(a[0]) == i == int(a[-1]) and a.nbytes == nbytes for i, a in enumerate(held))
        held[0][0] = -1  # results are writable, as numpy's own arrays are
        report(
            ok=ok,
            fds=[fds_before, fds_after],
            maps=[maps_before, maps_after],
            worker_fds=[
                len(os.listdir(f"/proc/{p.pid}/fd")) for p in psutil.Process().children(recursive=True)
            ],
        )


def segment_at_limit() -> None:
    """Use up RLIMIT_NOFILE, then ask for a shared-memory segment: the error names the limit."""
    from manycore import _shm

    resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
    held = []
    try:
        while True:
            held.append(os.open(os.devnull, os.O_RDONLY))
    except OSError:
        pass
    try:
        _shm.Segment(1 << 20)
        report(error=None)
    except OSError as exc:
        report(error=str(exc), errno=exc.errno)


if __name__ == "__main__":
    scenario, *args = sys.argv[1:]
    {
        "fork_child_uses_pool": fork_child_uses_pool,
        "fork_child_outlives_parent": fork_child_outlives_parent,
        "held_results": held_results,
        "segment_at_limit": segment_at_limit,
    }[scenario](*args)

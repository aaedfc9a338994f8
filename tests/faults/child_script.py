"""A user's script, run as a separate Python process by the fault tests (Ctrl-C, parent killed, clean exit).

    python child_script.py SCENARIO ENTRY START_METHOD MARKER_DIR

It prints one JSON line on stdout when it reaches its reporting point. The task functions are defined here, in
``__main__``, as in a real script: manycore sends them to the workers by value.
"""

from __future__ import annotations

import ctypes
import faulthandler
import json
import os
import signal
import sys
import time
from typing import Any

import psutil

import manycore


def block(x: int, marker_dir: str) -> int:
    """Say "I started" with a marker file, then block in C for a long time."""
    with open(os.path.join(marker_dir, f"started-{x}-{os.getpid()}"), "w") as f:
        f.write("1")
    ctypes.CDLL(None).sleep(1000)
    return x


def block_star(x: int, y: int, marker_dir: str) -> int:
    return block(x, marker_dir) + y


def block_with(x: int, arr: Any, shared: Any, marker_dir: str) -> int:
    """block, while a large input array and a broadcast array are mapped in this worker."""
    assert arr.size and shared.size
    return block(x, marker_dir)


def big_result(x: int) -> Any:
    """A 4 MiB array, which comes back in a shared-memory segment the worker lends to the parent."""
    import numpy as np

    return np.full(1 << 19, float(x))


def shm_pool(start_method: str, marker_dir: str) -> tuple[manycore.Pool, list[Any], list[Any]]:
    """A pool with every kind of segment in use: a broadcast, results held by the parent, and (in the
    returned starmap items) large inputs of two tasks that block."""
    import numpy as np

    pool = manycore.Pool(2, start_method=start_method)
    shared = pool.broadcast(np.ones(4 << 20))  # 32 MiB
    held = pool.map(big_result, range(4))
    items = [(x, np.full(1 << 19, float(x)), shared, marker_dir) for x in (0, 1)]
    return pool, held, items


def report(**fields: object) -> None:
    print(json.dumps(fields), flush=True)


def live_children() -> list[int]:
    out = []
    for p in psutil.Process().children(recursive=True):
        try:
            if p.status() != psutil.STATUS_ZOMBIE:
                out.append(p.pid)
        except psutil.NoSuchProcess:
            pass
    return out


def run_blocking(entry: str, start_method: str, marker_dir: str) -> None:
    """Runs two blocking items through `entry` and waits for them (forever, unless interrupted)."""
    items = [0, 1]
    if entry == "shm":
        pool, _held, shm_items = shm_pool(start_method, marker_dir)
        with pool:
            report(waiting=True)
            pool.starmap(block_with, shm_items, chunksize=1)
        return
    if entry in ("submit", "executor_map"):
        with manycore.Executor(max_workers=2, start_method=start_method) as ex:
            if entry == "submit":
                futures = [ex.submit(block, x, marker_dir) for x in items]
                report(waiting=True)
                [f.result() for f in futures]
            else:
                report(waiting=True)
                list(ex.map(block, items, [marker_dir] * 2))
        return
    with manycore.Pool(2, start_method=start_method) as pool:
        report(waiting=True)
        if entry == "map":
            pool.map(_Bound(marker_dir), items, chunksize=1)
        elif entry == "imap":
            list(pool.imap(_Bound(marker_dir), items, chunksize=1))
        elif entry == "imap_unordered":
            list(pool.imap_unordered(_Bound(marker_dir), items, chunksize=1))
        elif entry == "starmap":
            pool.starmap(block_star, [(x, 1, marker_dir) for x in items], chunksize=1)
        elif entry == "apply_async":
            results = [pool.apply_async(block, (x, marker_dir)) for x in items]
            [r.get() for r in results]
        elif entry == "apply":
            pool.apply_async(block, (1, marker_dir))
            pool.apply(block, (0, marker_dir))
        else:
            raise SystemExit(f"unknown entry {entry}")


class _Bound:
    """block with the marker directory bound (a picklable callable object)."""

    def __init__(self, marker_dir: str) -> None:
        self.marker_dir = marker_dir

    def __call__(self, x: int) -> int:
        return block(x, self.marker_dir)


def main() -> None:
    scenario, entry, start_method, marker_dir = sys.argv[1:5]
    # A script started from a terminal has Python's default SIGINT handler; one started in the background by a
    # non-interactive shell inherits SIGINT ignored. Behave like the former whoever runs the tests.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    # The tests send SIGUSR1 to a script that does not react in time, to see where it is stuck.
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    if scenario == "interrupt":
        try:
            run_blocking(entry, start_method, marker_dir)
        except KeyboardInterrupt:
            report(interrupted=True, at=time.monotonic(), children=live_children())
            return
        report(interrupted=False, at=time.monotonic(), children=live_children())
    elif scenario == "parent_kill":
        # Busy workers (blocked in C) or idle ones; the test SIGKILLs this process meanwhile.
        keep: list[object] = []
        if entry == "executor":
            ex = manycore.Executor(max_workers=2, start_method=start_method)
            keep += [ex, [ex.submit(block, x, marker_dir) for x in (0, 1)]]
        elif entry == "shm":
            pool, held, shm_items = shm_pool(start_method, marker_dir)
            keep += [pool, held, pool.starmap_async(block_with, shm_items, chunksize=1)]
        elif entry == "idle":
            pool = manycore.Pool(2, start_method=start_method)
            pool.map(abs, [-1, -2, -3, -4], chunksize=1)  # every worker has started
            keep.append(pool)
        else:
            pool = manycore.Pool(2, start_method=start_method)
            keep += [pool, pool.map_async(_Bound(marker_dir), [0, 1], chunksize=1)]
        report(waiting=True, children=live_children())
        time.sleep(1000)
    elif scenario == "quiet_exit":
        # Pools created and left at once, and after work: nothing must be printed.
        for _ in range(3):
            with manycore.Pool(2, start_method=start_method):
                pass
        with manycore.Pool(2, start_method=start_method) as pool:
            pool.map(abs, range(10))
        with manycore.Executor(max_workers=2, start_method=start_method) as ex:
            ex.submit(abs, -1).result()
        report(done=True)
    else:
        raise SystemExit(f"unknown scenario {scenario}")


if __name__ == "__main__":
    main()

"""Task functions for the scheduler's at-most-once and work-stealing tests: each run leaves a file behind."""

from __future__ import annotations

import mmap
import os
import signal
import time

from .tasks import do_fault


def runs_of(log_dir: str, x: int) -> int:
    """How many times item x ran: one file per run, so concurrent runs never share a write."""
    prefix = f"run-{x}-"
    return sum(name.startswith(prefix) for name in os.listdir(log_dir))


def log_run(x: int, log_dir: str) -> None:
    # O_EXCL on a name unique to this run: a second run of x adds a second file, never overwrites the first.
    name = os.path.join(log_dir, f"run-{x}-{os.getpid()}-{time.monotonic_ns()}")
    os.close(os.open(name, os.O_CREAT | os.O_EXCL | os.O_WRONLY))


def log_and_fault(x: int, *, kind: str, bad: int, log_dir: str) -> int:
    """Logs the run of x, then item `bad` kills its worker (kind "sigkill" or "exit") every time it runs."""
    log_run(x, log_dir)
    if x == bad:
        return do_fault(kind, x)  # type: ignore[no-any-return]
    return x * x


def log_and_sleep(x: int, *, seconds: float, log_dir: str) -> int:
    log_run(x, log_dir)
    if seconds:
        time.sleep(seconds)
    return x


def wait_for_file(path: str, limit: float = 30.0) -> str:
    """Blocks until the test creates `path` (at most `limit` seconds): a slow task that ends when told."""
    deadline = time.monotonic() + limit
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.005)
    return "slow"


class DiesWhenPickled:
    """A result whose pickling ends the worker process (as a crash in a C extension's __reduce__ would)."""

    def __reduce__(self) -> tuple[type, tuple[()]]:
        os._exit(3)


class SlowToPickle:
    """An argument whose pickling, in the parent's assigning thread, takes `seconds`; the worker gets the int."""

    def __init__(self, value: int, seconds: float) -> None:
        self.value = value
        self.seconds = seconds

    def __reduce__(self) -> tuple[type, tuple[int]]:
        time.sleep(self.seconds)
        return (int, (self.value,))


def result_kills_worker(x: int, *, bad: int, log_dir: str) -> object:
    log_run(x, log_dir)
    return DiesWhenPickled() if x == bad else x * x


# Run counters for cheap items, one byte per item in a file mapped once per worker: a file per run (log_run)
# costs tens of µs, which would make the items too slow for the worker to track them in blocks.
_COUNTERS: dict[str, mmap.mmap] = {}


def make_counters(path: str, n: int) -> None:
    with open(path, "wb") as f:
        f.write(bytes(n))


def counts(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def count_and_kill(x: int, *, bad: int, path: str) -> int:
    """Counts the run of x (cheaply), then item `bad` SIGKILLs its worker every time it runs."""
    counters = _COUNTERS.get(path)
    if counters is None:
        with open(path, "r+b") as f:
            counters = _COUNTERS[path] = mmap.mmap(f.fileno(), 0)
    counters[x] += 1
    if x == bad:
        os.kill(os.getpid(), signal.SIGKILL)
    return x * x

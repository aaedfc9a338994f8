"""Task functions for the fault-injection tests.

They live in an importable module so that workers receive them by reference, as user code usually does.
Each fault is real: the worker process really dies, segfaults, exits, hangs in C code, or returns or raises
something that cannot travel back to the parent.
"""

from __future__ import annotations

import ctypes
import os
import signal
import threading
import time
from typing import Any

FAULT_KINDS = (
    "sigkill",  # the worker SIGKILLs itself (like the OOM killer)
    "segfault",  # a real segmentation fault in C code
    "exit",  # os._exit(3): the process ends without any Python cleanup
    "timeout",  # blocks in C code far longer than task_timeout
    "unpicklable_result",  # returns a threading.Lock
    "unpicklable_exception",  # raises an exception that holds a threading.Lock
    "unloadable_exception",  # raises an exception that pickles but cannot be rebuilt in the parent
    "raise",  # an ordinary exception, for reference
)

#: task_timeout used by the "timeout" fault (seconds); the faulty item would block for 1000 s.
TIMEOUT = 0.3


class UnpicklableError(Exception):
    """An exception carrying an object that cannot be pickled."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.lock = threading.Lock()


class UnloadableError(Exception):
    """Pickles fine, but its __init__ needs two arguments, so unpickling (cls(*args)) fails in the parent.

    This is the classic exception that makes multiprocessing.Pool hang (bpo-9400 style).
    """

    def __init__(self, message: str, code: int) -> None:
        super().__init__(f"{message} (code {code})")
        self.code = code


def square(x: int) -> int:
    return x * x


def add(a: int, b: int) -> int:
    return a + b


def block_in_c(seconds: float = 1000.0) -> None:
    """Sleep inside libc (no Python bytecode runs, no signal handler can interrupt it usefully)."""
    ctypes.CDLL(None).sleep(int(seconds))


def do_fault(kind: str, x: int) -> Any:
    if kind == "sigkill":
        os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(10)  # never reached
    elif kind == "segfault":
        ctypes.string_at(0)
    elif kind == "exit":
        os._exit(3)
    elif kind == "timeout":
        block_in_c(1000)
    elif kind == "unpicklable_result":
        return threading.Lock()
    elif kind == "unpicklable_exception":
        raise UnpicklableError(f"cannot travel {x}")
    elif kind == "unloadable_exception":
        raise UnloadableError(f"cannot be rebuilt {x}", 7)
    elif kind == "raise":
        raise ValueError(f"bad item {x}")
    raise AssertionError(f"unknown fault kind {kind!r}")


def faulty(x: int, *, kind: str, bad: int, pause: float = 0.0) -> int:
    """x*x, except that item `bad` triggers the fault `kind`. With ``pause`` each item first sleeps that long:
    items that cost 10 µs or more are tracked one by one, never in blocks of cheap items (see
    ``manycore._chunking.BLOCK_MAX_COST``), so a crash fails only the item it happened on."""
    if pause:
        time.sleep(pause)
    if x == bad:
        return do_fault(kind, x)  # type: ignore[no-any-return]
    return x * x


def faulty_star(x: int, y: int, *, kind: str, bad: int) -> int:
    """starmap flavour: x*x + y, except that item `bad` triggers the fault."""
    if x == bad:
        return do_fault(kind, x)  # type: ignore[no-any-return]
    return x * x + y


def fault_once(x: int, *, kind: str, bad: int, marker_dir: str) -> int:
    """Like `faulty`, but the fault happens only on the first attempt at item `bad` (a marker file remembers it)."""
    if x == bad:
        marker = os.path.join(marker_dir, f"attempted-{x}")
        try:
            fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            pass
        else:
            os.close(fd)
            return do_fault(kind, x)  # type: ignore[no-any-return]
    return x * x


def count_attempts(x: int, *, marker_dir: str) -> int:
    """Appends one byte per run of item x to a file, so tests can count how often each item ran."""
    with open(os.path.join(marker_dir, f"runs-{x}"), "ab") as f:
        f.write(b"x")
    return x * x


def always_fault(x: int, *, kind: str, bad: int, marker_dir: str) -> int:
    """Counts attempts at every item (one file per item) and faults on `bad` every time."""
    count_attempts(x, marker_dir=marker_dir)
    if x == bad:
        return do_fault(kind, x)  # type: ignore[no-any-return]
    return x * x


def sleep_return(seconds: float, value: Any = None) -> Any:
    time.sleep(seconds)
    return value


def touch_and_block(path: str, how: str = "ctypes") -> None:
    """Signal that the task started (creates `path`), then block for a long time in C."""
    with open(path, "w") as f:
        f.write(str(os.getpid()))
    if how == "ctypes":
        block_in_c(1000)
    else:
        time.sleep(1000)


def pid(_: object = None) -> int:
    return os.getpid()


KILL_SET = frozenset({1, 2, 5, 6, 9})


def kill_if_in(x: int) -> int:
    """SIGKILLs its worker for the items in KILL_SET."""
    return faulty(x, kind="sigkill", bad=x if x in KILL_SET else -1)


def star_adapter(fn: Any, x: int, y: int) -> int:
    """For starmap-style entry points: fn(x) + y."""
    return fn(x) + y  # type: ignore[no-any-return]


def call_it(f: Any) -> Any:
    """Runs a callable that came as an argument (a lambda travels fine with cloudpickle)."""
    return f()


def identity(x: Any) -> Any:
    return x


def unloadable_value(x: int, *, bad: int) -> Any:
    """Returns (not raises) an object that pickles in the worker but cannot be rebuilt in the parent."""
    if x == bad:
        return UnloadableError(f"value {x}", 1)
    return x * x


def kind_by_item(x: int, *, faults: dict[int, str]) -> Any:
    """x*x, except the items in `faults`, which trigger the fault kind mapped to them."""
    kind = faults.get(x)
    return x * x if kind is None else do_fault(kind, x)


class SlowToPickle:
    """A result whose pickling takes a while (like a large array): 0.8 s in __reduce__."""

    def __reduce__(self) -> tuple[type, tuple[()]]:
        time.sleep(0.8)
        return (SlowToPickle, ())


def slow_result_at(x: int, *, bad: int) -> Any:
    """Returns at once; item `bad` returns a SlowToPickle."""
    return SlowToPickle() if x == bad else x * x


def big_array_sum(shared: Any, arr: Any, die: bool) -> float:
    """Sum a broadcast array and an input array that both live in shared memory; `die`: SIGKILL this worker
    while both are mapped."""
    if die:
        os.kill(os.getpid(), signal.SIGKILL)
    return float(shared.sum() + arr.sum())


def big_result(x: int) -> Any:
    """A 4 MiB array: large enough to come back in a segment the worker lends to the parent."""
    import numpy as np

    return np.full(1 << 19, float(x))


def touch_and_block_with(path: str, arr: Any, shared: Any) -> None:
    """touch_and_block, while a large input and a broadcast are mapped in this worker."""
    assert arr.size and shared.size
    touch_and_block(path)

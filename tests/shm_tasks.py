"""Task functions for the shared-memory tests."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

KEPT: list[Any] = []


def identity(x: Any) -> Any:
    return x


def describe(a: np.ndarray) -> tuple[str, tuple[int, ...], bool, bool, float]:
    return (str(a.dtype), a.shape, bool(a.flags.c_contiguous), bool(a.flags.writeable), float(a.sum()))


def keep_first(a: np.ndarray) -> float:
    KEPT.append(a)  # keeps a view of the input: its segment must not be reused under it
    return float(KEPT[0][0])


def make_array(i: int) -> np.ndarray:
    return np.full(1 << 18, float(i))


def slice_sum(args: tuple[np.ndarray, int]) -> float:
    arr, i = args
    return float(arr[i * 1000 : (i + 1) * 1000].sum())


def sum_with(arr: np.ndarray, i: int) -> float:
    return float(arr[i])


def is_readonly(arr: np.ndarray) -> bool:
    return not arr.flags.writeable


def blas_env(_: object = None) -> str | None:
    return os.environ.get("OPENBLAS_NUM_THREADS")


def big_sum(a: np.ndarray) -> int:
    return int(a[:: 1 << 20].sum()) + int(a[-1])


def make_16mib(i: int) -> np.ndarray:
    return np.full(1 << 21, float(i))


def worker_pid(_: object = None) -> int:
    return os.getpid()


def memfds() -> int:
    """Shared-memory segments (distinct memfds) this worker holds."""
    fd_dir = f"/proc/{os.getpid()}/fd"
    segments = set()
    for name in os.listdir(fd_dir):
        path = os.path.join(fd_dir, name)
        try:
            if os.readlink(path).startswith("/memfd:manycore "):
                segments.add(os.stat(path).st_ino)
        except OSError:
            pass
    return len(segments)


def blas_pool_threads(_: object = None) -> list[int]:
    """The thread counts of the BLAS pools numpy loaded in this worker, as threadpoolctl reads them."""
    from threadpoolctl import threadpool_info

    return sorted({info["num_threads"] for info in threadpool_info() if info["user_api"] == "blas"})


def busy_threads() -> int:
    """This process's OS threads that the kernel runs at normal priority (not SCHED_IDLE)."""
    return sum(1 for tid in os.listdir("/proc/self/task") if os.sched_getscheduler(int(tid)) != os.SCHED_IDLE)


def os_threads_around_a_matmul(_: object = None) -> tuple[int, bool, int]:
    """This worker's busy OS threads, whether a matrix product big enough for BLAS is right, and the busy
    threads after."""
    before = busy_threads()
    a = np.arange(300 * 300, dtype=np.float64).reshape(300, 300) / 1e4
    right = bool(np.allclose(a @ np.eye(300), a))
    return before, right, busy_threads()


def numpy_imported(_: object = None) -> bool:
    import sys

    return "numpy" in sys.modules

"""Task functions shared by the tests (importable, so they also travel by reference)."""

from __future__ import annotations

import os
import time


def square(x: int) -> int:
    return x * x


def add(a: int, b: int) -> int:
    return a + b


def fail_on(x: int, bad: int = 3) -> int:
    if x == bad:
        raise ValueError(f"item {x} is bad")
    return x


def nested_fail(x: int) -> int:
    return _inner_fail(x)


def _inner_fail(x: int) -> int:
    raise KeyError(f"missing {x}")


def sleep_return(x: float) -> float:
    time.sleep(x)
    return x


def pid(_: object = None) -> int:
    return os.getpid()


def slow_identity(x: int) -> int:
    time.sleep(0.001)
    return x


STATE: dict[str, object] = {}


def init_state(value: object) -> None:
    STATE["value"] = value


def read_state(_: object = None) -> object:
    return STATE.get("value")


def failing_init() -> None:
    raise RuntimeError("initializer exploded")


def count_calls(path: str) -> int:
    with open(path, "a") as f:
        f.write("x")
    return os.getpid()


HOARD: list[bytes] = []


def hoard(megabytes: int) -> tuple[int, int]:
    """Keep `megabytes` MiB alive in this worker (a leak); returns (pid, how many hoards this process holds)."""
    HOARD.append(b"x" * (megabytes << 20))
    return os.getpid(), len(HOARD)


def pytest_imported(_: object = None) -> bool:
    """True in a worker forked from the test process (it inherits pytest), False in a fresh one."""
    import sys

    return "_pytest" in sys.modules


def joblib_sum_on_manycore(n: int) -> int:
    """Names the "manycore" joblib backend without importing manycore.joblib (as joblib's own tests do)."""
    import joblib

    return sum(joblib.Parallel(n_jobs=2, backend="manycore")(joblib.delayed(abs)(-x) for x in range(n)))
